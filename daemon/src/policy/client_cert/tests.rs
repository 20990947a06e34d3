use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
    SerialNumber, date_time_ymd,
};

use super::*;

/// 2020-01-01T00:00:00Z and 2040-01-01T00:00:00Z: the leaf's validity window.
const NOT_BEFORE: u64 = 1_577_836_800;
const NOT_AFTER: u64 = 2_208_988_800;
const NOW: u64 = 1_750_000_000;

const LEAF_SUBJECT: &str = "CN=client.contoso.test, OU=Payments, O=\"Contoso, Inc.\", C=US";
const CA_SUBJECT: &str = "CN=Contoso Test CA, O=Contoso, C=US";

struct Generated {
    ca_der: Vec<u8>,
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_pem: String,
    /// Another CA with the same name, which did not sign the leaf.
    impostor_ca_der: Vec<u8>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Contoso");
    dn.push(DnType::CommonName, "Contoso Test CA");
    params.distinguished_name = dn;
    params.not_before = date_time_ymd(2019, 1, 1);
    params.not_after = date_time_ymd(2050, 1, 1);
    params
}

fn generate() -> Generated {
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params(), ca_key);

    let impostor_key = KeyPair::generate().unwrap();
    let impostor = ca_params().self_signed(&impostor_key).unwrap();

    let mut params = CertificateParams::new(vec![
        "client.contoso.test".to_owned(),
        "Alt.Contoso.Test".to_owned(),
    ])
    .unwrap();
    // DER order: least specific first.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Contoso, Inc.");
    dn.push(DnType::OrganizationalUnitName, "Payments");
    dn.push(DnType::CommonName, "client.contoso.test");
    params.distinguished_name = dn;
    // High bit set: DER adds a leading zero byte.
    params.serial_number = Some(SerialNumber::from_slice(&[0x8a, 0x01, 0xbc, 0x23]));
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2040, 1, 1);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();

    Generated {
        ca_der: ca.der().to_vec(),
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_pem: leaf.pem(),
        impostor_ca_der: impostor.der().to_vec(),
    }
}

fn parsed(g: &Generated) -> ClientCertificate {
    ClientCertificate::from_der(&g.leaf_der, Some(&g.ca_der)).unwrap()
}

fn policy(identities: Vec<IdentitySettings>) -> ClientCertPolicy {
    let settings = ClientCertSettings {
        identities,
        check_validity: true,
    };
    match settings.validate() {
        Ok(policy) => policy,
        Err(errors) => panic!("settings should be valid: {errors:?}"),
    }
}

fn errors_of(identities: Vec<IdentitySettings>) -> Vec<ClientCertConfigError> {
    match (ClientCertSettings {
        identities,
        check_validity: true,
    })
    .validate()
    {
        Ok(policy) => panic!("settings should be refused: {policy:?}"),
        Err(errors) => errors,
    }
}

fn matches(cert: &ClientCertificate, identity: IdentitySettings) -> bool {
    match policy(vec![identity]).check(Some(cert), NOW) {
        Ok(()) => true,
        Err(CertRejection::IdentityNotMatched) => false,
        Err(other) => panic!("unexpected rejection {other:?}"),
    }
}

fn id() -> IdentitySettings {
    IdentitySettings::default()
}

/// Runs `openssl x509 <args>` on `pem` (through a temporary file) and returns stdout.
fn openssl(pem: &str, args: &[&str]) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "rampart-client-cert-{}-{}.pem",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, pem).unwrap();
    let output = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(&path)
        .arg("-noout")
        .args(args)
        .output();
    let _ = std::fs::remove_file(&path);
    let output = output.expect("openssl should run");
    assert!(
        output.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `SHA1 Fingerprint=AB:CD:...` → `ABCD...`.
fn openssl_fingerprint(pem: &str, digest: &str) -> String {
    let line = openssl(pem, &["-fingerprint", digest]);
    let (_, value) = line.split_once('=').unwrap();
    value.replace(':', "").to_ascii_uppercase()
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_leaf_fields() {
    let g = generate();
    let cert = parsed(&g);
    assert_eq!(cert.subject(), LEAF_SUBJECT);
    assert_eq!(cert.common_name(), Some("client.contoso.test"));
    assert_eq!(cert.issuer_subject(), CA_SUBJECT);
    assert_eq!(
        cert.dns_names(),
        [
            "client.contoso.test".to_owned(),
            "Alt.Contoso.Test".to_owned()
        ]
    );
    // .NET keeps DER's leading zero byte.
    assert_eq!(cert.serial_number(), "008A01BC23");
    assert_eq!(cert.not_before(), NOT_BEFORE);
    assert_eq!(cert.not_after(), NOT_AFTER);
    assert_eq!(cert.sha1_thumbprint().len(), 40);
    assert_eq!(cert.sha256_thumbprint().len(), 64);
    for hex in [cert.sha1_thumbprint(), cert.sha256_thumbprint()] {
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
    }
}

#[test]
fn parses_ca_fields() {
    let g = generate();
    let ca = ClientCertificate::from_der(&g.ca_der, None).unwrap();
    assert_eq!(ca.subject(), CA_SUBJECT);
    assert_eq!(ca.issuer_subject(), CA_SUBJECT);
    assert_eq!(ca.common_name(), Some("Contoso Test CA"));
    assert!(ca.dns_names().is_empty());
    assert_eq!(ca.issuer_sha1_thumbprint(), None);
    assert_eq!(ca.field("dns_name"), None);
}

#[test]
fn thumbprints_equal_openssl_fingerprints() {
    let g = generate();
    let cert = parsed(&g);
    assert_eq!(
        cert.sha1_thumbprint(),
        openssl_fingerprint(&g.leaf_pem, "-sha1")
    );
    assert_eq!(
        cert.sha256_thumbprint(),
        openssl_fingerprint(&g.leaf_pem, "-sha256")
    );
    assert_eq!(
        cert.issuer_sha1_thumbprint(),
        Some(openssl_fingerprint(&g.ca_pem, "-sha1").as_str())
    );
    assert_eq!(
        cert.issuer_sha256_thumbprint(),
        Some(openssl_fingerprint(&g.ca_pem, "-sha256").as_str())
    );
}

#[test]
fn serial_and_subject_agree_with_openssl() {
    let g = generate();
    let cert = parsed(&g);
    // openssl prints the integer without the DER padding byte: it still matches.
    let serial = openssl(&g.leaf_pem, &["-serial"]);
    let serial = serial.strip_prefix("serial=").unwrap();
    assert_eq!(serial, "8A01BC23");
    assert!(matches(
        &cert,
        IdentitySettings {
            serial_number: Some(serial.to_owned()),
            ..id()
        }
    ));
    // RFC 2253 output (escaped comma, no spaces, most specific first) is accepted too.
    let subject = openssl(&g.leaf_pem, &["-subject", "-nameopt", "RFC2253"]);
    let subject = subject.strip_prefix("subject=").unwrap();
    assert_eq!(
        subject,
        "CN=client.contoso.test,OU=Payments,O=Contoso\\, Inc.,C=US"
    );
    assert!(matches(
        &cert,
        IdentitySettings {
            subject: Some(subject.to_owned()),
            ..id()
        }
    ));
}

#[test]
fn issuer_thumbprint_needs_the_real_issuer() {
    let g = generate();
    let without = ClientCertificate::from_der(&g.leaf_der, None).unwrap();
    assert_eq!(without.issuer_sha1_thumbprint(), None);
    assert_eq!(without.issuer_sha256_thumbprint(), None);

    // Same subject as the CA but another key: not the issuer.
    let impostor = ClientCertificate::from_der(&g.leaf_der, Some(&g.impostor_ca_der)).unwrap();
    assert_eq!(impostor.issuer_sha1_thumbprint(), None);
    // A certificate with another name: not the issuer.
    let unrelated = ClientCertificate::from_der(&g.leaf_der, Some(&g.leaf_der)).unwrap();
    assert_eq!(unrelated.issuer_sha1_thumbprint(), None);
    // Garbage: ignored, the leaf still parses.
    let garbage = ClientCertificate::from_der(&g.leaf_der, Some(b"not a certificate")).unwrap();
    assert_eq!(garbage.issuer_sha1_thumbprint(), None);

    let ca_sha1 = ClientCertificate::from_der(&g.ca_der, None)
        .unwrap()
        .sha1_thumbprint()
        .to_owned();
    let identity = IdentitySettings {
        issuer_thumbprint: Some(ca_sha1.clone()),
        ..id()
    };
    assert!(matches(&parsed(&g), identity.clone()));
    assert!(!matches(&without, identity.clone()));
    assert!(!matches(&impostor, identity));
    assert_eq!(parsed(&g).issuer_sha1_thumbprint(), Some(ca_sha1.as_str()));
}

#[test]
fn bad_der_is_an_error() {
    assert!(matches!(
        ClientCertificate::from_der(b"", None),
        Err(CertParseError::Der { .. })
    ));
    assert!(matches!(
        ClientCertificate::from_der(b"\x30\x03\x02\x01\x01", None),
        Err(CertParseError::Der { .. })
    ));
    let g = generate();
    let mut trailing = g.leaf_der.clone();
    trailing.extend_from_slice(&[0, 0]);
    assert_eq!(
        ClientCertificate::from_der(&trailing, None),
        Err(CertParseError::TrailingData { count: 2 })
    );
}

#[test]
fn fields_for_headers() {
    let g = generate();
    let cert = parsed(&g);
    let expected = [
        ("subject", LEAF_SUBJECT.to_owned()),
        ("common_name", "client.contoso.test".to_owned()),
        ("serial_number", "008A01BC23".to_owned()),
        ("thumbprint", cert.sha1_thumbprint().to_owned()),
        ("sha256_thumbprint", cert.sha256_thumbprint().to_owned()),
        ("issuer_subject", CA_SUBJECT.to_owned()),
        ("dns_name", "client.contoso.test".to_owned()),
    ];
    assert_eq!(expected.len(), FIELDS.len());
    for (name, value) in expected {
        assert!(FIELDS.contains(&name), "{name} missing from FIELDS");
        assert_eq!(cert.field(name), Some(value), "field {name}");
    }
    assert_eq!(cert.field("Subject"), None);
    assert_eq!(cert.field("issuer_thumbprint"), None);
    assert!(cert.to_string().contains(cert.sha1_thumbprint()));
}

// ---------------------------------------------------------------- identities

#[test]
fn each_attribute_alone_matches() {
    let g = generate();
    let cert = parsed(&g);
    let issuer_sha256 = cert.issuer_sha256_thumbprint().unwrap().to_owned();
    let singles = [
        IdentitySettings {
            thumbprint: Some(cert.sha1_thumbprint().to_owned()),
            ..id()
        },
        IdentitySettings {
            thumbprint: Some(cert.sha256_thumbprint().to_owned()),
            ..id()
        },
        IdentitySettings {
            serial_number: Some("008A01BC23".to_owned()),
            ..id()
        },
        IdentitySettings {
            common_name: Some("client.contoso.test".to_owned()),
            ..id()
        },
        IdentitySettings {
            subject: Some(LEAF_SUBJECT.to_owned()),
            ..id()
        },
        IdentitySettings {
            dns_name: Some("alt.contoso.test".to_owned()),
            ..id()
        },
        IdentitySettings {
            issuer_subject: Some(CA_SUBJECT.to_owned()),
            ..id()
        },
        IdentitySettings {
            issuer_thumbprint: Some(issuer_sha256),
            ..id()
        },
    ];
    for identity in singles {
        assert!(matches(&cert, identity.clone()), "{identity:?}");
    }
}

#[test]
fn each_attribute_alone_can_fail() {
    let g = generate();
    let cert = parsed(&g);
    let other_sha1 = "0".repeat(40);
    let other_sha256 = "0".repeat(64);
    let singles = [
        IdentitySettings {
            thumbprint: Some(other_sha1.clone()),
            ..id()
        },
        IdentitySettings {
            thumbprint: Some(other_sha256),
            ..id()
        },
        IdentitySettings {
            serial_number: Some("8A01BC24".to_owned()),
            ..id()
        },
        // Exact: case matters for the common name.
        IdentitySettings {
            common_name: Some("Client.contoso.test".to_owned()),
            ..id()
        },
        IdentitySettings {
            common_name: Some("client.contoso".to_owned()),
            ..id()
        },
        IdentitySettings {
            subject: Some("CN=client.contoso.test, O=\"Contoso, Inc.\", C=US".to_owned()),
            ..id()
        },
        IdentitySettings {
            dns_name: Some("other.contoso.test".to_owned()),
            ..id()
        },
        IdentitySettings {
            issuer_subject: Some("CN=Other CA, O=Contoso, C=US".to_owned()),
            ..id()
        },
        IdentitySettings {
            issuer_thumbprint: Some(other_sha1),
            ..id()
        },
        // The leaf's own thumbprint is not the issuer's.
        IdentitySettings {
            issuer_thumbprint: Some(cert.sha1_thumbprint().to_owned()),
            ..id()
        },
    ];
    for identity in singles {
        assert!(!matches(&cert, identity.clone()), "{identity:?}");
    }
}

#[test]
fn every_attribute_of_an_identity_must_match() {
    let g = generate();
    let cert = parsed(&g);
    let all = IdentitySettings {
        thumbprint: Some(cert.sha1_thumbprint().to_owned()),
        serial_number: Some("8A01BC23".to_owned()),
        common_name: Some("client.contoso.test".to_owned()),
        subject: Some(LEAF_SUBJECT.to_owned()),
        dns_name: Some("client.contoso.test".to_owned()),
        issuer_subject: Some(CA_SUBJECT.to_owned()),
        issuer_thumbprint: Some(cert.issuer_sha1_thumbprint().unwrap().to_owned()),
    };
    assert!(matches(&cert, all.clone()));
    // One wrong attribute among right ones is enough to fail.
    assert!(!matches(
        &cert,
        IdentitySettings {
            dns_name: Some("nope.contoso.test".to_owned()),
            ..all.clone()
        }
    ));
    assert!(!matches(
        &cert,
        IdentitySettings {
            serial_number: Some("01".to_owned()),
            ..all
        }
    ));
    assert!(matches(
        &cert,
        IdentitySettings {
            common_name: Some("client.contoso.test".to_owned()),
            issuer_subject: Some(CA_SUBJECT.to_owned()),
            ..id()
        }
    ));
}

#[test]
fn at_least_one_identity_must_match() {
    let g = generate();
    let cert = parsed(&g);
    let wrong = IdentitySettings {
        common_name: Some("someone else".to_owned()),
        ..id()
    };
    let right = IdentitySettings {
        dns_name: Some("client.contoso.test".to_owned()),
        ..id()
    };
    assert_eq!(
        policy(vec![wrong.clone(), right.clone()]).check(Some(&cert), NOW),
        Ok(())
    );
    assert_eq!(
        policy(vec![right, wrong.clone()]).check(Some(&cert), NOW),
        Ok(())
    );
    assert_eq!(
        policy(vec![wrong.clone(), wrong]).check(Some(&cert), NOW),
        Err(CertRejection::IdentityNotMatched)
    );
}

#[test]
fn no_identities_accepts_any_certificate() {
    let g = generate();
    let policy = policy(Vec::new());
    assert_eq!(policy.identity_count(), 0);
    assert_eq!(policy.check(Some(&parsed(&g)), NOW), Ok(()));
    let ca = ClientCertificate::from_der(&g.ca_der, None).unwrap();
    assert_eq!(policy.check(Some(&ca), NOW), Ok(()));
}

#[test]
fn hex_attributes_tolerate_case_and_separators() {
    let g = generate();
    let cert = parsed(&g);
    let colons = |hex: &str| {
        hex.as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    };
    let sha1 = cert.sha1_thumbprint();
    let sha256 = cert.sha256_thumbprint();
    for thumbprint in [
        sha1.to_ascii_lowercase(),
        colons(sha1),
        colons(&sha1.to_ascii_lowercase()),
        colons(sha1).replace(':', " "),
        format!("  {sha1}  "),
        colons(sha256).to_ascii_lowercase(),
    ] {
        assert!(
            matches(
                &cert,
                IdentitySettings {
                    thumbprint: Some(thumbprint.clone()),
                    ..id()
                }
            ),
            "{thumbprint}"
        );
    }
    for serial in [
        "008a01bc23",
        "8a01bc23",
        "00:8A:01:BC:23",
        "8a 01 bc 23",
        "0008A01BC23",
    ] {
        assert!(
            matches(
                &cert,
                IdentitySettings {
                    serial_number: Some(serial.to_owned()),
                    ..id()
                }
            ),
            "{serial}"
        );
    }
    assert!(!matches(
        &cert,
        IdentitySettings {
            serial_number: Some("8A01BC2300".to_owned()),
            ..id()
        }
    ));
}

#[test]
fn dns_names_ignore_case_only() {
    let g = generate();
    let cert = parsed(&g);
    for (dns, expected) in [
        ("CLIENT.CONTOSO.TEST", true),
        ("alt.contoso.test", true),
        ("*.contoso.test", false),
        ("contoso.test", false),
        ("client.contoso.test.", false),
    ] {
        assert_eq!(
            matches(
                &cert,
                IdentitySettings {
                    dns_name: Some(dns.to_owned()),
                    ..id()
                }
            ),
            expected,
            "{dns}"
        );
    }
}

#[test]
fn subject_forms_accepted() {
    let g = generate();
    let cert = parsed(&g);
    for subject in [
        LEAF_SUBJECT,
        "cn=client.contoso.test,ou=Payments,o=\"Contoso, Inc.\",c=US",
        "CN = client.contoso.test ; OU = Payments ; O = \"Contoso, Inc.\" ; C = US",
        "CN=client.contoso.test, OU=Payments, O=Contoso\\, Inc., C=US",
        "CN=client.contoso.test, OU=Payments, O=Contoso\\2C Inc., C=US",
        "OID.2.5.4.3=client.contoso.test, 2.5.4.11=Payments, O=\"Contoso, Inc.\", C=US",
        "  CN=client.contoso.test, OU=Payments, O=\"Contoso, Inc.\", C=US  ",
    ] {
        assert!(
            matches(
                &cert,
                IdentitySettings {
                    subject: Some(subject.to_owned()),
                    ..id()
                }
            ),
            "{subject}"
        );
    }
    for subject in [
        // DER order instead of most specific first.
        "C=US, O=\"Contoso, Inc.\", OU=Payments, CN=client.contoso.test",
        // Values are case-sensitive.
        "CN=client.contoso.test, OU=payments, O=\"Contoso, Inc.\", C=US",
        // Missing, extra or merged RDNs.
        "CN=client.contoso.test, OU=Payments, O=\"Contoso, Inc.\"",
        "CN=client.contoso.test, OU=Payments, O=\"Contoso, Inc.\", C=US, DC=test",
        "CN=client.contoso.test + OU=Payments, O=\"Contoso, Inc.\", C=US",
        // The quoted comma is part of the value, unquoted it splits the RDN.
        "CN=client.contoso.test, OU=Payments, O=\"Contoso Inc.\", C=US",
        "CN=client.contoso.test, OU=Payments, O=\" Contoso, Inc.\", C=US",
    ] {
        assert!(
            !matches(
                &cert,
                IdentitySettings {
                    subject: Some(subject.to_owned()),
                    ..id()
                }
            ),
            "{subject}"
        );
    }
}

// ---------------------------------------------------------------- DN syntax

#[test]
fn dn_parse_and_format() {
    let name = dn::Name::parse("CN=a, O=\"x, y\" , C=US").unwrap();
    assert_eq!(name.format(), "CN=a, O=\"x, y\", C=US");
    // Quoting rules of the printed form, and a round trip through the parser.
    for (written, printed) in [
        ("CN=\"say \"\"hi\"\"\"", "CN=\"say \"\"hi\"\"\""),
        ("CN=say \\\"hi\\\"", "CN=\"say \"\"hi\"\"\""),
        ("CN=\" padded \"", "CN=\" padded \""),
        ("CN=\\ padded\\ ", "CN=\" padded \""),
        ("CN=a+O=b", "CN=a + O=b"),
        ("CN=\"a+b\"", "CN=\"a+b\""),
        ("CN=\"a=b\"", "CN=\"a=b\""),
        ("CN=a=b", "CN=\"a=b\""),
        ("CN=\"#1\"", "CN=\"#1\""),
        ("CN=\"\"", "CN=\"\""),
        ("CN=Z\\C3\\BCrich", "CN=Zürich"),
        (
            "ST=Bavaria, EMAIL=a@b.test, 1.2.3.4=x",
            "S=Bavaria, E=a@b.test, OID.1.2.3.4=x",
        ),
        ("CN=a\\\\b", "CN=\"a\\b\""),
        ("CN=\"a\\b\"", "CN=\"a\\b\""),
        ("CN=\"C:\\dir\\\"", "CN=\"C:\\dir\\\""),
        ("CN=x + O=y, C=US", "CN=x + O=y, C=US"),
    ] {
        let name = dn::Name::parse(written).unwrap_or_else(|e| panic!("{written}: {e}"));
        let formatted = name.format();
        assert_eq!(formatted, printed, "{written}");
        let again = dn::Name::parse(&formatted).unwrap_or_else(|e| panic!("{formatted}: {e}"));
        assert!(again.matches(&name), "{formatted}");
    }
}

#[test]
fn dn_multi_valued_rdns_ignore_attribute_order() {
    let a = dn::Name::parse("CN=x + O=y, C=US").unwrap();
    let b = dn::Name::parse("o=y+cn=x,c=US").unwrap();
    let c = dn::Name::parse("CN=x, O=y, C=US").unwrap();
    assert!(a.matches(&b));
    assert!(!a.matches(&c));
}

#[test]
fn dn_syntax_errors() {
    for bad in [
        "",
        "   ",
        "CN",
        "=x",
        "CN=\"open",
        "CN=\"a\"b",
        "CN=a\"b",
        "XYZ=a",
        "CN=#04016161",
        "CN=a\\q",
        "CN=a\\",
        "CN=\\C3",
        "CN=a,",
        "CN=a,,O=b",
        "CN=\"a\\\"b\"",
    ] {
        assert!(dn::Name::parse(bad).is_err(), "{bad:?} should be refused");
    }
}

// ---------------------------------------------------------------- validity

#[test]
fn validity_window() {
    let g = generate();
    let cert = parsed(&g);
    let policy = policy(Vec::new());
    assert_eq!(
        policy.check(Some(&cert), NOT_BEFORE - 1),
        Err(CertRejection::NotYetValid)
    );
    assert_eq!(policy.check(Some(&cert), NOT_BEFORE), Ok(()));
    assert_eq!(policy.check(Some(&cert), NOT_AFTER), Ok(()));
    assert_eq!(
        policy.check(Some(&cert), NOT_AFTER + 1),
        Err(CertRejection::Expired)
    );
    assert_eq!(
        policy.check(Some(&cert), 0),
        Err(CertRejection::NotYetValid)
    );
}

#[test]
fn validity_is_checked_before_identities_and_can_be_disabled() {
    let g = generate();
    let cert = parsed(&g);
    let wrong = IdentitySettings {
        common_name: Some("someone else".to_owned()),
        ..id()
    };
    assert_eq!(
        policy(vec![wrong.clone()]).check(Some(&cert), NOT_AFTER + 1),
        Err(CertRejection::Expired)
    );
    let unchecked = ClientCertSettings {
        identities: Vec::new(),
        check_validity: false,
    }
    .validate()
    .unwrap();
    assert_eq!(unchecked.check(Some(&cert), NOT_AFTER + 1), Ok(()));
    assert_eq!(unchecked.check(Some(&cert), 0), Ok(()));
    let unchecked_wrong = ClientCertSettings {
        identities: vec![wrong],
        check_validity: false,
    }
    .validate()
    .unwrap();
    assert_eq!(
        unchecked_wrong.check(Some(&cert), NOT_AFTER + 1),
        Err(CertRejection::IdentityNotMatched)
    );
}

#[test]
fn missing_certificate() {
    assert_eq!(
        policy(Vec::new()).check(None, NOW),
        Err(CertRejection::Missing)
    );
    let unchecked = ClientCertSettings {
        identities: Vec::new(),
        check_validity: false,
    }
    .validate()
    .unwrap();
    assert_eq!(unchecked.check(None, NOW), Err(CertRejection::Missing));
}

// ---------------------------------------------------------------- rejections

#[test]
fn rejections() {
    let cases = [
        (
            CertRejection::Missing,
            "ClientCertificateNotFound",
            "Client certificate missing.",
        ),
        (
            CertRejection::Expired,
            "ClientCertificateExpired",
            "Invalid client certificate.",
        ),
        (
            CertRejection::NotYetValid,
            "ClientCertificateNotYetValid",
            "Invalid client certificate.",
        ),
        (
            CertRejection::IdentityNotMatched,
            "ClientCertificateIdentityNotMatched",
            "Invalid client certificate.",
        ),
    ];
    for (rejection, reason, message) in cases {
        assert_eq!(rejection.reason(), reason);
        let answer = rejection.rejection();
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.reason, reason);
        assert_eq!(answer.message, message);
        assert!(answer.headers.is_empty());
        assert_eq!(
            answer.body(),
            format!("{{ \"statusCode\": 403, \"message\": \"{message}\" }}")
        );
        // The log line says more than the body.
        assert!(!rejection.to_string().is_empty());
        assert_ne!(rejection.to_string(), message);
    }
}

// ---------------------------------------------------------------- settings

#[test]
fn settings_from_toml() {
    let parsed: ClientCertSettings = toml::from_str("").unwrap();
    assert_eq!(parsed, ClientCertSettings::default());
    assert!(parsed.check_validity);

    let parsed: ClientCertSettings = toml::from_str(
        r#"
        check_validity = false
        [[identities]]
        thumbprint = "AB:CD"
        subject = 'CN=x, O="Contoso, Inc."'
        [[identities]]
        dns_name = "api.contoso.test"
        issuer_thumbprint = "00"
        "#,
    )
    .unwrap();
    assert!(!parsed.check_validity);
    assert_eq!(parsed.identities.len(), 2);
    assert_eq!(
        parsed.identities[0].subject.as_deref(),
        Some("CN=x, O=\"Contoso, Inc.\"")
    );
    assert!(toml::from_str::<ClientCertSettings>("validate_trust = true").is_err());
    assert!(toml::from_str::<ClientCertSettings>("[[identities]]\nthumbprints = \"x\"").is_err());
}

#[test]
fn settings_errors_are_all_reported() {
    let errors = errors_of(vec![
        // 0: fine
        IdentitySettings {
            common_name: Some("ok".to_owned()),
            ..id()
        },
        // 1: nothing set
        id(),
        // 2: every kind of bad value
        IdentitySettings {
            thumbprint: Some("ABC".to_owned()),
            serial_number: Some("12G4".to_owned()),
            common_name: Some("  ".to_owned()),
            subject: Some("CN=\"unterminated".to_owned()),
            dns_name: Some(String::new()),
            issuer_subject: Some("FOO=bar".to_owned()),
            issuer_thumbprint: Some("Z".repeat(40)),
        },
        // 3: lengths between SHA-1 and SHA-256 are refused
        IdentitySettings {
            thumbprint: Some("A".repeat(41)),
            ..id()
        },
    ]);
    let expected_kinds: Vec<String> = errors.iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(errors.len(), 9, "{expected_kinds:#?}");
    assert_eq!(
        errors[0],
        ClientCertConfigError::NoAttribute { identity: 1 }
    );
    assert!(errors.contains(&ClientCertConfigError::Empty {
        identity: 2,
        attribute: "common_name"
    }));
    assert!(errors.contains(&ClientCertConfigError::Empty {
        identity: 2,
        attribute: "dns_name"
    }));
    assert!(errors.contains(&ClientCertConfigError::BadThumbprint {
        identity: 2,
        attribute: "thumbprint",
        value: "ABC".to_owned()
    }));
    assert!(errors.contains(&ClientCertConfigError::BadThumbprint {
        identity: 2,
        attribute: "issuer_thumbprint",
        value: "Z".repeat(40)
    }));
    assert!(errors.contains(&ClientCertConfigError::BadSerialNumber {
        identity: 2,
        value: "12G4".to_owned()
    }));
    assert!(errors.iter().any(|e| matches!(
        e,
        ClientCertConfigError::BadName {
            identity: 2,
            attribute: "subject",
            ..
        }
    )));
    assert!(errors.iter().any(|e| matches!(
        e,
        ClientCertConfigError::BadName {
            identity: 2,
            attribute: "issuer_subject",
            ..
        }
    )));
    assert!(errors.contains(&ClientCertConfigError::BadThumbprint {
        identity: 3,
        attribute: "thumbprint",
        value: "A".repeat(41)
    }));
    // Messages name the entry and the attribute.
    for error in &errors {
        assert!(error.to_string().starts_with("identities["), "{error}");
    }
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("identities[2].issuer_subject"))
    );
}

#[test]
fn valid_settings_compile() {
    let policy = policy(vec![
        IdentitySettings {
            thumbprint: Some("a".repeat(40)),
            issuer_thumbprint: Some("b".repeat(64)),
            serial_number: Some("00".to_owned()),
            ..id()
        },
        IdentitySettings {
            subject: Some(LEAF_SUBJECT.to_owned()),
            issuer_subject: Some(CA_SUBJECT.to_owned()),
            ..id()
        },
    ]);
    assert_eq!(policy.identity_count(), 2);
}

#[test]
fn string_types_and_repeated_common_names() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString("DE".try_into().unwrap()),
    );
    dn.push(
        DnType::OrganizationName,
        DnValue::BmpString("Müller Größe".try_into().unwrap()),
    );
    dn.push(
        DnType::LocalityName,
        DnValue::UniversalString("Zürich 🦀".try_into().unwrap()),
    );
    dn.push(
        DnType::OrganizationalUnitName,
        DnValue::TeletexString("Unit".try_into().unwrap()),
    );
    dn.push(DnType::CommonName, "first");
    // The same attribute type once more, as a custom type: two CNs.
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "second");
    params.distinguished_name = dn;
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let cert = ClientCertificate::from_der(&der, None).unwrap();
    assert_eq!(
        cert.subject(),
        "CN=second, CN=first, OU=Unit, L=Zürich 🦀, O=Müller Größe, C=DE"
    );
    assert_eq!(cert.common_name(), Some("second"));
    assert!(matches(
        &cert,
        IdentitySettings {
            subject: Some(cert.subject().to_owned()),
            common_name: Some("second".to_owned()),
            ..id()
        }
    ));
    assert!(!matches(
        &cert,
        IdentitySettings {
            common_name: Some("first".to_owned()),
            ..id()
        }
    ));
}
