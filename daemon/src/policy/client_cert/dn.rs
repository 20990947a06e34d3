//! Distinguished names: the certificate's subject and issuer as .NET prints them, and the
//! DN strings of the configuration, parsed so that both compare as RDN sequences.
//!
//! # Printed form (`ClientCertificate::subject`)
//!
//! .NET's `X500DistinguishedName.Name` (what APIM's `context.Request.Certificate.Subject`
//! shows and what the APIM docs write in `subject="..."`): relative distinguished names
//! (RDNs) from the most specific to the least (the reverse of the DER order, as in RFC
//! 4514), separated by `", "`; the attributes of a multi-valued RDN, in DER order, joined
//! by `" + "`. Attribute types use .NET's short names (`CN`, `OU`, `O`, `L`, `S` for
//! stateOrProvinceName, `C`, `E` for emailAddress, `STREET`, `T`, `G`, `I`, `SN`,
//! `SERIALNUMBER`, `DC`, `PostalCode`); any other type is written `OID.<dotted>`. A
//! value is put in double quotes when it is empty, starts or ends with white space, or
//! contains one of `, + = " < > # ;`, a line break or a backslash (the last so that the
//! printed form parses back); a `"` inside quotes is doubled.
//! Example: `CN=client, OU=Unit, O="Contoso, Inc.", C=US`. A value that is not a
//! character string is written `#` followed by the hex of its content octets.
//!
//! # Accepted configuration form ([`Name::parse`])
//!
//! - RDNs from the most specific to the least (the printed form above, and RFC 4514 /
//!   `openssl x509 -nameopt RFC2253`); the order matters: `C=US, CN=x` does not match a
//!   certificate whose subject prints as `CN=x, C=US`.
//! - RDN separators `,` or `;`; `+` joins the attributes of a multi-valued RDN (their
//!   order does not matter). White space around separators, types and `=` is ignored.
//! - Attribute types: the short names above, case-insensitive, plus the aliases `ST`,
//!   `EMAIL`, `EMAILADDRESS`, `SURNAME`, `TITLE`, `GN`, `GIVENNAME`, `INITIALS`,
//!   `POSTALCODE`, `UID`; or an OID as `OID.2.5.4.3` or `2.5.4.3`.
//! - Values: in double quotes (everything up to the closing quote is literal, `""` standing
//!   for one `"`; a backslash is an ordinary character there), or unquoted with RFC 4514
//!   escapes (`\,` `\+` `\"` `\\` `\;` `\<`
//!   `\>` `\=` `\#` `\ ` and `\XX` hex pairs of UTF-8 bytes); unescaped white space at
//!   the ends of an unquoted value is dropped. `#hex` (BER) values are refused.
//! - Values compare exactly (case-sensitive), after the unquoting above.

use x509_parser::der_parser::asn1_rs::{Class, Tag};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// (OID, printed name, other accepted names).
const ATTRIBUTE_TYPES: &[(&str, &str, &[&str])] = &[
    ("2.5.4.3", "CN", &[]),
    ("2.5.4.4", "SN", &["SURNAME"]),
    ("2.5.4.5", "SERIALNUMBER", &[]),
    ("2.5.4.6", "C", &[]),
    ("2.5.4.7", "L", &[]),
    ("2.5.4.8", "S", &["ST"]),
    ("2.5.4.9", "STREET", &[]),
    ("2.5.4.10", "O", &[]),
    ("2.5.4.11", "OU", &[]),
    ("2.5.4.12", "T", &["TITLE"]),
    ("2.5.4.17", "PostalCode", &[]),
    ("2.5.4.42", "G", &["GN", "GIVENNAME"]),
    ("2.5.4.43", "I", &["INITIALS"]),
    ("1.2.840.113549.1.9.1", "E", &["EMAIL", "EMAILADDRESS"]),
    ("0.9.2342.19200300.100.1.25", "DC", &[]),
    (
        "0.9.2342.19200300.100.1.1",
        "OID.0.9.2342.19200300.100.1.1",
        &["UID"],
    ),
];

/// One attribute of an RDN: its type as a dotted OID and its value when it is a string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attribute {
    oid: String,
    /// `Err(hex of the content octets)` for a value that is not a character string: it is
    /// printed but never matches a configured value.
    value: Result<String, String>,
}

/// A distinguished name in DER order (least specific RDN first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    rdns: Vec<Vec<Attribute>>,
}

/// Why a configured DN string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnParseError {
    #[error("the name is empty")]
    Empty,
    #[error("expected an attribute type at position {position}")]
    MissingType { position: usize },
    #[error("unknown attribute type {name:?} (use a short name such as CN, O, OU, C or OID.n.n.n)")]
    UnknownType { name: String },
    #[error("expected '=' after the attribute type at position {position}")]
    MissingEquals { position: usize },
    #[error("unterminated quoted value starting at position {position}")]
    UnterminatedQuote { position: usize },
    #[error("unexpected character {found:?} at position {position}")]
    Unexpected { found: char, position: usize },
    #[error("bad escape sequence at position {position}")]
    BadEscape { position: usize },
    #[error("hex-encoded (#...) values are not supported (position {position})")]
    HexValue { position: usize },
    #[error("escaped bytes are not valid UTF-8")]
    NotUtf8,
}

impl Name {
    /// The name of a parsed certificate.
    pub(crate) fn from_x509(name: &X509Name<'_>) -> Self {
        let rdns = name
            .iter()
            .map(|rdn| rdn.iter().map(attribute_of).collect())
            .collect();
        Self { rdns }
    }

    /// The .NET `X500DistinguishedName.Name` form (see the module documentation).
    pub(crate) fn format(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.rdns.iter().rev().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            for (j, attribute) in rdn.iter().enumerate() {
                if j > 0 {
                    out.push_str(" + ");
                }
                out.push_str(&type_name(&attribute.oid));
                out.push('=');
                match &attribute.value {
                    Ok(value) => push_value(&mut out, value),
                    Err(hex) => {
                        out.push('#');
                        out.push_str(hex);
                    }
                }
            }
        }
        out
    }

    /// True if both names have the same RDNs in the same order, each RDN with the same
    /// attributes (in any order) and equal string values.
    pub(crate) fn matches(&self, other: &Self) -> bool {
        self.rdns.len() == other.rdns.len()
            && self
                .rdns
                .iter()
                .zip(&other.rdns)
                .all(|(a, b)| rdn_matches(a, b))
    }

    /// Parses a configured DN (see the module documentation for what is accepted).
    pub(crate) fn parse(text: &str) -> Result<Self, DnParseError> {
        let mut parser = Parser {
            chars: text.char_indices().collect(),
            pos: 0,
        };
        parser.skip_ws();
        if parser.peek().is_none() {
            return Err(DnParseError::Empty);
        }
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        loop {
            rdn.push(parser.attribute()?);
            parser.skip_ws();
            match parser.next() {
                None => break,
                Some('+') => {}
                Some(',' | ';') => rdns.push(std::mem::take(&mut rdn)),
                Some(found) => {
                    return Err(DnParseError::Unexpected {
                        found,
                        position: parser.offset(parser.pos - 1),
                    });
                }
            }
        }
        rdns.push(rdn);
        // Written most specific first; kept in DER order.
        rdns.reverse();
        Ok(Self { rdns })
    }

    /// The value of the most specific attribute of type `oid`.
    pub(crate) fn last_value(&self, oid: &str) -> Option<&str> {
        self.rdns
            .iter()
            .rev()
            .flat_map(|rdn| rdn.iter())
            .find(|attribute| attribute.oid == oid)
            .and_then(|attribute| attribute.value.as_deref().ok())
    }
}

fn rdn_matches(a: &[Attribute], b: &[Attribute]) -> bool {
    let found = |x: &Attribute, set: &[Attribute]| {
        x.value.is_ok() && set.iter().any(|y| y.oid == x.oid && y.value == x.value)
    };
    a.len() == b.len() && a.iter().all(|x| found(x, b)) && b.iter().all(|y| found(y, a))
}

pub(crate) const OID_COMMON_NAME: &str = "2.5.4.3";

fn attribute_of(attribute: &AttributeTypeAndValue<'_>) -> Attribute {
    let oid = attribute.attr_type().to_id_string();
    let any = attribute.attr_value();
    let data = any.data;
    let value = if any.header.class() == Class::Universal {
        match any.header.tag() {
            Tag::Utf8String
            | Tag::PrintableString
            | Tag::Ia5String
            | Tag::NumericString
            | Tag::VisibleString => String::from_utf8(data.to_vec()).ok(),
            // T.61 in practice holds Latin-1.
            Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
            Tag::BmpString => decode_utf16be(data),
            Tag::UniversalString => decode_utf32be(data),
            _ => None,
        }
    } else {
        None
    };
    Attribute {
        oid,
        value: value.ok_or_else(|| hex::encode_upper(data)),
    }
}

fn decode_utf16be(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let units = data
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .ok()
}

fn decode_utf32be(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(4) {
        return None;
    }
    data.chunks_exact(4)
        .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
        .collect()
}

fn type_name(oid: &str) -> String {
    match ATTRIBUTE_TYPES.iter().find(|(known, _, _)| *known == oid) {
        Some((_, name, _)) => (*name).to_owned(),
        None => format!("OID.{oid}"),
    }
}

/// The OID of a configured attribute type.
fn type_oid(name: &str) -> Option<String> {
    let dotted = if name.len() > 4 && name[..4].eq_ignore_ascii_case("OID.") {
        &name[4..]
    } else {
        name
    };
    let is_oid = dotted.split('.').count() >= 2
        && dotted
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    if is_oid {
        return Some(dotted.to_owned());
    }
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, printed, aliases)| {
            printed.eq_ignore_ascii_case(name)
                || aliases.iter().any(|alias| alias.eq_ignore_ascii_case(name))
        })
        .map(|(oid, _, _)| (*oid).to_owned())
}

fn needs_quoting(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(char::is_whitespace);
    value.is_empty()
        || edge(value.chars().next())
        || edge(value.chars().last())
        || value.chars().any(|c| {
            matches!(
                c,
                ',' | '+' | '=' | '"' | '\n' | '\r' | '<' | '>' | '#' | ';' | '\\'
            )
        })
}

fn push_value(out: &mut String, value: &str) {
    if needs_quoting(value) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Byte offset of the char at `index` (the text's length past the end), for errors.
    fn offset(&self, index: usize) -> usize {
        self.chars
            .get(index)
            .map(|&(at, _)| at)
            .unwrap_or_else(|| self.chars.last().map_or(0, |&(at, c)| at + c.len_utf8()))
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn attribute(&mut self) -> Result<Attribute, DnParseError> {
        self.skip_ws();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(DnParseError::MissingType {
                position: self.offset(start),
            });
        }
        let name: String = self.chars[start..self.pos]
            .iter()
            .map(|&(_, c)| c)
            .collect();
        let oid = type_oid(&name).ok_or(DnParseError::UnknownType { name })?;
        self.skip_ws();
        if self.next() != Some('=') {
            return Err(DnParseError::MissingEquals {
                position: self.offset(self.pos.saturating_sub(1)),
            });
        }
        self.skip_ws();
        let value = match self.peek() {
            Some('"') => self.quoted()?,
            Some('#') => {
                return Err(DnParseError::HexValue {
                    position: self.offset(self.pos),
                });
            }
            _ => self.unquoted()?,
        };
        Ok(Attribute {
            oid,
            value: Ok(value),
        })
    }

    fn quoted(&mut self) -> Result<String, DnParseError> {
        let start = self.pos;
        self.pos += 1; // the opening quote
        let mut value = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(DnParseError::UnterminatedQuote {
                        position: self.offset(start),
                    });
                }
                Some('"') if self.peek() == Some('"') => {
                    self.pos += 1;
                    value.push('"');
                }
                Some('"') => return Ok(value),
                Some(c) => value.push(c),
            }
        }
    }

    fn unquoted(&mut self) -> Result<String, DnParseError> {
        let mut bytes = Vec::new();
        // Length of `bytes` up to the last character that was escaped or not white space:
        // unescaped trailing white space is dropped.
        let mut keep = 0;
        while let Some(c) = self.peek() {
            match c {
                ',' | ';' | '+' => break,
                '"' => {
                    return Err(DnParseError::Unexpected {
                        found: c,
                        position: self.offset(self.pos),
                    });
                }
                '\\' => {
                    let at = self.offset(self.pos);
                    self.pos += 1;
                    let escaped = self
                        .next()
                        .ok_or(DnParseError::BadEscape { position: at })?;
                    if escaped.is_ascii_hexdigit() {
                        let low = self
                            .next()
                            .and_then(|c| c.to_digit(16))
                            .ok_or(DnParseError::BadEscape { position: at })?;
                        let high = escaped.to_digit(16).unwrap_or(0);
                        bytes.push(u8::try_from(high * 16 + low).unwrap_or(0));
                    } else if matches!(
                        escaped,
                        ',' | '+' | '"' | '\\' | ';' | '<' | '>' | '=' | '#' | ' '
                    ) {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                    } else {
                        return Err(DnParseError::BadEscape { position: at });
                    }
                    keep = bytes.len();
                }
                _ => {
                    self.pos += 1;
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    if !c.is_whitespace() {
                        keep = bytes.len();
                    }
                }
            }
        }
        bytes.truncate(keep);
        String::from_utf8(bytes).map_err(|_| DnParseError::NotUtf8)
    }
}
