//! Shared X.509 plumbing: algorithm identifiers, PEM blocks, raw signed
//! structures, subject names and times. Internal to the `pki` module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use const_oid::ObjectIdentifier;
use der::asn1::{Any, BitString, Ia5StringRef, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Decode, Encode, Header, Reader, SliceReader, Tag, Tagged};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::time::Time;

use super::error::PkiError;

/// id-Ed25519 (RFC 8410).
pub(crate) const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// commonName.
pub(crate) const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// serialNumber (the subject attribute, not the certificate serial).
pub(crate) const SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
/// countryName.
const COUNTRY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");
/// PKCS#9 emailAddress.
const EMAIL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// The subject attributes `Csr::generate` accepts by short name, with the
/// OpenSSL spelling operators know.
const SUBJECT_FIELDS: &[(&str, &str)] = &[
    ("C", "2.5.4.6"),
    ("ST", "2.5.4.8"),
    ("L", "2.5.4.7"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("emailAddress", "1.2.840.113549.1.9.1"),
    ("name", "2.5.4.41"),
    ("GN", "2.5.4.42"),
    ("SN", "2.5.4.4"),
    ("title", "2.5.4.12"),
    ("description", "2.5.4.13"),
];

/// The AlgorithmIdentifier of Ed25519 (no parameters).
pub(crate) fn ed25519_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ED25519,
        parameters: None,
    }
}

/// Whether an AlgorithmIdentifier is Ed25519 (absent parameters, RFC 8410).
pub(crate) fn is_ed25519(alg: &AlgorithmIdentifierOwned) -> bool {
    alg.oid == ED25519 && alg.parameters.is_none()
}

/// A readable name for an algorithm OID, for error messages.
pub(crate) fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match const_oid::db::DB.by_oid(oid) {
        Some(name) => format!("{name} ({oid})"),
        None => oid.to_string(),
    }
}

/// The SubjectPublicKeyInfo of an Ed25519 key.
pub(crate) fn spki_of(key: &VerifyingKey) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned {
        algorithm: ed25519_algorithm(),
        subject_public_key: BitString::from_bytes(key.as_bytes())
            // A 32-byte bit string with no unused bits is always valid.
            .expect("Ed25519 public key bit string"),
    }
}

/// The Ed25519 key in a SubjectPublicKeyInfo; `what` names the structure
/// for error messages. Weak (small-order) keys are rejected.
pub(crate) fn key_of_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<VerifyingKey, PkiError> {
    if !is_ed25519(&spki.algorithm) {
        return Err(PkiError::UnsupportedAlgorithm(algorithm_name(
            &spki.algorithm.oid,
        )));
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PkiError::Certificate("Ed25519 public key is not 32 bytes".into()))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| PkiError::Certificate("Ed25519 public key is not a curve point".into()))?;
    if key.is_weak() {
        return Err(PkiError::Certificate(
            "Ed25519 public key has small order".into(),
        ));
    }
    Ok(key)
}

/// Signs `tbs` and returns the signature as a BIT STRING.
pub(crate) fn sign(key: &SigningKey, tbs: &[u8]) -> BitString {
    let sig: Signature = key.sign(tbs);
    BitString::from_bytes(&sig.to_bytes())
        // A 64-byte bit string with no unused bits is always valid.
        .expect("Ed25519 signature bit string")
}

/// Whether `sig` (a BIT STRING) is a valid strict Ed25519 signature of
/// `msg` by `key`.
pub(crate) fn signature_ok(key: &VerifyingKey, msg: &[u8], sig: &BitString) -> bool {
    let Some(bytes) = sig.as_bytes().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// The raw bytes of the first element of a DER SEQUENCE (the signed part of
/// a certificate or request), exactly as they appear in `der`.
pub(crate) fn signed_part(der: &[u8]) -> Result<std::ops::Range<usize>, PkiError> {
    let mut reader = SliceReader::new(der)?;
    let header = Header::decode(&mut reader)?;
    header.tag.assert_eq(Tag::Sequence)?;
    let start = usize::try_from(reader.position())?;
    let tbs = reader.tlv_bytes()?;
    Ok(start..start + tbs.len())
}

/// The DER content of the PEM block labelled with one of `labels` in
/// `input`. Text before and after the block (as printed by `openssl x509
/// -text`) is ignored.
pub(crate) fn pem_block(input: &str, labels: &[&str]) -> Result<Vec<u8>, PkiError> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let Some(start) = input.find(&begin) else {
            continue;
        };
        let Some(stop) = input[start..].find(&end) else {
            return Err(PkiError::Pem(format!("no \"{end}\" line")));
        };
        let block = &input[start..start + stop + end.len()];
        let (_, der) =
            der::pem::decode_vec(block.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))?;
        return Ok(der);
    }
    Err(PkiError::Pem(format!(
        "no \"-----BEGIN {}-----\" block",
        labels[0]
    )))
}

/// PEM armour for `der` under `label`.
pub(crate) fn to_pem(label: &'static str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        // Only fails on lengths beyond what a certificate can reach.
        .expect("PEM encoding")
}

/// The text of a DirectoryString-like value (UTF8String, PrintableString,
/// IA5String, TeletexString read as Latin-1 is not supported).
pub(crate) fn any_to_str(value: &Any) -> Option<&str> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(value.value()).ok()
        }
        _ => None,
    }
}

/// The values of every attribute `oid` in `name`, in order.
pub(crate) fn name_values(name: &Name, oid: ObjectIdentifier) -> Vec<&Any> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == oid)
        .map(|atv| &atv.value)
        .collect()
}

/// The single string value of attribute `oid` in `name`: `None` when
/// absent, repeated or not a string.
pub(crate) fn single_value(name: &Name, oid: ObjectIdentifier) -> Option<&str> {
    match name_values(name, oid).as_slice() {
        [one] => any_to_str(one),
        _ => None,
    }
}

/// One single-attribute RDN.
pub(crate) fn rdn(
    oid: ObjectIdentifier,
    value: Any,
) -> Result<RelativeDistinguishedName, PkiError> {
    let mut set = SetOfVec::new();
    set.insert(AttributeTypeAndValue { oid, value })?;
    Ok(RelativeDistinguishedName(set))
}

/// A UTF8String value.
pub(crate) fn utf8(s: &str) -> Result<Any, PkiError> {
    Ok(Any::encode_from(&Utf8StringRef::new(s)?)?)
}

/// A PrintableString value.
pub(crate) fn printable(s: &str) -> Result<Any, PkiError> {
    Ok(Any::encode_from(&PrintableStringRef::new(s)?)?)
}

/// The subject of a certificate request from `(field, value)` pairs, with
/// OpenSSL's short names (`O`, `OU`, `C`, `emailAddress`, ...) or dotted
/// OIDs. `CN` and `serialNumber` are refused: the registry assigns them.
pub(crate) fn subject_from_fields(fields: &[(String, String)]) -> Result<Name, PkiError> {
    let mut rdns = Vec::with_capacity(fields.len());
    for (field, value) in fields {
        let oid = SUBJECT_FIELDS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(field))
            .map(|(_, oid)| ObjectIdentifier::new_unwrap(oid))
            .or_else(|| {
                field
                    .contains('.')
                    .then(|| ObjectIdentifier::new(field).ok())
                    .flatten()
            })
            .ok_or_else(|| PkiError::Subject(format!("unknown field {field:?}")))?;
        if oid == CN || oid == SERIAL_NUMBER {
            return Err(PkiError::Subject(format!(
                "{field} is assigned by the registry and cannot be requested"
            )));
        }
        if value.is_empty() {
            return Err(PkiError::Subject(format!("{field} is empty")));
        }
        let any = if oid == COUNTRY {
            if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(PkiError::Subject(format!(
                    "C={value:?} is not a two-letter country code"
                )));
            }
            printable(value)?
        } else if oid == EMAIL {
            let ia5 = Ia5StringRef::new(value)
                .map_err(|_| PkiError::Subject(format!("emailAddress={value:?} is not ASCII")))?;
            Any::encode_from(&ia5)?
        } else {
            utf8(value)?
        };
        rdns.push(rdn(oid, any)?);
    }
    Ok(RdnSequence(rdns))
}

/// The subject of an issued certificate: the request's fields except any
/// CN or serialNumber, then `serialNumber` and `CN`.
pub(crate) fn node_subject(
    requested: &Name,
    cn: &str,
    subject_serial: u32,
) -> Result<Name, PkiError> {
    let mut rdns = Vec::with_capacity(requested.0.len() + 2);
    for r in &requested.0 {
        let mut kept = SetOfVec::new();
        for atv in r.0.iter().filter(|a| a.oid != CN && a.oid != SERIAL_NUMBER) {
            kept.insert(atv.clone())?;
        }
        if !kept.is_empty() {
            rdns.push(RelativeDistinguishedName(kept));
        }
    }
    rdns.push(rdn(SERIAL_NUMBER, printable(&subject_serial.to_string())?)?);
    rdns.push(rdn(CN, utf8(cn)?)?);
    Ok(RdnSequence(rdns))
}

/// A certificate time (UTCTime through 2049, GeneralizedTime after, as RFC
/// 5280 asks); sub-second parts are dropped.
pub(crate) fn time(t: SystemTime) -> Result<Time, PkiError> {
    let since = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Validity("time before 1970".into()))?;
    let since = Duration::from_secs(since.as_secs());
    let general = der::asn1::GeneralizedTime::from_unix_duration(since)
        .map_err(|_| PkiError::Validity("time after year 9999".into()))?;
    if general.to_date_time().year() <= der::asn1::UtcTime::MAX_YEAR {
        Ok(Time::UtcTime(der::asn1::UtcTime::from_unix_duration(
            since,
        )?))
    } else {
        Ok(Time::GeneralTime(general))
    }
}

/// A SubjectKeyIdentifier for a key: the first 160 bits of the SHA-256 of
/// the key bits (RFC 7093, method 1).
pub(crate) fn key_identifier(key: &VerifyingKey) -> Vec<u8> {
    Sha256::digest(key.as_bytes())[..20].to_vec()
}

/// An extension with its DER-encoded value.
pub(crate) fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<x509_cert::ext::Extension, PkiError> {
    Ok(x509_cert::ext::Extension {
        extn_id: oid,
        critical,
        extn_value: der::asn1::OctetString::new(value.to_der()?)?,
    })
}

/// Decodes the value of extension `oid` in `exts`, if present.
pub(crate) fn find_extension<'e, T: Decode<'e>>(
    exts: &'e Option<x509_cert::ext::Extensions>,
    oid: ObjectIdentifier,
) -> Result<Option<T>, PkiError> {
    let Some(ext) = exts.iter().flatten().find(|e| e.extn_id == oid) else {
        return Ok(None);
    };
    Ok(Some(T::from_der(ext.extn_value.as_bytes())?))
}
