//! Exported routes: prefixes we originate (redistributed local prefixes,
//! optionally source-specific), announced with our router-id and seqno.

use super::hash::FxHashMap;
use super::route::RouteKey;

/// The exported routes and their metric.
#[derive(Debug, Default)]
pub(crate) struct Xroutes {
    pub(crate) map: FxHashMap<RouteKey, u16>,
}

impl Xroutes {
    /// Adds or changes a prefix; returns true if anything changed.
    pub(crate) fn add(&mut self, key: RouteKey, metric: u16) -> bool {
        self.map.insert(key, metric) != Some(metric)
    }

    /// Removes a prefix; returns true if it was there.
    pub(crate) fn remove(&mut self, key: &RouteKey) -> bool {
        self.map.remove(key).is_some()
    }

    pub(crate) fn get(&self, key: &RouteKey) -> Option<u16> {
        self.map.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::route::tests::key;

    #[test]
    fn add_change_remove() {
        let mut x = Xroutes::default();
        let k = key("2001:db8::/64");
        assert!(x.add(k, 0));
        assert!(!x.add(k, 0));
        assert!(x.add(k, 5));
        assert_eq!(x.get(&k), Some(5));
        assert!(x.remove(&k));
        assert!(!x.remove(&k));
    }
}
