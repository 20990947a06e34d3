use http::{HeaderMap, HeaderValue};

use super::*;

fn rule(name: &str, action: HeaderAction, values: &[&str]) -> HeaderRuleSettings {
    HeaderRuleSettings {
        name: name.to_owned(),
        action,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn rules(settings: &HeaderRulesSettings) -> HeaderRules {
    match settings.validate() {
        Ok(rules) => rules,
        Err(errors) => panic!("rules should be valid: {errors:?}"),
    }
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

#[test]
fn toml_form_and_defaults() {
    let text = r#"
        [[request]]
        name = "X-Env"
        values = ["prod"]

        [[response]]
        name = "Server"
        action = "remove"
    "#;
    let parsed: HeaderRulesSettings = match toml::from_str(text) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(
        parsed.request,
        [rule("X-Env", HeaderAction::Set, &["prod"])]
    );
    assert_eq!(parsed.response, [rule("Server", HeaderAction::Remove, &[])]);
    assert!(
        toml::from_str::<HeaderRulesSettings>("[[request]]\nname = \"a\"\nvalue = \"b\"").is_err()
    );
    assert!(
        toml::from_str::<HeaderRulesSettings>("[[request]]\nname = \"a\"\naction = \"skip\"")
            .is_err()
    );
}

#[test]
fn request_set_append_remove() {
    let settings = HeaderRulesSettings {
        request: vec![
            rule("X-Env", HeaderAction::Set, &["prod"]),
            rule("x-tags", HeaderAction::Append, &["edge", "rampart"]),
            rule("Cookie", HeaderAction::Remove, &[]),
            rule("X-Multi", HeaderAction::Set, &["a", "b"]),
        ],
        response: Vec::new(),
    };
    let r = rules(&settings);
    let mut headers = HeaderMap::new();
    headers.append("x-env", HeaderValue::from_static("dev"));
    headers.append("x-env", HeaderValue::from_static("test"));
    headers.append("x-tags", HeaderValue::from_static("client"));
    headers.append("cookie", HeaderValue::from_static("session=1"));
    headers.append("accept", HeaderValue::from_static("*/*"));

    r.apply_request(&mut headers);
    assert_eq!(values(&headers, "x-env"), ["prod"]);
    assert_eq!(values(&headers, "x-tags"), ["client", "edge", "rampart"]);
    assert!(headers.get("cookie").is_none());
    assert_eq!(values(&headers, "x-multi"), ["a", "b"]);
    assert_eq!(values(&headers, "accept"), ["*/*"]);

    // Response rules are separate.
    let mut response = HeaderMap::new();
    response.insert("cookie", HeaderValue::from_static("kept"));
    r.apply_response(&mut response);
    assert_eq!(values(&response, "cookie"), ["kept"]);
}

#[test]
fn request_set_and_remove_drop_the_look_alikes_with_underscores() {
    let settings = HeaderRulesSettings {
        request: vec![
            rule("X-Added", HeaderAction::Set, &["a", "b"]),
            rule("X-Remove", HeaderAction::Remove, &[]),
            rule("X_Legacy_User", HeaderAction::Remove, &[]),
            rule("X-Tags", HeaderAction::Append, &["edge"]),
        ],
        response: vec![rule("X-Remove", HeaderAction::Remove, &[])],
    };
    let r = rules(&settings);
    let mut headers = HeaderMap::new();
    // CGI-style servers (PHP, Rack) read each of these as the rule's header.
    headers.append("x_added", HeaderValue::from_static("forged"));
    headers.append("x_remove", HeaderValue::from_static("look"));
    headers.append("x-remove", HeaderValue::from_static("real"));
    headers.append("x-legacy_user", HeaderValue::from_static("admin"));
    headers.append("x-legacy-user", HeaderValue::from_static("admin"));
    headers.append("x_tags", HeaderValue::from_static("client"));
    headers.append("x_other", HeaderValue::from_static("kept"));

    r.apply_request(&mut headers);
    assert_eq!(values(&headers, "x-added"), ["a", "b"]);
    for gone in [
        "x_added",
        "x_remove",
        "x-remove",
        "x-legacy_user",
        "x-legacy-user",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} should be gone");
    }
    // `append` keeps what the client sent, look-alikes included; others pass.
    assert_eq!(values(&headers, "x_tags"), ["client"]);
    assert_eq!(values(&headers, "x-tags"), ["edge"]);
    assert_eq!(values(&headers, "x_other"), ["kept"]);

    // Responses go to clients, which read names as they are.
    let mut response = HeaderMap::new();
    response.insert("x_remove", HeaderValue::from_static("kept"));
    r.apply_response(&mut response);
    assert_eq!(values(&response, "x_remove"), ["kept"]);
}

#[test]
fn response_scrubbing_of_server_and_powered_by() {
    let settings = HeaderRulesSettings {
        request: Vec::new(),
        response: vec![
            rule("Server", HeaderAction::Remove, &[]),
            rule("X-Powered-By", HeaderAction::Remove, &[]),
            rule(
                "Strict-Transport-Security",
                HeaderAction::Set,
                &["max-age=31536000"],
            ),
        ],
    };
    let r = rules(&settings);
    let mut headers = HeaderMap::new();
    headers.insert("server", HeaderValue::from_static("nginx/1.22.1"));
    headers.insert("x-powered-by", HeaderValue::from_static("PHP/8.2"));
    headers.insert("content-type", HeaderValue::from_static("text/html"));
    r.apply_response(&mut headers);
    assert!(headers.get("server").is_none());
    assert!(headers.get("x-powered-by").is_none());
    assert_eq!(
        values(&headers, "strict-transport-security"),
        ["max-age=31536000"]
    );
    assert_eq!(values(&headers, "content-type"), ["text/html"]);
}

#[test]
fn forbidden_headers_are_refused_per_side() {
    let forbidden_both = [
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Content-Encoding",
    ];
    for name in forbidden_both {
        for side in [Side::Request, Side::Response] {
            let r = HeaderName::from_bytes(name.as_bytes());
            let Ok(header) = r else { panic!("{name}") };
            assert!(forbidden_reason(side, &header).is_some(), "{side} {name}");
        }
    }
    let settings = HeaderRulesSettings {
        request: vec![
            rule("Host", HeaderAction::Set, &["internal.example"]),
            rule("X-Forwarded-For", HeaderAction::Set, &["10.0.0.1"]),
            rule("Forwarded", HeaderAction::Remove, &[]),
            // Allowed on the request side.
            rule("Access-Control-Allow-Origin", HeaderAction::Remove, &[]),
        ],
        response: vec![
            rule("Access-Control-Allow-Origin", HeaderAction::Set, &["*"]),
            rule("Transfer-Encoding", HeaderAction::Remove, &[]),
            // Allowed on the response side.
            rule("Host", HeaderAction::Remove, &[]),
        ],
    };
    let errors = settings.validate().err().unwrap_or_default();
    let forbidden: Vec<(Side, usize, &str)> = errors
        .iter()
        .filter_map(|e| match e {
            HeaderRuleError::Forbidden {
                side, index, name, ..
            } => Some((*side, *index, name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        forbidden,
        [
            (Side::Request, 1, "host"),
            (Side::Request, 2, "x-forwarded-for"),
            (Side::Request, 3, "forwarded"),
            (Side::Response, 1, "access-control-allow-origin"),
            (Side::Response, 2, "transfer-encoding"),
        ]
    );
    assert_eq!(errors.len(), 5);
    assert_eq!(
        errors[0].to_string(),
        "request header rule 1: host cannot be changed by a rule: routing is decided on the client's Host"
    );
}

#[test]
fn invalid_names_and_values_are_clear_and_do_not_echo_values() {
    let settings = HeaderRulesSettings {
        request: vec![
            rule("Bad Header", HeaderAction::Set, &["x"]),
            rule(
                "X-Token",
                HeaderAction::Set,
                &["ok", "secret\r\nInjected: 1"],
            ),
            rule("X-Empty", HeaderAction::Append, &[]),
            rule("X-Gone", HeaderAction::Remove, &["value"]),
            rule("X-Utf8", HeaderAction::Set, &["café"]),
        ],
        response: Vec::new(),
    };
    let errors = settings.validate().err().unwrap_or_default();
    assert_eq!(
        errors,
        [
            HeaderRuleError::InvalidName {
                side: Side::Request,
                index: 1,
                name: "Bad Header".to_owned()
            },
            HeaderRuleError::InvalidValue {
                side: Side::Request,
                index: 2,
                name: "x-token".to_owned(),
                value_index: 2
            },
            HeaderRuleError::MissingValue {
                side: Side::Request,
                index: 3,
                name: "x-empty".to_owned(),
                action: HeaderAction::Append
            },
            HeaderRuleError::ValuesOnRemove {
                side: Side::Request,
                index: 4,
                name: "x-gone".to_owned()
            },
            HeaderRuleError::InvalidValue {
                side: Side::Request,
                index: 5,
                name: "x-utf8".to_owned(),
                value_index: 1
            },
        ]
    );
    for error in &errors {
        let text = error.to_string();
        assert!(!text.contains("secret"), "{text}");
    }
    assert!(
        errors[1]
            .to_string()
            .contains("value 2 is not a valid header value")
    );
}

#[test]
fn debug_output_hides_values() {
    let setting = rule("Authorization", HeaderAction::Set, &["Bearer s3cr3t"]);
    let text = format!("{setting:?}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("1 redacted"), "{text}");

    let compiled = rules(&HeaderRulesSettings {
        request: vec![setting],
        response: Vec::new(),
    });
    let text = format!("{compiled:?}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("authorization"), "{text}");
    assert!(!compiled.is_empty());
    assert!(HeaderRules::default().is_empty());
}
