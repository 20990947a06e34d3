//! `[[jwt_provider]]` and `[[api]] jwt`: what a correct file yields, and where a
//! wrong one is reported.

use super::*;

/// 32 bytes ("0123456789abcdef" twice), standard base64: the shortest accepted secret.
const SECRET_32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// 16 bytes ("0123456789abcdef"): too short.
const SECRET_16: &str = "MDEyMzQ1Njc4OWFiY2RlZg==";

/// An HMAC provider named `name` (4 lines).
fn hs_provider(name: &str) -> String {
    format!(
        "[[jwt_provider]]\nname = \"{name}\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_base64 = \"{SECRET_32}\" }}]\n"
    )
}

/// An API (5 lines) whose last line is `last` (a `jwt = ...` or `rate_limit = ...` line).
fn api_with(last: &str) -> String {
    format!("[[api]]\nname = \"a\"\npath_prefix = \"/\"\nbackend = \"http://b\"\n{last}\n")
}

/// `file:line:col` of the first occurrence of `needle` in `text` (1-based), as the
/// diagnostics write it.
fn at(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    format!("{FILE}:{line}:{col}")
}

#[test]
fn full_provider_and_api_jwt_parse() {
    let config = parse_ok(&with_filter(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\", \"PS256\"]\n\
         jwks_url = \"https://idp.example/tenant/keys\"\n\
         issuers = [\"https://idp.example/tenant\"]\naudiences = [\"api://orders\"]\n\
         required_claims = [{ name = \"tid\", values = [\"t1\"] }]\n\
         clock_skew_secs = 30\nmax_token_bytes = 4096\nfailed_status = 403\nfailure_message = \"no\"\n\
         [[api]]\nname = \"orders\"\npath_prefix = \"/orders\"\nbackend = \"http://127.0.0.1:9000/\"\n\
         subscription = \"none\"\n\
         jwt = { provider = \"corp\", roles = [\
           { methods = [\"post\", \"Put\", \"DELETE\"], values = [\"API.Write\", \"API.Admin\"], match = \"all\" }, \
           { values = [\"API.Read\"] }, \
           { methods = [\"GET\"], values = [\"x\"], match = \"any\" }\
         ], claims_to_headers = [\
           { claim = \"oid\", header = \"X-User-Id\", default = \"anonymous\" }, \
           { claim = \"tid\", header = \"X-Tenant\" }] }\n\
         rate_limit = { calls = 2, period_secs = 60, counter = \"claim:sub\" }\n\
         quota = { calls = 100, period_secs = 3600, counter = \"claim:oid\" }\n",
    ));
    assert_eq!(config.jwt_providers.len(), 1);
    let provider = &config.jwt_providers[0];
    assert_eq!(provider.name, "corp");
    assert_eq!(provider.algorithms, ["RS256", "PS256"]);
    assert_eq!(
        provider.jwks_url.as_deref(),
        Some("https://idp.example/tenant/keys")
    );
    assert_eq!(provider.issuers, ["https://idp.example/tenant"]);
    assert_eq!(provider.audiences, ["api://orders"]);
    assert_eq!(provider.clock_skew_secs, 30);
    assert_eq!(provider.max_token_bytes, 4096);
    assert_eq!(provider.failed_status, 403);
    assert_eq!(provider.failure_message.as_deref(), Some("no"));

    let api = &config.apis[0];
    assert_eq!(
        api.jwt,
        Some(ApiJwtConfig {
            provider: "corp".to_owned(),
            roles_claim: "roles".to_owned(),
            roles: vec![
                RoleRule {
                    methods: vec!["POST".into(), "PUT".into(), "DELETE".into()],
                    values: vec!["API.Write".into(), "API.Admin".into()],
                    all: true,
                },
                RoleRule {
                    methods: vec![],
                    values: vec!["API.Read".into()],
                    all: false,
                },
                RoleRule {
                    methods: vec!["GET".into()],
                    values: vec!["x".into()],
                    all: false,
                },
            ],
            claims_to_headers: vec![
                ClaimHeader {
                    claim: "oid".into(),
                    header: "x-user-id".into(),
                    default: Some("anonymous".into()),
                },
                ClaimHeader {
                    claim: "tid".into(),
                    header: "x-tenant".into(),
                    default: None,
                },
            ],
        })
    );
    let rate_limit = api.rate_limit.as_ref().unwrap();
    assert_eq!(rate_limit.counter, CounterConfig::Claim("sub".into()));
    assert_eq!((rate_limit.calls, rate_limit.period_secs), (2, 60));
    assert_eq!(
        api.quota.as_ref().unwrap().counter,
        CounterConfig::Claim("oid".into())
    );
}

#[test]
fn minimal_api_jwt_takes_the_defaults() {
    let config = parse_ok(&with_filter(&format!(
        "{}{}",
        hs_provider("corp"),
        api_with("jwt = { provider = \"corp\" }")
    )));
    assert_eq!(config.jwt_providers.len(), 1);
    assert_eq!(config.jwt_providers[0].max_token_bytes, 8192);
    assert_eq!(config.jwt_providers[0].failed_status, 401);
    assert_eq!(
        config.apis[0].jwt,
        Some(ApiJwtConfig {
            provider: "corp".into(),
            roles_claim: "roles".into(),
            roles: vec![],
            claims_to_headers: vec![],
        })
    );
    // Without `jwt`, an API has none, even with providers declared.
    let config = parse_ok(&with_filter(&format!(
        "{}{}",
        hs_provider("corp"),
        api_with("subscription = \"none\"")
    )));
    assert_eq!(config.apis[0].jwt, None);
}

#[test]
fn roles_claim_can_be_renamed() {
    let config = parse_ok(&with_filter(&format!(
        "{}{}",
        hs_provider("corp"),
        api_with(
            "jwt = { provider = \"corp\", roles_claim = \"scp\", roles = [{ values = [\"a\", \"b\"], match = \"all\" }] }"
        )
    )));
    let jwt = config.apis[0].jwt.as_ref().unwrap();
    assert_eq!(jwt.roles_claim, "scp");
    assert_eq!(
        jwt.roles,
        [RoleRule {
            methods: vec![],
            values: vec!["a".into(), "b".into()],
            all: true,
        }]
    );
}

#[test]
fn claim_counters_parse_and_an_empty_claim_name_is_refused() {
    for (counter, expected) in [
        ("claim:sub", CounterConfig::Claim("sub".into())),
        ("claim:oid", CounterConfig::Claim("oid".into())),
        ("ip", CounterConfig::ClientIp),
        ("subscription", CounterConfig::Subscription),
    ] {
        let config = parse_ok(&with_filter(&format!(
            "{}{}",
            hs_provider("corp"),
            api_with(&format!(
                "jwt = {{ provider = \"corp\" }}\n\
                 rate_limit = {{ calls = 2, period_secs = 60, counter = \"{counter}\" }}"
            ))
        )));
        assert_eq!(
            config.apis[0].rate_limit.as_ref().unwrap().counter,
            expected,
            "{counter}"
        );
    }

    let text = with_filter(&api_with(
        "rate_limit = { calls = 2, period_secs = 60, counter = \"claim:\" }",
    ));
    assert_eq!(
        single_error(&text),
        format!(
            "{}: invalid `api.rate_limit.counter` \"claim:\": expected \"subscription\", \"ip\", \"header:NAME\" or \"claim:NAME\"",
            at(&text, "\"claim:\"")
        )
    );
    let text = with_filter(&api_with(
        "quota = { calls = 2, period_secs = 60, counter = \"claim:\" }",
    ));
    assert_eq!(
        single_error(&text),
        format!(
            "{}: invalid `api.quota.counter` \"claim:\": expected \"subscription\", \"ip\", \"header:NAME\" or \"claim:NAME\"",
            at(&text, "\"claim:\"")
        )
    );
}

#[test]
fn a_claim_counter_without_a_token_to_count_by_is_refused_where_written() {
    // On the API itself.
    for policy in ["rate_limit", "quota"] {
        let text = with_filter(&api_with(&format!(
            "{policy} = {{ calls = 2, period_secs = 60, counter = \"claim:sub\" }}"
        )));
        assert_eq!(
            single_error(&text),
            format!(
                "{}: invalid `api.{policy}.counter` \"claim:sub\": the API has no `jwt` to take the claim from, so every call would be counted by client address",
                at(&text, "\"claim:sub\"")
            )
        );
    }

    // On a product, one of whose APIs has no `jwt`.
    let product = |policy: &str, open_api_jwt: &str| {
        with_filter(&format!(
            "{}[[product]]\nname = \"gold\"\n\
             {policy} = {{ calls = 2, period_secs = 60, counter = \"claim:oid\" }}\n\
             [[api]]\nname = \"signed\"\npath_prefix = \"/s\"\nbackend = \"http://b\"\n\
             products = [\"gold\"]\njwt = {{ provider = \"corp\" }}\n\
             [[api]]\nname = \"open\"\npath_prefix = \"/o\"\nbackend = \"http://b\"\n\
             products = [\"gold\"]\n{open_api_jwt}",
            hs_provider("corp")
        ))
    };
    for policy in ["rate_limit", "quota"] {
        let text = product(policy, "");
        assert_eq!(
            single_error(&text),
            format!(
                "{}: invalid `product.{policy}.counter` \"claim:oid\": product \"gold\" counts by a token claim, but its API \"open\" has no `jwt`, so its calls would be counted by client address",
                at(&text, "\"claim:oid\"")
            )
        );
        // With a token on every API of the product, it counts by the claim.
        let config = parse_ok(&product(policy, "jwt = { provider = \"corp\" }\n"));
        let counter = match policy {
            "rate_limit" => &config.products[0].rate_limit.as_ref().unwrap().counter,
            _ => &config.products[0].quota.as_ref().unwrap().counter,
        };
        assert_eq!(counter, &CounterConfig::Claim("oid".into()));
    }
}

#[test]
fn each_api_jwt_error_is_located() {
    let provider = hs_provider("corp");
    // (the `jwt = ...` line, the text the error points at, the message after the position)
    let cases: [(&str, &str, &str); 10] = [
        (
            "jwt = { provider = \"other\" }",
            "\"other\"",
            "unknown jwt_provider \"other\": declare it with [[jwt_provider]] name = \"other\"",
        ),
        (
            "jwt = { roles_claim = \"roles\" }",
            "{ roles_claim",
            "`api.jwt` needs `provider`",
        ),
        (
            "jwt = { provider = \"corp\", roles = [{ methods = [\"GE T\"], values = [\"r\"] }] }",
            "\"GE T\"",
            "invalid method \"GE T\" in `api.jwt.roles`",
        ),
        (
            "jwt = { provider = \"corp\", roles = [{ values = [] }] }",
            "[] }",
            "`api.jwt.roles.values` must not be empty",
        ),
        (
            "jwt = { provider = \"corp\", roles = [{ methods = [\"GET\"] }] }",
            "{ methods",
            "`api.jwt.roles` needs `values`",
        ),
        (
            "jwt = { provider = \"corp\", roles = [{ values = [\"r\"], match = \"some\" }] }",
            "\"some\"",
            "invalid `api.jwt.roles.match` \"some\": expected one of \"any\", \"all\"",
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"oid\", header = \"X User\" }] }",
            "\"X User\"",
            "invalid `api.jwt.claims_to_headers.header` \"X User\": not a header name",
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ header = \"X-User\" }] }",
            "{ header",
            "`api.jwt.claims_to_headers` needs `claim`",
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"oid\", header = \"X-User\", default = \"a\\nb\" }] }",
            "\"a\\nb\"",
            "`api.jwt.claims_to_headers.default` is not a valid header value",
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"oid\", header = \"X-User\", default = \"none \" }] }",
            "\"none \"",
            "`api.jwt.claims_to_headers.default` starts or ends with a space or tab",
        ),
    ];
    for (line, points_at, message) in cases {
        let text = with_filter(&format!("{provider}{}", api_with(line)));
        assert_eq!(
            single_error(&text),
            format!("{}: {message}", at(&text, points_at)),
            "for:\n{text}"
        );
    }
}

#[test]
fn provider_errors_are_located_at_their_table() {
    // The same name twice: reported at the second table.
    let text = with_filter(&format!(
        "{}{}{}",
        hs_provider("corp"),
        hs_provider("corp"),
        api_with("jwt = { provider = \"corp\" }")
    ));
    assert_eq!(
        single_error(&text),
        format!("{FILE}:7:1: jwt_provider name \"corp\" appears twice")
    );

    // A secret under 256 bits, used by no API.
    let text = with_filter(&format!(
        "[[jwt_provider]]\nname = \"short\"\nalgorithms = [\"HS256\"]\nkeys = [{{ hmac_secret_base64 = \"{SECRET_16}\" }}]\n"
    ));
    assert_eq!(
        single_error(&text),
        format!(
            "{FILE}:3:1: invalid [[jwt_provider]] \"short\": keys[0]: HMAC secret of 16 bytes; \
             at least 32 random bytes (256 bits) are required"
        )
    );

    // A provider that does not validate is not there for the APIs that name it.
    let errors = parse_err(&with_filter(&format!(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"none\"]\nkeys = [{{ hmac_secret_base64 = \"{SECRET_32}\" }}]\n{}",
        api_with("jwt = { provider = \"corp\" }")
    )));
    assert!(
        errors.iter().any(|e| e
            .starts_with("t.toml:3:1: invalid [[jwt_provider]] \"corp\": algorithms: \"none\"")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("t.toml:11:20: unknown jwt_provider \"corp\"")),
        "{errors:#?}"
    );

    // An http:// key URL.
    let text = with_filter(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example/keys\"\n",
    );
    assert_eq!(
        single_error(&text),
        "t.toml:3:1: invalid [[jwt_provider]] \"corp\": jwks_url: \"http://idp.example/keys\" is not an https URL"
    );

    // An unknown key in the table is a parse error with its position.
    let errors = parse_err(&with_filter(
        "[[jwt_provider]]\nname = \"corp\"\nalgorithms = [\"RS256\"]\njwks_uri = \"https://idp.example/keys\"\n",
    ));
    assert!(errors[0].starts_with("t.toml:"), "{errors:#?}");
    assert!(errors[0].contains("jwks_uri"), "{errors:#?}");
}

#[test]
fn headers_the_gateway_sets_may_not_be_framing_connection_or_forwarding_headers() {
    let provider = hs_provider("corp");
    let framing = "message framing is set by the gateway";
    // (the API's last line, the text the error points at, the message after the position)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "rate_limit = { calls = 5, period_secs = 60, remaining_header = \"Content-Length\" }",
            "\"Content-Length\"",
            format!(
                "invalid `api.rate_limit.remaining_header` \"Content-Length\": content-length cannot be used: {framing}"
            ),
        ),
        (
            "rate_limit = { calls = 5, period_secs = 60, total_header = \"Transfer-Encoding\" }",
            "\"Transfer-Encoding\"",
            format!(
                "invalid `api.rate_limit.total_header` \"Transfer-Encoding\": transfer-encoding cannot be used: {framing}"
            ),
        ),
        (
            "rate_limit = { calls = 5, period_secs = 60, total_header = \"Connection\" }",
            "\"Connection\"",
            "invalid `api.rate_limit.total_header` \"Connection\": connection cannot be used: hop-by-hop headers apply to one connection only".to_owned(),
        ),
        (
            "rate_limit = { calls = 5, period_secs = 60, remaining_header = \"Retry-After\" }",
            "\"Retry-After\"",
            "invalid `api.rate_limit.remaining_header` \"Retry-After\": Retry-After is the limit's own header".to_owned(),
        ),
        (
            "rate_limit = { calls = 5, period_secs = 60, remaining_header = \"X-Left\", total_header = \"x-left\" }",
            "\"x-left\"",
            "invalid `api.rate_limit.total_header` \"x-left\": the same header as `remaining_header`".to_owned(),
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"nick\", header = \"Content-Length\" }] }",
            "\"Content-Length\"",
            format!(
                "invalid `api.jwt.claims_to_headers.header` \"Content-Length\": content-length cannot be used: {framing}"
            ),
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"nick\", header = \"Transfer-Encoding\" }] }",
            "\"Transfer-Encoding\"",
            format!(
                "invalid `api.jwt.claims_to_headers.header` \"Transfer-Encoding\": transfer-encoding cannot be used: {framing}"
            ),
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"host\", header = \"Host\" }] }",
            "\"Host\"",
            "invalid `api.jwt.claims_to_headers.header` \"Host\": host cannot be used: routing is decided on the client's Host".to_owned(),
        ),
        (
            "jwt = { provider = \"corp\", claims_to_headers = [{ claim = \"ip\", header = \"X-Forwarded-For\" }] }",
            "\"X-Forwarded-For\"",
            "invalid `api.jwt.claims_to_headers.header` \"X-Forwarded-For\": x-forwarded-for cannot be used: client identity headers are set by the gateway".to_owned(),
        ),
        (
            "certificate_headers = [{ field = \"subject\", header = \"Content-Length\" }]",
            "\"Content-Length\"",
            format!(
                "invalid `api.certificate_headers.header` \"Content-Length\": content-length cannot be used: {framing}"
            ),
        ),
        (
            "certificate_headers = [{ field = \"subject\", header = \"Keep-Alive\" }]",
            "\"Keep-Alive\"",
            "invalid `api.certificate_headers.header` \"Keep-Alive\": keep-alive cannot be used: hop-by-hop headers apply to one connection only".to_owned(),
        ),
    ];
    for (line, points_at, message) in cases {
        let text = with_filter(&format!("{provider}{}", api_with(line)));
        assert_eq!(
            single_error(&text),
            format!("{}: {message}", at(&text, points_at)),
            "for:\n{text}"
        );
    }
    // A product's limit likewise.
    let text = with_filter(
        "[[product]]\nname = \"p\"\nrate_limit = { calls = 5, period_secs = 60, remaining_header = \"Content-Length\" }\n",
    );
    assert_eq!(
        single_error(&text),
        format!(
            "{}: invalid `product.rate_limit.remaining_header` \"Content-Length\": content-length cannot be used: {framing}",
            at(&text, "\"Content-Length\"")
        )
    );
}
