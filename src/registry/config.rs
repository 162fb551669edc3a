//! The network configuration: what the registry publishes to every node,
//! signed by the CA key.
//!
//! On the wire it is a [`SignedConfig`]: `{"payload": "<JSON text>",
//! "signature": "<base64>"}`. The signature is Ed25519 by the CA key over
//! `re6st-config-v1\n` followed by the payload bytes, exactly as sent, so no
//! JSON canonicalisation is needed and the CA signature cannot be confused
//! with any other message it signs. The payload is a [`NetworkConfig`] whose
//! `version` increases on every change; nodes keep the highest version they
//! verified. Babel MAC keys travel inside it sealed ([`crate::pki::seal`])
//! to the requesting node's key, so only that node reads them even over
//! plain HTTP; a request without node authentication gets no keys.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::pki;

const DOMAIN: &[u8] = b"re6st-config-v1\n";

/// Largest signed configuration a client accepts.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// The published parameters of the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Increases on every change.
    pub version: u64,
    /// The network prefix (`2001:db8:42::/48`).
    pub network: String,
    /// Babel hello interval, seconds.
    pub hello: u32,
    /// Outgoing tunnels each node keeps.
    pub client_count: u32,
    /// Incoming tunnels each node accepts at most.
    pub max_clients: u32,
    /// Seconds between tunnel refreshes.
    pub tunnel_refresh: u32,
    /// Serials of revoked certificates not yet expired.
    pub crl: Vec<u64>,
    /// The registry node's prefix (`"0/16"`), once issued.
    pub registry_prefix: Option<String>,
    /// Oldest node protocol version allowed in the network.
    pub min_protocol: u32,
    /// IPv4 payload settings, when enabled.
    pub ipv4: Option<Ipv4Settings>,
    /// The Babel MAC keys sealed to the requesting node (base64 of
    /// [`crate::pki::seal`] over the JSON of [`BabelKeys`]); absent for
    /// unauthenticated requests.
    #[serde(default)]
    pub babel_keys: Option<String>,
}

/// IPv4 payload: node subnet = `network` + the certificate's subject
/// serial number, with `prefix_len` bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Settings {
    /// The IPv4 network (`10.42.0.0/16`).
    pub network: String,
    /// Length of each node's subnet (`24`).
    pub prefix_len: u8,
}

/// The Babel MAC keys (RFC 8967): sign with `sign`, accept any of `accept`.
/// During a staged rotation `accept` holds both the old and the new key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BabelKeys {
    /// Key used to sign outgoing packets (hex).
    pub sign: String,
    /// Keys accepted on incoming packets (hex), `sign` included.
    pub accept: Vec<String>,
}

/// A [`NetworkConfig`] with the CA signature, as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedConfig {
    /// The JSON text of the configuration.
    pub payload: String,
    /// Base64 Ed25519 signature by the CA.
    pub signature: String,
}

/// Why a signed configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not a signed configuration.
    #[error("malformed network configuration: {0}")]
    Malformed(String),
    /// The signature does not verify with the CA key.
    #[error("network configuration not signed by the CA")]
    BadSignature,
    /// The sealed Babel keys could not be opened with our key.
    #[error("cannot open the babel keys: {0}")]
    Keys(String),
}

impl SignedConfig {
    /// Serialises and signs `config` with a signing function (the CA's).
    pub fn sign(config: &NetworkConfig, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> Self {
        // Serialising a struct of strings and integers cannot fail.
        let payload = serde_json::to_string(config).unwrap_or_default();
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        Self {
            payload,
            signature: B64.encode(sign(&msg)),
        }
    }

    /// Signs with an Ed25519 key directly (tests and tools).
    pub fn sign_with_key(config: &NetworkConfig, key: &SigningKey) -> Self {
        use ed25519_dalek::Signer as _;
        Self::sign(config, |m| key.sign(m).to_bytes())
    }

    /// Parses the JSON document a registry served.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(ConfigError::Malformed("too large".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Malformed(e.to_string()))
    }

    /// Checks the CA signature and returns the configuration.
    pub fn verify(&self, ca: &VerifyingKey) -> Result<NetworkConfig, ConfigError> {
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
            .ok_or_else(|| ConfigError::Malformed("bad signature encoding".into()))?;
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(self.payload.as_bytes());
        ca.verify(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| ConfigError::BadSignature)?;
        serde_json::from_str(&self.payload).map_err(|e| ConfigError::Malformed(e.to_string()))
    }
}

impl NetworkConfig {
    /// Opens the sealed Babel keys with the node's key; `Ok(None)` when the
    /// configuration carries none.
    pub fn open_babel_keys(&self, key: &SigningKey) -> Result<Option<BabelKeys>, ConfigError> {
        let Some(sealed) = &self.babel_keys else {
            return Ok(None);
        };
        let sealed = B64
            .decode(sealed)
            .map_err(|e| ConfigError::Keys(e.to_string()))?;
        let plain = pki::open(key, &sealed).map_err(|e| ConfigError::Keys(e.to_string()))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| ConfigError::Keys(e.to_string()))
    }
}

impl BabelKeys {
    /// Seals the keys to `recipient`, in the form carried by
    /// [`NetworkConfig::babel_keys`].
    pub fn seal(&self, recipient: &VerifyingKey) -> String {
        // Serialising strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        B64.encode(pki::seal(recipient, &json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NetworkConfig {
        NetworkConfig {
            version: 3,
            network: "2001:db8:42::/48".into(),
            hello: 15,
            client_count: 10,
            max_clients: 20,
            tunnel_refresh: 300,
            crl: vec![4, 9],
            registry_prefix: Some("0/16".into()),
            min_protocol: 1,
            ipv4: Some(Ipv4Settings {
                network: "10.42.0.0/16".into(),
                prefix_len: 24,
            }),
            babel_keys: None,
        }
    }

    #[test]
    fn sign_parse_verify() {
        let ca = SigningKey::from_bytes(&[1; 32]);
        let signed = SignedConfig::sign_with_key(&sample(), &ca);
        let bytes = serde_json::to_vec(&signed).unwrap();
        let parsed = SignedConfig::parse(&bytes).unwrap();
        assert_eq!(parsed.verify(&ca.verifying_key()).unwrap(), sample());
        // Another key, a tampered payload, a tampered signature.
        let other = SigningKey::from_bytes(&[2; 32]).verifying_key();
        assert!(matches!(
            parsed.verify(&other),
            Err(ConfigError::BadSignature)
        ));
        let mut t = parsed.clone();
        t.payload = t.payload.replace("\"version\":3", "\"version\":4");
        assert!(matches!(
            t.verify(&ca.verifying_key()),
            Err(ConfigError::BadSignature)
        ));
        let mut t = parsed.clone();
        t.signature = "AAAA".into();
        assert!(matches!(
            t.verify(&ca.verifying_key()),
            Err(ConfigError::Malformed(_))
        ));
        assert!(SignedConfig::parse(b"{\"payload\":1}").is_err());
        assert!(SignedConfig::parse(b"\xff").is_err());
    }

    #[test]
    fn babel_keys_only_for_recipient() {
        let node = SigningKey::from_bytes(&[5; 32]);
        let keys = BabelKeys {
            sign: "aa".repeat(32),
            accept: vec!["aa".repeat(32), "bb".repeat(32)],
        };
        let mut c = sample();
        c.babel_keys = Some(keys.seal(&node.verifying_key()));
        assert_eq!(c.open_babel_keys(&node).unwrap(), Some(keys));
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(c.open_babel_keys(&other).is_err());
        c.babel_keys = None;
        assert_eq!(c.open_babel_keys(&node).unwrap(), None);
    }
}
