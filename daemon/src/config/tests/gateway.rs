//! `[[listener]]`, `[[api]]` and `[[product]]`.

use super::*;

#[test]
fn gateway_sections_with_defaults() {
    let config = parse_ok(&with_filter(
        "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = { cert = \"/etc/rampart/c.pem\", key = \"/etc/rampart/k.pem\" }\n\
         [[listener]]\naddress = \"[::1]:8080\"\nplain_http = true\n\
         [[product]]\nname = \"starter\"\nrate_limit = { calls = 5, period_secs = 60 }\n\
         [[api]]\nname = \"orders\"\npath_prefix = \"/orders\"\nbackend = \"http://127.0.0.1:9000/v1\"\nproducts = [\"starter\"]\n",
    ));
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:8443".parse().unwrap()
    );
    assert_eq!(
        config.listeners[0].transport,
        ListenerTransport::Tls {
            cert: "/etc/rampart/c.pem".into(),
            key: "/etc/rampart/k.pem".into(),
            sni: Vec::new(),
        }
    );
    assert_eq!(config.listeners[1].transport, ListenerTransport::PlainHttp);
    assert_eq!(
        config.products,
        [ProductConfig {
            name: "starter".into(),
            rate_limit: Some(RateLimitConfig {
                calls: 5,
                period_secs: 60
            }),
        }]
    );
    let api = &config.apis[0];
    assert_eq!(api.name, "orders");
    assert_eq!(api.host, None);
    assert_eq!(api.backend.as_str(), "http://127.0.0.1:9000/v1");
    assert_eq!(api.products, ["starter"]);
    assert_eq!(api.subscription, SubscriptionRequirement::Required);
    assert_eq!(api.subscription_key_header, "Ocp-Apim-Subscription-Key");
    assert_eq!(api.subscription_key_query, "subscription-key");
    assert!(!api.forward_subscription_key);
    assert_eq!(api.rate_limit, None);
    assert_eq!(api.cors, None);
    assert!(api.headers.request.is_empty() && api.headers.response.is_empty());
}

#[test]
fn api_with_every_key() {
    let config = parse_ok(&with_filter(
        "[[api]]\nname = \"a\"\nhost = \"api.example\"\npath_prefix = \"/\"\nbackend = \"https://b.example\"\n\
         subscription = \"optional\"\nsubscription_key_header = \"X-Key\"\nsubscription_key_query = \"key\"\n\
         forward_subscription_key = true\nrate_limit = { calls = 100, period_secs = 1 }\n\
         cors = { allowed_origins = [\"https://app.example\"] }\n\
         headers = { response = [{ name = \"Server\", action = \"remove\" }] }\n",
    ));
    let api = &config.apis[0];
    assert_eq!(api.host.as_deref(), Some("api.example"));
    assert_eq!(api.subscription, SubscriptionRequirement::Optional);
    assert_eq!(api.subscription_key_header, "X-Key");
    assert_eq!(api.subscription_key_query, "key");
    assert!(api.forward_subscription_key);
    assert_eq!(
        api.rate_limit,
        Some(RateLimitConfig {
            calls: 100,
            period_secs: 1
        })
    );
    assert_eq!(
        api.cors.as_ref().map(|c| c.allowed_origins.clone()),
        Some(vec!["https://app.example".to_owned()])
    );
    assert_eq!(api.headers.response.len(), 1);
}

#[test]
fn each_gateway_error_is_located() {
    let api = "name = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            with_filter("[[listener]]\naddress = \"127.0.0.1:443\"\n"),
            "t.toml:3:1: [[listener]] needs `tls = { cert = PATH, key = PATH }` (or `plain_http = true` for plain HTTP)",
        ),
        (
            with_filter("[[listener]]\naddress = \"127.0.0.1:80\"\nplain_http = false\n"),
            "t.toml:3:1: [[listener]] needs `tls = { cert = PATH, key = PATH }` (or `plain_http = true` for plain HTTP)",
        ),
        (
            with_filter(
                "[[listener]]\naddress = \"127.0.0.1:80\"\nplain_http = true\ntls = { cert = \"/c\", key = \"/k\" }\n",
            ),
            "t.toml:6:7: a listener has either `tls` or `plain_http = true`, not both",
        ),
        (
            with_filter("[[listener]]\naddress = \"localhost:443\"\nplain_http = true\n"),
            "t.toml:4:11: invalid `listener.address` \"localhost:443\": expected IP:PORT, e.g. \"0.0.0.0:443\" or \"[::]:443\"",
        ),
        (
            with_filter("[[listener]]\nplain_http = true\n"),
            "t.toml:3:1: `listener` needs `address`",
        ),
        (
            with_filter(
                "[[listener]]\naddress = \"127.0.0.1:443\"\ntls = { cert = \"c.pem\", key = \"/k\" }\n",
            ),
            "t.toml:5:16: `listener.tls.cert` must be an absolute path, not \"c.pem\"",
        ),
        (
            with_filter("[[listener]]\naddress = \"127.0.0.1:443\"\ntls = { cert = \"/c\" }\n"),
            "t.toml:5:7: `listener.tls` needs `key`",
        ),
        (
            with_filter(&format!("[[api]]\n{api}products = [\"gold\"]\n")),
            "t.toml:7:13: unknown product \"gold\": declare it with [[product]] name = \"gold\"",
        ),
        (
            with_filter(&format!("[[api]]\n{api}[[api]]\n{api}")),
            "t.toml:8:8: api name \"a\" appears twice",
        ),
        (
            with_filter("[[product]]\nname = \"p\"\n[[product]]\nname = \"p\"\n"),
            "t.toml:6:8: product name \"p\" appears twice",
        ),
        (
            with_filter("[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"ftp://b\"\n"),
            "t.toml:6:11: invalid `api.backend` \"ftp://b\": expected an http:// or https:// URL with a host",
        ),
        (
            with_filter("[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"not a url\"\n"),
            "t.toml:6:11: invalid `api.backend` \"not a url\": expected an http:// or https:// URL with a host",
        ),
        (
            with_filter("[[api]]\nname = \"a\"\npath_prefix = \"x\"\nbackend = \"http://b\"\n"),
            "t.toml:5:15: `api.path_prefix` must start with '/', not \"x\"",
        ),
        (
            with_filter("[[api]]\nname = \"a\"\nbackend = \"http://b\"\n"),
            "t.toml:3:1: `api` needs `path_prefix`",
        ),
        (
            with_filter(&format!("[[api]]\n{api}subscription = \"maybe\"\n")),
            "t.toml:7:16: invalid `api.subscription` \"maybe\": expected one of \"required\", \"optional\", \"none\"",
        ),
        (
            with_filter(&format!(
                "[[api]]\n{api}rate_limit = {{ calls = 0, period_secs = 1 }}\n"
            )),
            "t.toml:7:24: `api.rate_limit.calls` must be between 1 and 100000000, not 0",
        ),
        (
            with_filter(&format!("[[api]]\n{api}rate_limit = {{ calls = 5 }}\n")),
            "t.toml:7:14: `api.rate_limit` needs `calls` and `period_secs`",
        ),
        (
            with_filter(&format!(
                "[[api]]\n{api}subscription_key_header = \"bad header\"\n"
            )),
            "t.toml:7:27: invalid `api.subscription_key_header` \"bad header\": not a header name",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(single_error(&text), expected, "for:\n{text}");
    }
}

#[test]
fn invalid_cors_and_header_rules_are_reported_at_their_table() {
    let errors = parse_err(&with_filter(
        "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         cors = { allowed_origins = [\"not an origin\"] }\n\
         headers = { request = [{ name = \"bad name\" }] }\n",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("t.toml:7:8: invalid `api.cors`: "),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("t.toml:8:11: invalid `api.headers`: "),
        "{errors:#?}"
    );
}

#[test]
fn a_gateway_alone_needs_no_filter() {
    let config = parse_ok(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\nplain_http = true\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n",
    );
    assert_eq!(config.filter, None);
    assert_eq!(config.listeners.len(), 1);
}
