//! The network's certificate authority: a self-signed Ed25519 CA whose
//! serial number encodes the network, and the issuing of node certificates.

use std::fmt;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use const_oid::AssociatedOid;
use der::asn1::OctetString;
use der::{Decode, Encode};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::{Name, RdnSequence};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

use super::cert::NodeCert;
use super::csr::Csr;
use super::error::PkiError;
use super::key;
use super::prefix::{Network, NodePrefix};
use super::x509;

/// The network CA: its certificate and private key.
pub struct Ca {
    cert: Certificate,
    der: Vec<u8>,
    key: SigningKey,
    network: Network,
    key_id: Vec<u8>,
}

/// What [`Ca::issue`] needs to issue a node certificate.
#[derive(Clone, Copy, Debug)]
pub struct IssueRequest<'a> {
    /// The node's verified request: its key and extra subject fields.
    pub csr: &'a Csr,
    /// The allocated prefix, written as the subject CN.
    pub prefix: NodePrefix,
    /// The small integer written as the subject `serialNumber`.
    pub subject_serial: u32,
    /// The certificate serial number (unique, non-zero).
    pub serial: u64,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
}

impl Ca {
    /// A new CA for `network` with a fresh key, valid from now for `days`.
    pub fn generate(network: Network, days: u32) -> Result<Self, PkiError> {
        if days == 0 {
            return Err(PkiError::Validity(
                "a CA must be valid for at least one day".into(),
            ));
        }
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
        Self::self_signed(network, key::generate_key(), now, not_after)
    }

    /// A CA from its PEM certificate and PKCS#8 PEM key. Checks that the
    /// certificate is a self-signed Ed25519 CA encoding a network, and that
    /// the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = x509::pem_block(cert_pem, &["CERTIFICATE"])?;
        let key = key::key_from_pem(key_pem).map_err(PkiError::Key)?;
        let (cert, network) = parse_ca_cert(&der)?;
        let cert_key = x509::key_of_spki(&cert.tbs_certificate.subject_public_key_info)?;
        if cert_key != key.verifying_key() {
            return Err(PkiError::Key(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        let key_id = ca_key_id(&cert, &cert_key)?;
        Ok(Self {
            cert,
            der,
            key,
            network,
            key_id,
        })
    }

    /// Loads a CA from its certificate and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert = fs::read_to_string(cert_path).map_err(|e| PkiError::io(cert_path, e))?;
        let key = fs::read_to_string(key_path).map_err(|e| PkiError::io(key_path, e))?;
        Self::from_pem(&cert, &key).map_err(|e| match e {
            PkiError::Key(m) => PkiError::Key(format!("{}: {m}", key_path.display())),
            e => PkiError::Certificate(format!("{}: {e}", cert_path.display())),
        })
    }

    /// Writes `ca.crt` (mode 0644) and `ca.key` (mode 0600) into `dir`.
    /// Refuses to overwrite: fails without writing anything when either
    /// file exists.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::AlreadyExists(path.clone()));
            }
        }
        key::write_new_file(&key_path, key::key_to_pem(&self.key).as_bytes(), 0o600)?;
        if let Err(e) = key::write_new_file(&cert_path, self.cert_pem().as_bytes(), 0o644) {
            // Do not leave a key without its certificate behind.
            let _ = fs::remove_file(&key_path);
            return Err(e);
        }
        Ok(())
    }

    /// The network encoded in the CA serial number.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        x509::to_pem("CERTIFICATE", &self.der)
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.der
    }

    /// The CA public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// An Ed25519 signature of `msg` by the CA key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Issues a node certificate: subject = the request's fields, then
    /// `serialNumber` and CN = the prefix; CA:false, keyUsage
    /// digitalSignature, signed by the CA.
    pub fn issue(&self, req: &IssueRequest<'_>) -> Result<NodeCert, PkiError> {
        // Checks that the prefix fits in the network.
        self.network.subnet(&req.prefix)?;
        if req.serial == 0 {
            return Err(PkiError::Certificate(
                "serial number must be positive".into(),
            ));
        }
        if req.not_after <= req.not_before {
            return Err(PkiError::Validity(
                "not_after is not after not_before".into(),
            ));
        }
        self.issue_with_cn(req, &req.prefix.to_string())
    }

    /// Issues a node certificate with `cn` as subject CN, without checking
    /// that it is a prefix of the network (tests use it to forge bad CNs).
    fn issue_with_cn(&self, req: &IssueRequest<'_>, cn: &str) -> Result<NodeCert, PkiError> {
        let subject = x509::node_subject(req.csr.subject(), cn, req.subject_serial)?;
        let node_key = req.csr.public_key();
        let extensions = vec![
            x509::extension(
                BasicConstraints::OID,
                true,
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
            )?,
            x509::extension(
                KeyUsage::OID,
                true,
                &KeyUsage(KeyUsages::DigitalSignature.into()),
            )?,
            x509::extension(
                SubjectKeyIdentifier::OID,
                false,
                &SubjectKeyIdentifier(OctetString::new(x509::key_identifier(&node_key))?),
            )?,
            x509::extension(
                AuthorityKeyIdentifier::OID,
                false,
                &AuthorityKeyIdentifier {
                    key_identifier: Some(OctetString::new(self.key_id.clone())?),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                },
            )?,
        ];
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::from(req.serial),
            signature: x509::ed25519_algorithm(),
            issuer: self.cert.tbs_certificate.subject.clone(),
            validity: Validity {
                not_before: x509::time(req.not_before)?,
                not_after: x509::time(req.not_after)?,
            },
            subject,
            subject_public_key_info: x509::spki_of(&node_key),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        NodeCert::from_der(&sign_certificate(&self.key, tbs)?)
    }

    /// A self-signed CA certificate for `network` and `key`.
    pub(crate) fn self_signed(
        network: Network,
        key: SigningKey,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::Validity(
                "not_after is not after not_before".into(),
            ));
        }
        let name: Name = RdnSequence(vec![x509::rdn(
            x509::CN,
            x509::utf8(&format!("re6st CA {network}"))?,
        )?]);
        let verifying = key.verifying_key();
        let key_id = x509::key_identifier(&verifying);
        let extensions = vec![
            x509::extension(
                BasicConstraints::OID,
                true,
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                },
            )?,
            x509::extension(
                KeyUsage::OID,
                true,
                &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            )?,
            x509::extension(
                SubjectKeyIdentifier::OID,
                false,
                &SubjectKeyIdentifier(OctetString::new(key_id.clone())?),
            )?,
        ];
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::new(&network.ca_serial())?,
            signature: x509::ed25519_algorithm(),
            issuer: name.clone(),
            validity: Validity {
                not_before: x509::time(not_before)?,
                not_after: x509::time(not_after)?,
            },
            subject: name,
            subject_public_key_info: x509::spki_of(&verifying),
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let der = sign_certificate(&key, tbs)?;
        let cert = Certificate::from_der(&der)?;
        Ok(Self {
            cert,
            der,
            key,
            network,
            key_id,
        })
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("network", &self.network)
            .field("subject", &self.cert.tbs_certificate.subject.to_string())
            .finish_non_exhaustive()
    }
}

/// Signs `tbs` with `key` and returns the DER certificate.
fn sign_certificate(key: &SigningKey, tbs: TbsCertificate) -> Result<Vec<u8>, PkiError> {
    let signature = x509::sign(key, &tbs.to_der()?);
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: x509::ed25519_algorithm(),
        signature,
    };
    Ok(cert.to_der()?)
}

/// Parses a CA certificate: self-signed with Ed25519, basicConstraints cA
/// true, serial encoding a network.
pub(crate) fn parse_ca_cert(der: &[u8]) -> Result<(Certificate, Network), PkiError> {
    let cert = Certificate::from_der(der)?;
    let tbs = &der[x509::signed_part(der)?];
    let key = x509::key_of_spki(&cert.tbs_certificate.subject_public_key_info)?;
    if !x509::is_ed25519(&cert.signature_algorithm) {
        return Err(PkiError::UnsupportedAlgorithm(x509::algorithm_name(
            &cert.signature_algorithm.oid,
        )));
    }
    if cert.tbs_certificate.issuer != cert.tbs_certificate.subject
        || !x509::signature_ok(&key, tbs, &cert.signature)
    {
        return Err(PkiError::BadSignature("CA certificate (not self-signed)"));
    }
    let bc = x509::find_extension::<BasicConstraints>(
        &cert.tbs_certificate.extensions,
        BasicConstraints::OID,
    )?;
    if !bc.is_some_and(|bc| bc.ca) {
        return Err(PkiError::Certificate(
            "not a CA certificate (basicConstraints cA is not true)".into(),
        ));
    }
    let network = Network::from_ca_serial(cert.tbs_certificate.serial_number.as_bytes())?;
    Ok((cert, network))
}

/// The CA's key identifier: its SubjectKeyIdentifier, or one computed from
/// the key when the certificate has none.
fn ca_key_id(cert: &Certificate, key: &VerifyingKey) -> Result<Vec<u8>, PkiError> {
    let ski = x509::find_extension::<SubjectKeyIdentifier>(
        &cert.tbs_certificate.extensions,
        SubjectKeyIdentifier::OID,
    )?;
    Ok(match ski {
        Some(ski) => ski.0.as_bytes().to_vec(),
        None => x509::key_identifier(key),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::UNIX_EPOCH;

    use ed25519_dalek::Verifier as _;

    use super::*;
    use crate::pki::key::generate_key;

    /// 2026-01-01T00:00:00Z.
    pub(crate) fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    pub(crate) const DAY: Duration = Duration::from_secs(86_400);

    /// A CA for `network`, valid ten years from `t0`.
    pub(crate) fn test_ca(network: &str) -> Ca {
        Ca::self_signed(
            network.parse().unwrap(),
            generate_key(),
            t0(),
            t0() + 3650 * DAY,
        )
        .unwrap()
    }

    /// A request for prefix `prefix`, serial `serial`, valid one day from t0.
    pub(crate) fn request<'a>(csr: &'a Csr, prefix: &str, serial: u64) -> IssueRequest<'a> {
        IssueRequest {
            csr,
            prefix: prefix.parse().unwrap(),
            subject_serial: 7,
            serial,
            not_before: t0(),
            not_after: t0() + DAY,
        }
    }

    /// A node certificate with an arbitrary CN, signed by `ca`.
    pub(crate) fn issue_with_cn(ca: &Ca, csr: &Csr, cn: &str) -> NodeCert {
        ca.issue_with_cn(&request(csr, "1/16", 99), cn).unwrap()
    }

    #[test]
    fn generated_ca_certificate() {
        let ca = Ca::generate("2001:db8:42::/48".parse().unwrap(), 30).unwrap();
        assert_eq!(ca.network().to_string(), "2001:db8:42::/48");
        let (cert, network) = parse_ca_cert(ca.cert_der()).unwrap();
        assert_eq!(network, ca.network());
        let tbs = &cert.tbs_certificate;
        assert_eq!(tbs.version, Version::V3);
        assert_eq!(
            tbs.serial_number.as_bytes(),
            [0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x42]
        );
        assert_eq!(tbs.subject.to_string(), "CN=re6st CA 2001:db8:42::/48");
        assert_eq!(tbs.issuer, tbs.subject);
        let exts = &tbs.extensions;
        let bc: BasicConstraints = x509::find_extension(exts, BasicConstraints::OID)
            .unwrap()
            .unwrap();
        assert!(bc.ca);
        let bc_ext = exts
            .iter()
            .flatten()
            .find(|e| e.extn_id == BasicConstraints::OID)
            .unwrap();
        assert!(bc_ext.critical);
        let ku: KeyUsage = x509::find_extension(exts, KeyUsage::OID).unwrap().unwrap();
        assert_eq!(ku.0, KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        let ski: SubjectKeyIdentifier = x509::find_extension(exts, SubjectKeyIdentifier::OID)
            .unwrap()
            .unwrap();
        assert_eq!(ski.0.as_bytes(), x509::key_identifier(&ca.verifying_key()));
        let validity = tbs
            .validity
            .not_after
            .to_system_time()
            .duration_since(tbs.validity.not_before.to_system_time())
            .unwrap();
        assert_eq!(validity, 30 * DAY);
    }

    #[test]
    fn generate_needs_a_validity() {
        let err = Ca::generate("2001:db8:42::/48".parse().unwrap(), 0).unwrap_err();
        assert!(matches!(err, PkiError::Validity(_)), "{err}");
    }

    #[test]
    fn pem_round_trip_and_key_mismatch() {
        let ca = test_ca("2001:db8:42::/48");
        let key_pem = key::key_to_pem(&ca.key);
        let again = Ca::from_pem(&ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.network(), ca.network());
        assert_eq!(again.verifying_key(), ca.verifying_key());

        let other = key::key_to_pem(&generate_key());
        let err = Ca::from_pem(&ca.cert_pem(), &other).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(Ca::from_pem(&ca.cert_pem(), "garbage").is_err());
        assert!(Ca::from_pem("garbage", &key_pem).is_err());
    }

    #[test]
    fn node_certificate_is_not_a_ca() {
        let ca = test_ca("2001:db8:42::/48");
        let csr = Csr::generate(&generate_key(), &[]).unwrap();
        let node = ca.issue(&request(&csr, "5/16", 3)).unwrap();
        let err = Ca::from_pem(&node.to_pem(), &key::key_to_pem(&ca.key)).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature(_)), "{err}");
    }

    #[test]
    fn write_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca("2001:db8:42::/48");
        ca.write(dir.path()).unwrap();
        let mode = |name: &str| {
            fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("ca.crt") & 0o600, 0o600);
        let loaded = Ca::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.verifying_key(), ca.verifying_key());

        // A second write, of this or another CA, changes nothing.
        let before = fs::read(dir.path().join("ca.key")).unwrap();
        for other in [&ca, &test_ca("2001:db8:43::/48")] {
            let err = other.write(dir.path()).unwrap_err();
            assert!(matches!(err, PkiError::AlreadyExists(_)), "{err}");
        }
        assert_eq!(fs::read(dir.path().join("ca.key")).unwrap(), before);
    }

    #[test]
    fn write_refuses_when_either_file_exists() {
        for existing in ["ca.crt", "ca.key"] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(existing), "precious").unwrap();
            let err = test_ca("2001:db8:42::/48").write(dir.path()).unwrap_err();
            assert!(
                matches!(err, PkiError::AlreadyExists(ref p) if p.ends_with(existing)),
                "{err}"
            );
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [existing], "nothing else written");
            assert_eq!(
                fs::read_to_string(dir.path().join(existing)).unwrap(),
                "precious"
            );
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Ca::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        let ca = test_ca("2001:db8:42::/48");
        fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let err = Ca::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn issue_round_trip() {
        let ca = test_ca("2001:db8:42::/48");
        let key = generate_key();
        let extra = [("O".to_string(), "Nexedi".to_string())];
        let csr = Csr::generate(&key, &extra).unwrap();
        let req = IssueRequest {
            csr: &csr,
            prefix: "5/16".parse().unwrap(),
            subject_serial: 42,
            serial: u64::MAX,
            not_before: t0() + Duration::from_millis(1500),
            not_after: UNIX_EPOCH + Duration::from_secs(2_871_763_200), // 2061
        };
        let cert = ca.issue(&req).unwrap();
        for parsed in [
            NodeCert::from_der(cert.der()).unwrap(),
            NodeCert::from_pem(&cert.to_pem()).unwrap(),
        ] {
            assert_eq!(parsed.serial(), u64::MAX);
            assert_eq!(parsed.prefix().unwrap().to_string(), "5/16");
            assert_eq!(parsed.subject_serial(), Some(42));
            assert_eq!(parsed.not_before(), t0() + Duration::from_secs(1));
            assert_eq!(parsed.not_after(), req.not_after);
            assert_eq!(parsed.public_key().unwrap(), key.verifying_key());
            assert!(!parsed.is_ca());
        }
        let tbs = &cert.x509().tbs_certificate;
        assert_eq!(tbs.subject.to_string(), "CN=5/16,SERIALNUMBER=42,O=Nexedi");
        assert_eq!(tbs.issuer.to_string(), "CN=re6st CA 2001:db8:42::/48");
        assert!(matches!(
            tbs.validity.not_before,
            x509_cert::time::Time::UtcTime(_)
        ));
        assert!(matches!(
            tbs.validity.not_after,
            x509_cert::time::Time::GeneralTime(_)
        ));
        let exts = &tbs.extensions;
        let bc: BasicConstraints = x509::find_extension(exts, BasicConstraints::OID)
            .unwrap()
            .unwrap();
        assert!(!bc.ca);
        let ku: KeyUsage = x509::find_extension(exts, KeyUsage::OID).unwrap().unwrap();
        assert_eq!(ku, KeyUsage(KeyUsages::DigitalSignature.into()));
        let aki: AuthorityKeyIdentifier = x509::find_extension(exts, AuthorityKeyIdentifier::OID)
            .unwrap()
            .unwrap();
        assert_eq!(
            aki.key_identifier.unwrap().as_bytes(),
            x509::key_identifier(&ca.verifying_key())
        );
        assert!(x509::signature_ok(
            &ca.verifying_key(),
            cert.tbs_der(),
            &cert.x509().signature
        ));
    }

    #[test]
    fn issue_rejects() {
        let ca = test_ca("2001:db8:42::/120");
        let csr = Csr::generate(&generate_key(), &[]).unwrap();
        assert!(ca.issue(&request(&csr, "5/8", 1)).is_ok());
        let err = ca.issue(&request(&csr, "5/16", 1)).unwrap_err();
        assert!(matches!(err, PkiError::Prefix(_)), "{err}");
        assert!(ca.issue(&request(&csr, "5/8", 0)).is_err());
        let mut backwards = request(&csr, "5/8", 1);
        backwards.not_after = backwards.not_before;
        assert!(matches!(ca.issue(&backwards), Err(PkiError::Validity(_))));
        let mut ancient = request(&csr, "5/8", 1);
        ancient.not_before = UNIX_EPOCH - DAY;
        assert!(matches!(ca.issue(&ancient), Err(PkiError::Validity(_))));
    }

    #[test]
    fn sign_uses_the_ca_key() {
        let ca = test_ca("2001:db8:42::/48");
        let sig = ed25519_dalek::Signature::from_bytes(&ca.sign(b"config v7"));
        assert!(ca.verifying_key().verify(b"config v7", &sig).is_ok());
        assert!(ca.verifying_key().verify(b"config v8", &sig).is_err());
    }
}
