//! The network configuration at run time: the tunnel policy's parameters
//! derived from it (overridden by the options), the CA key that checks its
//! signature, and what changed between two versions so that only that is
//! re-applied (live, without restarting).

use std::time::Duration;

use der::DecodePem;
use ed25519_dalek::VerifyingKey;

use crate::node::options::NodeOptions;
use crate::node::policy::PolicyConfig;
use crate::pki::NodePrefix;
use crate::registry::config::{BabelKeys, NetworkConfig};

/// The policy's parameters: tunnel counts and refresh period from the
/// network configuration, unless the options override them.
pub(crate) fn policy_config(config: &NetworkConfig, options: &NodeOptions) -> PolicyConfig {
    let count = |o: Option<usize>, c: u32| o.unwrap_or(usize::try_from(c).unwrap_or(usize::MAX));
    PolicyConfig {
        client_count: count(options.client_count, config.client_count),
        max_clients: count(options.max_clients, config.max_clients),
        tunnel_refresh: Duration::from_secs(u64::from(config.tunnel_refresh)),
        ..PolicyConfig::default()
    }
}

/// The registry node's prefix, if the configuration names a valid one.
pub(crate) fn registry_prefix(config: &NetworkConfig) -> Option<NodePrefix> {
    config.registry_prefix.as_deref()?.parse().ok()
}

/// The public key of the CA certificate in `pem`, which signs the network
/// configuration.
pub(crate) fn ca_key(pem: &str) -> Result<VerifyingKey, String> {
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let bytes: [u8; 32] = spki
        .subject_public_key
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or("CA certificate: not an Ed25519 key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("CA certificate: {e}"))
}

/// What differs between the configuration in use and a newer one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// The Babel hello interval changed.
    pub(crate) hello: bool,
    /// Tunnel counts or refresh period changed.
    pub(crate) policy: bool,
    /// The revocation list changed.
    pub(crate) crl: bool,
    /// Serials newly revoked.
    pub(crate) newly_revoked: Vec<u64>,
    /// The Babel MAC keys changed.
    pub(crate) keys: bool,
    /// The registry node changed.
    pub(crate) registry: bool,
    /// The IPv4 payload settings changed.
    pub(crate) ipv4: bool,
}

impl Changes {
    /// Compares two configurations and the Babel keys opened from each.
    pub(crate) fn between(
        old: &NetworkConfig,
        old_keys: Option<&BabelKeys>,
        new: &NetworkConfig,
        new_keys: Option<&BabelKeys>,
    ) -> Self {
        let newly_revoked: Vec<u64> = new
            .crl
            .iter()
            .copied()
            .filter(|s| !old.crl.contains(s))
            .collect();
        Self {
            hello: old.hello != new.hello,
            policy: (old.client_count, old.max_clients, old.tunnel_refresh)
                != (new.client_count, new.max_clients, new.tunnel_refresh),
            crl: {
                let (mut a, mut b) = (old.crl.clone(), new.crl.clone());
                a.sort_unstable();
                b.sort_unstable();
                a != b
            },
            newly_revoked,
            keys: old_keys != new_keys,
            registry: old.registry_prefix != new.registry_prefix,
            ipv4: old.ipv4 != new.ipv4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::options::NodeArgs;

    fn config() -> NetworkConfig {
        NetworkConfig {
            version: 1,
            network: "2001:db8:42::/48".into(),
            hello: 4,
            client_count: 3,
            max_clients: 6,
            tunnel_refresh: 300,
            crl: vec![7],
            registry_prefix: Some("1/16".into()),
            min_protocol: 1,
            ipv4: None,
            babel_keys: None,
        }
    }

    fn options(extra: &[&str]) -> NodeOptions {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: NodeArgs,
        }
        let mut argv = vec![
            "node",
            "--registry",
            "http://127.0.0.1:1",
            "--ca",
            "ca.crt",
            "--cert",
            "c.crt",
            "--key",
            "c.key",
        ];
        argv.extend_from_slice(extra);
        NodeOptions::resolve(Cli::parse_from(argv).args).unwrap()
    }

    #[test]
    fn options_override_the_network_configuration() {
        let c = config();
        let p = policy_config(&c, &options(&[]));
        assert_eq!((p.client_count, p.max_clients), (3, 6));
        assert_eq!(p.tunnel_refresh, Duration::from_secs(300));
        let p = policy_config(&c, &options(&["--client-count", "5", "--max-clients", "9"]));
        assert_eq!((p.client_count, p.max_clients), (5, 9));
        assert_eq!(registry_prefix(&c), Some(NodePrefix::new(1, 16).unwrap()));
    }

    #[test]
    fn changes_between_versions() {
        let old = config();
        assert_eq!(Changes::between(&old, None, &old, None), Changes::default());
        let mut new = old.clone();
        new.version = 2;
        new.crl = vec![7, 9];
        new.hello = 2;
        let keys = BabelKeys {
            sign: "00".into(),
            accept: vec!["00".into()],
        };
        let c = Changes::between(&old, None, &new, Some(&keys));
        assert!(c.hello && c.crl && c.keys);
        assert!(!c.policy && !c.registry && !c.ipv4);
        assert_eq!(c.newly_revoked, vec![9]);
        // The same list in another order is no change.
        let mut reordered = old.clone();
        reordered.crl = vec![7];
        assert!(!Changes::between(&old, None, &reordered, None).crl);
        new.client_count = 4;
        assert!(Changes::between(&old, None, &new, None).policy);
    }

    #[test]
    fn ca_key_of_a_generated_ca() {
        let ca = crate::pki::Ca::generate("2001:db8:42::/48".parse().unwrap(), 1).unwrap();
        assert_eq!(ca_key(&ca.cert_pem()).unwrap(), ca.verifying_key());
        assert!(ca_key("not a certificate").is_err());
    }
}
