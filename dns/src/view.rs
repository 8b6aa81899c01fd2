//! The cluster's DNS data, as the Kubernetes DNS-Based Service Discovery
//! specification defines it, kept current from Service and EndpointSlice
//! events and answered from memory. Pure: no I/O, no clock.
//!
//! Every Service contributes a set of records; an event replaces that
//! Service's contribution (O(its records)), and the index maps each owner
//! name to its records, so a lookup is one hash probe.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::sync::Arc;

use skiff_api::{EndpointSlice, Service};
use skiff_runtime::{Event, ServiceIndex};

pub use skiff_api::SERVICE_NAME_LABEL;
/// The schema version this view implements (`dns-version.<domain>` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// port, target
    Srv(u16, String),
    Cname(String),
    Ptr(String),
    Txt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Cname,
    Ptr,
    Txt,
    Soa,
    Ns,
    Any,
    Other,
}

impl Rec {
    fn matches(&self, q: QType) -> bool {
        matches!(
            (self, q),
            (_, QType::Any)
                | (Rec::A(_), QType::A)
                | (Rec::Aaaa(_), QType::Aaaa)
                | (Rec::Srv(..), QType::Srv)
                | (Rec::Cname(_), QType::Cname)
                | (Rec::Ptr(_), QType::Ptr)
                | (Rec::Txt(_), QType::Txt)
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records of the asked type (or a CNAME for an alias).
    Records(Vec<Rec>),
    /// The name exists, without records of that type (NOERROR, empty).
    NoData,
    /// The name does not exist in the zone (NXDOMAIN with the SOA).
    NxDomain,
    /// Not ours: forward upstream.
    NotOurs,
}

pub struct View {
    domain: String,
    /// `svc.<domain>.`, `pod.<domain>.` suffixes.
    svc_suffix: String,
    pod_suffix: String,
    /// Services with their slices, by service (as the node's datapath).
    services: ServiceIndex,
    /// What each Service put in the index.
    contributed: HashMap<(String, String), Vec<(String, Rec)>>,
    index: HashMap<String, Vec<Rec>>,
    /// Empty non-terminals: names that exist only as a parent of others.
    parents: HashMap<String, usize>,
}

/// `10.96.0.1` → `1.0.96.10.in-addr.arpa.`
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa."
        }
    }
}

fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn addr_rec(ip: IpAddr) -> Rec {
    match ip {
        IpAddr::V4(v4) => Rec::A(v4),
        IpAddr::V6(v6) => Rec::Aaaa(v6),
    }
}

impl View {
    /// `domain` without a trailing dot, e.g. `cluster.local`.
    pub fn new(domain: &str) -> View {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        View {
            svc_suffix: format!("svc.{domain}."),
            pod_suffix: format!("pod.{domain}."),
            domain: format!("{domain}."),
            services: ServiceIndex::new(),
            contributed: HashMap::new(),
            index: HashMap::new(),
            parents: HashMap::new(),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn service_count(&self) -> usize {
        self.services.service_count()
    }

    pub fn upsert_service(&mut self, svc: Service) {
        let key = self.services.upsert_service(Arc::new(svc));
        self.rebuild(&key);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key = self.services.delete_service(namespace, name);
        self.rebuild(&key);
    }

    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        for key in self.services.upsert_slice(Arc::new(slice)) {
            self.rebuild(&key);
        }
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        if let Some(key) = self.services.delete_slice(namespace, name) {
            self.rebuild(&key);
        }
    }

    /// A Service event from the watch.
    pub fn on_service(&mut self, ev: Event<Service>) {
        if let Some(key) = self.services.on_service(ev) {
            self.rebuild(&key);
        }
    }

    /// An EndpointSlice event from the watch.
    pub fn on_slice(&mut self, ev: Event<EndpointSlice>) {
        for key in self.services.on_slice(ev) {
            self.rebuild(&key);
        }
    }

    /// Recomputes one Service's records and swaps them into the index.
    fn rebuild(&mut self, key: &(String, String)) {
        let new = self.records_of(key);
        if let Some(old) = self.contributed.remove(key) {
            for (name, rec) in old {
                if let Some(recs) = self.index.get_mut(&name) {
                    if let Some(pos) = recs.iter().position(|r| *r == rec) {
                        recs.swap_remove(pos);
                    }
                    if recs.is_empty() {
                        self.index.remove(&name);
                    }
                }
                self.adjust_parents(&name, -1);
            }
        }
        for (name, rec) in &new {
            self.index
                .entry(name.clone())
                .or_default()
                .push(rec.clone());
            self.adjust_parents(name, 1);
        }
        if !new.is_empty() {
            self.contributed.insert(key.clone(), new);
        }
    }

    /// Counts `name`'s ancestors inside the zone as existing names.
    fn adjust_parents(&mut self, name: &str, delta: isize) {
        let mut rest = name;
        while let Some(pos) = rest.find('.') {
            rest = &rest[pos + 1..];
            if rest.len() < self.domain.len() || !rest.ends_with(&self.domain) {
                break;
            }
            let count = self.parents.entry(rest.to_string()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.parents.remove(rest);
            }
        }
    }

    fn records_of(&self, key: &(String, String)) -> Vec<(String, Rec)> {
        let Some(svc) = self.services.service(key) else {
            return Vec::new();
        };
        let Some(spec) = svc.spec.as_ref() else {
            return Vec::new();
        };
        let (ns, name) = key;
        let base = format!("{name}.{ns}.{}", self.svc_suffix).to_ascii_lowercase();
        let mut out = Vec::new();
        if spec.r#type == "ExternalName" {
            if !spec.external_name.is_empty() {
                let target = format!("{}.", spec.external_name.trim_end_matches('.'));
                out.push((base, Rec::Cname(target.to_ascii_lowercase())));
            }
            return out;
        }
        let named_ports: Vec<(String, String, u16)> = spec
            .ports
            .iter()
            .filter(|p| !p.name.is_empty())
            .map(|p| {
                let proto = if p.protocol.is_empty() {
                    "TCP"
                } else {
                    &p.protocol
                };
                (
                    p.name.to_ascii_lowercase(),
                    proto.to_ascii_lowercase(),
                    p.port as u16,
                )
            })
            .collect();
        let headless = spec.cluster_ip == "None";
        if !headless {
            let mut ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .chain(std::iter::once(&spec.cluster_ip))
                .filter_map(|ip| ip.parse().ok())
                .collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                return out;
            }
            for ip in &ips {
                out.push((base.clone(), addr_rec(*ip)));
                out.push((reverse_name(*ip), Rec::Ptr(base.clone())));
            }
            for (port, proto, number) in &named_ports {
                out.push((
                    format!("_{port}._{proto}.{base}"),
                    Rec::Srv(*number, base.clone()),
                ));
            }
            return out;
        }
        // Headless: the ready endpoints (all of them with
        // publishNotReadyAddresses), by address, hostname and port.
        let publish_all = spec.publish_not_ready_addresses;
        let mut seen = BTreeMap::new();
        for slice in self.services.slices(key) {
            for ep in &slice.endpoints {
                let ready = ep.conditions.and_then(|c| c.ready).unwrap_or(true);
                if !ready && !publish_all {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    let host = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| dashed(ip));
                    seen.insert(ip, host);
                }
            }
        }
        for (ip, host) in &seen {
            let owner = format!("{host}.{base}");
            out.push((base.clone(), addr_rec(*ip)));
            out.push((owner.clone(), addr_rec(*ip)));
            out.push((reverse_name(*ip), Rec::Ptr(owner.clone())));
            for (port, proto, number) in &named_ports {
                out.push((
                    format!("_{port}._{proto}.{base}"),
                    Rec::Srv(*number, owner.clone()),
                ));
            }
        }
        out
    }

    /// Answers `qname` (any case, with or without the final dot).
    pub fn answer(&self, qname: &str, qtype: QType) -> Answer {
        let mut name = qname.to_ascii_lowercase();
        if !name.ends_with('.') {
            name.push('.');
        }
        let in_zone = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        if name == format!("dns-version.{}", self.domain) {
            return match qtype {
                QType::Txt | QType::Any => Answer::Records(vec![Rec::Txt(SCHEMA_VERSION.into())]),
                _ => Answer::NoData,
            };
        }
        if let Some(ip) = self.pod_address(&name) {
            return match qtype {
                QType::A | QType::Aaaa | QType::Any if addr_rec(ip).matches(qtype) => {
                    Answer::Records(vec![addr_rec(ip)])
                }
                _ => Answer::NoData,
            };
        }
        if let Some(recs) = self.index.get(&name) {
            let mut found: Vec<Rec> = recs.iter().filter(|r| r.matches(qtype)).cloned().collect();
            if found.is_empty() {
                // An alias answers every type with its CNAME.
                found = recs
                    .iter()
                    .filter(|r| matches!(r, Rec::Cname(_)))
                    .cloned()
                    .collect();
            }
            found.sort();
            return if found.is_empty() {
                Answer::NoData
            } else {
                Answer::Records(found)
            };
        }
        if self.parents.contains_key(&name) || name == self.domain {
            return Answer::NoData;
        }
        if in_zone {
            return Answer::NxDomain;
        }
        Answer::NotOurs
    }

    /// `a-b-c-d.<ns>.pod.<domain>.` → a.b.c.d (what CoreDNS calls
    /// `pods insecure`: the address is taken from the name).
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&self.pod_suffix)?;
        let (label, ns) = rest.trim_end_matches('.').split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        let v4 = label.replace('-', ".");
        if let Ok(ip) = v4.parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(ip));
        }
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: &str) -> Service {
        serde_json::from_str(json).unwrap()
    }

    fn slice(json: &str) -> EndpointSlice {
        serde_json::from_str(json).unwrap()
    }

    fn view() -> View {
        let mut v = View::new("cluster.local");
        v.upsert_service(svc(r#"{"metadata":{"name":"web","namespace":"ns"},
            "spec":{"clusterIP":"10.96.0.5","ports":[{"name":"http","port":80}]}}"#));
        v.upsert_service(svc(r#"{"metadata":{"name":"db","namespace":"ns"},
            "spec":{"clusterIP":"None","ports":[{"name":"pg","port":5432}]}}"#));
        v.upsert_slice(slice(r#"{"metadata":{"name":"db-a","namespace":"ns","labels":{"kubernetes.io/service-name":"db"}},
            "addressType":"IPv4","endpoints":[{"addresses":["10.244.0.5"],"hostname":"db-0"},
            {"addresses":["10.244.0.9"],"conditions":{"ready":false}}]}"#));
        v
    }

    #[test]
    fn lookups_follow_the_specification() {
        let v = view();
        let ip = |s: &str| Rec::A(s.parse().unwrap());
        assert_eq!(
            v.answer("web.ns.svc.cluster.local", QType::A),
            Answer::Records(vec![ip("10.96.0.5")])
        );
        assert_eq!(
            v.answer("web.ns.svc.cluster.local.", QType::Aaaa),
            Answer::NoData
        );
        assert_eq!(
            v.answer("ns.svc.cluster.local.", QType::A),
            Answer::NoData,
            "empty non-terminal"
        );
        assert_eq!(
            v.answer("other.ns.svc.cluster.local.", QType::A),
            Answer::NxDomain
        );
        assert_eq!(v.answer("example.com.", QType::A), Answer::NotOurs);
        assert_eq!(
            v.answer("db.ns.svc.cluster.local.", QType::A),
            Answer::Records(vec![ip("10.244.0.5")])
        );
        assert_eq!(
            v.answer("_pg._tcp.db.ns.svc.cluster.local.", QType::Srv),
            Answer::Records(vec![Rec::Srv(5432, "db-0.db.ns.svc.cluster.local.".into())])
        );
        assert_eq!(
            v.answer("5.0.96.10.in-addr.arpa.", QType::Ptr),
            Answer::Records(vec![Rec::Ptr("web.ns.svc.cluster.local.".into())])
        );
        assert_eq!(
            v.answer("10-0-0-1.ns.pod.cluster.local.", QType::A),
            Answer::Records(vec![ip("10.0.0.1")])
        );
        assert_eq!(
            v.answer("10-0-0-1.a.b.pod.cluster.local.", QType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn updates_replace_a_services_records_and_deletes_remove_them() {
        let mut v = view();
        v.upsert_service(svc(r#"{"metadata":{"name":"web","namespace":"ns"},
            "spec":{"clusterIP":"10.96.0.6","ports":[{"name":"http","port":80}]}}"#));
        assert_eq!(
            v.answer("web.ns.svc.cluster.local.", QType::A),
            Answer::Records(vec![Rec::A("10.96.0.6".parse().unwrap())])
        );
        assert_eq!(
            v.answer("5.0.96.10.in-addr.arpa.", QType::Ptr),
            Answer::NotOurs,
            "the old PTR is gone"
        );
        v.delete_slice("ns", "db-a");
        assert_eq!(
            v.answer("db-0.db.ns.svc.cluster.local.", QType::A),
            Answer::NxDomain
        );
        v.delete_service("ns", "web");
        v.delete_service("ns", "db");
        assert_eq!(
            v.answer("web.ns.svc.cluster.local.", QType::A),
            Answer::NxDomain
        );
        assert_eq!(
            v.answer("ns.svc.cluster.local.", QType::A),
            Answer::NxDomain,
            "no names left under it"
        );
        assert!(v.index.is_empty() && v.parents.is_empty());
    }
}
