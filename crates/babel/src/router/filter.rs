//! In, out and install filters (babeld's `in`, `out`, `install` rules).
//!
//! A filter is a list of rules; the first rule that matches a route decides,
//! and a route no rule matches is allowed. Input filters see routes as they
//! arrive from a neighbour, output filters see what we are about to
//! announce, install filters decide what reaches the kernel.

use std::net::Ipv6Addr;

use super::route::RouteKey;
use crate::wire::Prefix;

/// Which routes a rule applies to. Empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The destination must lie within this prefix.
    pub prefix: Option<Prefix>,
    /// Smallest destination length (babeld's `ge`).
    pub min_len: Option<u8>,
    /// Largest destination length (babeld's `le`).
    pub max_len: Option<u8>,
    /// The source prefix must lie within this prefix (a non-source-specific
    /// route has source `::/0` or `0.0.0.0/0`).
    pub src_prefix: Option<Prefix>,
    /// Smallest source prefix length.
    pub src_min_len: Option<u8>,
    /// Largest source prefix length.
    pub src_max_len: Option<u8>,
    /// Only routes through (in, install) or announced on (out) this
    /// interface.
    pub ifindex: Option<u32>,
    /// Only routes learned from this neighbour (in, install).
    pub neighbour: Option<Ipv6Addr>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Accept the route.
    Allow,
    /// Drop the route.
    Deny,
    /// Accept the route and add this much to its metric.
    AddMetric(u16),
}

/// One filter rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Routes the rule applies to.
    pub matches: Match,
    /// What to do with them.
    pub action: Action,
}

/// The router's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Applied to routes received from neighbours.
    pub input: Vec<Rule>,
    /// Applied to routes we announce (ours and others').
    pub output: Vec<Rule>,
    /// Applied to selected routes before they reach the kernel.
    pub install: Vec<Rule>,
}

impl Filter {
    /// re6st's policy for a network `network`: accept a default route only
    /// when it is source-specific to our network, and never announce a
    /// plain (not source-specific) default route unless we are a gateway.
    pub fn re6st(network: Prefix, gateway: bool) -> Self {
        let default = if network.is_ipv4() {
            Prefix::V4_DEFAULT
        } else {
            Prefix::V6_DEFAULT
        };
        let any_default = Match {
            prefix: Some(default),
            max_len: Some(0),
            ..Match::default()
        };
        let input = vec![
            Rule {
                matches: Match {
                    src_prefix: Some(network),
                    src_min_len: Some(network.len()),
                    src_max_len: Some(network.len()),
                    ..any_default.clone()
                },
                action: Action::Allow,
            },
            Rule {
                matches: any_default.clone(),
                action: Action::Deny,
            },
        ];
        let output = if gateway {
            Vec::new()
        } else {
            vec![Rule {
                matches: Match {
                    src_max_len: Some(0),
                    ..any_default
                },
                action: Action::Deny,
            }]
        };
        Self {
            input,
            output,
            install: Vec::new(),
        }
    }
}

impl Match {
    pub(crate) fn matches(
        &self,
        key: &RouteKey,
        ifindex: u32,
        neighbour: Option<Ipv6Addr>,
    ) -> bool {
        let len_ok = |len: u8, min: Option<u8>, max: Option<u8>| {
            min.is_none_or(|m| len >= m) && max.is_none_or(|m| len <= m)
        };
        self.prefix.is_none_or(|p| p.contains(&key.prefix))
            && len_ok(key.prefix.len(), self.min_len, self.max_len)
            && self.src_prefix.is_none_or(|p| p.contains(&key.src))
            && len_ok(key.src.len(), self.src_min_len, self.src_max_len)
            && self.ifindex.is_none_or(|i| i == ifindex)
            && self.neighbour.is_none_or(|n| Some(n) == neighbour)
    }
}

/// Runs `rules` on a route: `None` if denied, else the metric to add.
pub(crate) fn apply(
    rules: &[Rule],
    key: &RouteKey,
    ifindex: u32,
    neighbour: Option<Ipv6Addr>,
) -> Option<u16> {
    match rules
        .iter()
        .find(|r| r.matches.matches(key, ifindex, neighbour))
    {
        None => Some(0),
        Some(r) => match r.action {
            Action::Allow => Some(0),
            Action::Deny => None,
            Action::AddMetric(m) => Some(m),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(dst: &str, src: Option<&str>) -> RouteKey {
        RouteKey::new(dst.parse().unwrap(), src.map(|s| s.parse().unwrap()))
    }

    #[test]
    fn re6st_policy_table() {
        let net: Prefix = "2001:db8:42::/48".parse().unwrap();
        let plain = Filter::re6st(net, false);
        let gw = Filter::re6st(net, true);
        // (key, accepted in, announced by non-gateway, announced by gateway)
        let cases = [
            (k("::/0", None), false, false, true),
            (k("::/0", Some("2001:db8:42::/48")), true, true, true),
            (k("::/0", Some("2001:db8:42:1::/64")), false, true, true),
            (k("::/0", Some("2001:db8:43::/48")), false, true, true),
            (k("2001:db8:42:1::/64", None), true, true, true),
            (k("2000::/3", None), true, true, true),
        ];
        for (key, accept, out, out_gw) in cases {
            assert_eq!(
                apply(&plain.input, &key, 1, None).is_some(),
                accept,
                "{key:?}"
            );
            assert_eq!(
                apply(&plain.output, &key, 1, None).is_some(),
                out,
                "{key:?}"
            );
            assert_eq!(
                apply(&gw.output, &key, 1, None).is_some(),
                out_gw,
                "{key:?}"
            );
        }
    }

    #[test]
    fn first_match_wins_and_metric_is_added() {
        let nb: Ipv6Addr = "fe80::2".parse().unwrap();
        let rules = vec![
            Rule {
                matches: Match {
                    neighbour: Some(nb),
                    ..Match::default()
                },
                action: Action::AddMetric(100),
            },
            Rule {
                matches: Match {
                    ifindex: Some(3),
                    min_len: Some(64),
                    ..Match::default()
                },
                action: Action::Deny,
            },
        ];
        let key = k("2001:db8::/64", None);
        assert_eq!(apply(&rules, &key, 3, Some(nb)), Some(100));
        assert_eq!(apply(&rules, &key, 3, None), None);
        assert_eq!(apply(&rules, &k("2001:db8::/32", None), 3, None), Some(0));
        assert_eq!(apply(&rules, &key, 4, None), Some(0));
    }
}
