//! Every command line of `skiff`, as clap-derive structs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A compact, networking-first, Kubernetes-shaped cluster"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// API server URL (default: $SKIFF_SERVER, then the kubeconfig's, then ~/.skiff/config, then http://127.0.0.1:6443)
    #[arg(long, global = true, env = "SKIFF_SERVER")]
    pub server: Option<String>,
    /// The kubeconfig to use (default: $KUBECONFIG's files, then ~/.kube/config), as kubectl's
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current-context)
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the objects (default: the manifest's, else "default")
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server
    Server(ServerArgs),
    /// Run the cluster DNS addon
    Dns(DnsArgs),
    /// The whole single-node cluster in one process (root): server, controllers, node, DNS
    Up(UpArgs),
    /// Inspect and drive the eBPF service datapath on this node (root)
    #[command(subcommand)]
    Bpf(BpfCommand),
    /// Images in this node's containerd (root)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run the node daemon: pods through containerd, pod networking, the datapath (root)
    Node(NodeArgs),
    /// Simulated nodes for load tests (kwok-like): no containers, no traffic
    #[command(subcommand)]
    Sim(SimCommand),
    /// The container log writer containerd's shim runs (internal)
    #[command(hide = true)]
    ShimLogger { path: PathBuf },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Address to serve gRPC and REST on
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Directory of the embedded store
    #[arg(long, default_value = "/var/lib/skiff/server")]
    pub data_dir: PathBuf,
    /// etcd://host:2379[,host:2379...] to keep state in etcd instead
    #[arg(long)]
    pub store: Option<String>,
    /// Range ClusterIPs are allocated from
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// Range NodePorts are allocated from
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Pod network: each node registering without a podCIDR gets a share of it
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// Prefix length of each node's podCIDR
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask: u8,
    /// Do not write ~/.skiff/config for the CLI
    #[arg(long)]
    pub no_client_config: bool,
    /// The cluster token nodes share with the server (default: <data-dir>/token, made when missing)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Seconds an Event lives after its last write (as kube-apiserver's --event-ttl)
    #[arg(long, default_value_t = 3600)]
    pub event_ttl: u64,
    /// TLS and authentication on the API port (on: certificates in <data-dir>/tls, the admin's in <data-dir>/admin.kubeconfig; off: plain HTTP, anyone may do anything, for development only)
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub tls: String,
    /// The address pods and other hosts reach this server at: the `kubernetes` Service points there, and the server listens there too (default: the --listen address unless it is loopback or unspecified)
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Bearer tokens, as kube-apiserver's --token-auth-file: lines of token,user,uid,"group1,group2" (with --tls on)
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Do not run the scheduler and controllers in this server
    #[arg(long)]
    pub no_controllers: bool,
    /// Seconds a node may go without renewing its Lease before it is marked
    /// Ready=Unknown and tainted unreachable
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Seconds pods without their own toleration stay on an unreachable node
    /// before they are evicted
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: u64,
}

#[derive(Debug, Args, Clone)]
pub struct DnsArgs {
    /// Address to answer DNS on (UDP and TCP)
    #[arg(long, default_value = "127.0.0.1:53")]
    pub listen: SocketAddr,
    /// Cluster domain
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Upstream resolvers for other names, IP:PORT, comma-separated (default: /etc/resolv.conf)
    #[arg(long, value_delimiter = ',', conflicts_with = "no_forward")]
    pub upstream: Option<Vec<SocketAddr>>,
    /// Forward nothing: names outside the cluster domain get REFUSED
    #[arg(long)]
    pub no_forward: bool,
    /// TTL of cluster records, seconds
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Address for /metrics and /healthz
    #[arg(long, default_value = "127.0.0.1:9153")]
    pub metrics_listen: SocketAddr,
    /// Entries of the forwarding cache
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// ClusterIP of the kube-system/kube-dns Service this server registers (with an
    /// EndpointSlice naming its address), the nameserver of pods' resolv.conf
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_ip: String,
    /// Do not create the kube-system/kube-dns Service and EndpointSlice
    #[arg(long)]
    pub no_register: bool,
    /// Sources whose names outside the cluster zone are forwarded (pods and nodes; others get REFUSED)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128,10.244.0.0/16"
    )]
    pub recursion_from: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create or update objects from manifests (YAML or JSON)
    Apply(ApplyArgs),
    /// Show what `apply` would change: live objects against a server dry run (exit 1: differences)
    Diff(DiffArgs),
    /// List objects, or show some by name
    Get(GetArgs),
    /// Show an object in detail, with its events
    Describe(DescribeArgs),
    /// Delete objects by name or from manifests
    Delete(DeleteArgs),
    /// Create an object from the command line
    #[command(subcommand)]
    Create(CreateCommand),
    /// Print the logs of a pod's container
    Logs(LogsArgs),
    /// Run a command in a pod's container
    Exec(ExecArgs),
    /// Set the replicas of a Deployment or ReplicaSet
    Scale(ScaleArgs),
    /// Follow, list, undo and restart the rollouts of a Deployment
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Join tokens for nodes (`skiff node --token K10...`)
    #[command(subcommand)]
    Token(TokenCommand),
    /// What you may do: `auth can-i`, `auth whoami`
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// The audit log (kube-apiserver's flags).
#[derive(Debug, Args, Clone)]
pub struct AuditArgs {
    /// The audit log: a JSON line (audit.k8s.io/v1 Event) for every change and exec [default: <data-dir>/audit.log]
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Megabytes an audit log file reaches before it is rotated
    #[arg(long, default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit log files kept
    #[arg(long, default_value_t = 3)]
    pub audit_log_maxbackup: usize,
    /// Write no audit log
    #[arg(long)]
    pub no_audit_log: bool,
}

impl AuditArgs {
    /// The settings for a server whose data is in `data_dir`.
    pub fn settings(&self, data_dir: &std::path::Path) -> Option<(PathBuf, u64, usize)> {
        (!self.no_audit_log).then(|| {
            (
                self.audit_log_path
                    .clone()
                    .unwrap_or_else(|| data_dir.join("audit.log")),
                self.audit_log_maxsize.max(1) << 20,
                self.audit_log_maxbackup,
            )
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Whether you may do something: `can-i VERB TYPE[/NAME] [NAME]`, `can-i VERB /PATH`, or `can-i --list`; prints yes or no (exit 0 or 1)
    CanI {
        /// VERB, then TYPE, TYPE/NAME or a non-resource URL (/metrics), then maybe NAME
        args: Vec<String>,
        /// The subresource (exec, log, status, scale, ...)
        #[arg(long, default_value = "")]
        subresource: String,
        /// In every namespace (cluster-wide)
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Every rule you hold in the namespace
        #[arg(long)]
        list: bool,
        /// Print nothing: the exit code answers
        #[arg(short, long)]
        quiet: bool,
    },
    /// Who the server takes you for
    Whoami {
        /// Output format: json, yaml
        #[arg(short, long)]
        output: Option<String>,
    },
}

#[derive(Debug, Subcommand, Clone)]
pub enum TokenCommand {
    /// Make a join token and print it (the only time its secret is shown)
    Create {
        /// How long it is good for, e.g. 30m, 24h, 7d; 0: forever
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (ids, expiry, description: never their secrets)
    List,
    /// Delete a join token: nodes can no longer join with it
    Delete {
        /// The token's id (the part before the `:`)
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// deployment/NAME, rs/NAME, or KIND NAME
    #[arg(required = true, num_args = 1..=2)]
    pub target: Vec<String>,
    /// The new number of replicas
    #[arg(long)]
    pub replicas: i32,
    /// Only scale when the current replicas are this many
    #[arg(long)]
    pub current_replicas: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait for the rollout to finish, printing its progress
    Status {
        /// deployment/NAME
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        /// Give up after this many seconds
        #[arg(long)]
        timeout: Option<u64>,
        /// Keep watching until done (`--watch=false`: print the state once)
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// The revisions of a Deployment, or one revision's pod template
    History {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Go back to the previous revision (or --to-revision)
    Undo {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Replace every pod, one rolling update (the restartedAt annotation)
    Restart {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
    },
    /// Hold rollouts: template changes wait until `resume`
    Pause {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
    },
    /// Let a paused Deployment roll out again
    Resume {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub pod: String,
    /// Container (default: the pod's only one)
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing what the container writes
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long)]
    pub tail: Option<i64>,
    /// The previous instance of the container (before its last restart)
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Prefix each line with its time
    #[arg(long)]
    pub timestamps: bool,
    /// Only lines of the last DURATION (30s, 5m, 2h)
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub pod: String,
    /// Container (default: the pod's only one)
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass standard input to the command
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// kubectl's `--dry-run`: `server` sends every write as a dry run (checked
/// and answered by the server, stored nowhere), `client` sends none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    None,
    Client,
    Server,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Write nothing: `server` (checked by the server) or `client`
    #[arg(long, value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRun,
    /// Server-side apply: the server merges by field ownership and refuses
    /// to change fields other managers own
    #[arg(long)]
    pub server_side: bool,
    /// With --server-side: take the fields other managers own
    #[arg(long, requires = "server_side")]
    pub force_conflicts: bool,
    /// With --server-side: the manager the fields are recorded under
    #[arg(long, default_value = "skiff")]
    pub field_manager: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Manifest file, directory, or - for standard input (repeatable)
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
    Name,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind: pods (po), services (svc), deployments (deploy), replicasets (rs),
    /// namespaces (ns), nodes (no), configmaps (cm), endpoints (ep),
    /// endpointslices (eps), serviceaccounts (sa), leases, events (ev)
    pub kind: String,
    /// Names of the objects (all when left out)
    pub names: Vec<String>,
    /// Objects of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector (app=web,tier!=db)
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector (spec.nodeName=n1)
    #[arg(long)]
    pub field_selector: Option<String>,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// After listing, follow changes
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kind and names, as in `delete pod web db`
    pub args: Vec<String>,
    /// Delete the objects of these manifests
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Seconds a pod gets to stop (0: at once)
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// What happens to the objects it owns: background (deleted after it),
    /// foreground (deleted before it), orphan (kept, no longer owned)
    #[arg(long, default_value = "background", value_parser = ["background", "foreground", "orphan", "true", "false"])]
    pub cascade: String,
    /// Delete nothing: `server` (checked by the server) or `client`
    #[arg(long, value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRun,
}

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create a namespace
    #[command(alias = "ns")]
    Namespace { name: String },
}

/// `30000-32767` into a range.
pub fn parse_port_range(text: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let bad = || {
        anyhow::anyhow!("--service-node-port-range {text:?}: expected LOW-HIGH such as 30000-32767")
    };
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_habits_parse() {
        let cli = Cli::try_parse_from(["skiff", "get", "po", "-A", "-o", "wide", "-l", "app=web"])
            .unwrap();
        let Command::Client(ClientCommand::Get(g)) = cli.command else {
            panic!()
        };
        assert!(g.all_namespaces && g.output == Some(Output::Wide));
        let cli = Cli::try_parse_from([
            "skiff",
            "-n",
            "kube-system",
            "apply",
            "-f",
            "a.yaml",
            "-f",
            "-",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("kube-system"));
        assert!(Cli::try_parse_from(["skiff", "get", "po", "-o", "toml"]).is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767").unwrap(), 30000..=32767);
        for bad in ["30000", "b-c", "5-4", "0-10", "1-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct Instance {
    /// Datapath instance: its maps are pinned under /sys/fs/bpf/skiff/<instance>/
    #[arg(long, env = "SKIFF_BPF_INSTANCE", default_value = "default")]
    pub instance: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BpfOutput {
    Json,
}

#[derive(Debug, Subcommand)]
pub enum BpfCommand {
    /// Load, pin and attach the datapath (adopts what is already pinned)
    Attach(BpfAttachArgs),
    /// Detach every program and remove every pin of an instance
    Detach(BpfPlainArgs),
    /// Make the maps hold the Services and EndpointSlices of a manifest
    Sync(BpfSyncArgs),
    /// Service frontends with their backends (like `cilium-dbg bpf lb list`)
    Services(BpfPlainArgs),
    /// Backends with their service and state
    Backends(BpfPlainArgs),
    /// ClientIP session affinity entries
    Affinity(BpfPlainArgs),
    /// Connection tracking: packet-level NAT entries and socket-level translations
    Ct(BpfCtArgs),
    /// A service's Maglev table, summarized per backend
    Maglev(BpfMaglevArgs),
    /// Delete dead and idle connection-tracking and affinity entries
    Gc(BpfGcArgs),
    /// Per-service and per-backend counters
    Stats(BpfStatsArgs),
}

#[derive(Debug, Args)]
pub struct BpfPlainArgs {
    #[command(flatten)]
    pub instance: Instance,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfAttachArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// cgroup v2 directory for the socket hooks (default: the unified hierarchy's root)
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Interface facing other hosts: packet-level load balancing on its ingress
    /// (NodePort, ExternalIPs, ClusterIP from outside); its addresses serve NodePorts (repeatable)
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// Interface towards local pods (a veth's host side): packet-level load balancing too (repeatable)
    #[arg(long = "pod-iface")]
    pub pod_ifaces: Vec<String>,
    /// Another address NodePorts answer on (repeatable)
    #[arg(long = "node-ip")]
    pub node_ips: Vec<std::net::Ipv4Addr>,
    /// Network namespace of the interfaces (a name under /var/run/netns, or a path)
    #[arg(long)]
    pub netns: Option<String>,
    /// Do not try the XDP fast path on --iface interfaces (tc alone)
    #[arg(long)]
    pub no_xdp: bool,
    /// Entries of the services map (frontends plus backend slots)
    #[arg(long)]
    pub services_max: Option<u32>,
    /// Entries of the backends map
    #[arg(long)]
    pub backends_max: Option<u32>,
    /// Entries of the connection tracking maps (packet level, and the socket level's reverse translations)
    #[arg(long)]
    pub ct_max: Option<u32>,
    /// Entries of the session affinity map
    #[arg(long)]
    pub affinity_max: Option<u32>,
    /// Services that can use Maglev at once
    #[arg(long)]
    pub maglev_max: Option<u32>,
    /// Stay in the foreground and collect dead and idle connections every
    /// --gc-interval seconds (killing this process leaves the datapath attached)
    #[arg(long)]
    pub stay: bool,
    #[arg(long, default_value_t = 10)]
    pub gc_interval: u64,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfSyncArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// Manifest with Services (carrying their clusterIP) and EndpointSlices; - for stdin
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// This node's name, for externalTrafficPolicy/internalTrafficPolicy Local
    #[arg(long)]
    pub node_name: Option<String>,
    /// Backend selection for Services without the skiff.io/lb-algorithm annotation
    #[arg(long, default_value = "random", value_parser = ["random", "maglev"])]
    pub algorithm: String,
    /// Maglev table size (a prime: 251, 509, 1021, 2039, 4093, 8191, 16381)
    #[arg(long, default_value_t = 16381)]
    pub maglev_size: u32,
    /// Maglev seed: the same seed gives the same tables on every node
    #[arg(long)]
    pub maglev_seed: Option<u64>,
    /// Show what would change without writing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfCtArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// Only entries of this service (ns/name, or ns/name:port/PROTO)
    #[arg(long)]
    pub service: Option<String>,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfMaglevArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// Service: ns/name (every port) or ns/name:port/PROTO
    pub service: String,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfStatsArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// Print again every interval, with rates
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Seconds between prints with -w
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

#[derive(Debug, Args)]
pub struct BpfGcArgs {
    #[command(flatten)]
    pub instance: Instance,
    /// Seconds an established TCP flow may stay idle
    #[arg(long, default_value_t = 21600)]
    pub tcp_idle: u64,
    /// Seconds a TCP flow may stay after a FIN or RST
    #[arg(long, default_value_t = 10)]
    pub tcp_closing: u64,
    /// Seconds a UDP flow may stay idle
    #[arg(long, default_value_t = 60)]
    pub udp_idle: u64,
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<BpfOutput>,
}

/// Where the node's containerd is.
#[derive(Debug, Args, Clone)]
pub struct ContainerdArgs {
    /// containerd's socket
    #[arg(
        long,
        env = "SKIFF_CONTAINERD",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd: PathBuf,
    /// containerd namespace skiff's pods and images live in
    #[arg(long, default_value = "skiff")]
    pub containerd_namespace: String,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI layout or docker-archive tar; prints the images imported
    Import {
        file: PathBuf,
        #[command(flatten)]
        containerd: ContainerdArgs,
    },
    /// List the images
    Ls {
        #[command(flatten)]
        containerd: ContainerdArgs,
        #[arg(short, long)]
        output: Option<BpfOutput>,
    },
    /// Remove an image
    Rm {
        name: String,
        #[command(flatten)]
        containerd: ContainerdArgs,
    },
    /// Build the busybox demo image (from busybox-static) as an OCI layout tar
    #[command(hide = true)]
    BuildBusybox {
        out: PathBuf,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Image name (default: docker.io/library/busybox:latest, or
        /// skiff.local/demo:1.0 with --demo)
        #[arg(long)]
        name: Option<String>,
        /// The demo web server: httpd on port 80 by default, as an nginx
        /// image (public manifests run with only their image swapped)
        #[arg(long)]
        demo: bool,
    },
}

/// The cluster's DNS domain unless told otherwise.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// A crashed container's first restart delay, doubling from there.
pub const RESTART_BACKOFF_SECONDS: u64 = 10;

#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// This node's name (default: the host name)
    #[arg(long)]
    pub name: Option<String>,
    /// The address other nodes reach this one on (default: the default route's source)
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Use this podCIDR instead of the one the server allocates
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Persistent state (IPAM, pod files)
    #[arg(long, default_value = "/var/lib/skiff/node")]
    pub data_dir: PathBuf,
    /// Runtime state (pod network namespaces)
    #[arg(long, default_value = "/run/skiff/node")]
    pub run_dir: PathBuf,
    /// Container logs
    #[arg(long, default_value = "/var/log/skiff/pods")]
    pub log_dir: PathBuf,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    /// The cluster DNS address pods get in resolv.conf
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    #[arg(long, default_value = CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// cgroup parent of the pods
    #[arg(long, default_value = "skiff")]
    pub cgroup_parent: String,
    /// Datapath instance (pinned under /sys/fs/bpf/skiff/<instance>)
    #[arg(long, default_value = "default")]
    pub datapath_instance: String,
    /// Keep the socket load balancer to the pods' cgroup (default: every process on the node)
    #[arg(long)]
    pub datapath_pods_only: bool,
    /// Interfaces facing other hosts (NodePort, ExternalIPs), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Run without the eBPF datapath
    #[arg(long)]
    pub no_datapath: bool,
    /// Where the node serves logs and exec to the API server [default:
    /// the node's address, port 10250]
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A CA bundle (PEM) image registries are checked against besides the system's (repeatable)
    #[arg(long)]
    pub registry_ca: Vec<std::path::PathBuf>,
    /// The join token (K10<CA hash>::<id>:<secret>: `skiff token create`,
    /// or the server's <data-dir>/token); wins over --token-file
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (the server's <data-dir>/token)
    #[arg(
        long,
        env = "SKIFF_TOKEN_FILE",
        default_value = "/var/lib/skiff/server/token"
    )]
    pub token_file: PathBuf,
    /// First restart back-off, seconds (doubles up to 300)
    #[arg(long, default_value_t = RESTART_BACKOFF_SECONDS, hide = true)]
    pub restart_backoff: u64,
}

#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    /// State of the server (server/) and the node (node/)
    #[arg(long, default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    /// Address of the API server
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// This node's name (default: the host name)
    #[arg(long)]
    pub name: Option<String>,
    /// This node's address (default: the default route's source)
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    /// Interfaces facing other hosts (NodePort and ExternalIPs from outside), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Do not run the DNS addon
    #[arg(long)]
    pub no_dns: bool,
    /// Do not write ~/.skiff/config for the CLI
    #[arg(long)]
    pub no_client_config: bool,
    /// TLS and authentication on the API port (off: plain HTTP, for development only)
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub tls: String,
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Range ClusterIPs are allocated from
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// Pod network (this node's podCIDR is a /24 of it)
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster DNS Service's ClusterIP (inside --service-cidr)
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// Where the DNS addon listens (default: the node's address, port 53, else any port)
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// Where the DNS addon serves /metrics
    #[arg(long, default_value = "127.0.0.1:9153")]
    pub dns_metrics_listen: SocketAddr,
    /// Where the node serves logs and exec to the API server [default:
    /// the node's address, port 10250]
    #[arg(long)]
    pub node_listen: Option<SocketAddr>,
    /// Runtime state of the node (pod network namespaces)
    #[arg(long, default_value = "/run/skiff/node")]
    pub run_dir: PathBuf,
    /// Container logs
    #[arg(long, default_value = "/var/log/skiff/pods")]
    pub log_dir: PathBuf,
    /// Datapath instance (pinned under /sys/fs/bpf/skiff/<instance>)
    #[arg(long, default_value = "default")]
    pub datapath_instance: String,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create Node objects that renew their Leases and (with --pods-running)
    /// report their pods Running; runs until Ctrl-C, then removes them
    Nodes(SimNodesArgs),
}

#[derive(Debug, Args, Clone)]
pub struct SimNodesArgs {
    /// How many nodes
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// CPU of each node (a Kubernetes quantity: 4, 3500m)
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory of each node (a Kubernetes quantity: 8Gi)
    #[arg(long, default_value = "8Gi")]
    pub memory: String,
    /// Pods each node takes
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Report pods bound to these nodes Running and Ready, with an address
    #[arg(long)]
    pub pods_running: bool,
    /// Seconds between two renewals of each node's Lease
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// Leave the nodes behind on exit
    #[arg(long)]
    pub keep: bool,
}
