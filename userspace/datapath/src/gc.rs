//! Garbage collection of the connection tables. The maps are LRU, so a
//! full table never stops new flows; GC keeps them from filling with the
//! dead in the first place.
//!
//! Policy for connections to a backend that left its service:
//! - packet level: the next packet of such a flow finds its backend gone
//!   and is balanced afresh (a TCP peer then gets a RST from the new
//!   backend: it fails fast instead of hanging); GC deletes the entries;
//! - socket level: a connected socket keeps its backend until it closes
//!   (nothing is translated per packet); only new connections avoid it.
//!
//! Idle entries go after `tcp_idle` (established TCP, default 6 h),
//! `tcp_closing` (after a FIN or RST, 10 s) or `udp_idle` (60 s) — Cilium's
//! defaults. Affinity entries go when older than their service's timeout or
//! when their backend is gone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use skiff_ebpf_common::*;

use crate::Error;
use crate::maps::{self, Maps};

#[derive(Clone, Copy, Debug)]
pub struct GcPolicy {
    pub tcp_idle: Duration,
    pub tcp_closing: Duration,
    pub udp_idle: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            tcp_idle: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub scanned: usize,
    pub backend_gone: usize,
    pub idle: usize,
    pub affinity_expired: usize,
    pub socket_entries_of_removed_services: usize,
}

/// Whether a conntrack entry is to be deleted, and why (pure).
pub fn ct_verdict(
    key: &CtKey,
    value: &CtValue,
    backend_exists: bool,
    now: u32,
    policy: &GcPolicy,
) -> Option<&'static str> {
    if !backend_exists {
        return Some("backend gone");
    }
    let idle = now.saturating_sub(value.last_seen) as u64;
    let limit = if key.proto == IPPROTO_TCP {
        if value.flags & CT_CLOSING != 0 {
            policy.tcp_closing
        } else {
            policy.tcp_idle
        }
    } else {
        policy.udp_idle
    };
    (idle >= limit.as_secs()).then_some("idle")
}

fn iter_err(map: &str, e: aya::maps::MapError) -> Error {
    Error::Map {
        map: map.to_string(),
        what: "iterate".into(),
        source: Box::new(e),
    }
}

/// One pass over the conntrack, affinity and socket translation maps.
pub fn collect(m: &mut Maps, policy: &GcPolicy) -> Result<GcReport, Error> {
    let now = crate::monotonic_seconds();
    let mut report = GcReport::default();
    let mut backends = HashSet::new();
    for item in m.backends.keys() {
        backends.insert(item.map_err(|e| iter_err(maps::BACKENDS, e))?);
    }
    let mut doomed = Vec::new();
    for item in m.ct.iter() {
        let (k, v) = item.map_err(|e| iter_err(maps::CT, e))?;
        report.scanned += 1;
        match ct_verdict(&k, &v, backends.contains(&v.backend_id), now, policy) {
            Some("backend gone") => {
                report.backend_gone += 1;
                doomed.push(k);
            }
            Some(_) => {
                report.idle += 1;
                doomed.push(k);
            }
            None => {}
        }
    }
    for k in doomed {
        let _ = m.ct.remove(&k);
    }

    // Affinity: expired, or pointing at a backend that is gone.
    let mut timeouts: HashMap<u32, u32> = HashMap::new();
    for item in m.services.iter() {
        let (k, v) = item.map_err(|e| iter_err(maps::SERVICES, e))?;
        if k.slot == 0 {
            timeouts.insert(v.id, v.affinity_timeout);
        }
    }
    let mut doomed = Vec::new();
    for item in m.affinity.iter() {
        let (k, v) = item.map_err(|e| iter_err(maps::AFFINITY, e))?;
        let expired = timeouts
            .get(&k.service_id)
            .is_none_or(|t| now.saturating_sub(v.last_used) > *t);
        if expired || !backends.contains(&v.backend_id) {
            doomed.push(k);
        }
    }
    report.affinity_expired = doomed.len();
    for k in doomed {
        let _ = m.affinity.remove(&k);
    }

    // Socket-level translations of services that no longer exist.
    let mut doomed = Vec::new();
    for item in m.rev_sock.iter() {
        let (k, v) = item.map_err(|e| iter_err(maps::REV_SOCK, e))?;
        if !timeouts.contains_key(&v.service_id) {
            doomed.push(k);
        }
    }
    report.socket_entries_of_removed_services = doomed.len();
    for k in doomed {
        let _ = m.rev_sock.remove(&k);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: u8, last_seen: u32, flags: u32) -> (CtKey, CtValue) {
        (
            CtKey {
                proto,
                ..Default::default()
            },
            CtValue {
                last_seen,
                flags,
                backend_id: 1,
                ..Default::default()
            },
        )
    }

    #[test]
    fn verdicts_follow_the_policy() {
        let p = GcPolicy::default();
        let (k, v) = entry(IPPROTO_TCP, 1000, 0);
        assert_eq!(
            ct_verdict(&k, &v, true, 1000 + 3600, &p),
            None,
            "established TCP lives 6 h"
        );
        assert_eq!(ct_verdict(&k, &v, true, 1000 + 6 * 3600, &p), Some("idle"));
        assert_eq!(ct_verdict(&k, &v, false, 1000, &p), Some("backend gone"));
        let (k, v) = entry(IPPROTO_TCP, 1000, CT_CLOSING);
        assert_eq!(ct_verdict(&k, &v, true, 1005, &p), None);
        assert_eq!(
            ct_verdict(&k, &v, true, 1010, &p),
            Some("idle"),
            "closing TCP goes after 10 s"
        );
        let (k, v) = entry(IPPROTO_UDP, 1000, 0);
        assert_eq!(ct_verdict(&k, &v, true, 1059, &p), None);
        assert_eq!(ct_verdict(&k, &v, true, 1060, &p), Some("idle"));
    }
}
