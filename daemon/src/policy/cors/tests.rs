use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

use super::*;

fn settings(origins: &[&str]) -> CorsSettings {
    CorsSettings {
        allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        allowed_methods: default_methods(),
        allowed_headers: Vec::new(),
        expose_headers: Vec::new(),
        allow_credentials: false,
        max_age_secs: 0,
    }
}

fn policy(settings: &CorsSettings) -> CorsPolicy {
    match settings.validate() {
        Ok(policy) => policy,
        Err(errors) => panic!("settings should be valid: {errors:?}"),
    }
}

fn request(method: Method, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::builder().method(method).uri("/orders");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    match builder.body(()) {
        Ok(request) => request.into_parts().0,
        Err(err) => panic!("test request: {err}"),
    }
}

fn value(text: &'static str) -> HeaderValue {
    HeaderValue::from_static(text)
}

fn has_cors_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with("access-control-"))
}

fn vary(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

#[test]
fn toml_defaults_follow_apim() {
    let parsed: CorsSettings = match toml::from_str(r#"allowed_origins = ["https://a.example"]"#) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(parsed, settings(&["https://a.example"]));
    assert_eq!(parsed.allowed_methods, ["GET", "POST"]);
    assert!(!parsed.allow_credentials);
    assert_eq!(parsed.max_age_secs, 0);
}

#[test]
fn toml_unknown_key_is_an_error() {
    let parsed =
        toml::from_str::<CorsSettings>("allowed_origins = [\"*\"]\nallow_origin_regex = \".*\"");
    assert!(parsed.is_err());
}

#[test]
fn default_ports_are_understood() {
    let p = policy(&settings(&["https://a.example", "http://b.example:8080"]));
    assert!(p.origin_allowed(&value("https://a.example")));
    assert!(p.origin_allowed(&value("https://a.example:443")));
    assert!(p.origin_allowed(&value("HTTPS://A.Example")));
    assert!(!p.origin_allowed(&value("https://a.example:8443")));
    assert!(!p.origin_allowed(&value("http://a.example")));
    assert!(p.origin_allowed(&value("http://b.example:8080")));
    assert!(!p.origin_allowed(&value("http://b.example")));

    let p = policy(&settings(&["http://c.example:80", "https://[::1]:443"]));
    assert!(p.origin_allowed(&value("http://c.example")));
    assert!(p.origin_allowed(&value("https://[::1]")));
}

#[test]
fn suffixes_and_odd_origins_do_not_match() {
    let p = policy(&settings(&["https://a.example"]));
    assert!(!p.origin_allowed(&value("https://a.example.evil.test")));
    assert!(!p.origin_allowed(&value("https://evila.example")));
    assert!(!p.origin_allowed(&value("null")));
    assert!(!p.origin_allowed(&value("https://a.example/path")));
    assert!(!p.origin_allowed(&value("https://user@a.example")));
    assert!(!p.origin_allowed(&value("")));
}

#[test]
fn invalid_origins_are_reported_each() {
    let Err(errors) = settings(&[
        "a.example",
        "https://a.example/",
        "ftp://a.example",
        "https://a.example ",
    ])
    .validate() else {
        panic!("invalid origins accepted");
    };
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, CorsConfigError::InvalidOrigin { .. }))
    );
    assert!(errors[1].to_string().contains("no path"), "{}", errors[1]);
}

#[test]
fn an_origin_with_a_wildcard_is_refused_not_taken_literally() {
    for origin in ["https://*.example", "https://app.*", "*.example"] {
        let Err(errors) = settings(&[origin]).validate() else {
            panic!("{origin} accepted");
        };
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!(
                "allowed_origins: {origin:?} is not an origin: origins are matched exactly, \
                 without wildcards: list each origin, or \"*\" alone for any"
            )]
        );
    }
}

#[test]
fn wildcard_rules() {
    let mut s = settings(&["*"]);
    s.allow_credentials = true;
    assert_eq!(
        s.validate().err(),
        Some(vec![CorsConfigError::WildcardOriginWithCredentials])
    );

    let s = settings(&["*", "https://a.example"]);
    assert_eq!(
        s.validate().err(),
        Some(vec![CorsConfigError::WildcardOriginMixed])
    );

    let mut s = settings(&["https://a.example"]);
    s.allow_credentials = true;
    s.expose_headers = vec!["*".to_owned()];
    assert_eq!(
        s.validate().err(),
        Some(vec![CorsConfigError::WildcardExposeWithCredentials])
    );

    assert_eq!(
        settings(&[]).validate().err(),
        Some(vec![CorsConfigError::NoOrigins])
    );
    let mut s = settings(&["https://a.example"]);
    s.allowed_methods.clear();
    assert_eq!(s.validate().err(), Some(vec![CorsConfigError::NoMethods]));
}

#[test]
fn invalid_method_and_header_names_are_errors() {
    let mut s = settings(&["https://a.example"]);
    s.allowed_methods = vec!["GET".to_owned(), "BAD METHOD".to_owned()];
    s.allowed_headers = vec!["x-ok".to_owned(), "bad header".to_owned()];
    let errors = s.validate().err().unwrap_or_default();
    assert_eq!(
        errors,
        vec![
            CorsConfigError::InvalidMethod {
                method: "BAD METHOD".to_owned()
            },
            CorsConfigError::InvalidHeader {
                field: "allowed_headers",
                header: "bad header".to_owned()
            },
        ]
    );
}

#[test]
fn any_origin_echoes_star_without_vary_origin() {
    let p = policy(&settings(&["*"]));
    let headers = actual_response_headers(&p, Some(&value("https://x.example")));
    assert_eq!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN), Some(&value("*")));
    assert!(vary(&headers).is_empty());
    assert!(headers.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
}

#[test]
fn actual_request_from_allowed_origin() {
    let mut s = settings(&["https://a.example"]);
    s.allow_credentials = true;
    s.expose_headers = vec!["X-Request-Id".to_owned(), "ETag".to_owned()];
    let p = policy(&s);
    let headers = actual_response_headers(&p, Some(&value("https://a.example:443")));
    // The browser's own serialisation is echoed back.
    assert_eq!(
        headers.get(ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&value("https://a.example:443"))
    );
    assert_eq!(
        headers.get(ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some(&value("true"))
    );
    assert_eq!(
        headers.get(ACCESS_CONTROL_EXPOSE_HEADERS),
        Some(&value("x-request-id, etag"))
    );
    assert_eq!(vary(&headers), ["Origin"]);
}

#[test]
fn actual_request_from_other_origin_gets_only_vary() {
    let p = policy(&settings(&["https://a.example"]));
    let headers = actual_response_headers(&p, Some(&value("https://b.example")));
    assert!(!has_cors_headers(&headers));
    assert_eq!(vary(&headers), ["Origin"]);

    let headers = actual_response_headers(&p, None);
    assert!(!has_cors_headers(&headers));
    assert_eq!(vary(&headers), ["Origin"]);
}

#[test]
fn preflight_allowed() {
    let mut s = settings(&["https://a.example"]);
    s.allowed_methods = vec!["get".to_owned(), "PUT".to_owned()];
    s.allowed_headers = vec!["Content-Type".to_owned(), "X-Trace".to_owned()];
    s.allow_credentials = true;
    s.max_age_secs = 600;
    let p = policy(&s);
    let req = request(
        Method::OPTIONS,
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "content-type, X-TRACE"),
        ],
    );
    let Some(answer) = preflight(&p, &req) else {
        panic!("a preflight must be answered by the gateway");
    };
    assert_eq!(answer.verdict, PreflightVerdict::Allowed);
    let h = &answer.response.headers;
    assert_eq!(answer.response.status, StatusCode::OK);
    assert_eq!(
        h.get(ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&value("https://a.example"))
    );
    assert_eq!(
        h.get(ACCESS_CONTROL_ALLOW_METHODS),
        Some(&value("GET, PUT"))
    );
    assert_eq!(
        h.get(ACCESS_CONTROL_ALLOW_HEADERS),
        Some(&value("content-type, x-trace"))
    );
    assert_eq!(
        h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some(&value("true"))
    );
    assert_eq!(h.get(ACCESS_CONTROL_MAX_AGE), Some(&value("600")));
    assert!(vary(h).contains(&"Origin"));
    assert_eq!(h.get(http::header::CONTENT_LENGTH), Some(&value("0")));
}

#[test]
fn preflight_with_any_method_and_header_echoes_the_request() {
    let mut s = settings(&["*"]);
    s.allowed_methods = vec!["*".to_owned()];
    s.allowed_headers = vec!["*".to_owned()];
    let p = policy(&s);
    let req = request(
        Method::OPTIONS,
        &[
            ("origin", "https://anything.example"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "x-a,x-b"),
        ],
    );
    let Some(answer) = preflight(&p, &req) else {
        panic!("not answered");
    };
    let h = &answer.response.headers;
    assert_eq!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN), Some(&value("*")));
    assert_eq!(h.get(ACCESS_CONTROL_ALLOW_METHODS), Some(&value("PATCH")));
    assert_eq!(
        h.get(ACCESS_CONTROL_ALLOW_HEADERS),
        Some(&value("x-a, x-b"))
    );
    // max_age_secs = 0 (the default) is said, as APIM does: browsers would
    // otherwise cache the preflight for their own default.
    assert_eq!(h.get(ACCESS_CONTROL_MAX_AGE), Some(&value("0")));
    assert!(!vary(h).contains(&"Origin"));

    // Not the methods the gateway refuses (405) whatever the API allows, in any case.
    for refused in ["TRACE", "CONNECT", "trace"] {
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://anything.example"),
                ("access-control-request-method", refused),
            ],
        );
        let Some(answer) = preflight(&p, &req) else {
            panic!("not answered");
        };
        assert_eq!(
            answer.verdict,
            PreflightVerdict::MethodNotAllowed,
            "{refused}"
        );
        assert!(!has_cors_headers(&answer.response.headers), "{refused}");
    }
}

#[test]
fn preflight_refusals_carry_no_cors_headers() {
    let mut s = settings(&["https://a.example"]);
    s.allowed_headers = vec!["x-trace".to_owned()];
    let p = policy(&s);
    let cases = [
        (
            ("https://b.example", "GET", None),
            PreflightVerdict::OriginNotAllowed,
        ),
        (
            ("https://a.example", "DELETE", None),
            PreflightVerdict::MethodNotAllowed,
        ),
        (
            // Methods are case-sensitive.
            ("https://a.example", "get", None),
            PreflightVerdict::MethodNotAllowed,
        ),
        (
            ("https://a.example", "POST", Some("x-trace, authorization")),
            PreflightVerdict::HeadersNotAllowed,
        ),
    ];
    for ((origin, method, request_headers), expected) in cases {
        let mut headers = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if let Some(list) = request_headers {
            headers.push(("access-control-request-headers", list));
        }
        let Some(answer) = preflight(&p, &request(Method::OPTIONS, &headers)) else {
            panic!("not answered: {origin} {method}");
        };
        assert_eq!(answer.verdict, expected, "{origin} {method}");
        assert_eq!(answer.response.status, StatusCode::OK);
        assert!(
            !has_cors_headers(&answer.response.headers),
            "{origin} {method}: {:?}",
            answer.response.headers
        );
        assert!(vary(&answer.response.headers).contains(&"Origin"));
    }
    assert_eq!(
        PreflightVerdict::OriginNotAllowed.reason(),
        "CorsOriginNotAllowed"
    );
}

#[test]
fn non_preflight_requests_are_not_answered() {
    let p = policy(&settings(&["https://a.example"]));
    // OPTIONS without Access-Control-Request-Method: an ordinary OPTIONS for the backend.
    let req = request(Method::OPTIONS, &[("origin", "https://a.example")]);
    assert!(preflight(&p, &req).is_none());
    // No Origin.
    let req = request(Method::OPTIONS, &[("access-control-request-method", "GET")]);
    assert!(preflight(&p, &req).is_none());
    // Not OPTIONS.
    let req = request(
        Method::GET,
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    assert!(preflight(&p, &req).is_none());
}
