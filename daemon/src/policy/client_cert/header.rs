//! Certificate fields as header values (`certificate_headers`).
//!
//! A subject may hold any Unicode text and any character, a common name may start or end
//! with a space. A header value cannot hold CR, LF, NUL or other control characters (a
//! tab aside); a space or tab at either end is trimmed by HTTP/1 parsers and makes the
//! field malformed over HTTP/2 (RFC 9113 §8.2.1); non-ASCII bytes are obs-text, which
//! RFC 9110 §5.5 keeps for old fields only and backends read in different charsets
//! (ISO-8859-1 under Python's WSGI, PEP 3333; UTF-8 elsewhere). Rather than dropping or
//! altering such a value, which would leave the backend of an authenticated client
//! without its identity or with another one, it is percent-encoded (uppercase hex of
//! its UTF-8 bytes): `%` itself, control characters (below 0x20, and 0x7F), every
//! non-ASCII byte, and the spaces and tabs at either end. Everything else stays as it
//! is, so plain ASCII values are sent byte for byte, and a backend gets the exact text
//! back with one percent-decoding.

use std::borrow::Cow;

use http::HeaderValue;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode_byte, utf8_percent_encode};

/// Encoded wherever they stand; `utf8_percent_encode` adds every non-ASCII byte.
const ENCODED: &AsciiSet = &CONTROLS.add(b'%');

/// `value` as a header value: see the module documentation.
#[expect(
    clippy::expect_used,
    reason = "encode leaves visible ASCII and inner spaces only, which every header value may hold"
)]
pub(crate) fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(&encode(value)).expect("an encoded value is a valid header value")
}

/// `value` with `%`, control characters, non-ASCII text and the spaces and tabs at its
/// ends percent-encoded; borrowed when nothing needed it.
pub(crate) fn encode(value: &str) -> Cow<'_, str> {
    let is_edge = |c: char| c == ' ' || c == '\t';
    let inner = value.trim_start_matches(is_edge);
    let leading = &value[..value.len() - inner.len()];
    let middle = inner.trim_end_matches(is_edge);
    let trailing = &inner[middle.len()..];
    let middle = Cow::from(utf8_percent_encode(middle, ENCODED));
    if leading.is_empty() && trailing.is_empty() {
        return middle;
    }
    let mut out = String::with_capacity(middle.len() + 3 * (leading.len() + trailing.len()));
    out.extend(leading.bytes().map(percent_encode_byte));
    out.push_str(&middle);
    out.extend(trailing.bytes().map(percent_encode_byte));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ascii_values_are_sent_as_they_are() {
        for plain in [
            "CN=client,O=Example",
            "CN=a b,O=x",
            "O=\"Contoso, Inc.\", CN=alice",
            "3C0FA2B9D1E4F5A6B7C8D9E0F1A2B3C4D5E6F7A8",
            "01:02:0a",
            "client.example.test",
            "!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~",
            "",
        ] {
            assert!(matches!(encode(plain), Cow::Borrowed(v) if v == plain));
            assert_eq!(header_value(plain).as_bytes(), plain.as_bytes());
        }
    }

    #[test]
    fn percent_control_characters_and_non_ascii_text_are_encoded() {
        for (value, expected) in [
            ("100%", "100%25"),
            ("%25", "%2525"),
            ("CN=José", "CN=Jos%C3%A9"),
            ("O=Müller GmbH, CN=x", "O=M%C3%BCller GmbH, CN=x"),
            ("CN=東京", "CN=%E6%9D%B1%E4%BA%AC"),
            ("a\tb", "a%09b"),
            ("a\r\nb", "a%0D%0Ab"),
            ("a\0b", "a%00b"),
            ("a\u{7f}b", "a%7Fb"),
            ("a\u{1b}b", "a%1Bb"),
        ] {
            assert_eq!(encode(value), expected, "{value:?}");
            assert_eq!(header_value(value).as_bytes(), expected.as_bytes());
        }
    }

    #[test]
    fn spaces_and_tabs_at_the_ends_are_encoded_inner_spaces_are_not() {
        for (value, expected) in [
            (" x", "%20x"),
            ("x ", "x%20"),
            ("  a b  ", "%20%20a b%20%20"),
            ("\tx\t", "%09x%09"),
            (" \ta b\t ", "%20%09a b%09%20"),
            (" ", "%20"),
            ("   ", "%20%20%20"),
            (" é ", "%20%C3%A9%20"),
        ] {
            assert_eq!(encode(value), expected, "{value:?}");
        }
    }

    /// Every character gives a header value of visible ASCII and inner spaces only,
    /// which one percent-decoding turns back into the value.
    #[test]
    fn every_value_becomes_a_header_value_that_decodes_to_it() {
        let mut values: Vec<String> = (0..=0x7f_u8).map(|b| char::from(b).to_string()).collect();
        values.extend(
            [
                "\u{80}",
                "\u{a0}",
                "\u{ff}",
                "\u{2028}",
                "\u{feff}",
                "\u{1f600}",
            ]
            .map(String::from),
        );
        let singles = values.clone();
        for a in &singles {
            for b in [" ", "\t", "%", "x", "é"] {
                values.push(format!("{a}{b}{a}"));
                values.push(format!("{b}{a}{b}"));
            }
        }
        for value in values {
            let header = header_value(&value);
            let bytes = header.as_bytes();
            assert!(
                bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
                    && bytes.first() != Some(&b' ')
                    && bytes.last() != Some(&b' '),
                "{value:?} -> {header:?}"
            );
            let decoded = percent_encoding::percent_decode(bytes)
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, value);
        }
    }
}
