use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use super::*;

fn validator(settings: &ValidationSettings) -> RequestValidator {
    match settings.validate() {
        Ok(validator) => validator,
        Err(errors) => panic!("settings should be valid: {errors:?}"),
    }
}

fn json_only() -> ValidationSettings {
    ValidationSettings {
        content_types: vec!["application/json".to_owned()],
        ..ValidationSettings::default()
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

/// The rejection the gateway would send, checked to agree with the error's own view.
fn rejected<T: std::fmt::Debug>(result: Result<T, RequestInvalid>) -> Rejection {
    match result {
        Ok(value) => panic!("expected a rejection, got {value:?}"),
        Err(invalid) => {
            let rejection = invalid.to_rejection();
            assert_eq!(rejection.status, invalid.status());
            assert_eq!(rejection.reason, invalid.reason());
            assert_eq!(rejection.message, invalid.to_string());
            rejection
        }
    }
}

/// Head and body checks in sequence, as the gateway runs them.
fn run(v: &RequestValidator, h: &HeaderMap, body: &[u8]) -> Result<(), RequestInvalid> {
    match v.check_head(h, !body.is_empty())? {
        BodyPlan::Stream => Ok(()),
        BodyPlan::Buffer { .. } => v.check_body(h, body),
    }
}

#[test]
fn toml_defaults() {
    let parsed: ValidationSettings = match toml::from_str("") {
        Ok(parsed) => parsed,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(parsed, ValidationSettings::default());
    assert!(parsed.require_valid_json);
    assert_eq!(parsed.max_body_bytes, 102_400);
    assert!(toml::from_str::<ValidationSettings>("max_size = 10").is_err());
}

#[test]
fn toml_inline_schema() {
    let text = "[json_schema]\ntype = \"object\"\nrequired = [\"name\"]\n";
    let parsed: ValidationSettings = match toml::from_str(text) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(
        parsed.json_schema,
        Some(json!({"type": "object", "required": ["name"]}))
    );
    let v = validator(&parsed);
    let h = headers(&[("content-type", "application/json")]);
    assert!(run(&v, &h, br#"{"name": "x"}"#).is_ok());
    assert!(run(&v, &h, b"{}").is_err());
}

#[test]
fn content_type_matches_ignoring_parameters_and_case() {
    let v = validator(&json_only());
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/json ; charset=\"utf-8\"",
    ] {
        let h = headers(&[("content-type", ct)]);
        assert_eq!(
            v.check_head(&h, true).ok(),
            Some(BodyPlan::Buffer { limit: 102_400 }),
            "{ct}"
        );
    }
}

#[test]
fn other_content_type_is_refused_with_apim_message() {
    let v = validator(&json_only());
    let h = headers(&[("content-type", "text/plain; charset=utf-8")]);
    let r = rejected(v.check_head(&h, true));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.message,
        "Unspecified content type text/plain is not allowed."
    );
    assert_eq!(r.reason, reason::CONTENT_TYPE_NOT_ALLOWED);
    // A suffix is not the same type.
    let h = headers(&[("content-type", "application/json-patch+json")]);
    assert_eq!(
        rejected(v.check_head(&h, true)).reason,
        reason::CONTENT_TYPE_NOT_ALLOWED
    );
}

#[test]
fn missing_or_broken_content_type() {
    let v = validator(&json_only());
    let r = rejected(v.check_head(&HeaderMap::new(), true));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.reason, reason::CONTENT_TYPE_MISSING);

    for bad in [
        &[("content-type", "json")][..],
        &[("content-type", "application/")][..],
    ] {
        let r = rejected(v.check_head(&headers(bad), true));
        assert_eq!(r.reason, reason::CONTENT_TYPE_INVALID, "{bad:?}");
        assert_eq!(
            r.message,
            "Request's Content-Type header is not a valid media type."
        );
    }
    let two = headers(&[
        ("content-type", "application/json"),
        ("content-type", "text/plain"),
    ]);
    assert_eq!(
        rejected(v.check_head(&two, true)).reason,
        reason::CONTENT_TYPE_INVALID
    );
}

#[test]
fn requests_without_body_are_not_checked() {
    let v = validator(&json_only());
    assert_eq!(
        v.check_head(&HeaderMap::new(), false).ok(),
        Some(BodyPlan::Stream)
    );
}

#[test]
fn any_content_type_when_list_is_empty_and_non_json_streams() {
    let v = validator(&ValidationSettings::default());
    let h = headers(&[("content-type", "application/octet-stream")]);
    assert_eq!(v.check_head(&h, true).ok(), Some(BodyPlan::Stream));
    assert_eq!(
        v.check_head(&HeaderMap::new(), true).ok(),
        Some(BodyPlan::Stream)
    );
    // +json types are JSON.
    let h = headers(&[("content-type", "application/problem+json")]);
    assert!(matches!(
        v.check_head(&h, true),
        Ok(BodyPlan::Buffer { .. })
    ));
}

#[test]
fn bad_json_names_the_position_only() {
    let v = validator(&json_only());
    let h = headers(&[("content-type", "application/json")]);
    let r = rejected(run(&v, &h, b"{\"secret\": \"abc\",\n  \"n\": tru }"));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.reason, reason::JSON_INVALID);
    assert_eq!(
        r.message,
        "Request's body is not valid JSON: syntax error at line 2, column 11."
    );
    assert!(!r.message.contains("secret"));

    let r = rejected(run(&v, &h, b"{\"a\": [1, 2"));
    assert_eq!(
        r.message,
        "Request's body is not valid JSON: unexpected end of input at line 1, column 11."
    );
}

#[test]
fn valid_json_passes_without_schema() {
    let v = validator(&json_only());
    let h = headers(&[("content-type", "application/json; charset=utf-8")]);
    assert!(run(&v, &h, br#"{"a": [1, 2, {"b": null}]}"#).is_ok());
}

#[test]
fn json_check_can_be_turned_off() {
    let settings = ValidationSettings {
        require_valid_json: false,
        ..json_only()
    };
    let v = validator(&settings);
    let h = headers(&[("content-type", "application/json")]);
    assert_eq!(v.check_head(&h, true).ok(), Some(BodyPlan::Stream));
}

fn order_schema() -> ValidationSettings {
    ValidationSettings {
        json_schema: Some(json!({
            "type": "object",
            "required": ["id", "quantity"],
            "properties": {
                "id": {"type": "string"},
                "quantity": {"type": "integer", "minimum": 1}
            },
            "additionalProperties": false
        })),
        ..json_only()
    }
}

#[test]
fn schema_violation_names_location_and_rule_but_not_values() {
    let v = validator(&order_schema());
    let h = headers(&[("content-type", "application/json")]);
    assert!(run(&v, &h, br#"{"id": "A1", "quantity": 2}"#).is_ok());

    let r = rejected(run(&v, &h, br#"{"id": "A1"}"#));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.reason, reason::SCHEMA_VIOLATION);
    assert_eq!(
        r.message,
        "Request's body does not conform to the schema at /: \"quantity\" is a required property."
    );

    let r = rejected(run(
        &v,
        &h,
        br#"{"id": "secret-value-42", "quantity": "lots"}"#,
    ));
    assert!(
        r.message
            .starts_with("Request's body does not conform to the schema at /quantity: "),
        "{}",
        r.message
    );
    assert!(r.message.contains("integer"), "{}", r.message);
    assert!(!r.message.contains("lots"), "{}", r.message);
    assert!(!r.message.contains("secret-value-42"), "{}", r.message);
}

#[test]
fn size_limit_by_content_length_and_by_bytes() {
    let settings = ValidationSettings {
        max_body_bytes: 16,
        ..json_only()
    };
    let v = validator(&settings);

    let h = headers(&[
        ("content-type", "application/json"),
        ("content-length", "17"),
    ]);
    let r = rejected(v.check_head(&h, true));
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.reason, reason::BODY_TOO_LARGE);
    assert_eq!(
        r.message,
        "Request's body is 17 bytes long and it exceeds the limit of 16 bytes."
    );

    // Without Content-Length (chunked, HTTP/2): checked on the collected bytes.
    let h = headers(&[("content-type", "application/json")]);
    assert_eq!(
        v.check_head(&h, true).ok(),
        Some(BodyPlan::Buffer { limit: 16 })
    );
    let r = rejected(v.check_body(&h, br#"{"a": "0123456789"}"#));
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.message,
        "Request's body is 19 bytes long and it exceeds the limit of 16 bytes."
    );
    assert!(v.check_body(&h, br#"{"a": "0123"}"#).is_ok());

    assert_eq!(
        v.too_large(None).to_string(),
        "Request's body exceeds the limit of 16 bytes."
    );
}

#[test]
fn compressed_json_is_refused() {
    let v = validator(&json_only());
    let h = headers(&[
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ]);
    let r = rejected(v.check_head(&h, true));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.reason, reason::CONTENT_ENCODING_NOT_SUPPORTED);
}

#[test]
fn configuration_errors_are_all_reported() {
    let settings = ValidationSettings {
        content_types: vec![
            "application/json".to_owned(),
            "json".to_owned(),
            "text/plain; charset=utf-8".to_owned(),
        ],
        max_body_bytes: 0,
        json_schema: Some(json!({"type": "no-such-type"})),
        ..ValidationSettings::default()
    };
    let errors = match settings.validate() {
        Ok(_) => panic!("invalid settings accepted"),
        Err(errors) => errors,
    };
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(texts[0].contains("\"json\""), "{texts:?}");
    assert!(texts[1].contains("charset"), "{texts:?}");
    assert_eq!(texts[2], "max_body_bytes must be greater than 0");
    assert!(
        texts[3].starts_with("json schema is not a valid schema"),
        "{texts:?}"
    );
}

#[test]
fn content_type_patterns_and_a_schema_no_listed_type_reaches_are_refused() {
    // Compared literally, these would refuse every body, JSON included.
    for pattern in ["application/*", "*/*", "Application/*+json"] {
        let settings = ValidationSettings {
            content_types: vec!["application/json".to_owned(), pattern.to_owned()],
            ..ValidationSettings::default()
        };
        let errors = settings.validate().err().unwrap_or_default();
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!(
                "content_types: {pattern:?} is a pattern, but types are matched exactly: list \
                 each type (such as application/json), or leave content_types out for any"
            )]
        );
    }

    // A schema applies to bodies declared as JSON: with none listed, it never would,
    // and a JSON body the backend parses anyway could be sent as text/plain unchecked.
    let settings = ValidationSettings {
        content_types: vec!["text/plain".to_owned(), "application/xml".to_owned()],
        ..schema_only()
    };
    let errors = settings.validate().err().unwrap_or_default();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "a json schema is set but content_types lists no JSON type (application/json or a \
          +json type), so the schema would never be applied: list one, or leave \
          content_types out for the JSON types only"
        ]
    );
    for json in ["application/json", "application/vnd.api+json"] {
        let settings = ValidationSettings {
            content_types: vec!["text/plain".to_owned(), json.to_owned()],
            ..schema_only()
        };
        validator(&settings);
    }
}

#[test]
fn schema_file_is_read_and_remote_refs_are_not_followed() {
    let dir = std::env::temp_dir().join(format!("rampart-validate-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("schema.json");
    if let Err(err) = std::fs::write(&path, r#"{"type": "array"}"#) {
        panic!("write schema: {err}");
    }
    let settings = ValidationSettings {
        json_schema_file: Some(path.clone()),
        ..json_only()
    };
    let v = validator(&settings);
    let h = headers(&[("content-type", "application/json")]);
    assert!(run(&v, &h, b"[1]").is_ok());
    assert_eq!(
        rejected(run(&v, &h, b"{}")).reason,
        reason::SCHEMA_VIOLATION
    );

    let missing = ValidationSettings {
        json_schema_file: Some(dir.join("missing.json")),
        ..json_only()
    };
    assert!(matches!(
        missing.validate().err().as_deref(),
        Some([ValidationConfigError::SchemaUnreadable { .. }])
    ));
    let _ = std::fs::remove_dir_all(&dir);

    let remote = ValidationSettings {
        json_schema: Some(json!({"$ref": "https://schemas.invalid/order.json"})),
        ..json_only()
    };
    assert!(matches!(
        remote.validate().err().as_deref(),
        Some([ValidationConfigError::SchemaInvalid { .. }])
    ));
}

#[test]
fn unexpected_properties_are_reported_and_the_body_is_apim_json() {
    let v = validator(&order_schema());
    let h = headers(&[("content-type", "application/json")]);
    let r = rejected(run(
        &v,
        &h,
        br#"{"id": "A1", "quantity": 1, "admin": true}"#,
    ));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.message
            .starts_with("Request's body does not conform to the schema at /: "),
        "{}",
        r.message
    );
    assert_eq!(
        r.message,
        "Request's body does not conform to the schema at /: value has a property the schema does not allow."
    );
    assert!(r.headers.is_empty());
    // The client's property names are not echoed, however many.
    let r = rejected(run(
        &v,
        &h,
        "{\"id\": \"A1\", \"quantity\": 1, \"<script>\\u2028\": 1, \"b\": 2}".as_bytes(),
    ));
    assert_eq!(
        r.message,
        "Request's body does not conform to the schema at /: value has 2 properties the schema does not allow."
    );

    let r = rejected(run(&v, &h, b"{\"id\": \"A1\"}"));
    assert_eq!(
        r.body(),
        "{ \"statusCode\": 400, \"message\": \"Request's body does not conform to the schema at /: \\\"quantity\\\" is a required property.\" }"
    );
    let r = v.too_large(Some(200_000)).to_rejection();
    assert_eq!(
        r.body(),
        "{ \"statusCode\": 413, \"message\": \"Request's body is 200000 bytes long and it exceeds the limit of 102400 bytes.\" }"
    );
}

#[test]
fn formats_are_asserted_in_every_draft() {
    for draft in [
        None,
        Some("https://json-schema.org/draft/2020-12/schema"),
        Some("https://json-schema.org/draft/2019-09/schema"),
        Some("http://json-schema.org/draft-07/schema#"),
    ] {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "e": {"type": "string", "format": "email"},
                "d": {"type": "string", "format": "date"},
                "x": {"type": "string", "format": "no-such-format"}
            }
        });
        if let Some(draft) = draft {
            schema["$schema"] = json!(draft);
        }
        let v = validator(&ValidationSettings {
            json_schema: Some(schema),
            ..json_only()
        });
        let h = headers(&[("content-type", "application/json")]);
        assert!(
            run(
                &v,
                &h,
                br#"{"e": "a@b.example", "d": "2024-02-29", "x": "any"}"#
            )
            .is_ok(),
            "{draft:?}"
        );
        let r = rejected(run(&v, &h, br#"{"e": "notanemail"}"#));
        assert_eq!(
            r.message,
            "Request's body does not conform to the schema at /e: value is not a \"email\".",
            "{draft:?}"
        );
        let r = rejected(run(&v, &h, br#"{"d": "2023-02-29"}"#));
        assert_eq!(r.reason, reason::SCHEMA_VIOLATION, "{draft:?}");
    }
}

/// A schema and no `content_types`, as the tester's `schemaonly` API.
fn schema_only() -> ValidationSettings {
    ValidationSettings {
        json_schema: Some(json!({
            "type": "object",
            "properties": {"a": {"type": "integer", "maximum": 10}}
        })),
        ..ValidationSettings::default()
    }
}

#[test]
fn a_schema_without_content_types_allows_json_types_only() {
    let v = validator(&schema_only());
    for ct in [
        "application/json",
        "Application/JSON ; charset=UTF-8",
        "application/problem+json",
    ] {
        let h = headers(&[("content-type", ct)]);
        let r = rejected(run(&v, &h, br#"{"a": 99}"#));
        assert_eq!(r.reason, reason::SCHEMA_VIOLATION, "{ct}");
    }
    for (ct, media_type) in [
        ("text/plain", "text/plain"),
        (
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
        ),
        ("Application/JSON5; charset=utf-8", "application/json5"),
        ("application/jsonx", "application/jsonx"),
        ("text/json", "text/json"),
    ] {
        let h = headers(&[("content-type", ct)]);
        let r = rejected(v.check_head(&h, true));
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(r.reason, reason::CONTENT_TYPE_NOT_ALLOWED, "{ct}");
        assert_eq!(
            r.message,
            format!("Unspecified content type {media_type} is not allowed.")
        );
    }
    let r = rejected(v.check_head(&HeaderMap::new(), true));
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.reason, reason::CONTENT_TYPE_MISSING);
    assert_eq!(
        r.message,
        "Request's content type is not specified; a request body needs a Content-Type header."
    );
    // A request without a body is not checked.
    let h = headers(&[("content-type", "text/plain")]);
    assert_eq!(v.check_head(&h, false).ok(), Some(BodyPlan::Stream));
    assert_eq!(
        v.check_head(&HeaderMap::new(), false).ok(),
        Some(BodyPlan::Stream)
    );

    // With a list, the list decides, as before.
    let settings = ValidationSettings {
        content_types: vec!["application/json".to_owned(), "text/plain".to_owned()],
        ..schema_only()
    };
    let v = validator(&settings);
    // The operator listed text/plain: it streams unchecked, as before.
    let h = headers(&[("content-type", "text/plain")]);
    assert_eq!(v.check_head(&h, true).ok(), Some(BodyPlan::Stream));
    let h = headers(&[("content-type", "application/problem+json")]);
    assert_eq!(
        rejected(v.check_head(&h, true)).reason,
        reason::CONTENT_TYPE_NOT_ALLOWED
    );
}

#[test]
fn an_empty_body_is_no_body_however_it_is_framed() {
    let v = validator(&order_schema());
    let json = headers(&[("content-type", "application/json")]);
    // Chunked with only the last chunk, or an HTTP/2 empty DATA frame: the body is
    // collected and is empty.
    assert_eq!(
        v.check_head(&json, true).ok(),
        Some(BodyPlan::Buffer { limit: 102_400 })
    );
    assert_eq!(v.check_body(&json, b""), Ok(()));
    // Content-Length: 0 with a body hyper has not seen end yet (HTTP/2 HEADERS
    // without END_STREAM, then an empty DATA frame): no body, whatever its type.
    for h in [
        headers(&[
            ("content-type", "application/json"),
            ("content-length", "0"),
        ]),
        headers(&[("content-type", "text/plain"), ("content-length", "0")]),
        headers(&[("content-length", "0")]),
    ] {
        assert_eq!(v.check_head(&h, true).ok(), Some(BodyPlan::Stream), "{h:?}");
    }
    // A body of only blanks is not empty: it is not JSON.
    assert_eq!(
        rejected(v.check_body(&json, b" ")).message,
        "Request's body is not valid JSON: unexpected end of input at line 1, column 1."
    );
}

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    let v = validator(&json_only());
    let h = headers(&[("content-type", "application/json")]);
    for (body, message) in [
        (
            &br#"{"a": 99, "a": 1}"#[..],
            r#"Request's body has a duplicate key "a" in the object at /."#,
        ),
        (
            br#"{"a": 1, "b": 2, "a": 1}"#,
            r#"Request's body has a duplicate key "a" in the object at /."#,
        ),
        // Keys are compared decoded.
        (
            br#"{"a": 1, "\u0061": 2}"#,
            r#"Request's body has a duplicate key "a" in the object at /."#,
        ),
        (
            br#"{"items": [{"id": 1}, {"id": 2, "n": {}, "id": 3}]}"#,
            r#"Request's body has a duplicate key "id" in the object at /items/1."#,
        ),
        (
            br#"[[{"x": {"a/b~": {"k": 1, "k": 2}}}]]"#,
            r#"Request's body has a duplicate key "k" in the object at /0/0/x/a~1b~0."#,
        ),
        (
            b"{\"q\\\"\\n\": 1, \"q\\\"\\n\": 2}",
            r#"Request's body has a duplicate key "q\"\n" in the object at /."#,
        ),
    ] {
        let r = rejected(run(&v, &h, body));
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.reason, reason::JSON_INVALID);
        assert_eq!(r.message, message, "{}", String::from_utf8_lossy(body));
    }
    // A long key is cut.
    let long = "k".repeat(1000);
    let body = format!(r#"{{"{long}": 1, "{long}": 2}}"#);
    let r = rejected(run(&v, &h, body.as_bytes()));
    assert_eq!(
        r.message,
        format!(
            "Request's body has a duplicate key \"{}…\" in the object at /.",
            "k".repeat(64)
        )
    );
    // The same key in different objects is no duplicate, and values stay whole.
    assert!(
        run(
            &v,
            &h,
            br#"{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}"#
        )
        .is_ok()
    );
    assert_eq!(
        json::parse(br#"{"a": [1, -2, 18446744073709551615, 1.5, "s\u00e9", true, null, {}]}"#)
            .ok(),
        Some(json!({"a": [1, -2, 18_446_744_073_709_551_615_u64, 1.5, "sé", true, null, {}]}))
    );
}

#[test]
fn duplicate_keys_are_refused_before_the_schema() {
    let v = validator(&schema_only());
    let h = headers(&[("content-type", "application/json")]);
    // The schema would see a = 1 (the last), a first-wins backend 99.
    let r = rejected(run(&v, &h, br#"{"a": 99, "a": 1}"#));
    assert_eq!(r.reason, reason::JSON_INVALID);
    assert_eq!(
        r.message,
        r#"Request's body has a duplicate key "a" in the object at /."#
    );
}

#[test]
fn deep_nesting_and_numbers_out_of_range_have_their_own_messages() {
    let v = validator(&json_only());
    let h = headers(&[("content-type", "application/json")]);
    // serde_json's limit: 127 levels parse, the 128th is refused where it opens.
    for open in ["[", "{\"a\":"] {
        let close = if open == "[" { "]" } else { "}" };
        let ok = format!("{}1{}", open.repeat(127), close.repeat(127));
        assert!(run(&v, &h, ok.as_bytes()).is_ok(), "{open}");
        let deep = format!("{}1{}", open.repeat(200), close.repeat(200));
        let r = rejected(run(&v, &h, deep.as_bytes()));
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.reason, reason::JSON_INVALID);
        let column = 127 * open.len() + 1;
        assert_eq!(
            r.message,
            format!(
                "Request's body is JSON the gateway does not accept: nested deeper than 128 levels at line 1, column {column}."
            )
        );
    }
    for (body, column) in [(&b"{\"a\":1e400}"[..], 10), (b"[-1e309]", 7)] {
        let r = rejected(run(&v, &h, body));
        assert_eq!(r.reason, reason::JSON_INVALID);
        assert_eq!(
            r.message,
            format!(
                "Request's body is JSON the gateway does not accept: a number out of range at line 1, column {column}."
            )
        );
    }
    // A large integer is a float, not out of range.
    assert!(run(&v, &h, b"[1e300, 123456789012345678901234567890]").is_ok());
}
