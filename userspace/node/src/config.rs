//! The node daemon's settings, with Kubernetes' and k3s' defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// The node endpoint's port (the kubelet's).
pub const ENDPOINT_PORT: u16 = 10250;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// API server URL.
    pub server: String,
    /// The Node's name.
    pub name: String,
    /// The address other nodes and NodePorts reach this node on; default:
    /// the source address of the default route.
    pub node_ip: Option<Ipv4Addr>,
    /// Use this podCIDR instead of waiting for the server to allocate one.
    pub pod_cidr: Option<String>,
    /// Persistent state: IPAM, pod files (hosts, resolv.conf, volumes).
    pub data_dir: PathBuf,
    /// Runtime state: the pods' network namespaces.
    pub run_dir: PathBuf,
    /// Container logs: `<log_dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_dir: PathBuf,
    pub containerd: PathBuf,
    pub containerd_namespace: String,
    /// The cluster DNS Service's address written to the pods' resolv.conf.
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    /// cgroup parent of the pods (under each hierarchy's root).
    pub cgroup_parent: String,
    /// The datapath: off, or its instance name.
    pub datapath: Option<DatapathConfig>,
    /// Where the node serves logs and exec to the API server; `None`: the
    /// node's address, port 10250.
    pub listen: Option<SocketAddr>,
    /// On a TLS server (`https://`), the join token
    /// (`K10<CA hash>::<id>:<secret>`), needed until the node has its
    /// certificates. On a plain development server, the cluster token the
    /// API server presents when it calls the node (`None`: the endpoint
    /// refuses every call).
    pub token: Option<String>,
    /// The binary containerd's shim runs as the container log writer.
    pub skiff_binary: PathBuf,
    /// Shortest restart back-off (doubles to `max_backoff`).
    pub base_backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
    /// CA bundles (PEM) registries are checked against besides the
    /// system's.
    pub registry_cas: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub instance: String,
    /// cgroup v2 directory for the socket-level load balancer; default: the
    /// root of the unified hierarchy (every process on the node, so the
    /// node itself reaches ClusterIPs too).
    pub cgroup: Option<PathBuf>,
    /// Interfaces facing other hosts (NodePort, ExternalIPs).
    pub ifaces: Vec<String>,
}

impl NodeConfig {
    /// Defaults for a node called `name` talking to `server`.
    pub fn new(server: &str, name: &str) -> NodeConfig {
        NodeConfig {
            server: server.to_string(),
            name: name.to_string(),
            node_ip: None,
            pod_cidr: None,
            data_dir: PathBuf::from("/var/lib/skiff/node"),
            run_dir: PathBuf::from("/run/skiff/node"),
            log_dir: PathBuf::from("/var/log/skiff/pods"),
            containerd: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: "skiff".into(),
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local".into(),
            cgroup_parent: "skiff".into(),
            datapath: Some(DatapathConfig {
                instance: "default".into(),
                cgroup: None,
                ifaces: Vec::new(),
            }),
            listen: None,
            token: None,
            skiff_binary: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/skiff")),
            base_backoff: std::time::Duration::from_secs(10),
            max_backoff: std::time::Duration::from_secs(300),
            registry_cas: Vec::new(),
        }
    }
}
