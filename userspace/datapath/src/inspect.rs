//! The datapath's maps read back as typed records — services' backends,
//! connections at the packet and socket level, session affinity, Maglev
//! tables and counters — for `skiff bpf` (and later the node's metrics and
//! the dashboard) to print. Addresses come out in host order, flags as
//! fields, services by name: no caller decodes a map entry itself.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::Serialize;
use skiff_ebpf_common::{CT_CLOSING, CT_FORWARD, CT_SNAT, Counters, global};

use crate::Error;
use crate::maps::{self, Maps};
use crate::snapshot::Snapshot;

/// Whether `name` (`ns/svc:port/PROTO[#local]`) is selected by `filter`
/// (`ns/svc`, or a full name).
pub fn matches_service(name: &str, filter: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with(':'))
}

fn addr(a_be: u32, port_be: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(a_be)),
        u16::from_be(port_be)
    )
}

fn read_err(map: &str, e: aya::maps::MapError) -> Error {
    Error::Map {
        map: map.to_string(),
        what: "read".into(),
        source: Box::new(e),
    }
}

fn names_by_id(snap: &Snapshot) -> HashMap<u32, String> {
    snap.services
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackendEntry {
    pub id: u32,
    pub address: String,
    pub protocol: crate::Proto,
    pub service: String,
    /// `active` or `terminating`.
    pub state: &'static str,
}

/// Every backend of every service, by id.
pub fn backends(snap: &Snapshot) -> Vec<BackendEntry> {
    let mut list: Vec<BackendEntry> = snap
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(|b| BackendEntry {
                id: b.id,
                address: b.addr.to_string(),
                protocol: s.proto,
                service: s.name.clone(),
                state: if b.terminating {
                    "terminating"
                } else {
                    "active"
                },
            })
        })
        .collect();
    list.sort_by_key(|b| b.id);
    list
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AffinityEntry {
    /// An IPv4 address, or `netns:COOKIE` for a socket-level client.
    pub client: String,
    pub service: String,
    pub backend: String,
    pub idle_seconds: u32,
}

/// The session-affinity entries.
pub fn affinity(maps: &Maps, snap: &Snapshot, now: u32) -> Result<Vec<AffinityEntry>, Error> {
    let names = names_by_id(snap);
    let backends: HashMap<u32, String> = snap
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.id, b.addr.to_string())))
        .collect();
    let mut list = Vec::new();
    for item in maps.affinity.iter() {
        let (k, v) = item.map_err(|e| read_err(maps::AFFINITY, e))?;
        let client = if k.kind == 1 {
            Ipv4Addr::from(u32::from_be(k.client as u32)).to_string()
        } else {
            format!("netns:{}", k.client)
        };
        list.push(AffinityEntry {
            client,
            service: names
                .get(&k.service_id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", k.service_id)),
            backend: backends
                .get(&v.backend_id)
                .cloned()
                .unwrap_or_else(|| format!("id {} (gone)", v.backend_id)),
            idle_seconds: now.saturating_sub(v.last_used),
        });
    }
    Ok(list)
}

/// A connection the socket-level balancer translated (its reverse entry).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketEntry {
    pub socket_cookie: u64,
    pub backend: String,
    pub frontend: String,
    pub service: String,
}

/// A flow the packet-level program tracks (its forward entry).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FlowEntry {
    pub protocol: &'static str,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    /// The source address the flow was masqueraded to, if it was.
    pub snat: Option<String>,
    /// A FIN or RST was seen.
    pub closing: bool,
    pub idle_seconds: u32,
    pub service: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Connections {
    pub packet: Vec<FlowEntry>,
    pub socket: Vec<SocketEntry>,
}

/// The tracked connections, of the services `filter` selects (all when
/// `None`; see [`matches_service`]).
pub fn connections(
    maps: &Maps,
    snap: &Snapshot,
    filter: Option<&str>,
    now: u32,
) -> Result<Connections, Error> {
    let names = names_by_id(snap);
    let wanted = |service: &str| filter.is_none_or(|f| matches_service(service, f));
    let mut out = Connections::default();
    for item in maps.rev_sock.iter() {
        let (k, v) = item.map_err(|e| read_err(maps::REV_SOCK, e))?;
        let service = names.get(&v.service_id).cloned().unwrap_or_default();
        if !wanted(&service) {
            continue;
        }
        out.socket.push(SocketEntry {
            socket_cookie: k.cookie,
            backend: addr(k.addr_be, k.port_be),
            frontend: addr(v.addr_be, v.port_be),
            service,
        });
    }
    for item in maps.ct.iter() {
        let (k, v) = item.map_err(|e| read_err(maps::CT, e))?;
        if k.dir != CT_FORWARD {
            continue;
        }
        let service = names.get(&v.service_id).cloned().unwrap_or_default();
        if !wanted(&service) {
            continue;
        }
        out.packet.push(FlowEntry {
            protocol: if k.proto == 6 { "TCP" } else { "UDP" },
            client: addr(k.src_be, k.sport_be),
            frontend: addr(k.dst_be, k.dport_be),
            backend: addr(v.nat_addr_be, v.nat_port_be),
            snat: (v.flags & CT_SNAT != 0).then(|| addr(v.snat_addr_be, v.snat_port_be)),
            closing: v.flags & CT_CLOSING != 0,
            idle_seconds: now.saturating_sub(v.last_seen),
            service,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MaglevShare {
    pub id: u32,
    pub address: String,
    /// Slots of the table that point at it.
    pub entries: usize,
}

/// One service's backend choice: random, or its Maglev table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MaglevView {
    pub service: String,
    /// `random` or `maglev`.
    pub algorithm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<MaglevShare>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Vec<u32>>,
}

/// The Maglev tables of the services `filter` selects.
pub fn maglev(maps: &Maps, snap: &Snapshot, filter: &str) -> Result<Vec<MaglevView>, Error> {
    let mut out = Vec::new();
    for s in snap
        .services
        .iter()
        .filter(|s| matches_service(&s.name, filter))
    {
        let Some(size) = s.maglev_size else {
            out.push(MaglevView {
                service: s.name.clone(),
                algorithm: "random",
                size: None,
                backends: None,
                table: None,
            });
            continue;
        };
        let table = maps
            .maglev
            .get(&s.id, 0)
            .map_err(|e| read_err(maps::MAGLEV, e))?;
        let ids = table.backend_ids[..size as usize].to_vec();
        let mut share: HashMap<u32, usize> = HashMap::new();
        ids.iter()
            .for_each(|id| *share.entry(*id).or_default() += 1);
        out.push(MaglevView {
            service: s.name.clone(),
            algorithm: "maglev",
            size: Some(size),
            backends: Some(
                s.backends
                    .iter()
                    .map(|b| MaglevShare {
                        id: b.id,
                        address: b.addr.to_string(),
                        entries: share.get(&b.id).copied().unwrap_or(0),
                    })
                    .collect(),
            ),
            table: Some(ids),
        });
    }
    Ok(out)
}

/// A service's or backend's counters.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CounterValues {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    pub refused: u64,
    pub dropped: u64,
}

impl From<Counters> for CounterValues {
    fn from(c: Counters) -> Self {
        CounterValues {
            packets: c.packets,
            bytes: c.bytes,
            connections: c.connections,
            refused: c.refused,
            dropped: c.dropped,
        }
    }
}

/// The datapath-wide counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalCounters {
    pub missing_backend: u64,
    pub connection_map_full: u64,
    pub affinity_map_full: u64,
    pub conntrack_full: u64,
    pub malformed: u64,
    pub no_route: u64,
    pub refuse_failed: u64,
    pub xdp_transmitted: u64,
}

impl GlobalCounters {
    pub fn read(maps: &Maps) -> GlobalCounters {
        let g = maps.global_counters();
        let at = |i: u32| g.get(i as usize).copied().unwrap_or(0);
        GlobalCounters {
            missing_backend: at(global::MISSING_BACKEND),
            connection_map_full: at(global::REV_SOCK_FULL),
            affinity_map_full: at(global::AFFINITY_FULL),
            conntrack_full: at(global::CT_FULL),
            malformed: at(global::MALFORMED),
            no_route: at(global::NO_ROUTE),
            refuse_failed: at(global::REFUSE_FAILED),
            xdp_transmitted: at(global::XDP_TX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_selects_a_service_or_one_of_its_ports() {
        assert!(matches_service("ns/web:http/TCP", "ns/web"));
        assert!(matches_service("ns/web:http/TCP", "ns/web:http/TCP"));
        assert!(!matches_service("ns/webby:http/TCP", "ns/web"));
        assert!(!matches_service("ns/web:http/TCP", "ns/we"));
    }

    #[test]
    fn addresses_come_out_in_host_order() {
        let a = u32::from(Ipv4Addr::new(10, 96, 0, 1)).to_be();
        assert_eq!(addr(a, 8080u16.to_be()), "10.96.0.1:8080");
    }
}
