//! Verification of node certificates against the network CA.

use std::collections::HashSet;
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use x509_cert::name::Name;

use super::ca::parse_ca_cert;
use super::cert::NodeCert;
use super::error::PkiError;
use super::prefix::{Network, NodePrefix};
use super::x509;

/// Checks node certificates: chain to the CA, validity, revocation, CN.
#[derive(Clone, Debug)]
pub struct Verifier {
    ca_key: VerifyingKey,
    ca_subject: Name,
    ca_not_before: SystemTime,
    ca_not_after: SystemTime,
    network: Network,
    revoked: HashSet<u64>,
}

/// Why a node certificate is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate is not valid DER X.509.
    #[error("malformed certificate")]
    Malformed,
    /// The certificate is not signed by our CA (wrong issuer, signature
    /// algorithm or signature).
    #[error("not signed by the network CA")]
    WrongCa,
    /// The validity period of the certificate or of the CA has not started
    /// yet.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The validity period of the certificate or of the CA is over.
    #[error("certificate expired")]
    Expired,
    /// The serial number is in the revocation list.
    #[error("certificate revoked")]
    Revoked,
    /// Signed by the CA but not a node certificate: a CA certificate, no
    /// single `"<int>/<len>"` CN, or a key that is not a valid Ed25519 key.
    #[error("not a node certificate")]
    NotANodeCert,
    /// The CN prefix does not fit after the network prefix.
    #[error("prefix outside the network")]
    PrefixOutsideNetwork,
    /// The CN is not the prefix we expected.
    #[error("unexpected prefix")]
    WrongPrefix,
}

impl Verifier {
    /// A verifier for the CA certificate in `ca_cert_pem`: a self-signed
    /// Ed25519 CA whose serial encodes the network. No serial is revoked.
    pub fn new(ca_cert_pem: &str) -> Result<Self, PkiError> {
        let der = x509::pem_block(ca_cert_pem, &["CERTIFICATE"])?;
        let (cert, network) = parse_ca_cert(&der)?;
        let ca_key = x509::key_of_spki(&cert.tbs_certificate.subject_public_key_info)?;
        let validity = &cert.tbs_certificate.validity;
        Ok(Self {
            ca_key,
            ca_not_before: validity.not_before.to_system_time(),
            ca_not_after: validity.not_after.to_system_time(),
            ca_subject: cert.tbs_certificate.subject,
            network,
            revoked: HashSet::new(),
        })
    }

    /// The network encoded in the CA certificate.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Replaces the set of revoked certificate serial numbers.
    pub fn set_revoked(&mut self, serials: impl IntoIterator<Item = u64>) {
        self.revoked = serials.into_iter().collect();
    }

    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: u64) -> bool {
        self.revoked.contains(&serial)
    }

    /// Checks that `cert` is signed by the CA, valid at `now` (and the CA
    /// too), not revoked,
    /// and a node certificate whose CN prefix fits in the network; returns
    /// that prefix.
    pub fn verify(&self, cert: &NodeCert, now: SystemTime) -> Result<NodePrefix, VerifyError> {
        let x = cert.x509();
        if !x509::is_ed25519(&x.signature_algorithm)
            || x.tbs_certificate.signature != x.signature_algorithm
            || x.tbs_certificate.issuer != self.ca_subject
            || !x509::signature_ok(&self.ca_key, cert.tbs_der(), &x.signature)
        {
            return Err(VerifyError::WrongCa);
        }
        // The whole chain must be valid: the CA too, as OpenSSL checks it.
        if now < cert.not_before() || now < self.ca_not_before {
            return Err(VerifyError::NotYetValid);
        }
        if now > cert.not_after() || now > self.ca_not_after {
            return Err(VerifyError::Expired);
        }
        if self.is_revoked(cert.serial()) {
            return Err(VerifyError::Revoked);
        }
        if cert.is_ca() || cert.public_key().is_err() {
            return Err(VerifyError::NotANodeCert);
        }
        let prefix = cert.prefix().map_err(|_| VerifyError::NotANodeCert)?;
        if u32::from(self.network.len()) + u32::from(prefix.len()) > 128 {
            return Err(VerifyError::PrefixOutsideNetwork);
        }
        Ok(prefix)
    }

    /// Parses a DER certificate and verifies it as [`verify`](Self::verify).
    pub fn verify_der(
        &self,
        der: &[u8],
        now: SystemTime,
    ) -> Result<(NodeCert, NodePrefix), VerifyError> {
        let cert = NodeCert::from_der(der).map_err(|_| VerifyError::Malformed)?;
        let prefix = self.verify(&cert, now)?;
        Ok((cert, prefix))
    }

    /// As [`verify`](Self::verify), and the CN must be `expected`.
    pub fn verify_expected(
        &self,
        cert: &NodeCert,
        now: SystemTime,
        expected: &NodePrefix,
    ) -> Result<(), VerifyError> {
        if self.verify(cert, now)? != *expected {
            return Err(VerifyError::WrongPrefix);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::ca::tests::{issue_with_cn, request, t0, test_ca, DAY};
    use crate::pki::ca::Ca;
    use crate::pki::csr::Csr;
    use crate::pki::key::generate_key;

    struct Fixture {
        ca: Ca,
        verifier: Verifier,
        csr: Csr,
        cert: NodeCert,
    }

    fn fixture() -> Fixture {
        let ca = test_ca("2001:db8:42::/48");
        let verifier = Verifier::new(&ca.cert_pem()).unwrap();
        let csr = Csr::generate(&generate_key(), &[]).unwrap();
        let cert = ca.issue(&request(&csr, "5/16", 10)).unwrap();
        Fixture {
            ca,
            verifier,
            csr,
            cert,
        }
    }

    fn p(s: &str) -> NodePrefix {
        s.parse().unwrap()
    }

    #[test]
    fn verifier_takes_the_network_from_the_ca() {
        let f = fixture();
        assert_eq!(f.verifier.network(), f.ca.network());
    }

    #[test]
    fn validity_window() {
        let f = fixture();
        let one_second = Duration::from_secs(1);
        let cases = [
            (t0(), Ok(p("5/16"))),
            (t0() + DAY / 2, Ok(p("5/16"))),
            (t0() + DAY, Ok(p("5/16"))),
            (t0() - one_second, Err(VerifyError::NotYetValid)),
            (t0() - 400 * DAY, Err(VerifyError::NotYetValid)),
            (t0() + DAY + one_second, Err(VerifyError::Expired)),
            (t0() + 400 * DAY, Err(VerifyError::Expired)),
        ];
        for (now, want) in cases {
            assert_eq!(f.verifier.verify(&f.cert, now), want, "{now:?}");
        }
    }

    #[test]
    fn the_ca_validity_bounds_the_chain() {
        let csr = Csr::generate(&generate_key(), &[]).unwrap();
        let ca = Ca::self_signed(
            "2001:db8:42::/48".parse().unwrap(),
            generate_key(),
            t0() + DAY,
            t0() + 2 * DAY,
        )
        .unwrap();
        let verifier = Verifier::new(&ca.cert_pem()).unwrap();
        let mut req = request(&csr, "5/16", 1);
        req.not_after = t0() + 10 * DAY;
        let cert = ca.issue(&req).unwrap();
        let cases = [
            (t0() + DAY / 2, Err(VerifyError::NotYetValid)),
            (t0() + DAY * 3 / 2, Ok(p("5/16"))),
            (t0() + 3 * DAY, Err(VerifyError::Expired)),
        ];
        for (now, want) in cases {
            assert_eq!(verifier.verify(&cert, now), want, "{now:?}");
        }
    }

    #[test]
    fn revocation() {
        let mut f = fixture();
        let now = t0() + DAY / 2;
        f.verifier.set_revoked([3, 10, 11]);
        assert!(f.verifier.is_revoked(10));
        assert_eq!(f.verifier.verify(&f.cert, now), Err(VerifyError::Revoked));
        let other = f.ca.issue(&request(&f.csr, "6/16", 12)).unwrap();
        assert_eq!(f.verifier.verify(&other, now), Ok(p("6/16")));
        // set_revoked replaces the whole set.
        f.verifier.set_revoked([12]);
        assert!(!f.verifier.is_revoked(10));
        assert_eq!(f.verifier.verify(&f.cert, now), Ok(p("5/16")));
        assert_eq!(f.verifier.verify(&other, now), Err(VerifyError::Revoked));
        // An expired certificate is reported as expired, revoked or not.
        f.verifier.set_revoked([10]);
        assert_eq!(
            f.verifier.verify(&f.cert, t0() + 2 * DAY),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn wrong_ca() {
        let f = fixture();
        let now = t0() + DAY / 2;
        // Same network, same subject, another key.
        let impostor = test_ca("2001:db8:42::/48");
        let forged = impostor.issue(&request(&f.csr, "5/16", 10)).unwrap();
        assert_eq!(f.verifier.verify(&forged, now), Err(VerifyError::WrongCa));
        // Another network.
        let other = test_ca("2001:db8:43::/48");
        let cert = other.issue(&request(&f.csr, "5/16", 10)).unwrap();
        assert_eq!(f.verifier.verify(&cert, now), Err(VerifyError::WrongCa));
        // A flipped bit in the signed part or in the signature.
        let tbs_at = f.cert.der().len() / 2;
        let sig_at = f.cert.der().len() - 1;
        for at in [tbs_at, sig_at] {
            let mut der = f.cert.der().to_vec();
            der[at] ^= 0x01;
            match f.verifier.verify_der(&der, now) {
                Err(VerifyError::WrongCa | VerifyError::Malformed) => {}
                other => panic!("flipped byte {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn expected_prefix() {
        let f = fixture();
        let now = t0() + DAY / 2;
        assert_eq!(f.verifier.verify_expected(&f.cert, now, &p("5/16")), Ok(()));
        for wrong in ["6/16", "5/17", "10/17", "1/1"] {
            assert_eq!(
                f.verifier.verify_expected(&f.cert, now, &p(wrong)),
                Err(VerifyError::WrongPrefix),
                "{wrong}"
            );
        }
        // Other failures come first.
        assert_eq!(
            f.verifier
                .verify_expected(&f.cert, t0() + 2 * DAY, &p("6/16")),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn cn_bounds_and_shape() {
        let f = fixture();
        let now = t0() + DAY / 2;
        let cases = [
            ("1/80", Ok(p("1/80"))),
            ("1/81", Err(VerifyError::PrefixOutsideNetwork)),
            ("0/128", Err(VerifyError::PrefixOutsideNetwork)),
            ("0/0", Err(VerifyError::NotANodeCert)),
            ("2/1", Err(VerifyError::NotANodeCert)),
            ("5/129", Err(VerifyError::NotANodeCert)),
            ("05/16", Err(VerifyError::NotANodeCert)),
            ("5", Err(VerifyError::NotANodeCert)),
            ("re6st CA 2001:db8:42::/48", Err(VerifyError::NotANodeCert)),
            ("", Err(VerifyError::NotANodeCert)),
        ];
        for (cn, want) in cases {
            let cert = issue_with_cn(&f.ca, &f.csr, cn);
            assert_eq!(f.verifier.verify(&cert, now), want, "CN {cn:?}");
        }
    }

    #[test]
    fn ca_certificate_is_not_a_node_certificate() {
        let f = fixture();
        let now = t0() + DAY / 2;
        let ca_cert = NodeCert::from_der(f.ca.cert_der()).unwrap();
        assert_eq!(
            f.verifier.verify(&ca_cert, now),
            Err(VerifyError::NotANodeCert)
        );
    }

    #[test]
    fn malformed_der() {
        let f = fixture();
        let now = t0() + DAY / 2;
        let (cert, prefix) = f.verifier.verify_der(f.cert.der(), now).unwrap();
        assert_eq!((cert.serial(), prefix), (10, p("5/16")));
        let der = f.cert.der();
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x00],
            &der[..der.len() - 1],
            &der[1..],
        ] {
            assert_eq!(
                f.verifier.verify_der(bad, now).map(|_| ()),
                Err(VerifyError::Malformed)
            );
        }
        let mut trailing = der.to_vec();
        trailing.push(0);
        assert_eq!(
            f.verifier.verify_der(&trailing, now).map(|_| ()),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn new_rejects_non_ca_certificates() {
        let f = fixture();
        assert!(Verifier::new(&f.cert.to_pem()).is_err());
        assert!(Verifier::new("").is_err());
        assert!(
            Verifier::new("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        let mut der = f.ca.cert_der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let pem = x509::to_pem("CERTIFICATE", &der);
        assert!(matches!(
            Verifier::new(&pem),
            Err(PkiError::BadSignature(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        #[test]
        fn prop_issue_parse_verify(
            value: u128,
            len in 1u8..=80,
            serial in 1u64..,
            subject_serial: u32,
        ) {
            let value = value & ((1u128 << len) - 1);
            let prefix = NodePrefix::new(value, len).unwrap();
            let f = fixture();
            let mut req = request(&f.csr, "1/1", serial);
            req.prefix = prefix;
            req.subject_serial = subject_serial;
            let cert = f.ca.issue(&req).unwrap();
            let (parsed, got) = f.verifier.verify_der(cert.der(), t0()).unwrap();
            proptest::prop_assert_eq!(got, prefix);
            proptest::prop_assert_eq!(parsed.serial(), serial);
            proptest::prop_assert_eq!(parsed.subject_serial(), Some(subject_serial));
            proptest::prop_assert_eq!(f.verifier.verify_expected(&parsed, t0(), &prefix), Ok(()));
        }
    }
}
