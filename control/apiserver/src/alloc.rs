//! ClusterIP, NodePort and podCIDR allocation.
//!
//! Every allocated address and port is a key in the store
//! (`registry/allocations/clusterip/10.96.0.12`,
//! `registry/allocations/nodeport/30080`), written in the same transaction
//! as the Service with a create-if-absent compare. So an address is never
//! handed out twice — not across restarts, not across several API servers on
//! one etcd. The in-memory sets below are only a hint for picking a free
//! candidate quickly; they follow the store through the watch cache.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use rand::Rng;

/// Every allocation key starts with this.
pub const ALLOCATIONS: &str = "registry/allocations/";
pub const IP_PREFIX: &str = "registry/allocations/clusterip/";
pub const PORT_PREFIX: &str = "registry/allocations/nodeport/";
pub const POD_CIDR_PREFIX: &str = "registry/allocations/podcidr/";

pub fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_PREFIX}{ip}")
}

pub fn port_key(port: u16) -> String {
    format!("{PORT_PREFIX}{port}")
}

/// The key of a node's podCIDR, named by its network address.
pub fn pod_cidr_key(network: Ipv4Addr) -> String {
    format!("{POD_CIDR_PREFIX}{network}")
}

/// An IPv4 CIDR such as the service range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad =
            || format!("invalid CIDR {text:?}: expected an IPv4 network such as 10.96.0.0/16");
        let (ip, len) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "CIDR {text:?} must have a prefix between /8 and /30"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            base: u32::from(ip) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base && v - self.base < self.size()
    }

    /// Usable for a service: inside, and neither the network nor the
    /// broadcast address.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && v != self.base && v != self.base + self.size() - 1
    }

    /// The n-th address (`10.96.0.10` is `nth(10)` of 10.96.0.0/16).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

pub struct Allocators {
    pub cidr: Cidr,
    pub node_ports: RangeInclusive<u16>,
    /// The cluster (pod) CIDR nodes get their podCIDR from, and the prefix
    /// length of one node's share (24: 254 pods).
    pub cluster_cidr: Option<(Cidr, u8)>,
    used_ips: Mutex<HashSet<Ipv4Addr>>,
    used_ports: Mutex<HashSet<u16>>,
    used_pod_cidrs: Mutex<HashSet<Ipv4Addr>>,
    /// Where the next podCIDR search starts: concurrent registrations in
    /// this server get different candidates instead of racing for one.
    pod_cidr_cursor: std::sync::atomic::AtomicU32,
}

impl Allocators {
    pub fn new(cidr: Cidr, node_ports: RangeInclusive<u16>) -> Allocators {
        Allocators {
            cidr,
            node_ports,
            cluster_cidr: None,
            used_ips: Mutex::new(HashSet::new()),
            used_ports: Mutex::new(HashSet::new()),
            used_pod_cidrs: Mutex::new(HashSet::new()),
            pod_cidr_cursor: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Nodes get a `/node_prefix` of `cluster` when they register.
    pub fn with_cluster_cidr(mut self, cluster: Cidr, node_prefix: u8) -> Allocators {
        self.cluster_cidr = Some((cluster, node_prefix));
        self
    }

    /// The first free node share of the cluster CIDR, as `network/prefix`.
    pub fn pick_pod_cidr(&self, avoid: &HashSet<Ipv4Addr>) -> Option<String> {
        let (cluster, prefix) = self.cluster_cidr.as_ref()?;
        let used = self.used_pod_cidrs.lock().expect("allocator poisoned");
        let step = 1u32 << (32 - prefix);
        let count = cluster.size() / step;
        if count == 0 {
            return None;
        }
        let start = self
            .pod_cidr_cursor
            .load(std::sync::atomic::Ordering::Relaxed)
            % count;
        let i = (0..count).map(|k| (start + k) % count).find(|i| {
            let n = Ipv4Addr::from(cluster.base + i * step);
            !used.contains(&n) && !avoid.contains(&n)
        })?;
        self.pod_cidr_cursor
            .store((i + 1) % count, std::sync::atomic::Ordering::Relaxed);
        Some(format!(
            "{}/{prefix}",
            Ipv4Addr::from(cluster.base + i * step)
        ))
    }

    /// Follows one allocation key being written or deleted.
    pub fn observe(&self, key: &str, present: bool) {
        if let Some(ip) = key.strip_prefix(IP_PREFIX).and_then(|s| s.parse().ok()) {
            let mut set = self.used_ips.lock().expect("allocator poisoned");
            if present {
                set.insert(ip)
            } else {
                set.remove(&ip)
            };
        } else if let Some(net) = key
            .strip_prefix(POD_CIDR_PREFIX)
            .and_then(|s| s.parse().ok())
        {
            let mut set = self.used_pod_cidrs.lock().expect("allocator poisoned");
            if present {
                set.insert(net)
            } else {
                set.remove(&net)
            };
        } else if let Some(port) = key.strip_prefix(PORT_PREFIX).and_then(|s| s.parse().ok()) {
            let mut set = self.used_ports.lock().expect("allocator poisoned");
            if present {
                set.insert(port)
            } else {
                set.remove(&port)
            };
        }
    }

    /// A free-looking address. Dynamic allocation draws from above the
    /// first 16 addresses so well-known static ones (`.1`, `.10` for DNS)
    /// stay available, and falls back to a scan when that band is full.
    pub fn pick_ip(&self, avoid: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let used = self.used_ips.lock().expect("allocator poisoned");
        let size = self.cidr.size();
        let low = 16.min(size / 2).max(1);
        let mut rng = rand::rng();
        for _ in 0..64 {
            let ip = self.cidr.nth(rng.random_range(low..size - 1));
            if !used.contains(&ip) && !avoid.contains(&ip) {
                return Some(ip);
            }
        }
        let start = rng.random_range(1..size - 1);
        (0..size - 2)
            .map(|i| self.cidr.nth(1 + (start - 1 + i) % (size - 2)))
            .find(|ip| !used.contains(ip) && !avoid.contains(ip))
    }

    pub fn pick_port(&self, avoid: &HashSet<u16>) -> Option<u16> {
        let used = self.used_ports.lock().expect("allocator poisoned");
        let (lo, hi) = (*self.node_ports.start(), *self.node_ports.end());
        let span = u32::from(hi - lo) + 1;
        let start = rand::rng().random_range(0..span);
        (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .find(|p| !used.contains(p) && !avoid.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_keys_share_one_prefix() {
        assert!(IP_PREFIX.starts_with(ALLOCATIONS) && PORT_PREFIX.starts_with(ALLOCATIONS));
    }

    #[test]
    fn cidr_bounds() {
        let c = Cidr::parse("10.96.0.0/16").unwrap();
        assert!(c.usable("10.96.0.1".parse().unwrap()));
        assert!(!c.usable("10.96.0.0".parse().unwrap()));
        assert!(!c.usable("10.96.255.255".parse().unwrap()));
        assert!(!c.contains("10.97.0.1".parse().unwrap()));
        assert_eq!(c.nth(10), "10.96.0.10".parse::<Ipv4Addr>().unwrap());
        assert!(Cidr::parse("10.96.0.0").is_err());
        assert!(Cidr::parse("10.96.0.0/31").is_err());
    }

    #[test]
    fn pod_cidrs_are_node_shares_of_the_cluster_cidr() {
        let a = Allocators::new(Cidr::parse("10.96.0.0/16").unwrap(), 30000..=30002)
            .with_cluster_cidr(Cidr::parse("10.244.0.0/22").unwrap(), 24);
        assert_eq!(
            a.pick_pod_cidr(&HashSet::new()).as_deref(),
            Some("10.244.0.0/24")
        );
        a.observe(&pod_cidr_key("10.244.0.0".parse().unwrap()), true);
        let avoid = HashSet::from(["10.244.1.0".parse().unwrap()]);
        assert_eq!(a.pick_pod_cidr(&avoid).as_deref(), Some("10.244.2.0/24"));
        for n in ["10.244.1.0", "10.244.2.0", "10.244.3.0"] {
            a.observe(&pod_cidr_key(n.parse().unwrap()), true);
        }
        assert_eq!(
            a.pick_pod_cidr(&HashSet::new()),
            None,
            "a /22 holds four /24s"
        );
        a.observe(&pod_cidr_key("10.244.2.0".parse().unwrap()), false);
        assert_eq!(
            a.pick_pod_cidr(&HashSet::new()).as_deref(),
            Some("10.244.2.0/24")
        );
    }

    #[test]
    fn picks_avoid_used_and_exhaust_cleanly() {
        let a = Allocators::new(Cidr::parse("10.0.0.0/29").unwrap(), 30000..=30002);
        let mut got = HashSet::new();
        while let Some(ip) = a.pick_ip(&got) {
            assert!(a.cidr.usable(ip), "{ip}");
            got.insert(ip);
        }
        assert_eq!(got.len(), 6, "a /29 has 6 usable addresses");
        a.observe(&port_key(30001), true);
        let mut ports = HashSet::new();
        while let Some(p) = a.pick_port(&ports) {
            ports.insert(p);
        }
        assert_eq!(ports, HashSet::from([30000, 30002]));
        a.observe(&port_key(30001), false);
        assert_eq!(a.pick_port(&ports), Some(30001));
    }
}
