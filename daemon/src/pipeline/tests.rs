use std::net::SocketAddr;

use http::{Extensions, Request, StatusCode};

use super::*;
use crate::config::parse;
use crate::gateway::Rejection;
use crate::policy::quota::SystemClock;

const PEER: &str = "192.0.2.7:40000";

fn policies(extra: &str) -> (ApiPolicies, String) {
    let text = format!(
        "[filter]\ninterfaces = [\"eth0\"]\n[[product]]\nname = \"p\"\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"p\"]\n{extra}"
    );
    let config = parse(&text, std::path::Path::new("t.toml")).unwrap();
    let mut keys = KeyStore::in_memory();
    let (_, issued) = keys.create("sub", keys::Scope::AllApis).unwrap();
    let quotas = QuotaCounters::in_memory(1000, SystemClock);
    let policies = ApiPolicies::new(&config.apis, &config.products, &[], keys, quotas).unwrap();
    (policies, issued.primary.expose().to_owned())
}

struct Outcome {
    result: Result<(), Stop>,
    parts: http::request::Parts,
    state: Extensions,
    subscription: Option<std::sync::Arc<str>>,
}

fn run(policies: &ApiPolicies, request: Request<()>) -> Outcome {
    run_with(policies, request, false).0
}

fn rejection(outcome: Outcome) -> Rejection {
    match outcome.result {
        Err(Stop::Reject(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri).header("host", "api.example")
}

#[test]
fn missing_and_invalid_keys_get_apim_401s() {
    let (p, _) = policies("");
    let r = rejection(run(&p, get("/x").body(()).unwrap()));
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.reason, "SubscriptionKeyNotFound");
    let challenge = r.headers.get(header::WWW_AUTHENTICATE).unwrap();
    assert_eq!(
        challenge,
        "AzureApiManagementKey realm=\"https://api.example/\",name=\"Ocp-Apim-Subscription-Key\",type=\"header\""
    );
    // An absolute-form target (or HTTP/2's :authority) names the host the request
    // was routed by: the realm names it too, not a Host beside it.
    let r = rejection(run(&p, get("http://api.example:8443/x").body(()).unwrap()));
    let challenge = r.headers.get(header::WWW_AUTHENTICATE).unwrap();
    assert!(
        challenge
            .to_str()
            .unwrap()
            .starts_with("AzureApiManagementKey realm=\"https://api.example:8443/\""),
        "{challenge:?}"
    );
    let r = rejection(run(
        &p,
        get("/x")
            .header("Ocp-Apim-Subscription-Key", "nope")
            .body(())
            .unwrap(),
    ));
    assert_eq!(r.reason, "SubscriptionKeyInvalid");
}

#[test]
fn a_refused_genuine_key_names_its_subscription_for_the_log() {
    let text = "[filter]\ninterfaces = [\"eth0\"]\n[[product]]\nname = \"p\"\n\
                [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"p\"]\n";
    let config = parse(text, std::path::Path::new("t.toml")).unwrap();
    let mut keys = KeyStore::in_memory();
    let (_, paused) = keys.create("paused", keys::Scope::AllApis).unwrap();
    keys.suspend("paused").unwrap();
    let (_, elsewhere) = keys
        .create("elsewhere", keys::Scope::Api("other".into()))
        .unwrap();
    let quotas = QuotaCounters::in_memory(1000, SystemClock);
    let p = ApiPolicies::new(&config.apis, &config.products, &[], keys, quotas).unwrap();
    for (key, name) in [
        (paused.primary.expose(), "paused"),
        (elsewhere.secondary.expose(), "elsewhere"),
    ] {
        let out = run(
            &p,
            get("/x")
                .header("Ocp-Apim-Subscription-Key", key)
                .body(())
                .unwrap(),
        );
        assert_eq!(out.subscription.as_deref(), Some(name));
        let r = rejection(out);
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.reason, "SubscriptionKeyInvalid");
    }
    // An unknown key names nobody.
    let out = run(
        &p,
        get("/x")
            .header("Ocp-Apim-Subscription-Key", "nope")
            .body(())
            .unwrap(),
    );
    assert!(out.subscription.is_none());
}

#[test]
fn a_valid_key_passes_and_is_removed_from_header_and_query() {
    let (p, key) = policies("");
    let out = run(
        &p,
        get("/x?a=1")
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.subscription.as_deref(), Some("sub"));

    let out = run(
        &p,
        get(&format!("/x?subscription-key={key}&a=1"))
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert_eq!(out.parts.uri, "/x?a=1");
    let out = run(
        &p,
        get(&format!("/x?subscription-key={key}")).body(()).unwrap(),
    );
    assert_eq!(out.parts.uri, "/x");
}

#[test]
fn forwarding_optional_and_none() {
    let (p, key) = policies("forward_subscription_key = true\n");
    let out = run(
        &p,
        get("/x")
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(out.parts.headers.contains_key("ocp-apim-subscription-key"));

    let (p, _) = policies("subscription = \"optional\"\n");
    assert!(run(&p, get("/x").body(()).unwrap()).result.is_ok());
    let r = rejection(run(
        &p,
        get("/x")
            .header("Ocp-Apim-Subscription-Key", "bad")
            .body(())
            .unwrap(),
    ));
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let (p, _) = policies("subscription = \"none\"\nforward_subscription_key = true\n");
    let out = run(
        &p,
        get("/x?subscription-key=k&a=1")
            .header("Ocp-Apim-Subscription-Key", "anything")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x?subscription-key=k&a=1");
}

#[test]
fn an_api_that_checks_no_key_still_removes_one_before_forwarding() {
    let (p, _) = policies("subscription = \"none\"\n");
    let out = run(
        &p,
        get("/x?a=1&subscription-key=k&b=2&subscription%2Dkey=k2")
            .header("Ocp-Apim-Subscription-Key", "anything")
            .header("accept", "*/*")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert!(out.parts.headers.contains_key("accept"));
    assert_eq!(out.parts.uri, "/x?a=1&b=2");
    assert!(out.subscription.is_none());
    // Without a key, the request is left as it came.
    let out = run(&p, get("/x?a=1&b=%20").body(()).unwrap());
    assert!(out.result.is_ok());
    assert_eq!(out.parts.uri, "/x?a=1&b=%20");
    // Custom names.
    let (p, _) = policies(
        "subscription = \"none\"\nsubscription_key_header = \"X-Api-Key\"\nsubscription_key_query = \"apikey\"\n",
    );
    let out = run(
        &p,
        get("/x?apikey=k&subscription-key=other")
            .header("x-api-key", "k")
            .header("Ocp-Apim-Subscription-Key", "other")
            .body(())
            .unwrap(),
    );
    assert!(!out.parts.headers.contains_key("x-api-key"));
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x");
    // An optional API removes the key it checked.
    let (p, key) = policies("subscription = \"optional\"\n");
    let out = run(
        &p,
        get(&format!("/x?a=1&subscription-key={key}"))
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x?a=1");
}

#[test]
fn an_api_with_its_own_key_names_removes_a_key_sent_under_the_defaults_too() {
    // A client that sends its all-scope key on every call to the host, under APIM's
    // names, to an API that reads its key under other names.
    let (p, key) =
        policies("subscription_key_header = \"X-Api-Key\"\nsubscription_key_query = \"apikey\"\n");
    let out = run(
        &p,
        get(&format!("/x?a=1&subscription-key={key}&b=2"))
            .header("x-api-key", &key)
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(!out.parts.headers.contains_key("x-api-key"));
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x?a=1&b=2");

    // Only the header renamed: the default query name is the API's own, still read.
    let (p, key) = policies("subscription_key_header = \"X-Api-Key\"\n");
    let out = run(
        &p,
        get(&format!("/x?subscription-key={key}"))
            .header("Ocp-Apim-Subscription-Key", "other")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok(), "the key in the query is read");
    assert!(!out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x");

    // forward_subscription_key = true forwards keys under every name.
    let (p, key) =
        policies("subscription_key_header = \"X-Api-Key\"\nforward_subscription_key = true\n");
    let out = run(
        &p,
        get("/x?subscription-key=other")
            .header("x-api-key", &key)
            .header("Ocp-Apim-Subscription-Key", "other")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(out.parts.headers.contains_key("x-api-key"));
    assert!(out.parts.headers.contains_key("ocp-apim-subscription-key"));
    assert_eq!(out.parts.uri, "/x?subscription-key=other");
}

#[test]
fn rate_limit_counts_per_subscription_with_retry_after() {
    let (p, key) = policies("rate_limit = { calls = 2, period_secs = 60 }\n");
    let with_key = || {
        get("/x")
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap()
    };
    assert!(run(&p, with_key()).result.is_ok());
    assert!(run(&p, with_key()).result.is_ok());
    let r = rejection(run(&p, with_key()));
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.iter().any(|(n, _)| n == header::RETRY_AFTER));
}

#[test]
fn cors_preflight_is_answered_and_actual_responses_get_headers() {
    let (p, _) = policies(
        "subscription = \"none\"\ncors = { allowed_origins = [\"https://app.example\"] }\n\
         headers = { request = [{ name = \"X-Env\", values = [\"prod\"] }], response = [{ name = \"Server\", action = \"remove\" }] }\n",
    );
    let out = run(
        &p,
        Request::options("/x")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .body(())
            .unwrap(),
    );
    match out.result {
        Err(Stop::Respond(response)) => assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example"
        ),
        other => panic!("expected a preflight answer, got {other:?}"),
    }

    let out = run(
        &p,
        get("/x")
            .header("origin", "https://app.example")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert_eq!(out.parts.headers["x-env"], "prod");
    let (mut response, ()) = http::Response::builder()
        .header("server", "backend/1.0")
        .header("access-control-allow-origin", "*")
        .body(())
        .unwrap()
        .into_parts();
    p.on_response(
        &ResponseContext {
            api: "a",
            peer: PEER.parse().unwrap(),
            state: &out.state,
        },
        &mut response,
    );
    assert!(!response.headers.contains_key("server"));
    assert_eq!(
        response.headers["access-control-allow-origin"],
        "https://app.example"
    );
}

#[test]
fn a_policy_rejection_reaches_the_client_with_every_header_value() {
    let mut headers = http::HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    headers.insert("x-b", HeaderValue::from_static("3"));
    let response: http::Response<bytes::Bytes> = Rejection {
        status: StatusCode::FORBIDDEN,
        message: "m".into(),
        headers,
        reason: "R",
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.body().as_ref(),
        br#"{ "statusCode": 403, "message": "m" }"#
    );
    let values: Vec<String> = response
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-"))
        .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
        .collect();
    assert_eq!(values, ["x-a=1", "x-a=2", "x-b=3"]);
}

fn run_with(
    policies: &ApiPolicies,
    request: Request<()>,
    has_body: bool,
) -> (Outcome, Option<u64>, bool) {
    let (mut parts, ()) = request.into_parts();
    let mut state = Extensions::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut ctx = RequestContext {
        api: "a",
        peer,
        client_ip: peer.ip(),
        client_cert: None,
        has_body,
        collect_body: None,
        stream_limit: None,
        count_bytes: false,
        parts: &mut parts,
        state: &mut state,
        subscription: None,
    };
    let result = policies.on_request(&mut ctx);
    let (collect, count) = (ctx.collect_body, ctx.count_bytes);
    let subscription = ctx.subscription.take();
    (
        Outcome {
            result,
            parts,
            state,
            subscription,
        },
        collect,
        count,
    )
}

#[test]
fn quotas_count_calls_per_owner_and_answer_apim_403() {
    let (p, key) = policies("quota = { calls = 2, period_secs = 3600 }\n");
    let with_key = || {
        get("/x")
            .header("Ocp-Apim-Subscription-Key", &key)
            .body(())
            .unwrap()
    };
    assert!(run(&p, with_key()).result.is_ok());
    assert!(run(&p, with_key()).result.is_ok());
    let r = rejection(run(&p, with_key()));
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.reason, "QuotaExceeded");
    assert!(
        r.message
            .starts_with("Out of call volume quota. Quota will be replenished in "),
        "{}",
        r.message
    );
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
}

#[test]
fn counters_by_header_and_by_ip() {
    let (p, _) = policies(
        "subscription = \"none\"\nrate_limit = { calls = 1, period_secs = 60, counter = \"header:X-Tenant\" }\n",
    );
    let tenant = |t: &str| get("/x").header("x-tenant", t).body(()).unwrap();
    assert!(run(&p, tenant("t1")).result.is_ok());
    assert!(run(&p, tenant("t2")).result.is_ok());
    assert_eq!(
        rejection(run(&p, tenant("t1"))).status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An empty header: a bucket of its own would be shared by every client that
    // sends it empty; it is counted per client address, as without the header.
    assert!(run(&p, tenant("")).result.is_ok());
    // Without the header: counted per client address (the one the empty header
    // used).
    assert_eq!(
        rejection(run(&p, get("/x").body(()).unwrap())).status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        rejection(run(&p, tenant(""))).status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn remaining_and_total_headers_on_admitted_responses() {
    let (p, _) = policies(
        "subscription = \"none\"\nrate_limit = { calls = 3, period_secs = 60, remaining_header = \"X-Remaining\", total_header = \"X-Limit\" }\n",
    );
    let out = run(&p, get("/x").body(()).unwrap());
    assert!(out.result.is_ok());
    let (mut response, ()) = http::Response::new(()).into_parts();
    p.on_response(
        &ResponseContext {
            api: "a",
            peer: PEER.parse().unwrap(),
            state: &out.state,
        },
        &mut response,
    );
    assert_eq!(response.headers["x-remaining"], "2");
    assert_eq!(response.headers["x-limit"], "3");
}

#[test]
fn validation_checks_the_head_then_asks_for_the_body() {
    let (p, _) = policies(
        "subscription = \"none\"\nvalidation = { content_types = [\"application/json\"], max_body_bytes = 64, json_schema = { type = \"object\", required = [\"id\"] } }\n",
    );
    let post = |ct: &str| {
        Request::post("/x")
            .header("host", "api.example")
            .header("content-type", ct)
            .body(())
            .unwrap()
    };
    let (out, _, _) = run_with(&p, post("text/plain"), true);
    let r = rejection(out);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let (mut out, collect, _) = run_with(&p, post("application/json"), true);
    assert!(out.result.is_ok());
    assert_eq!(collect, Some(64));
    // The closure's Err is a Stop, as on_body's.
    #[allow(clippy::result_large_err)]
    let mut ctx = |body: Option<&Bytes>| {
        let mut state = out.state.clone();
        p.on_body(
            &mut RequestContext {
                api: "a",
                peer: PEER.parse().unwrap(),
                client_ip: PEER.parse::<SocketAddr>().unwrap().ip(),
                client_cert: None,
                has_body: true,
                collect_body: collect,
                stream_limit: None,
                count_bytes: false,
                parts: &mut out.parts,
                state: &mut state,
                subscription: None,
            },
            body,
        )
    };
    assert!(ctx(Some(&Bytes::from_static(br#"{"id": 1}"#))).is_ok());
    let status = |r: Result<(), Stop>| match r {
        Err(Stop::Reject(r)) => (r.status, r.message),
        other => panic!("{other:?}"),
    };
    let (code, message) = status(ctx(Some(&Bytes::from_static(b"{\"id\": "))));
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(message.contains("JSON"), "{message}");
    let (code, _) = status(ctx(Some(&Bytes::from_static(br#"{"name": 1}"#))));
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = status(ctx(None));
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);

    // No body: nothing to collect.
    let (out, collect, _) = run_with(&p, get("/x").body(()).unwrap(), false);
    assert!(out.result.is_ok());
    assert_eq!(collect, None);
}

#[test]
fn bandwidth_quotas_ask_for_byte_counts_and_record_them() {
    let (p, _) =
        policies("subscription = \"none\"\nquota = { kilobytes = 1, period_secs = 3600 }\n");
    let (out, _, count) = run_with(&p, get("/x").body(()).unwrap(), false);
    assert!(out.result.is_ok());
    assert!(count);
    p.on_complete(
        &ResponseContext {
            api: "a",
            peer: PEER.parse().unwrap(),
            state: &out.state,
        },
        Transferred {
            request_bytes: 24,
            response_bytes: 1000,
        },
    );
    let r = rejection(run(&p, get("/x").body(()).unwrap()));
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.message.starts_with("Out of bandwidth quota."),
        "{}",
        r.message
    );
}

#[test]
fn static_subscriptions_from_the_config_open_their_scope_only() {
    let key = "static-key-for-tests-0123456789abcdef";
    let hash = KeyHash::of(key.as_bytes()).to_hex();
    let other = KeyHash::of(b"other").to_hex();
    let text = format!(
        "[filter]\ninterfaces = [\"eth0\"]\n[[product]]\nname = \"p\"\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"p\"]\n\
         [[api]]\nname = \"b\"\npath_prefix = \"/b\"\nbackend = \"http://b\"\n\
         [[subscription]]\nname = \"partner\"\nscope = \"product:p\"\n\
         primary_key_sha256 = \"{hash}\"\nsecondary_key_sha256 = \"{other}\"\n"
    );
    let config = parse(&text, std::path::Path::new("t.toml")).unwrap();
    let mut p = ApiPolicies::new(
        &config.apis,
        &config.products,
        &[],
        KeyStore::in_memory(),
        QuotaCounters::in_memory(10, SystemClock),
    )
    .unwrap();
    p.set_static_subscriptions(&config.subscriptions).unwrap();
    let request = || {
        get("/x")
            .header("Ocp-Apim-Subscription-Key", key)
            .body(())
            .unwrap()
    };
    let out = run(&p, request());
    assert!(out.result.is_ok());
    assert_eq!(out.subscription.as_deref(), Some("partner"));
    let (mut parts, ()) = request().into_parts();
    let mut state = Extensions::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let result = p.on_request(&mut RequestContext {
        api: "b",
        peer,
        client_ip: peer.ip(),
        client_cert: None,
        has_body: false,
        collect_body: None,
        stream_limit: None,
        count_bytes: false,
        parts: &mut parts,
        state: &mut state,
        subscription: None,
    });
    match result {
        Err(Stop::Reject(r)) => assert_eq!(r.status, StatusCode::UNAUTHORIZED),
        other => panic!("{other:?}"),
    }
}

/// The policies of `extra` (after one API "a" in product "p", no key needed),
/// taking over what `previous` has that did not change.
fn rebuilt(
    extra: &str,
    previous: Option<&ApiPolicies>,
    quotas: &Arc<QuotaCounters>,
) -> ApiPolicies {
    let text = format!(
        "[filter]\ninterfaces = [\"eth0\"]\n[[product]]\nname = \"p\"\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"p\"]\n\
         subscription = \"none\"\n{extra}"
    );
    let config = parse(&text, std::path::Path::new("t.toml")).unwrap();
    ApiPolicies::build(
        &config,
        Arc::new(KeyStore::in_memory()),
        Arc::clone(quotas),
        previous,
    )
    .unwrap()
}

fn passes(policies: &ApiPolicies) -> bool {
    run(policies, get("/x").body(()).unwrap()).result.is_ok()
}

#[test]
fn a_rebuild_keeps_the_counters_of_unchanged_limits_and_quotas() {
    let quotas = Arc::new(QuotaCounters::in_memory(100, SystemClock));
    let limited = "rate_limit = { calls = 1, period_secs = 60 }\n\
                   quota = { calls = 2, period_secs = 3600 }\n";
    let first = rebuilt(limited, None, &quotas);
    assert!(passes(&first));
    assert!(!passes(&first), "one call per minute");

    // Same settings: the same counters, still exhausted.
    let same = rebuilt(limited, Some(&first), &quotas);
    assert!(!passes(&same));

    // A changed limit starts counting anew; the quota counters are kept whatever
    // happens to the limit (2 calls per hour: the third admitted call is refused).
    let changed = rebuilt(
        "rate_limit = { calls = 5, period_secs = 60 }\nquota = { calls = 2, period_secs = 3600 }\n",
        Some(&same),
        &quotas,
    );
    assert!(passes(&changed));
    let outcome = rejection(run(&changed, get("/x").body(()).unwrap()));
    assert_eq!(outcome.reason, "QuotaExceeded");
}

#[test]
fn a_rebuild_that_renames_only_the_count_headers_keeps_the_counts() {
    let quotas = Arc::new(QuotaCounters::in_memory(100, SystemClock));
    let limit = |remaining: &str, total: &str| {
        format!(
            "rate_limit = {{ calls = 2, period_secs = 60, counter = \"ip\", \
             remaining_header = \"{remaining}\", total_header = \"{total}\" }}\n"
        )
    };
    // The headers the client gets on an admitted call.
    let announced = |policies: &ApiPolicies| {
        let out = run(policies, get("/x").body(()).unwrap());
        assert!(out.result.is_ok());
        let (mut response, ()) = http::Response::new(()).into_parts();
        policies.on_response(
            &ResponseContext {
                api: "a",
                peer: PEER.parse().unwrap(),
                state: &out.state,
            },
            &mut response,
        );
        response.headers
    };
    let first = rebuilt(&limit("X-Remaining", "X-Limit"), None, &quotas);
    assert_eq!(announced(&first)["x-remaining"], "1");

    let renamed = rebuilt(&limit("X-Left", "X-Calls"), Some(&first), &quotas);
    let headers = announced(&renamed);
    assert_eq!(headers["x-left"], "0", "the call before the reload counts");
    assert_eq!(headers["x-calls"], "2");
    assert!(!headers.contains_key("x-remaining"));
    let refused = rejection(run(&renamed, get("/x").body(()).unwrap()));
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

    // Headers dropped altogether: still the same counts.
    let quiet = rebuilt(
        "rate_limit = { calls = 2, period_secs = 60, counter = \"ip\" }\n",
        Some(&renamed),
        &quotas,
    );
    assert!(!passes(&quiet));
}

#[test]
fn a_rebuild_keeps_fetching_jwt_providers_whose_settings_did_not_change() {
    let quotas = Arc::new(QuotaCounters::in_memory(100, SystemClock));
    let provider = |url: &str, audience: &str| {
        format!(
            "jwt = {{ provider = \"idp\" }}\n\
             [[jwt_provider]]\nname = \"idp\"\nalgorithms = [\"RS256\"]\n\
             jwks_url = \"https://{url}\"\naudiences = [\"{audience}\"]\n"
        )
    };
    let first = rebuilt(&provider("idp.example/keys", "one"), None, &quotas);
    let same = rebuilt(&provider("idp.example/keys", "one"), Some(&first), &quotas);
    let judged = rebuilt(&provider("idp.example/keys", "two"), Some(&same), &quotas);
    let moved = rebuilt(
        &provider("idp.example/v2/keys", "two"),
        Some(&judged),
        &quotas,
    );
    let only = |p: &ApiPolicies| Arc::clone(p.jwt_providers().next().unwrap());
    assert!(Arc::ptr_eq(&only(&first), &only(&same)), "kept: no refetch");
    assert!(
        !Arc::ptr_eq(&only(&same), &only(&judged)),
        "judged otherwise: built anew"
    );
    assert!(
        Arc::ptr_eq(only(&same).keys(), only(&judged).keys()),
        "the same key source: its keys and their refresh are kept"
    );
    assert!(
        !Arc::ptr_eq(only(&judged).keys(), only(&moved).keys()),
        "another key source: fetched anew"
    );
}

#[test]
fn build_reports_every_problem() {
    let text = "[filter]\ninterfaces = [\"eth0\"]\n\
                [[api]]\nname = \"a\"\npath_prefix = \"/a\"\nbackend = \"http://b\"\njwt = { provider = \"x\" }\n\
                [[api]]\nname = \"b\"\npath_prefix = \"/b\"\nbackend = \"http://b\"\njwt = { provider = \"y\" }\n\
                [[jwt_provider]]\nname = \"x\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/keys\"\n\
                [[jwt_provider]]\nname = \"y\"\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/keys\"\n";
    let mut config = parse(text, std::path::Path::new("t.toml")).unwrap();
    // Made unbuildable after validation (a file read at validation gone since).
    config.jwt_providers.clear();
    let quotas = Arc::new(QuotaCounters::in_memory(10, SystemClock));
    let errors = ApiPolicies::build(&config, Arc::new(KeyStore::in_memory()), quotas, None)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, PipelineError::UnknownJwtProvider { .. }))
    );
}

#[test]
fn other_subscriptions_replace_only_the_keys() {
    let (p, key) = policies("");
    assert!(
        run(
            &p,
            get("/x")
                .header("Ocp-Apim-Subscription-Key", &key)
                .body(())
                .unwrap()
        )
        .result
        .is_ok()
    );
    let mut store = KeyStore::in_memory();
    let (_, issued) = store.create("other", keys::Scope::AllApis).unwrap();
    let swapped = p.with_keys(Arc::new(store));
    let with = |key: &str| {
        run(
            &swapped,
            get("/x")
                .header("Ocp-Apim-Subscription-Key", key)
                .body(())
                .unwrap(),
        )
        .result
        .is_ok()
    };
    assert!(!with(&key), "the old store's key is gone");
    assert!(with(issued.primary.expose()));
    assert!(std::ptr::eq(
        p.api_names().next().unwrap(),
        swapped.api_names().next().unwrap()
    ));
}

/// Whether a request from client address `client` passes; the reason code when it
/// is refused.
fn from(policies: &ApiPolicies, client: &str) -> Result<(), &'static str> {
    let (mut parts, ()) = get("/x").body(()).unwrap().into_parts();
    let mut state = Extensions::new();
    let client: IpAddr = client.parse().unwrap();
    let result = policies.on_request(&mut RequestContext {
        api: "a",
        peer: SocketAddr::new(client, 40000),
        client_ip: client,
        client_cert: None,
        has_body: false,
        collect_body: None,
        stream_limit: None,
        count_bytes: false,
        parts: &mut parts,
        state: &mut state,
        subscription: None,
    });
    match result {
        Ok(()) => Ok(()),
        Err(Stop::Reject(r)) => Err(r.reason),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn ip_counters_count_an_ipv6_client_by_its_prefix() {
    let quotas = Arc::new(QuotaCounters::in_memory(100, SystemClock));
    let p = rebuilt(
        "rate_limit = { calls = 2, period_secs = 60, counter = \"ip\" }\n",
        None,
        &quotas,
    );
    // Addresses of one /64 share its calls: changing address gets no more.
    assert_eq!(from(&p, "2001:db8:1:2::1"), Ok(()));
    assert_eq!(from(&p, "2001:db8:1:2::2"), Ok(()));
    assert_eq!(from(&p, "2001:db8:1:2:aaaa::3"), Err("RateLimitExceeded"));
    // Another /64 is another client.
    assert_eq!(from(&p, "2001:db8:1:3::1"), Ok(()));
    // IPv4 clients are counted per address; an IPv4-mapped address is the IPv4
    // address.
    assert_eq!(from(&p, "192.0.2.1"), Ok(()));
    assert_eq!(from(&p, "192.0.2.2"), Ok(()));
    assert_eq!(from(&p, "::ffff:192.0.2.1"), Ok(()));
    assert_eq!(from(&p, "192.0.2.1"), Err("RateLimitExceeded"));

    // Quotas alike (the same key function), and the fallback of the other counters.
    let p = rebuilt(
        "quota = { calls = 2, period_secs = 3600, counter = \"header:X-Tenant\" }\n",
        None,
        &quotas,
    );
    assert_eq!(from(&p, "2001:db8:9:9::1"), Ok(()));
    assert_eq!(from(&p, "2001:db8:9:9::2"), Ok(()));
    assert_eq!(from(&p, "2001:db8:9:9::3"), Err("QuotaExceeded"));
}

#[test]
fn the_ipv6_client_prefix_is_configurable() {
    let quotas = Arc::new(QuotaCounters::in_memory(100, SystemClock));
    let limit = "rate_limit = { calls = 1, period_secs = 60, counter = \"ip\" }\n";
    // 128: per address, as clouds that hand each machine one address may want.
    let p = rebuilt(
        &format!("{limit}[gateway]\nipv6_client_prefix = 128\n"),
        None,
        &quotas,
    );
    assert_eq!(from(&p, "2001:db8:1:2::1"), Ok(()));
    assert_eq!(from(&p, "2001:db8:1:2::2"), Ok(()));
    assert_eq!(from(&p, "2001:db8:1:2::1"), Err("RateLimitExceeded"));
    // 96: a /96 each.
    let p = rebuilt(
        &format!("{limit}[gateway]\nipv6_client_prefix = 96\n"),
        None,
        &quotas,
    );
    assert_eq!(from(&p, "2001:db8:1:2:0:1::1"), Ok(()));
    assert_eq!(from(&p, "2001:db8:1:2:0:1::2"), Err("RateLimitExceeded"));
    assert_eq!(from(&p, "2001:db8:1:2:0:2::1"), Ok(()));
}

#[test]
fn client_keys_name_the_address_or_the_ipv6_prefix() {
    let key = |ip: &str, len| client_key(ip.parse().unwrap(), len);
    assert_eq!(key("192.0.2.7", 64), "ip:192.0.2.7");
    assert_eq!(key("::ffff:192.0.2.7", 64), "ip:192.0.2.7");
    assert_eq!(key("2001:db8:1:2:3:4:5:6", 64), "ip:2001:db8:1:2::/64");
    assert_eq!(key("2001:db8:1:2:3:4:5:6", 56), "ip:2001:db8:1::/56");
    assert_eq!(key("2001:db8:1:2:3:4:5:6", 128), "ip:2001:db8:1:2:3:4:5:6");
}

/// API "a" in products "free" (1 call a minute, 1 call an hour), "premium" (3
/// calls a minute) and "metered" (1 call an hour), with keys scoped to the first
/// two products, to the API, to all APIs and to the third product.
fn tiered(extra: &str) -> (ApiPolicies, [String; 5]) {
    let text = format!(
        "[filter]\ninterfaces = [\"eth0\"]\n\
         [[product]]\nname = \"free\"\nrate_limit = {{ calls = 1, period_secs = 60 }}\n\
         quota = {{ calls = 1, period_secs = 3600 }}\n\
         [[product]]\nname = \"premium\"\nrate_limit = {{ calls = 3, period_secs = 60 }}\n\
         [[product]]\nname = \"metered\"\nquota = {{ calls = 1, period_secs = 3600 }}\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         products = [\"free\", \"premium\", \"metered\"]\n{extra}"
    );
    let config = parse(&text, std::path::Path::new("t.toml")).unwrap();
    let mut keys = KeyStore::in_memory();
    let mut key = |name: &str, scope| {
        let (_, issued) = keys.create(name, scope).unwrap();
        issued.primary.expose().to_owned()
    };
    let issued = [
        key("free-sub", keys::Scope::Product("free".into())),
        key("premium-sub", keys::Scope::Product("premium".into())),
        key("api-sub", keys::Scope::Api("a".into())),
        key("all-sub", keys::Scope::AllApis),
        key("metered-sub", keys::Scope::Product("metered".into())),
    ];
    let quotas = QuotaCounters::in_memory(1000, SystemClock);
    let policies = ApiPolicies::new(&config.apis, &config.products, &[], keys, quotas).unwrap();
    (policies, issued)
}

/// The statuses of `n` calls with `key` (200 for a call the policies pass).
fn statuses(p: &ApiPolicies, key: Option<&str>, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let mut request = get("/x");
            if let Some(key) = key {
                request = request.header("Ocp-Apim-Subscription-Key", key);
            }
            match run(p, request.body(()).unwrap()).result {
                Ok(()) => 200,
                Err(Stop::Reject(r)) => r.status.as_u16(),
                Err(other) => panic!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn a_products_limits_apply_only_to_subscriptions_scoped_to_it() {
    let (p, [free, premium, api, all, _]) = tiered("");
    // Premium subscribers get premium's 3 a minute, not free's 1.
    assert_eq!(statuses(&p, Some(&premium), 4), [200, 200, 200, 429]);
    // Free subscribers get free's limit and quota (the quota answers after the
    // minute's call: it is checked after the rate limit).
    assert_eq!(statuses(&p, Some(&free), 2), [200, 429]);
    // API-scoped and all-access subscriptions get no product policy (APIM).
    assert_eq!(statuses(&p, Some(&api), 5), [200; 5]);
    assert_eq!(statuses(&p, Some(&all), 5), [200; 5]);

    // Calls without a subscription get none either.
    let (p, _) = tiered("subscription = \"optional\"\n");
    assert_eq!(statuses(&p, None, 5), [200; 5]);
    let (p, _) = tiered("subscription = \"none\"\n");
    assert_eq!(statuses(&p, None, 5), [200; 5]);
}

#[test]
fn an_apis_own_limit_applies_to_every_subscription() {
    let (p, [free, premium, api, all, _]) =
        tiered("rate_limit = { calls = 2, period_secs = 60 }\n");
    for key in [&free, &premium, &api, &all] {
        let got = statuses(&p, Some(key), 3);
        assert_eq!(got[2], 429, "{got:?}");
    }
    let (p, _) = tiered("subscription = \"none\"\nquota = { calls = 2, period_secs = 3600 }\n");
    assert_eq!(statuses(&p, None, 3), [200, 200, 403]);
}

#[test]
fn a_request_refused_by_a_later_limit_or_quota_counts_in_none() {
    // The API allows 5 calls a minute per client address and announces what is
    // left; the free product 1 a minute per subscription.
    let (p, [free, premium, ..]) = tiered(
        "rate_limit = { calls = 5, period_secs = 60, counter = \"ip\", remaining_header = \"X-A\" }\n",
    );
    let remaining = |key: &str| {
        let out = run(
            &p,
            get("/x")
                .header("Ocp-Apim-Subscription-Key", key)
                .body(())
                .unwrap(),
        );
        let LimitHeaders(headers) = out.state.get::<LimitHeaders>().unwrap().clone();
        headers["x-a"].to_str().unwrap().to_owned()
    };
    assert_eq!(remaining(&free), "4");
    assert_eq!(statuses(&p, Some(&free), 3), [429; 3]);
    // The three calls the product refused took nothing from the API's limit.
    assert_eq!(remaining(&premium), "3");

    // Quotas likewise: the API's 2 calls a minute and its 3 calls an hour are not
    // used up by the calls the metered product's quota (1 an hour) refuses.
    let (p, [_, premium, _, _, metered]) =
        tiered("rate_limit = { calls = 2, period_secs = 60, counter = \"ip\" }\n");
    assert_eq!(statuses(&p, Some(&metered), 4), [200, 403, 403, 403]);
    assert_eq!(statuses(&p, Some(&premium), 2), [200, 429]);
    let (p, [_, premium, _, _, metered]) =
        tiered("quota = { calls = 3, period_secs = 3600, counter = \"ip\" }\n");
    assert_eq!(statuses(&p, Some(&metered), 4), [200, 403, 403, 403]);
    assert_eq!(statuses(&p, Some(&premium), 3), [200, 200, 403]);
}

#[test]
fn cors_adds_origin_to_the_backends_vary_and_keeps_the_rest() {
    let (p, _) = policies(
        "subscription = \"none\"\ncors = { allowed_origins = [\"https://app.example\"] }\n",
    );
    // The Vary the client gets for a backend's Vary, with and without an Origin.
    let vary = |backend: &[&str], origin: Option<&str>| {
        let mut request = get("/x");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let out = run(&p, request.body(()).unwrap());
        assert!(out.result.is_ok());
        let mut response = http::Response::builder();
        for value in backend {
            response = response.header("vary", *value);
        }
        let (mut response, ()) = response.body(()).unwrap().into_parts();
        p.on_response(
            &ResponseContext {
                api: "a",
                peer: PEER.parse().unwrap(),
                state: &out.state,
            },
            &mut response,
        );
        response
            .headers
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let app = Some("https://app.example");
    assert_eq!(
        vary(&["Accept-Encoding, Cookie"], app),
        ["Accept-Encoding, Cookie", "Origin"]
    );
    assert_eq!(
        vary(&["Accept-Encoding", "Cookie"], None),
        ["Accept-Encoding", "Cookie", "Origin"]
    );
    assert_eq!(
        vary(
            &["Accept-Encoding", "Cookie"],
            Some("https://other.example")
        ),
        ["Accept-Encoding", "Cookie", "Origin"]
    );
    // Named already: not twice.
    assert_eq!(vary(&["Cookie, origin"], app), ["Cookie, origin"]);
    assert_eq!(vary(&["*"], app), ["*"]);
    assert_eq!(vary(&[], app), ["Origin"]);
}

/// Claims are not percent-encoded as certificate fields are: they go as they are, or
/// the token is refused, saying why.
#[test]
fn claims_are_sent_as_they_are_or_refused_saying_why() {
    for (value, problem) in [
        ("a\nb", "it holds a control character"),
        ("a\u{7f}b", "it holds a control character"),
        ("alice ", "it starts or ends with a space or tab"),
        ("\talice", "it starts or ends with a space or tab"),
    ] {
        assert_eq!(claim_header_value(value), Err(problem), "{value:?}");
    }
    for value in ["100%", "Alice Smith", "a\tb", "J%C3%A9", "José"] {
        assert_eq!(
            claim_header_value(value).map(|v| v.as_bytes().to_vec()),
            Ok(value.as_bytes().to_vec())
        );
    }
}
