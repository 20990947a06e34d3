//! The few DER structures a verification key needs: a `SubjectPublicKeyInfo` (from a
//! `PUBLIC KEY` PEM or inside a certificate) and the RSA `RSAPublicKey` in it.
//!
//! Hand-written on purpose: jsonwebtoken's own PEM reader guesses the key type from the
//! first known OID anywhere in the file, which in a certificate can be the issuer's
//! signature algorithm (an Ed25519-signed certificate of an RSA key reads as Ed25519),
//! and it does not report the RSA modulus size or the EC curve. A full X.509 parser
//! (x509-parser and its nom stack) would be a large dependency for three fields.

/// A public key as found in a `SubjectPublicKeyInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpkiKey {
    /// Modulus without leading zero bytes, and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed point `04 || x || y` on P-256.
    EcP256(Vec<u8>),
    /// Uncompressed point on P-384.
    EcP384(Vec<u8>),
    /// The 32 raw bytes of an Ed25519 key.
    Ed25519(Vec<u8>),
    /// Any other algorithm or curve: its OID in dotted form is not needed, only that it
    /// is not usable.
    Unsupported,
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0;

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// One TLV: `(tag, content, rest)`. Only definite lengths (DER).
fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match next(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// Parses a DER `SubjectPublicKeyInfo`; `None` if it is not well formed.
pub(crate) fn parse_spki(der: &[u8]) -> Option<SpkiKey> {
    let (spki, _) = expect(der, TAG_SEQUENCE)?;
    let (alg_id, rest) = expect(spki, TAG_SEQUENCE)?;
    let (bits, _) = expect(rest, TAG_BIT_STRING)?;
    let (unused, key) = bits.split_first()?;
    if *unused != 0 {
        return None;
    }
    let (oid, params) = expect(alg_id, TAG_OID)?;
    let key = key.to_vec();
    Some(match oid {
        OID_RSA => {
            let (n, e) = parse_rsa_public_key(&key)?;
            SpkiKey::Rsa { n, e }
        }
        OID_EC => match expect(params, TAG_OID)?.0 {
            OID_P256 if key.len() == 65 && key[0] == 4 => SpkiKey::EcP256(key),
            OID_P384 if key.len() == 97 && key[0] == 4 => SpkiKey::EcP384(key),
            _ => SpkiKey::Unsupported,
        },
        OID_ED25519 if key.len() == 32 => SpkiKey::Ed25519(key),
        _ => SpkiKey::Unsupported,
    })
}

/// The `SubjectPublicKeyInfo` of a DER X.509 certificate (still DER).
pub(crate) fn certificate_spki(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(der, TAG_SEQUENCE)?;
    let (mut tbs, _) = expect(cert, TAG_SEQUENCE)?;
    if tbs.first() == Some(&TAG_VERSION) {
        tbs = next(tbs)?.2;
    }
    // serial, signature algorithm, issuer, validity, subject, then the key.
    let (_, _, rest) = next(tbs).filter(|(tag, ..)| *tag == TAG_INTEGER)?;
    let mut rest = rest;
    for _ in 0..4 {
        rest = expect(rest, TAG_SEQUENCE)?.1;
    }
    let (tag, _, after) = next(rest)?;
    // The SPKI with its own tag and length.
    (tag == TAG_SEQUENCE).then(|| &rest[..rest.len() - after.len()])
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn parse_rsa_public_key(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (seq, _) = expect(der, TAG_SEQUENCE)?;
    let (n, rest) = expect(seq, TAG_INTEGER)?;
    let (e, _) = expect(rest, TAG_INTEGER)?;
    Some((
        strip_leading_zeros(n).to_vec(),
        strip_leading_zeros(e).to_vec(),
    ))
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Size in bits of a big-endian unsigned integer.
pub(crate) fn bit_length(bytes: &[u8]) -> usize {
    let bytes = strip_leading_zeros(bytes);
    match bytes.first() {
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}
