//! `skiff node`: wires the parts together — containerd, the Node and its
//! Lease, the podCIDR and IPAM, the datapath, routes to other nodes'
//! podCIDRs, and the pods.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skiff_api::Node;
use skiff_client::{Client, ListParams};
use skiff_runtime::Event;

use crate::bootstrap;
use crate::config::NodeConfig;
use crate::datapath::{self, Datapath};
use crate::net::{Cidr, Ipam, podnet};
use crate::pods::{self, Ctx};
use crate::register;
use crate::runtime::Containerd;

pub struct Running {
    pub pod_cidr: Cidr,
    pub node_ip: Ipv4Addr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the daemon's tasks; pods keep running (a restart adopts them).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Waits until the API server answers (it may start after the node).
async fn connect(server: &str, certs: Option<&bootstrap::Certs>) -> Client {
    let creds = match certs {
        Some(c) => c.credentials(server),
        None => skiff_client::Credentials::plain(server),
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match Client::connect_with(&creds).await {
            Ok(c) => match c.list::<Node>("", &ListParams::default()).await {
                Ok(_) => return c,
                Err(e) => tracing::warn!("API server not ready: {e}"),
            },
            Err(e) => tracing::warn!("{e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// containerd may start after the node (or restart): wait for it, saying
/// what is missing, instead of giving up.
async fn wait_for_containerd(cfg: &NodeConfig) -> Containerd {
    let mut delay = Duration::from_millis(500);
    loop {
        match Containerd::connect(&cfg.containerd, &cfg.containerd_namespace).await {
            Ok(c) => return c,
            Err(e) => tracing::warn!("{e:#}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

pub async fn start(cfg: NodeConfig) -> Result<Running> {
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => crate::host::default_ipv4()
            .context("cannot tell this node's address (no default route): pass --node-ip")?,
    };
    for dir in [&cfg.data_dir, &cfg.run_dir, &cfg.log_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(c) = &cfg.pod_cidr {
        Cidr::parse(c).context("--pod-cidr")?;
    }
    // On a TLS server: this node's certificates, joining with the token
    // the first time.
    let certs = if cfg.server.starts_with("https://") {
        Some(
            bootstrap::certificates(
                &cfg.server,
                cfg.token.as_deref(),
                &cfg.data_dir,
                &cfg.name,
                node_ip,
            )
            .await?,
        )
    } else {
        None
    };
    let client = connect(&cfg.server, certs.as_ref()).await;
    let ctd = wait_for_containerd(&cfg).await;
    let version = ctd.version().await?;
    // The logs/exec endpoint is bound first: its port goes in the status.
    // It listens on the node's address unless told otherwise.
    let listen = cfg
        .listen
        .unwrap_or_else(|| std::net::SocketAddr::from((node_ip, crate::config::ENDPOINT_PORT)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the node endpoint on {listen}"))?;
    let identity = register::Identity {
        name: cfg.name.clone(),
        node_ip,
        port: listener.local_addr()?.port(),
        runtime_version: version.clone(),
    };
    let mut node = register::register(&client, &identity, cfg.pod_cidr.as_deref()).await?;
    // The podCIDR: ours, or the one the server allocates at registration.
    let pod_cidr = loop {
        let spec = node.spec.clone().unwrap_or_default();
        if let Some(c) = &cfg.pod_cidr {
            if !spec.pod_cidr.is_empty() && spec.pod_cidr != *c {
                bail!(
                    "--pod-cidr {c} differs from the Node's podCIDR {} (a podCIDR never changes)",
                    spec.pod_cidr
                );
            }
            break Cidr::parse(c)?;
        }
        if !spec.pod_cidr.is_empty() {
            break Cidr::parse(&spec.pod_cidr).context("the Node's spec.podCIDR")?;
        }
        tracing::info!("waiting for the server to allocate this node's podCIDR");
        tokio::time::sleep(Duration::from_secs(1)).await;
        node = client.get::<Node>("", &cfg.name).await?;
    };
    let ipam = Ipam::open(&cfg.data_dir.join("ipam"), pod_cidr)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let netlink = podnet::handle_in(None).await?;
    let mut tasks = Vec::new();
    let dp = match &cfg.datapath {
        Some(dcfg) => {
            let d = Datapath::attach(dcfg, node_ip).await?;
            let (c, instance, name) = (client.clone(), dcfg.instance.clone(), cfg.name.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = datapath::sync(c, instance, name).await {
                    tracing::error!("datapath sync stopped: {e:#}");
                }
            }));
            Some(d)
        }
        None => None,
    };
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        client: client.clone(),
        ctd,
        netlink: netlink.clone(),
        ipam,
        node_ip,
        datapath: dp,
        execs: Default::default(),
        server_ca: certs.as_ref().map(|c| c.server_ca.clone()),
        registries: crate::image::registry::client(&cfg.registry_cas)
            .context("the registries' CA bundles")?,
    });
    tasks.push(tokio::spawn({
        let ctx = ctx.clone();
        async move {
            if let Err(e) = pods::run(ctx).await {
                tracing::error!("pods stopped: {e:#}");
            }
        }
    }));
    tasks.push(tokio::spawn(heartbeat(client.clone(), identity)));
    tasks.push(tokio::spawn(crate::server::serve(
        listener,
        ctx.clone(),
        certs,
    )));
    tasks.push(tokio::spawn(routes(client, cfg.name.clone(), netlink)));
    tracing::info!(node = %cfg.name, %node_ip, %pod_cidr, "node ready");
    Ok(Running {
        pod_cidr,
        node_ip,
        tasks,
    })
}

/// The Lease every 10 s, the Node's status every minute — or at once when
/// the node lifecycle controller marked it not Ready (the node was cut off
/// and is back).
async fn heartbeat(client: Client, id: register::Identity) {
    let name = id.name.clone();
    let mut tick = tokio::time::interval(register::RENEW_EVERY);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if let Err(e) = register::renew_lease(&client, &name).await {
            tracing::warn!("renewing the node lease: {e:#}");
        }
        n += 1;
        match client.get::<Node>("", &name).await {
            Ok(node) => {
                let ready = node.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "True")
                });
                if ready && !n.is_multiple_of(6) {
                    continue;
                }
                if let Err(e) = register::update_status(&client, node, &id).await {
                    tracing::warn!("updating the node status: {e:#}");
                }
            }
            Err(e) if e.is_not_found() => {
                // Deleted from under us: register again.
                if let Err(e) = register::register(&client, &id, None).await {
                    tracing::warn!("re-registering: {e:#}");
                }
            }
            Err(e) => tracing::warn!("reading the node: {e}"),
        }
    }
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .find(|a| a.r#type == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

/// Native routing: other nodes' podCIDRs via their addresses.
async fn routes(client: Client, me: String, netlink: rtnetlink::Handle) {
    let (_store, mut events, _task) =
        skiff_runtime::reflect::<Node>(client, "", ListParams::default());
    let mut routed: std::collections::HashMap<String, (Cidr, Ipv4Addr)> = Default::default();
    while let Some(ev) = events.recv().await {
        let (node, gone) = match ev {
            Event::Added(n) | Event::Updated { new: n, .. } => (n, false),
            Event::Deleted(n) => (n, true),
            Event::Synced => continue,
        };
        let name = node
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if name == me {
            continue;
        }
        let want = (!gone)
            .then(|| {
                let cidr = Cidr::parse(&node.spec.as_ref()?.pod_cidr).ok()?;
                Some((cidr, internal_ip(&node)?))
            })
            .flatten();
        let have = routed.get(&name).copied();
        if want == have {
            continue;
        }
        if let Some((cidr, _)) = have {
            if let Err(e) = podnet::unroute_pod_cidr(&netlink, cidr).await {
                tracing::warn!("removing the route to {name}'s pods: {e:#}");
            }
            routed.remove(&name);
        }
        if let Some((cidr, via)) = want {
            match podnet::route_pod_cidr(&netlink, cidr, via).await {
                Ok(()) => {
                    tracing::info!(node = %name, %cidr, %via, "routing pods");
                    routed.insert(name, (cidr, via));
                }
                Err(e) => tracing::warn!("routing {cidr} via {via}: {e:#}"),
            }
        }
    }
}
