//! `[[listener]]`, `[[api]]` and `[[product]]`.

use std::time::Duration;

use super::*;
use crate::policy::keys::{Scope, SubscriptionState};

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
            client_auth: ClientAuthConfig::None,
        }
    );
    assert_eq!(config.listeners[1].transport, ListenerTransport::PlainHttp);
    assert_eq!(
        config.products,
        [ProductConfig {
            name: "starter".into(),
            rate_limit: Some(RateLimitConfig::new(5, 60)),
            quota: None,
        }]
    );
    let api = &config.apis[0];
    assert_eq!(api.name, "orders");
    assert_eq!(api.host, None);
    // Every TLS listener, not the plain one.
    assert_eq!(api.listeners, ["127.0.0.1:8443".parse().unwrap()]);
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

/// Two TLS listeners trusting different client CAs, a plain one, and `apis`.
fn three_listeners(apis: &str) -> String {
    with_filter(&format!(
        "[[listener]]\naddress = \"127.0.0.1:8443\"\n\
         tls = {{ cert = \"/c.pem\", key = \"/k.pem\", client_auth = \"optional\", client_ca = \"/internal-ca.pem\" }}\n\
         [[listener]]\naddress = \"127.0.0.1:9443\"\n\
         tls = {{ cert = \"/c.pem\", key = \"/k.pem\", client_auth = \"required\", client_ca = \"/partner-ca.pem\" }}\n\
         [[listener]]\naddress = \"127.0.0.1:8080\"\nplain_http = true\n{apis}"
    ))
}

#[test]
fn apis_are_served_on_the_listeners_they_name_or_every_tls_one() {
    let config = parse_ok(&three_listeners(
        "[[api]]\nname = \"all\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         [[api]]\nname = \"health\"\npath_prefix = \"/health\"\nbackend = \"http://b\"\n\
         subscription = \"none\"\nlisteners = [\"127.0.0.1:8080\", \"127.0.0.1:8443\"]\n\
         [[api]]\nname = \"internal\"\npath_prefix = \"/i\"\nbackend = \"http://b\"\n\
         listeners = [\"127.0.0.1:8443\"]\nclient_certificate = { identities = [{ common_name = \"alice\" }] }\n\
         [[api]]\nname = \"partner\"\npath_prefix = \"/i\"\nbackend = \"http://b\"\n\
         listeners = [\"127.0.0.1:9443\"]\nclient_certificate = {}\n\
         [[api]]\nname = \"pinned\"\npath_prefix = \"/p\"\nbackend = \"http://b\"\n\
         client_certificate = { identities = [{ common_name = \"alice\", issuer_thumbprint = \"AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD\" }] }\n",
    ));
    let served = |name: &str| {
        config
            .apis
            .iter()
            .find(|api| api.name == name)
            .unwrap()
            .listeners
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(served("all"), ["127.0.0.1:8443", "127.0.0.1:9443"]);
    assert_eq!(served("health"), ["127.0.0.1:8080", "127.0.0.1:8443"]);
    assert_eq!(served("internal"), ["127.0.0.1:8443"]);
    assert_eq!(served("partner"), ["127.0.0.1:9443"]);
    assert_eq!(served("pinned"), ["127.0.0.1:8443", "127.0.0.1:9443"]);
}

#[test]
fn api_listeners_must_name_listeners_and_keep_client_cas_apart() {
    let errors = parse_err(&three_listeners(
        "[[api]]\nname = \"a\"\npath_prefix = \"/a\"\nbackend = \"http://b\"\n\
         listeners = [\"127.0.0.1:7443\", \"localhost:8443\", \"127.0.0.1:8443\", \"127.0.0.1:8443\"]\n\
         [[api]]\nname = \"b\"\npath_prefix = \"/b\"\nbackend = \"http://b\"\nlisteners = []\n\
         [[api]]\nname = \"c\"\npath_prefix = \"/c\"\nbackend = \"http://b\"\n\
         client_certificate = { identities = [{ common_name = \"alice\" }] }\n\
         [[api]]\nname = \"d\"\npath_prefix = \"/d\"\nbackend = \"http://b\"\n\
         listeners = [\"127.0.0.1:8443\", \"127.0.0.1:9443\", \"127.0.0.1:8080\"]\nclient_certificate = {}\n",
    ));
    let known = "127.0.0.1:8443, 127.0.0.1:9443, 127.0.0.1:8080";
    let cas = "`api.client_certificate` is checked on listeners that trust different client CAs \
               (127.0.0.1:8443: /internal-ca.pem; 127.0.0.1:9443: /partner-ca.pem): a certificate \
               from either CA with a matching name would pass; serve the API on one of them with \
               `listeners = [...]`, or pin every identity's issuer with `issuer_thumbprint`";
    assert_eq!(
        errors,
        [
            format!(
                "t.toml:16:14: `api.listeners` names \"127.0.0.1:7443\", which is not the address \
                 of a [[listener]] (written as in its `address`: {known})"
            ),
            format!(
                "t.toml:16:32: `api.listeners` names \"localhost:8443\", which is not the address \
                 of a [[listener]] (written as in its `address`: {known})"
            ),
            "t.toml:16:68: `api.listeners` names 127.0.0.1:8443 twice".to_owned(),
            "t.toml:21:13: `api.listeners` is empty: name at least one [[listener]] address, or \
             leave the key out to serve the API on every TLS listener"
                .to_owned(),
            format!("t.toml:26:22: {cas}"),
            format!("t.toml:32:22: {cas}"),
        ]
    );
    // Plain HTTP alone serves only the APIs that name it.
    assert_eq!(
        single_error(
            "[[listener]]\naddress = \"127.0.0.1:8080\"\nplain_http = true\n\
             [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n"
        ),
        "t.toml:4:1: this [[api]] is served by no listener: without `listeners` an API is \
         served on every TLS listener, and there is none; name the plain-HTTP listeners that \
         serve it, e.g. listeners = [\"127.0.0.1:8080\"]"
    );
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
    assert_eq!(api.rate_limit, Some(RateLimitConfig::new(100, 1)));
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
            with_filter(
                "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://u:pw@b/\"\n",
            ),
            "t.toml:6:11: invalid `api.backend`: a user name or password in the URL is never sent to the backend (and would show wherever the URL does); authenticate with `backend_auth` (a bearer token file, a client certificate or OAuth2)",
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
            with_filter(
                "[[api]]\nname = \"a\"\npath_prefix = \"/v1/../admin\"\nbackend = \"http://b\"\n",
            ),
            "t.toml:5:15: `api.path_prefix` \"/v1/../admin\" is not in the normal form requests are routed by; write \"/admin\"",
        ),
        (
            with_filter(
                "[[api]]\nname = \"a\"\npath_prefix = \"//%61pi\"\nbackend = \"http://b\"\n",
            ),
            "t.toml:5:15: `api.path_prefix` \"//%61pi\" is not in the normal form requests are routed by; write \"/api\"",
        ),
        (
            with_filter("[[api]]\nname = \"a\"\npath_prefix = \"/a%00\"\nbackend = \"http://b\"\n"),
            "t.toml:5:15: `api.path_prefix` \"/a%00\" contains an encoded NUL",
        ),
        (
            with_filter(
                "[[api]]\nname = \"a\"\npath_prefix = \"/a;v=1\"\nbackend = \"http://b\"\n",
            ),
            "t.toml:5:15: `api.path_prefix` \"/a;v=1\" contains a path parameter (;), which routing reads past",
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
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         listeners = [\"127.0.0.1:8080\"]\n",
    );
    assert_eq!(config.filter, None);
    assert_eq!(config.listeners.len(), 1);
}

const HASH_A: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
const HASH_B: &str = "bb00000000000000000000000000000000000000000000000000000000000002";

#[test]
fn gateway_section_quotas_subscriptions_and_api_extras() {
    let config = parse_ok(&format!(
        "[gateway]\nmax_header_bytes = 8192\nmax_body_bytes = 1048576\nmax_connections = 50\n\
         header_read_timeout_secs = 3\nidle_timeout_secs = 20\nrequest_timeout_secs = 40\n\
         max_concurrent_streams = 10\ndrain_timeout_secs = 5\n\
         trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nbackend_ca = [\"/etc/ca.pem\"]\nworker_threads = 2\naccess_log = \"errors\"\nallow_encoded_slashes = true\n\
         lingering_timeout_secs = 0\nlingering_time_secs = 7\nipv6_client_prefix = 96\n\
         [[listener]]\naddress = \"127.0.0.1:8080\"\nplain_http = true\n\
         [[product]]\nname = \"gold\"\nquota = {{ calls = 1000, kilobytes = 5000, period_secs = 86400 }}\n\
         [[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\nproducts = [\"gold\"]\n\
         listeners = [\"127.0.0.1:8080\"]\n\
         rate_limit = {{ calls = 10, period_secs = 1, counter = \"header:X-Tenant\", algorithm = \"token_bucket\", remaining_header = \"X-RateLimit-Remaining\", total_header = \"X-RateLimit-Limit\" }}\n\
         quota = {{ calls = 5, period_secs = 0, counter = \"ip\" }}\n\
         validation = {{ content_types = [\"application/json\"], max_body_bytes = 2048 }}\n\
         backend_protocol = \"http2\"\ntimeouts = {{ connect_secs = 2, response_secs = 7, pool_idle_secs = 9 }}\n\
         [[subscription]]\nname = \"partner\"\nscope = \"product:gold\"\nstate = \"suspended\"\n\
         primary_key_sha256 = \"{HASH_A}\"\nsecondary_key_sha256 = \"{}\"\n",
        HASH_B.to_uppercase()
    ));
    let g = &config.gateway;
    assert_eq!(g.max_header_bytes, 8192);
    assert_eq!(g.max_body_bytes, 1_048_576);
    assert_eq!(g.max_connections, 50);
    // Not given: a quarter of max_connections, since that is less than 256.
    assert_eq!(g.max_connections_per_source, 12);
    assert_eq!(g.max_backend_requests, 10_000);
    assert_eq!(g.header_read_timeout, Duration::from_secs(3));
    assert_eq!(g.idle_timeout, Duration::from_secs(20));
    assert_eq!(g.request_timeout, Duration::from_secs(40));
    assert_eq!(g.max_concurrent_streams, 10);
    assert_eq!(g.drain_timeout, Duration::from_secs(5));
    assert_eq!(g.trusted_proxies.len(), 2);
    assert_eq!(g.backend_ca, [std::path::PathBuf::from("/etc/ca.pem")]);
    assert_eq!(g.worker_threads, 2);
    assert!(g.allow_encoded_slashes);
    assert_eq!(g.lingering_timeout, Duration::ZERO);
    assert_eq!(g.lingering_time, Duration::from_secs(7));
    assert_eq!(g.ipv6_client_prefix, 96);
    assert_eq!(g.access_log, AccessLogConfig::Errors);

    assert_eq!(
        config.products[0].quota,
        Some(QuotaConfig {
            calls: Some(1000),
            kilobytes: Some(5000),
            period_secs: 86_400,
            counter: CounterConfig::Subscription,
        })
    );
    let api = &config.apis[0];
    let limit = api.rate_limit.as_ref().unwrap();
    assert_eq!(limit.counter, CounterConfig::Header("x-tenant".into()));
    assert_eq!(limit.algorithm, RateLimitAlgorithm::TokenBucket);
    assert_eq!(
        limit.remaining_header.as_deref(),
        Some("X-RateLimit-Remaining")
    );
    assert_eq!(limit.total_header.as_deref(), Some("X-RateLimit-Limit"));
    let quota = api.quota.as_ref().unwrap();
    assert_eq!(
        (quota.calls, quota.kilobytes, quota.period_secs),
        (Some(5), None, 0)
    );
    assert_eq!(quota.counter, CounterConfig::ClientIp);
    let validation = api.validation.as_ref().unwrap();
    assert_eq!(validation.content_types, ["application/json"]);
    assert_eq!(validation.max_body_bytes, 2048);
    assert_eq!(api.backend_protocol, BackendProtocolConfig::Http2);
    assert_eq!(api.timeouts.connect, Duration::from_secs(2));
    assert_eq!(api.timeouts.response, Duration::from_secs(7));
    assert_eq!(api.timeouts.pool_idle, Duration::from_secs(9));

    let sub = &config.subscriptions[0];
    assert_eq!(sub.name, "partner");
    assert_eq!(sub.scope, Scope::Product("gold".into()));
    assert_eq!(sub.state, SubscriptionState::Suspended);
    assert_eq!(sub.primary.to_hex(), HASH_A);
    assert_eq!(sub.secondary.to_hex(), HASH_B);
}

#[test]
fn connection_and_backend_request_limits() {
    let gateway = |keys: &str| parse_ok(&with_filter(&format!("[gateway]\n{keys}"))).gateway;
    let defaults = GatewayConfig::default();
    assert_eq!(defaults.max_connections_per_source, 256);
    assert_eq!(defaults.max_backend_requests, 10_000);
    assert_eq!(
        gateway("max_connections = 2\n").max_connections_per_source,
        1
    );
    assert_eq!(
        gateway("max_connections = 2000\n").max_connections_per_source,
        256
    );
    let given = gateway(
        "max_connections = 50\nmax_connections_per_source = 0\nmax_backend_requests = 64\n",
    );
    assert_eq!(
        (given.max_connections_per_source, given.max_backend_requests),
        (0, 64)
    );
    assert_eq!(
        single_error(&with_filter("[gateway]\nmax_backend_requests = 0\n")),
        "t.toml:4:24: `gateway.max_backend_requests` must be between 1 and 1000000, not 0"
    );
    assert_eq!(
        single_error(&with_filter("[gateway]\nmax_connections_per_source = -1\n")),
        "t.toml:4:30: `gateway.max_connections_per_source` must be between 0 and 1000000, not -1"
    );
    // A quarter of max_backend_requests unless given; 0: no cap.
    assert_eq!(defaults.max_backend_requests_per_source, 2_500);
    assert_eq!(given.max_backend_requests_per_source, 16);
    assert_eq!(
        gateway("max_backend_requests = 3\n").max_backend_requests_per_source,
        1
    );
    assert_eq!(
        gateway("max_backend_requests_per_source = 0\n").max_backend_requests_per_source,
        0
    );
    assert_eq!(
        single_error(&with_filter(
            "[gateway]\nmax_backend_requests_per_source = -1\n"
        )),
        "t.toml:4:35: `gateway.max_backend_requests_per_source` must be between 0 and 1000000, not -1"
    );
}

#[test]
fn defaults_of_the_new_sections() {
    let config = parse_ok(&with_filter(
        "[[product]]\nname = \"p\"\n[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         rate_limit = { calls = 1, period_secs = 1 }\n",
    ));
    assert_eq!(config.gateway, GatewayConfig::default());
    // IPv6 clients are counted per /64 unless configured.
    assert_eq!(config.gateway.ipv6_client_prefix, 64);
    let api = &config.apis[0];
    assert_eq!(api.rate_limit, Some(RateLimitConfig::new(1, 1)));
    assert_eq!(
        api.rate_limit.as_ref().unwrap().algorithm,
        RateLimitAlgorithm::SlidingWindow
    );
    assert_eq!(api.quota, None);
    assert_eq!(api.validation, None);
    assert_eq!(api.timeouts, BackendTimeoutsConfig::default());
    assert!(config.subscriptions.is_empty());
}

#[test]
fn new_keys_are_checked_with_located_errors() {
    let api = "name = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n";
    let sub = |extra: &str| {
        with_filter(&format!(
            "[[api]]\n{api}[[subscription]]\nname = \"s\"\nprimary_key_sha256 = \"{HASH_A}\"\n{extra}"
        ))
    };
    let cases = [
        (
            with_filter(&format!(
                "[[api]]\n{api}rate_limit = {{ calls = 1, period_secs = 1, counter = \"cookie\" }}\n"
            )),
            "t.toml:7:54: invalid `api.rate_limit.counter` \"cookie\": expected \"subscription\", \"ip\", \"header:NAME\" or \"claim:NAME\"",
        ),
        (
            with_filter(&format!(
                "[[api]]\n{api}rate_limit = {{ calls = 1, period_secs = 1, algorithm = \"leaky\" }}\n"
            )),
            "t.toml:7:56: invalid `api.rate_limit.algorithm` \"leaky\": expected one of \"sliding_window\", \"token_bucket\"",
        ),
        (
            with_filter(&format!("[[api]]\n{api}quota = {{ period_secs = 60 }}\n")),
            "t.toml:7:9: `api.quota` needs `period_secs` and `calls`, `kilobytes` or both",
        ),
        (
            with_filter(&format!(
                "[[api]]\n{api}quota = {{ calls = -1, period_secs = 60 }}\n"
            )),
            "t.toml:7:19: `api.quota.calls` must be between 1 and 281474976710656, not -1",
        ),
        (
            with_filter(&format!("[[api]]\n{api}backend_protocol = \"h3\"\n")),
            "t.toml:7:20: invalid `api.backend_protocol` \"h3\": expected one of \"auto\", \"http2\"",
        ),
        (
            with_filter(&format!(
                "[[api]]\n{api}timeouts = {{ connect_secs = 0 }}\n"
            )),
            "t.toml:7:29: `api.timeouts.connect_secs` must be between 1 and 300, not 0",
        ),
        (
            with_filter("[gateway]\nmax_header_bytes = 10\n"),
            "t.toml:4:20: `gateway.max_header_bytes` must be between 1024 and 1048576, not 10",
        ),
        (
            with_filter("[gateway]\nlingering_time_secs = 0\n"),
            "t.toml:4:23: `gateway.lingering_time_secs` must be between 1 and 3600, not 0",
        ),
        (
            with_filter("[gateway]\nipv6_client_prefix = 16\n"),
            "t.toml:4:22: `gateway.ipv6_client_prefix` must be between 32 and 128, not 16",
        ),
        (
            with_filter("[gateway]\nipv6_client_prefix = 129\n"),
            "t.toml:4:22: `gateway.ipv6_client_prefix` must be between 32 and 128, not 129",
        ),
        (
            with_filter("[gateway]\ntrusted_proxies = [\"nope\"]\n"),
            "t.toml:4:20: invalid `gateway.trusted_proxies` entry \"nope\": ",
        ),
        (
            sub(&format!("secondary_key_sha256 = \"{HASH_A}\"\n")),
            "t.toml:10:24: this key hash is used twice: every subscription key must be different",
        ),
        (
            sub("secondary_key_sha256 = \"my-plain-key\"\n"),
            "t.toml:10:24: invalid `subscription.secondary_key_sha256`: expected the key's SHA-256 as 64 hex digits (e.g. `printf %s KEY | sha256sum`), never the key itself",
        ),
        (
            sub(&format!(
                "secondary_key_sha256 = \"{HASH_B}\"\nscope = \"product:none\"\n"
            )),
            "t.toml:11:9: invalid `subscription.scope` \"product:none\": expected \"all\", \"product:NAME\" or \"api:NAME\" naming a declared product or API",
        ),
        (
            sub(&format!(
                "secondary_key_sha256 = \"{HASH_B}\"\nstate = \"paused\"\n"
            )),
            "t.toml:11:9: invalid `subscription.state` \"paused\": expected one of \"active\", \"suspended\", \"cancelled\"",
        ),
        (
            sub(""),
            "t.toml:7:1: `subscription` needs `secondary_key_sha256`",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .map(|(text, expected)| (single_error(text), expected))
        .filter(|(error, expected)| !error.starts_with(*expected))
        .map(|(error, expected)| format!("got:      {error}\nexpected: {expected}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn validation_settings_errors_are_reported() {
    let errors = parse_err(&with_filter(
        "[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n\
         validation = { content_types = [\"json\"], json_schema_file = \"/nonexistent/s.json\" }\n",
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("t.toml:7:14: invalid `api.validation`: content_types"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("cannot be read"), "{errors:#?}");
}
