//! Fuzz the certificate layer's parsers: DER/PEM certificates and CSRs,
//! node prefixes (CNs), networks and CA serials, verification against a
//! fixed CA, and opening sealed messages with a fixed key. None may panic,
//! and whatever parses must survive its own round trip.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use re6st::pki::{open, Csr, Network, NodeCert, NodePrefix, Verifier};

/// The CA of the seed corpus (its node certificate verifies at `now()`).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBQDCB86ADAgECAgcBIAENuABCMAUGAytlcDAkMSIwIAYDVQQDDBlyZTZzdCBD
QSAyMDAxOmRiODo0Mjo6LzQ4MCAXDTI2MTEyMzIyMzczNFoYDzIxMjYxMDMwMjIz
NzM0WjAkMSIwIAYDVQQDDBlyZTZzdCBDQSAyMDAxOmRiODo0Mjo6LzQ4MCowBQYD
K2VwAyEAG8GKI7jjAw3DtOmLcTsHImDd7XYyTkSUHT55gJrGANyjQjBAMA8GA1Ud
EwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBRsnY+eQf/GbH26
PV/IZ61HFxvg6zAFBgMrZXADQQD9xtaRiU04XLUhPRZKQlapnIOClGPJHfIrrIHT
qiiHsz/d7uQfUfuORXZWyDejdawg9KVSKUyO/qGtGRncAPMC
-----END CERTIFICATE-----
";

/// 2027-01-01T00:00:00Z, inside the seed certificate's validity.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::new(CA_PEM).expect("fuzz CA"))
}

fn key() -> &'static ed25519_dalek::SigningKey {
    static KEY: OnceLock<ed25519_dalek::SigningKey> = OnceLock::new();
    KEY.get_or_init(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
}

fn certificate(cert: &NodeCert) {
    let _ = cert.prefix();
    let _ = cert.subject_serial();
    let _ = cert.public_key();
    let _ = (cert.serial(), cert.not_before(), cert.not_after());
    let again = NodeCert::from_pem(&cert.to_pem()).expect("PEM round trip");
    assert_eq!(again.der(), cert.der());
    let _ = verifier().verify(cert, now());
}

fn request(csr: &Csr) {
    let again = Csr::from_pem(&csr.to_pem()).expect("PEM round trip");
    assert_eq!(again.der(), csr.der());
    assert_eq!(again.public_key(), csr.public_key());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = NodeCert::from_der(data) {
        certificate(&cert);
    }
    let _ = verifier().verify_der(data, now());
    if let Ok(csr) = Csr::from_der(data) {
        request(&csr);
    }
    if let Ok(network) = Network::from_ca_serial(data) {
        assert_eq!(
            Network::from_ca_serial(&network.ca_serial()).ok(),
            Some(network)
        );
    }
    let _ = open(key(), data);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cert) = NodeCert::from_pem(text) {
        certificate(&cert);
    }
    if let Ok(csr) = Csr::from_pem(text) {
        request(&csr);
    }
    if let Ok(prefix) = text.parse::<NodePrefix>() {
        assert_eq!(prefix.to_string(), text);
    }
    if let Ok(network) = text.parse::<Network>() {
        assert_eq!(network.to_string().parse::<Network>().ok(), Some(network));
        assert_eq!(
            Network::from_ca_serial(&network.ca_serial()).ok(),
            Some(network)
        );
        if let Ok(prefix) = "1/1".parse::<NodePrefix>() {
            if let Ok((subnet, len)) = network.subnet(&prefix) {
                assert_eq!(network.prefix_of(subnet, len).ok(), Some(prefix));
            }
        }
    }
    let _ = Verifier::new(text);
});
