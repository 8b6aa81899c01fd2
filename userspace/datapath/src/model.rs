//! The desired datapath state: what the maps must say, independent of ids.
//!
//! A [`ServiceDef`] is one backend set with its frontends: a Service port
//! (ClusterIP, ExternalIPs and NodePort share it), plus a second one holding
//! only this node's backends when a traffic policy is `Local`. Its `name`
//! (`ns/svc:port/TCP`, `…#local`) is its identity across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;
use skiff_ebpf_common::{IPPROTO_TCP, IPPROTO_UDP, SCOPE_ALL, SCOPE_LOCAL};

/// Longest service name kept in the names map.
pub const MAX_NAME: usize = 127;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Proto {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    /// A Kubernetes protocol name; "" is TCP, as in the API's defaulting.
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "" | "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    /// Address 0.0.0.0: every address of the node.
    NodePort,
}

/// An address:port/protocol packets or sockets are sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    /// Only this node's backends (`externalTrafficPolicy: Local`, or
    /// `internalTrafficPolicy: Local` for a ClusterIP).
    pub local: bool,
}

impl Frontend {
    pub fn scope(&self) -> u8 {
        if self.local { SCOPE_LOCAL } else { SCOPE_ALL }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)?;
        if self.local {
            f.write_str(" (local)")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Random,
    Maglev,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDef {
    pub name: String,
    pub proto: Proto,
    pub frontends: BTreeMap<Frontend, FrontendKind>,
    /// The backends new connections may go to, sorted. Empty: the service
    /// refuses connections.
    pub backends: Vec<BackendAddr>,
    /// The backends are serving but terminating (no ready one was left).
    pub terminating: bool,
    /// Those of `backends` that run on this node (their replies come back
    /// through it: packet-level load balancing needs no SNAT for them).
    pub local: BTreeSet<BackendAddr>,
    pub algorithm: Algorithm,
    /// ClientIP session affinity timeout, seconds.
    pub affinity_timeout: Option<u32>,
}

/// Everything the datapath must hold, keyed by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    pub services: BTreeMap<String, ServiceDef>,
}

impl Desired {
    pub fn frontend_count(&self) -> usize {
        self.services.values().map(|s| s.frontends.len()).sum()
    }

    pub fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }
}
