//! One request: limits, routing, policies, forwarding, access log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HOST;
use http::{Extensions, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;

use super::error::Rejection;
use super::forwarded::{ClientHop, remove_hop_by_hop, set_forwarding_headers};
use super::policy::{RequestContext, RequestPolicy, ResponseContext, Stop};
use super::proxy::{Backend, ClientBody, declared_length};
use super::routing::RouteTable;
use super::settings::{Limits, is_trusted};
use super::{GatewayStats, ResponseBody};

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) routes: RouteTable<Backend>,
    pub(crate) limits: Limits,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) policies: Vec<Arc<dyn RequestPolicy>>,
    pub(crate) stats: Arc<GatewayStats>,
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    /// `https` or `http`.
    pub(crate) proto: &'static str,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Connection,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    GatewayStats::bump(&shared.stats.requests);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (response, api, reason) = process(&shared, conn, request).await;
    tracing::info!(
        target: "rampart::access",
        peer = %conn.peer,
        %method,
        path,
        status = response.status().as_u16(),
        latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        api = api.as_deref().unwrap_or("-"),
        reason = reason.unwrap_or("-"),
    );
    Ok(response)
}

type Outcome = (Response<ResponseBody>, Option<String>, Option<&'static str>);

fn rejected(rejection: Rejection, api: Option<String>) -> Outcome {
    let reason = rejection.reason;
    (full(rejection.into_response()), api, Some(reason))
}

fn full(response: Response<Bytes>) -> Response<ResponseBody> {
    response.map(|bytes| {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

async fn process(shared: &Shared, conn: Connection, request: Request<Incoming>) -> Outcome {
    let limits = &shared.limits;
    if head_size(&request) > limits.max_header_bytes {
        return rejected(Rejection::header_too_large(), None);
    }
    let host = request_host(&request).map(str::to_owned);
    let Some((backend, rest)) = shared.routes.route(host.as_deref(), request.uri().path()) else {
        return rejected(Rejection::not_found(), None);
    };
    let backend = Arc::clone(backend);
    let rest = rest.to_owned();
    let api = Some(backend.name.clone());

    let (mut parts, body) = request.into_parts();
    if declared_length(&parts).is_some_and(|len| len > limits.max_body_bytes) {
        return rejected(Rejection::payload_too_large(), api);
    }
    remove_hop_by_hop(&mut parts.headers);

    let mut state = Extensions::new();
    let mut stopped = None;
    for policy in &shared.policies {
        let mut ctx = RequestContext {
            api: &backend.name,
            peer: conn.peer,
            parts: &mut parts,
            state: &mut state,
        };
        if let Err(stop) = policy.on_request(&mut ctx) {
            stopped = Some(stop);
            break;
        }
    }

    let (mut response, reason) = match stopped {
        Some(Stop::Reject(rejection)) => {
            let reason = rejection.reason;
            (full(rejection.into_response()), Some(reason))
        }
        Some(Stop::Respond(response)) => (full(*response), None),
        None => {
            set_forwarding_headers(
                &mut parts.headers,
                ClientHop {
                    peer: conn.peer.ip(),
                    proto: conn.proto,
                    host: host.as_deref(),
                    trusted: is_trusted(&shared.trusted_proxies, conn.peer.ip()),
                },
            );
            let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
            let body = Limited::new(ClientBody(body), limit);
            match backend.forward(parts, body, &rest).await {
                Ok(response) => (response, None),
                Err(rejection) => {
                    if rejection.status == http::StatusCode::BAD_REQUEST {
                        GatewayStats::bump(&shared.stats.malformed_requests);
                    }
                    let reason = rejection.reason;
                    (full(rejection.into_response()), Some(reason))
                }
            }
        }
    };

    if !shared.policies.is_empty() {
        let ctx = ResponseContext {
            api: &backend.name,
            peer: conn.peer,
            state: &state,
        };
        let (mut head, body) = response.into_parts();
        for policy in shared.policies.iter().rev() {
            policy.on_response(&ctx, &mut head);
        }
        response = Response::from_parts(head, body);
    }
    (response, api, reason)
}

/// The host the client asked for: the URI authority (HTTP/2, absolute form) or `Host`.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(HOST).and_then(|v| v.to_str().ok()))
}

/// Bytes of the request head as sent in HTTP/1.1 (request line + header lines);
/// the same measure is applied to HTTP/2 so both versions share one limit.
fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = request.method().as_str().len() + target + 11;
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}
