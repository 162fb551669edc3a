//! PKCS#10 certificate requests with Ed25519 keys.

use der::asn1::SetOfVec;
use der::{Decode, Encode};
use ed25519_dalek::{SigningKey, VerifyingKey};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};

use super::error::PkiError;
use super::x509;

/// A parsed certificate request whose self-signature has been verified.
#[derive(Clone, Debug)]
pub struct Csr {
    der: Vec<u8>,
    req: CertReq,
    key: VerifyingKey,
}

impl Csr {
    /// A request for `key`, with the given extra subject fields (OpenSSL
    /// short names such as `O`, `OU`, `C`, `emailAddress`, or dotted OIDs).
    /// `CN` and `serialNumber` are refused: the registry assigns them.
    pub fn generate(
        key: &SigningKey,
        extra_subject: &[(String, String)],
    ) -> Result<Self, PkiError> {
        let info = CertReqInfo {
            version: Version::V1,
            subject: x509::subject_from_fields(extra_subject)?,
            public_key: x509::spki_of(&key.verifying_key()),
            attributes: SetOfVec::new(),
        };
        let signature = x509::sign(key, &info.to_der()?);
        let req = CertReq {
            info,
            algorithm: x509::ed25519_algorithm(),
            signature,
        };
        Self::from_der(&req.to_der()?)
    }

    /// Parses a PEM request (`CERTIFICATE REQUEST`, or the older `NEW
    /// CERTIFICATE REQUEST`) and verifies it as [`from_der`](Self::from_der).
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = x509::pem_block(pem, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
        Self::from_der(&der)
    }

    /// Parses a DER request. Rejects keys and signatures other than Ed25519
    /// and requests whose signature does not verify with their own key.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let req = CertReq::from_der(der)?;
        let tbs = &der[x509::signed_part(der)?];
        let key = x509::key_of_spki(&req.info.public_key).map_err(|e| match e {
            PkiError::Certificate(m) => PkiError::Csr(m),
            e => e,
        })?;
        if !x509::is_ed25519(&req.algorithm) {
            return Err(PkiError::UnsupportedAlgorithm(x509::algorithm_name(
                &req.algorithm.oid,
            )));
        }
        if !x509::signature_ok(&key, tbs, &req.signature) {
            return Err(PkiError::BadSignature("certificate request"));
        }
        Ok(Self {
            der: der.to_vec(),
            req,
            key,
        })
    }

    /// The request in PEM.
    pub fn to_pem(&self) -> String {
        x509::to_pem("CERTIFICATE REQUEST", &self.der)
    }

    /// The request in DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The key the certificate will be issued for.
    pub fn public_key(&self) -> VerifyingKey {
        self.key
    }

    /// The requested subject.
    pub(crate) fn subject(&self) -> &Name {
        &self.req.info.subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::key::generate_key;

    /// A P-256 request made with `openssl req -new` (subject O=Example,
    /// CN=ec): well-formed, but not Ed25519.
    const EC_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIHZMIGBAgEAMB8xEDAOBgNVBAoMB0V4YW1wbGUxCzAJBgNVBAMMAmVjMFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAEXr+Z7erLO3NPjbUY4PDE8EOSq+GZA935xm58
ydQm/oyrDIc0oyZBMeEHLkrZA9VjMsrkAiebj0iw7p6DbdXYAaAAMAoGCCqGSM49
BAMCA0cAMEQCICRksnkPtVWgGnX40ac2wiEtSfNbpVKOZGZRJ6HBcc/rAiBDf/KZ
y7B2TbcvoQlxHqo8oGZlSW98q3DHxwbjhuV+7g==
-----END CERTIFICATE REQUEST-----
";

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn generate_parse_round_trip() {
        let key = generate_key();
        let extra = fields(&[
            ("O", "Nexedi"),
            ("OU", "re6st"),
            ("C", "FR"),
            ("emailAddress", "node@example.org"),
            ("2.5.4.7", "Lille"),
        ]);
        let csr = Csr::generate(&key, &extra).unwrap();
        assert_eq!(csr.public_key(), key.verifying_key());
        let pem = csr.to_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        for parsed in [
            Csr::from_pem(&pem).unwrap(),
            Csr::from_der(csr.der()).unwrap(),
        ] {
            assert_eq!(parsed.der(), csr.der());
            assert_eq!(parsed.public_key(), key.verifying_key());
        }
        // RFC 4514 order: last RDN first.
        assert_eq!(
            csr.subject().to_string(),
            "L=Lille,EMAIL=node@example.org,C=FR,OU=re6st,O=Nexedi"
        );
        // Surrounding text is ignored, as in `openssl req -text` output.
        let noisy = format!("Certificate Request:\n  blah\n{pem}trailing\n");
        assert_eq!(Csr::from_pem(&noisy).unwrap().der(), csr.der());
        assert!(Csr::generate(&key, &[]).is_ok());
    }

    #[test]
    fn generate_rejects_bad_fields() {
        let key = generate_key();
        for (field, value) in [
            ("CN", "1/16"),
            ("commonName", "x"),
            ("serialNumber", "5"),
            ("2.5.4.3", "x"),
            ("2.5.4.5", "5"),
            ("C", "France"),
            ("C", "F1"),
            ("emailAddress", "é@example.org"),
            ("O", ""),
            ("nonsense", "x"),
            ("1.2", "x"),
        ] {
            let err = Csr::generate(&key, &fields(&[(field, value)])).unwrap_err();
            assert!(
                matches!(err, PkiError::Subject(_)),
                "{field}={value}: {err}"
            );
        }
    }

    #[test]
    fn rejects_non_ed25519_key() {
        let err = Csr::from_pem(EC_CSR).unwrap_err();
        assert!(matches!(err, PkiError::UnsupportedAlgorithm(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("1.2.840.10045.2.1") && msg.contains("Ed25519"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_bad_signature() {
        let csr = Csr::generate(&generate_key(), &fields(&[("O", "Nexedi")])).unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let err = Csr::from_der(&der).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature(_)), "{err}");
        assert_eq!(err.to_string(), "bad signature on the certificate request");

        // The same signature over a changed subject.
        let mut der = csr.der().to_vec();
        let at = der.windows(6).position(|w| w == b"Nexedi").unwrap();
        der[at] = b'M';
        assert!(matches!(
            Csr::from_der(&der),
            Err(PkiError::BadSignature(_))
        ));
    }

    #[test]
    fn rejects_malformed_input() {
        let csr = Csr::generate(&generate_key(), &[]).unwrap();
        for cut in 0..csr.der().len() {
            assert!(Csr::from_der(&csr.der()[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(Csr::from_pem("hello"), Err(PkiError::Pem(_))));
        assert!(matches!(
            Csr::from_pem(
                "-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n"
            ),
            Err(PkiError::Pem(_))
        ));
        assert!(matches!(
            Csr::from_pem("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"),
            Err(PkiError::Pem(_))
        ));
        assert!(matches!(
            Csr::from_der(&[0x30, 0x00]),
            Err(PkiError::Der(_))
        ));
    }
}
