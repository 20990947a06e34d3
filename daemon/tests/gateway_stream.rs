//! 100 MB streamed through the gateway each way, over TLS with HTTP/1.1 and
//! HTTP/2, without the process growing by anything like the body size. In its own
//! test binary so that no other test's allocations blur the memory figure.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod gateway_support;

use bytes::Bytes;
use gateway_support::*;
use http::{Request, StatusCode};
use http_body_util::Empty;
use rampart::gateway::Limits;

const SIZE: u64 = 100 * 1024 * 1024;

/// Resident memory of this process, from /proc (kB).
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_megabytes_stream_both_ways_without_buffering() {
    let pki = Pki::new();
    let backend = start_backend().await;
    let gw = start_gateway_with(
        tls_settings(pki.leaf("localhost", &["localhost"]), Vec::new()),
        settings(
            vec![api("files", None, "/files", &format!("http://{backend}/"))],
            Limits {
                max_body_bytes: 200 * 1024 * 1024,
                ..Limits::default()
            },
        ),
        None,
    )
    .await;
    let base = format!("https://localhost:{}/files", gw.tls.port());

    // Warm up pools, TLS and allocator before the baseline.
    let warm = client::<PatternBody>(&pki, false);
    let request = Request::post(format!("{base}/upload"))
        .body(PatternBody::new(1024 * 1024, true))
        .unwrap();
    assert_eq!(send(&warm, request).await.0.status, StatusCode::OK);
    let baseline = rss_kb();

    for h2 in [false, true] {
        // Upload: announced length for HTTP/1.1, unannounced (chunked / DATA
        // frames) for HTTP/2.
        let uploader = client::<PatternBody>(&pki, h2);
        let request = Request::post(format!("{base}/upload"))
            .body(PatternBody::new(SIZE, !h2))
            .unwrap();
        let (parts, body) = send(&uploader, request).await;
        assert_eq!(parts.status, StatusCode::OK, "{body}");
        assert_eq!(body, format!("received {SIZE}"));

        // Download, checked byte by byte as it arrives.
        let downloader = client::<Empty<Bytes>>(&pki, h2);
        let request = Request::get(format!("{base}/download?n={SIZE}"))
            .body(Empty::new())
            .unwrap();
        let response = downloader.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let received = check_pattern(response.into_body()).await.unwrap();
        assert_eq!(received, SIZE);
    }

    let grown_mb = rss_kb().saturating_sub(baseline) / 1024;
    assert!(
        grown_mb < 50,
        "memory grew by {grown_mb} MB while streaming 4 x 100 MB"
    );
}
