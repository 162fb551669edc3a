//! The network configuration at run time: the tunnel policy's parameters
//! derived from it (overridden by the options).

use std::time::Duration;

use crate::node::options::NodeOptions;
use crate::node::policy::PolicyConfig;
use crate::pki::NodePrefix;
use crate::registry::config::NetworkConfig;

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
}
