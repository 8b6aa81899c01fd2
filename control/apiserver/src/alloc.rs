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

// Every allocation key starts with `registry/allocations/`.
const IP_PREFIX: &str = "registry/allocations/clusterip/";
const PORT_PREFIX: &str = "registry/allocations/nodeport/";
const POD_CIDR_PREFIX: &str = "registry/allocations/podcidr/";

/// One thing handed out: the store holds a key for each
/// ([`Allocation::key`]), created in the same transaction as its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Allocation {
    ClusterIp(Ipv4Addr),
    NodePort(u16),
    /// A node's podCIDR, named by its network address.
    PodCidr(Ipv4Addr),
}

impl Allocation {
    /// Every kind of allocation, with the prefix of its keys.
    pub const PREFIXES: [&'static str; 3] = [IP_PREFIX, PORT_PREFIX, POD_CIDR_PREFIX];

    pub fn key(self) -> String {
        match self {
            Allocation::ClusterIp(ip) => format!("{IP_PREFIX}{ip}"),
            Allocation::NodePort(port) => format!("{PORT_PREFIX}{port}"),
            Allocation::PodCidr(net) => format!("{POD_CIDR_PREFIX}{net}"),
        }
    }

    /// The allocation a store key names (None for any other key).
    pub fn from_key(key: &str) -> Option<Allocation> {
        if let Some(ip) = key.strip_prefix(IP_PREFIX) {
            ip.parse().ok().map(Allocation::ClusterIp)
        } else if let Some(port) = key.strip_prefix(PORT_PREFIX) {
            port.parse().ok().map(Allocation::NodePort)
        } else if let Some(net) = key.strip_prefix(POD_CIDR_PREFIX) {
            net.parse().ok().map(Allocation::PodCidr)
        } else {
            None
        }
    }

    /// What a user asked for, in Kubernetes' words ("provided IP is
    /// already allocated").
    pub fn noun(self) -> &'static str {
        match self {
            Allocation::ClusterIp(_) => "IP",
            Allocation::NodePort(_) => "port",
            Allocation::PodCidr(_) => "podCIDR",
        }
    }
}

/// Candidates that lost a race in an earlier attempt of one write.
pub type Avoid = HashSet<Allocation>;

/// One allocation a write must make (its key created if absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub allocation: Allocation,
    /// Asked for by the user (a conflict is their error), or picked by us
    /// (a conflict means pick again).
    pub explicit: bool,
    /// The field that holds it, and its value there, for errors.
    pub field: String,
    pub value: String,
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
    pub fn pick_pod_cidr(&self, avoid: &Avoid) -> Option<String> {
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
            !used.contains(&n) && !avoid.contains(&Allocation::PodCidr(n))
        })?;
        self.pod_cidr_cursor
            .store((i + 1) % count, std::sync::atomic::Ordering::Relaxed);
        Some(format!(
            "{}/{prefix}",
            Ipv4Addr::from(cluster.base + i * step)
        ))
    }

    /// Follows one allocation being made or released.
    pub fn observe(&self, a: Allocation, present: bool) {
        fn follow<T: std::hash::Hash + Eq>(set: &Mutex<HashSet<T>>, v: T, present: bool) {
            let mut set = set.lock().expect("allocator poisoned");
            if present {
                set.insert(v);
            } else {
                set.remove(&v);
            }
        }
        match a {
            Allocation::ClusterIp(ip) => follow(&self.used_ips, ip, present),
            Allocation::NodePort(port) => follow(&self.used_ports, port, present),
            Allocation::PodCidr(net) => follow(&self.used_pod_cidrs, net, present),
        }
    }

    /// A free-looking address. Dynamic allocation draws from above the
    /// first 16 addresses so well-known static ones (`.1`, `.10` for DNS)
    /// stay available, and falls back to a scan when that band is full.
    pub fn pick_ip(&self, avoid: &Avoid) -> Option<Ipv4Addr> {
        let used = self.used_ips.lock().expect("allocator poisoned");
        let size = self.cidr.size();
        let low = 16.min(size / 2).max(1);
        let mut rng = rand::rng();
        for _ in 0..64 {
            let ip = self.cidr.nth(rng.random_range(low..size - 1));
            if !used.contains(&ip) && !avoid.contains(&Allocation::ClusterIp(ip)) {
                return Some(ip);
            }
        }
        let start = rng.random_range(1..size - 1);
        (0..size - 2)
            .map(|i| self.cidr.nth(1 + (start - 1 + i) % (size - 2)))
            .find(|ip| !used.contains(ip) && !avoid.contains(&Allocation::ClusterIp(*ip)))
    }

    pub fn pick_port(&self, avoid: &Avoid) -> Option<u16> {
        let used = self.used_ports.lock().expect("allocator poisoned");
        let (lo, hi) = (*self.node_ports.start(), *self.node_ports.end());
        let span = u32::from(hi - lo) + 1;
        let start = rand::rng().random_range(0..span);
        (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .find(|p| !used.contains(p) && !avoid.contains(&Allocation::NodePort(*p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_keys_round_trip_under_one_prefix() {
        for a in [
            Allocation::ClusterIp("10.96.0.10".parse().unwrap()),
            Allocation::NodePort(30080),
            Allocation::PodCidr("10.244.3.0".parse().unwrap()),
        ] {
            assert!(a.key().starts_with("registry/allocations/"), "{a:?}");
            assert_eq!(Allocation::from_key(&a.key()), Some(a));
        }
        assert!(
            Allocation::PREFIXES
                .iter()
                .all(|p| p.starts_with("registry/allocations/"))
        );
        assert_eq!(
            Allocation::from_key("registry/allocations/nodeport/x"),
            None
        );
        assert_eq!(Allocation::from_key("registry/pods/default/web"), None);
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
            a.pick_pod_cidr(&Avoid::new()).as_deref(),
            Some("10.244.0.0/24")
        );
        a.observe(Allocation::PodCidr("10.244.0.0".parse().unwrap()), true);
        let avoid = Avoid::from([Allocation::PodCidr("10.244.1.0".parse().unwrap())]);
        assert_eq!(a.pick_pod_cidr(&avoid).as_deref(), Some("10.244.2.0/24"));
        for n in ["10.244.1.0", "10.244.2.0", "10.244.3.0"] {
            a.observe(Allocation::PodCidr(n.parse().unwrap()), true);
        }
        assert_eq!(
            a.pick_pod_cidr(&Avoid::new()),
            None,
            "a /22 holds four /24s"
        );
        a.observe(Allocation::PodCidr("10.244.2.0".parse().unwrap()), false);
        assert_eq!(
            a.pick_pod_cidr(&Avoid::new()).as_deref(),
            Some("10.244.2.0/24")
        );
    }

    #[test]
    fn picks_avoid_used_and_exhaust_cleanly() {
        let a = Allocators::new(Cidr::parse("10.0.0.0/29").unwrap(), 30000..=30002);
        let mut got = HashSet::new();
        while let Some(ip) = a.pick_ip(&got) {
            assert!(a.cidr.usable(ip), "{ip}");
            got.insert(Allocation::ClusterIp(ip));
        }
        assert_eq!(got.len(), 6, "a /29 has 6 usable addresses");
        a.observe(Allocation::NodePort(30001), true);
        let mut ports = HashSet::new();
        while let Some(p) = a.pick_port(&ports) {
            ports.insert(Allocation::NodePort(p));
        }
        assert_eq!(
            ports,
            Avoid::from([Allocation::NodePort(30000), Allocation::NodePort(30002)])
        );
        a.observe(Allocation::NodePort(30001), false);
        assert_eq!(a.pick_port(&ports), Some(30001));
    }
}
