//! `skiff sim nodes`: simulated nodes for load tests, as kwok does. Node
//! objects that renew their Leases and (with `--pods-running`) report the
//! pods bound to them Running and Ready with an address from their
//! podCIDR; pods being deleted on them are confirmed at once. No container
//! runs and no packet is sent: the nodes carry no InternalIP, so real
//! nodes route nothing towards them.
//!
//! Runs until Ctrl-C or SIGTERM, then deletes its nodes (unless
//! `--keep`); killed, it leaves them to the node lifecycle controller
//! (Ready=Unknown, unreachable, pods evicted) — what a lost machine does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use skiff_api::v1::{
    Condition, ContainerState, ContainerStateRunning, ContainerStatus, NodeAddress, NodeSpec,
    NodeStatus, ObjectMeta, PodIp, PodStatus, Quantity, Time,
};
use skiff_api::{Lease, Node, ParsedQuantity, Pod, Resource};
use skiff_client::{Client, ListParams};
use skiff_runtime::Event;

use crate::args::SimNodesArgs;

pub const SIM_LABEL: &str = "skiff.io/simulated";
use skiff_api::nodes::LEASE_NAMESPACE;
/// Updates in flight at once (node creation, lease renewals, pod status).
const PARALLEL: usize = 32;

pub async fn nodes(client: &Client, args: SimNodesArgs) -> Result<()> {
    ParsedQuantity::parse(&args.cpu).map_err(|e| anyhow::anyhow!("--cpu {:?}: {e}", args.cpu))?;
    ParsedQuantity::parse(&args.memory)
        .map_err(|e| anyhow::anyhow!("--memory {:?}: {e}", args.memory))?;
    let names: Vec<String> = (0..args.count)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    eprintln!(
        "creating {} simulated nodes ({} cpu, {} memory, {} pods each)",
        names.len(),
        args.cpu,
        args.memory,
        args.max_pods
    );
    let created = futures::stream::iter(names.iter().map(|n| register(client, n, &args)))
        .buffer_unordered(PARALLEL)
        .collect::<Vec<Result<Node>>>()
        .await;
    let mut cidrs = HashMap::new();
    for r in created {
        let n = r?;
        let cidr = n
            .spec
            .as_ref()
            .map(|s| s.pod_cidr.clone())
            .unwrap_or_default();
        cidrs.insert(n.name().to_string(), cidr);
    }
    eprintln!(
        "{} simulated nodes ready (Ctrl-C removes them)",
        names.len()
    );
    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        names.clone(),
        Duration::from_secs(args.heartbeat_seconds.max(1)),
    ));
    let ready = tokio::spawn(keep_ready(client.clone(), names.iter().cloned().collect()));
    let pods = tokio::spawn(run_pods(client.clone(), cidrs, args.pods_running));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    heartbeat.abort();
    ready.abort();
    pods.abort();
    if args.keep {
        return Ok(());
    }
    eprintln!("removing {} simulated nodes", names.len());
    futures::stream::iter(names.iter().map(|n| async move {
        let _ = client.delete::<Node>("", n).await;
        let _ = client.delete::<Lease>(LEASE_NAMESPACE, n).await;
    }))
    .buffer_unordered(PARALLEL)
    .collect::<Vec<()>>()
    .await;
    Ok(())
}

/// The Node as a simulated machine of `args`' size; created, or taken
/// over when it exists (a restarted simulator).
async fn register(client: &Client, name: &str, args: &SimNodesArgs) -> Result<Node> {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", args.cpu.clone()),
        ("memory", args.memory.clone()),
        ("pods", args.max_pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity { value: v }))
    .collect();
    let node = Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: Some(ObjectMeta {
            name: name.to_string(),
            labels: [
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("type".to_string(), "kwok".to_string()),
                (SIM_LABEL.to_string(), "true".to_string()),
            ]
            .into(),
            ..Default::default()
        }),
        spec: Some(NodeSpec::default()),
        status: None,
    };
    let mut stored = match client.create(&node).await {
        Ok(n) => n,
        Err(e) if e.is_already_exists() => client.get::<Node>("", name).await?,
        Err(e) => return Err(e).with_context(|| format!("create node {name}")),
    };
    let now = Time::now_seconds();
    stored.status = Some(NodeStatus {
        capacity: resources.clone(),
        allocatable: resources,
        conditions: vec![ready_condition(now)],
        addresses: vec![NodeAddress {
            r#type: "Hostname".into(),
            address: name.to_string(),
        }],
        ..Default::default()
    });
    let stored = client
        .update_status(&stored)
        .await
        .with_context(|| format!("node {name} status"))?;
    renew(client, name, None).await?;
    Ok(stored)
}

/// Renews the node's Lease from `cached` (one write, as a kubelet does),
/// or reads (or creates) it first when there is none or it changed.
async fn renew(client: &Client, name: &str, cached: Option<Lease>) -> Result<Lease> {
    let now = Time::now();
    if let Some(mut l) = cached {
        l.spec.get_or_insert_with(Default::default).renew_time = Some(now);
        match client.update(&l).await {
            Ok(l) => return Ok(l),
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    match client.get::<Lease>(LEASE_NAMESPACE, name).await {
        Ok(mut l) => {
            l.spec.get_or_insert_with(Default::default).renew_time = Some(now);
            Ok(client.update(&l).await?)
        }
        Err(e) if e.is_not_found() => Ok(client
            .create(&skiff_api::nodes::node_lease(name, now))
            .await?),
        Err(e) => Err(e.into()),
    }
}

/// Renews every Lease once per `every`, spread over the interval.
async fn heartbeats(client: Client, names: Vec<String>, every: Duration) {
    let gap = every / names.len().max(1) as u32;
    let mut tick = tokio::time::interval(gap.max(Duration::from_millis(1)));
    let leases: Arc<Mutex<HashMap<String, Lease>>> = Arc::default();
    let mut i = 0;
    loop {
        tick.tick().await;
        let name = names[i % names.len()].clone();
        i += 1;
        let (client, leases) = (client.clone(), leases.clone());
        tokio::spawn(async move {
            let cached = leases.lock().expect("leases").remove(&name);
            match renew(&client, &name, cached).await {
                Ok(l) => {
                    leases.lock().expect("leases").insert(name, l);
                }
                Err(e) => tracing::warn!(node = %name, "renewing the lease: {e}"),
            }
        });
    }
}

/// A node of ours whose Ready condition was taken away (it was cut off)
/// reports Ready again at once, as a kubelet does — from a watch, not by
/// asking.
async fn keep_ready(client: Client, ours: HashSet<String>) {
    let params = ListParams::default().labels(&format!("{SIM_LABEL}=true"));
    let (_store, mut rx, _task) = skiff_runtime::reflect::<Node>(client.clone(), "", params);
    while let Some(ev) = rx.recv().await {
        let (Event::Added(n) | Event::Updated { new: n, .. }) = ev else {
            continue;
        };
        if !ours.contains(n.name()) {
            continue;
        }
        let mut n = Node::clone(&n);
        let status = n.status.get_or_insert_with(Default::default);
        if status
            .conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
        {
            continue;
        }
        let now = Time::now_seconds();
        status.conditions.retain(|c| c.r#type != "Ready");
        status.conditions.push(ready_condition(now));
        let _ = client.update_status(&n).await;
    }
}

fn ready_condition(now: Time) -> Condition {
    Condition {
        r#type: "Ready".into(),
        status: "True".into(),
        last_heartbeat_time: Some(now),
        last_transition_time: Some(now),
        reason: "KubeletReady".into(),
        message: "simulated node is ready".into(),
        ..Default::default()
    }
}

/// Pod addresses from each node's podCIDR (host part from 2), or from
/// 198.18.0.0/15 (the benchmarking range) when the node has none.
struct Addresses {
    next: HashMap<String, u32>,
    /// Addresses of deleted pods, per node, handed out again first.
    free: HashMap<String, Vec<Ipv4Addr>>,
    cidrs: HashMap<String, (u32, u32)>,
    spare: u32,
}

impl Addresses {
    fn new(cidrs: HashMap<String, String>) -> Addresses {
        let parsed = cidrs
            .into_iter()
            .filter_map(|(n, c)| {
                let (ip, len) = c.split_once('/')?;
                let ip: Ipv4Addr = ip.parse().ok()?;
                let len: u32 = len.parse().ok()?;
                Some((n, (u32::from(ip), 1u32.checked_shl(32 - len).unwrap_or(0))))
            })
            .collect();
        Addresses {
            next: HashMap::new(),
            free: HashMap::new(),
            cidrs: parsed,
            spare: 0,
        }
    }

    fn give_back(&mut self, node: &str, ip: Ipv4Addr) {
        self.free.entry(node.to_string()).or_default().push(ip);
    }

    fn take(&mut self, node: &str) -> Ipv4Addr {
        if let Some(ip) = self.free.get_mut(node).and_then(Vec::pop) {
            return ip;
        }
        if let Some((base, size)) = self.cidrs.get(node) {
            let n = self.next.entry(node.to_string()).or_insert(2);
            if *n + 1 < *size {
                *n += 1;
                return Ipv4Addr::from(base + *n - 1);
            }
        }
        self.spare = (self.spare + 1) % (1 << 17);
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.spare)
    }
}

/// Status of a simulated running pod: every container running and ready.
pub fn running_status(p: &Pod, ip: Ipv4Addr, now: Time) -> PodStatus {
    let cond = |t: &str| Condition {
        r#type: t.into(),
        status: "True".into(),
        last_transition_time: Some(now),
        ..Default::default()
    };
    let containers = p
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    PodStatus {
        phase: "Running".into(),
        conditions: [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
            "PodScheduled",
        ]
        .into_iter()
        .map(cond)
        .collect(),
        pod_ip: ip.to_string(),
        pod_ips: vec![PodIp { ip: ip.to_string() }],
        start_time: Some(now),
        container_statuses: containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now),
                    }),
                    ..Default::default()
                }),
                ready: true,
                restart_count: 0,
                image: c.image.clone(),
                image_id: String::new(),
                container_id: format!("sim://{}", p.meta().uid),
                started: Some(true),
                ..Default::default()
            })
            .collect(),
        qos_class: "BestEffort".into(),
        ..Default::default()
    }
}

fn needs_running(p: &Pod) -> bool {
    p.status.as_ref().is_none_or(|s| {
        s.phase != "Running"
            || !s
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// Acts as the kubelet of the simulated nodes for the pods bound to them.
async fn run_pods(client: Client, cidrs: HashMap<String, String>, running: bool) {
    let ours: HashSet<String> = cidrs.keys().cloned().collect();
    let addresses = Arc::new(Mutex::new(Addresses::new(cidrs)));
    let (_store, mut rx, _task) =
        skiff_runtime::reflect::<Pod>(client.clone(), "", ListParams::default());
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    // Pod uid → (node, address).
    let mut ips: HashMap<String, (String, Ipv4Addr)> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let pod = match ev {
            Event::Added(p) | Event::Updated { new: p, .. } => p,
            Event::Deleted(p) => {
                if let Some((node, ip)) = ips.remove(&p.meta().uid) {
                    addresses.lock().expect("addresses").give_back(&node, ip);
                }
                continue;
            }
            Event::Synced => continue,
        };
        let node = pod
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        if !ours.contains(&node) {
            continue;
        }
        let client = client.clone();
        if pod.meta().deletion_timestamp.is_some() {
            let permit = limit.clone().acquire_owned().await;
            tokio::spawn(async move {
                let _permit = permit;
                let _ = client
                    .delete_with_grace::<Pod>(pod.namespace(), pod.name(), 0)
                    .await;
            });
            continue;
        }
        if !running || !needs_running(&pod) {
            continue;
        }
        let ip = ips
            .entry(pod.meta().uid.clone())
            .or_insert_with(|| {
                let ip = addresses.lock().expect("addresses").take(&node);
                (node.clone(), ip)
            })
            .1;
        let permit = limit.clone().acquire_owned().await;
        tokio::spawn(async move {
            let _permit = permit;
            let mut p = Pod::clone(&pod);
            p.status = Some(running_status(&p, ip, Time::now_seconds()));
            if let Err(e) = client.update_status(&p).await
                && !e.is_conflict()
                && !e.is_not_found()
            {
                tracing::warn!(pod = %p.name(), "simulated status: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_come_from_the_node_and_are_reused() {
        let mut a = Addresses::new([("n".to_string(), "10.0.0.0/29".to_string())].into());
        let first: Vec<Ipv4Addr> = (0..5).map(|_| a.take("n")).collect();
        let want: Vec<Ipv4Addr> = (2..7).map(|h| Ipv4Addr::new(10, 0, 0, h)).collect();
        assert_eq!(first, want, "hosts .2 to .6 of the /29");
        // The range is used up: the benchmarking range, never another node's.
        assert_eq!(a.take("n"), Ipv4Addr::new(198, 18, 0, 1));
        a.give_back("n", Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(a.take("n"), Ipv4Addr::new(10, 0, 0, 4));
        // A node without a podCIDR.
        assert_eq!(a.take("other"), Ipv4Addr::new(198, 18, 0, 2));
    }
}
