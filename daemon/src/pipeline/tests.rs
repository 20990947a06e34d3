use std::net::SocketAddr;

use http::{Extensions, Request, StatusCode};

use super::*;
use crate::config::parse;
use crate::gateway::Rejection;

const PEER: &str = "192.0.2.7:40000";

fn policies(extra: &str) -> (ApiPolicies, String) {
    let text = format!(
        "[filter]\ninterfaces = [\"eth0\"]\n[[product]]\nname = \"p\"\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"p\"]\n{extra}"
    );
    let config = parse(&text, std::path::Path::new("t.toml")).unwrap();
    let mut keys = KeyStore::in_memory();
    let (_, issued) = keys.create("sub", keys::Scope::AllApis).unwrap();
    let policies = ApiPolicies::new(&config.apis, &config.products, keys).unwrap();
    (policies, issued.primary.expose().to_owned())
}

struct Outcome {
    result: Result<(), Stop>,
    parts: http::request::Parts,
    state: Extensions,
}

fn run(policies: &ApiPolicies, request: Request<()>) -> Outcome {
    let (mut parts, ()) = request.into_parts();
    let mut state = Extensions::new();
    let peer: SocketAddr = PEER.parse().unwrap();
    let result = policies.on_request(&mut RequestContext {
        api: "a",
        peer,
        parts: &mut parts,
        state: &mut state,
    });
    Outcome {
        result,
        parts,
        state,
    }
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
    assert_eq!(out.state.get::<SubscriptionName>().unwrap().0, "sub");

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

    let (p, _) = policies("subscription = \"none\"\n");
    let out = run(
        &p,
        get("/x")
            .header("Ocp-Apim-Subscription-Key", "anything")
            .body(())
            .unwrap(),
    );
    assert!(out.result.is_ok());
    assert!(out.parts.headers.contains_key("ocp-apim-subscription-key"));
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
