//! The node's eBPF datapath: attached at start (adopting what a previous
//! run pinned), the pods' veths added and forgotten as pods come and go,
//! and the service maps kept equal to the Services and EndpointSlices in
//! the API — incrementally, one service per event, through the pure
//! desired-state function and the reconciler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_api::{EndpointSlice, Resource, Service};
use skiff_client::{Client, Informer, InformerEvent, ListParams};
use skiff_datapath::{AttachOptions, MaglevConfig, Maps, Options, Reconciler};
use tokio::sync::mpsc;

use crate::config::DatapathConfig;

pub struct Datapath {
    instance: String,
    cgroup: Option<std::path::PathBuf>,
    node_ips: Vec<std::net::Ipv4Addr>,
    /// Attach calls are serialized (they share the pinned links directory).
    attach_lock: Mutex<()>,
    /// The packet-level program, loaded once for every pod veth.
    pods: Mutex<Option<skiff_datapath::PodAttacher>>,
}

impl Datapath {
    /// Loads and attaches (or adopts) the instance's programs.
    pub async fn attach(
        cfg: &DatapathConfig,
        node_ip: std::net::Ipv4Addr,
    ) -> Result<Arc<Datapath>> {
        let d = Arc::new(Datapath {
            instance: cfg.instance.clone(),
            cgroup: cfg.cgroup.clone(),
            node_ips: vec![node_ip],
            attach_lock: Mutex::new(()),
            pods: Mutex::new(None),
        });
        let ifaces = cfg.ifaces.clone();
        let d2 = d.clone();
        let report =
            tokio::task::spawn_blocking(move || d2.attach_with(ifaces, Vec::new())).await??;
        tracing::info!(
            instance = %report.instance,
            cgroup = %report.cgroup.display(),
            adopted = report.adopted.len(),
            attached = report.attached.len(),
            "datapath attached"
        );
        Ok(d)
    }

    fn attach_with(
        &self,
        ifaces: Vec<String>,
        pod_ifaces: Vec<String>,
    ) -> Result<skiff_datapath::loader::AttachReport> {
        let _g = self.attach_lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(skiff_datapath::attach(&AttachOptions {
            instance: self.instance.clone(),
            cgroup: self.cgroup.clone(),
            ifaces,
            pod_ifaces,
            node_ips: self.node_ips.clone(),
            no_xdp: false,
            netns: None,
            sizes: Default::default(),
        })?)
    }

    /// Puts the packet-level program on a pod's host-side veth.
    pub async fn add_pod_iface(self: &Arc<Self>, iface: &str) -> Result<()> {
        let d = self.clone();
        let iface = iface.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut pods = d.pods.lock().unwrap_or_else(|e| e.into_inner());
            if pods.is_none() {
                *pods = Some(skiff_datapath::PodAttacher::new(&d.instance)?);
            }
            pods.as_mut().expect("made above").attach(&iface)?;
            Ok(())
        })
        .await?
    }

    /// Forgets a pod's veth (its links are unpinned).
    pub async fn remove_pod_iface(self: &Arc<Self>, iface: &str) -> Result<()> {
        let instance = self.instance.clone();
        let iface = iface.to_string();
        tokio::task::spawn_blocking(move || {
            skiff_datapath::forget_iface(&instance, &iface).map(|_| ())
        })
        .await??;
        Ok(())
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }
}

fn key_of<R: Resource>(r: &R) -> (String, String) {
    (r.namespace().to_string(), r.name().to_string())
}

/// The service a slice belongs to.
fn slice_service(s: &EndpointSlice) -> Option<(String, String)> {
    let meta = s.metadata.as_ref()?;
    let svc = meta
        .labels
        .get(skiff_datapath::desired::SERVICE_NAME_LABEL)?;
    Some((meta.namespace.clone(), svc.clone()))
}

/// The local copy the sync works from, with slices indexed by service so
/// one event costs O(that service).
#[derive(Default)]
struct State {
    services: HashMap<(String, String), Service>,
    slices: HashMap<(String, String), BTreeMap<String, EndpointSlice>>,
}

impl State {
    fn desired_for(
        &self,
        key: &(String, String),
        options: &Options,
    ) -> BTreeMap<String, skiff_datapath::ServiceDef> {
        let Some(svc) = self.services.get(key) else {
            return BTreeMap::new();
        };
        let slices: Vec<EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let (desired, errors) =
            skiff_datapath::desired(std::slice::from_ref(svc), &slices, options);
        for e in errors {
            tracing::warn!("datapath: {e}");
        }
        desired.services
    }
}

enum Change {
    Service(Box<InformerEvent<Service>>),
    Slice(Box<InformerEvent<EndpointSlice>>),
}

/// Keeps the maps in sync with the API until the process ends. A full
/// apply after the first complete listing (removing what no longer
/// exists), then one service at a time.
pub async fn sync(client: Client, instance: String, node_name: String) -> Result<()> {
    let maps = Maps::open(&instance).context("opening the datapath maps")?;
    let mut reconciler = Reconciler::adopt(maps, MaglevConfig::default())?;
    let options = Options {
        node_name: Some(node_name),
        default_algorithm: Default::default(),
    };
    let (_svc_cache, mut svc_rx, _t1) =
        Informer::<Service>::new(client.clone(), "", ListParams::default()).spawn();
    let (_sl_cache, mut sl_rx, _t2) =
        Informer::<EndpointSlice>::new(client, "", ListParams::default()).spawn();
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let tx2 = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = svc_rx.recv().await {
            if tx.send(Change::Service(Box::new(e))).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(e) = sl_rx.recv().await {
            if tx2.send(Change::Slice(Box::new(e))).await.is_err() {
                return;
            }
        }
    });
    let mut state = State::default();
    let (mut svc_synced, mut slices_synced, mut full_done) = (false, false, false);
    let mut dirty: BTreeSet<(String, String)> = BTreeSet::new();
    while let Some(first) = rx.recv().await {
        // Take everything queued: a burst becomes one pass.
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for change in batch {
            match change {
                Change::Service(e) => match *e {
                    InformerEvent::Added(s) | InformerEvent::Updated { new: s, .. } => {
                        dirty.insert(key_of(&s));
                        state.services.insert(key_of(&s), s);
                    }
                    InformerEvent::Deleted(s) => {
                        state.services.remove(&key_of(&s));
                        dirty.insert(key_of(&s));
                    }
                    InformerEvent::Synced => svc_synced = true,
                },
                Change::Slice(e) => match *e {
                    InformerEvent::Added(s) | InformerEvent::Updated { new: s, .. } => {
                        if let Some(k) = slice_service(&s) {
                            state
                                .slices
                                .entry(k.clone())
                                .or_default()
                                .insert(s.name().to_string(), s);
                            dirty.insert(k);
                        }
                    }
                    InformerEvent::Deleted(s) => {
                        if let Some(k) = slice_service(&s) {
                            if let Some(m) = state.slices.get_mut(&k) {
                                m.remove(s.name());
                                if m.is_empty() {
                                    state.slices.remove(&k);
                                }
                            }
                            dirty.insert(k);
                        }
                    }
                    InformerEvent::Synced => slices_synced = true,
                },
            }
        }
        if !(svc_synced && slices_synced) {
            continue;
        }
        if !full_done {
            let mut all = skiff_datapath::Desired::default();
            for key in state.services.keys() {
                all.services.extend(state.desired_for(key, &options));
            }
            match reconciler.apply(&all) {
                Ok(r) => tracing::info!(
                    services = all.services.len(),
                    added = r.added,
                    changed = r.changed,
                    removed = r.removed,
                    "datapath synced"
                ),
                Err(e) => {
                    tracing::error!("datapath sync: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            full_done = true;
            dirty.clear();
            continue;
        }
        for key in std::mem::take(&mut dirty) {
            let defs = state.desired_for(&key, &options);
            let prefix = format!("{}/{}:", key.0, key.1);
            let stale: Vec<String> = reconciler
                .installed_with_prefix(&prefix)
                .filter(|n| !defs.contains_key(*n))
                .map(str::to_string)
                .collect();
            for name in stale {
                if let Err(e) = reconciler.apply_one(&name, None) {
                    tracing::error!("datapath: removing {name}: {e}");
                }
            }
            for (name, def) in &defs {
                if let Err(e) = reconciler.apply_one(name, Some(def)) {
                    tracing::error!("datapath: programming {name}: {e}");
                }
            }
        }
    }
    Ok(())
}
