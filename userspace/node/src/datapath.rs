//! The node's eBPF datapath: attached at start (adopting what a previous
//! run pinned), the pods' veths added and forgotten as pods come and go,
//! and the service maps kept equal to the Services and EndpointSlices in
//! the API — incrementally, one service per event, through the pure
//! desired-state function and the reconciler.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use skiff_api::{EndpointSlice, Service};
use skiff_client::Client;
use skiff_datapath::{AttachOptions, MaglevConfig, Maps, Options, Reconciler};
use skiff_runtime::{
    AbortOnDrop, Event, Inbox, Informers, Queue, Reconcile, ServiceIndex, ServiceKey,
};

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

/// What the sync works on: the whole table once (after the first complete
/// listing, removing what no longer exists), then one Service at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    All,
    Service(ServiceKey),
}

enum Ev {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
}

/// Keeps the maps equal to the API's Services and EndpointSlices. A failed
/// write (a full map, say) is retried with back-off by itself, not only
/// when something else changes.
struct Sync {
    reconciler: Reconciler,
    options: Options,
    index: ServiceIndex,
    full_done: bool,
    failing: tokio::sync::watch::Sender<Failing>,
}

/// Services the maps do not hold as they should, with the last error
/// (`*` for the full sync): empty when the datapath matches the API.
pub type Failing = BTreeMap<String, String>;

impl Sync {
    fn defs(&self, key: &ServiceKey) -> BTreeMap<String, skiff_datapath::ServiceDef> {
        let Some(svc) = self.index.service(key) else {
            return BTreeMap::new();
        };
        let slices = self.index.slices(key).map(|s| &**s);
        match skiff_datapath::service_desired(svc, slices, &self.options) {
            Ok(defs) => defs.into_iter().map(|d| (d.name.clone(), d)).collect(),
            Err(e) => {
                tracing::warn!("datapath: {e}");
                BTreeMap::new()
            }
        }
    }

    fn apply_all(&mut self) -> Result<()> {
        let mut all = skiff_datapath::Desired::default();
        for (key, _) in self.index.services() {
            all.services.extend(self.defs(key));
        }
        let r = self.reconciler.apply(&all)?;
        tracing::info!(
            services = all.services.len(),
            added = r.added,
            changed = r.changed,
            removed = r.removed,
            "datapath synced"
        );
        Ok(())
    }

    fn apply_service(&mut self, key: &ServiceKey) -> Result<()> {
        let defs = self.defs(key);
        let prefix = format!("{}/{}:", key.0, key.1);
        let stale: Vec<String> = self
            .reconciler
            .installed_with_prefix(&prefix)
            .filter(|n| !defs.contains_key(*n))
            .map(str::to_string)
            .collect();
        let mut failed = None;
        for name in stale {
            if let Err(e) = self.reconciler.apply_one(&name, None) {
                failed.get_or_insert(anyhow::anyhow!("removing {name}: {e}"));
            }
        }
        for (name, def) in &defs {
            if let Err(e) = self.reconciler.apply_one(name, Some(def)) {
                failed.get_or_insert(anyhow::anyhow!("programming {name}: {e}"));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Reconcile for Sync {
    type Key = Key;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Key>) {
        let changed = match ev {
            Ev::Service(ev) => self.index.on_service(ev).into_iter().collect(),
            Ev::Slice(ev) => self.index.on_slice(ev),
        };
        // Until the full apply has run, it covers every change.
        if self.full_done {
            for k in changed {
                q.add(Key::Service(k));
            }
        }
    }

    fn on_synced(&mut self, q: &mut Queue<Key>) {
        q.add(Key::All);
    }

    async fn sync(&mut self, key: &Key, _: &mut Queue<Key>) -> Result<()> {
        let (name, r) = match key {
            Key::All => {
                let r = self.apply_all();
                self.full_done |= r.is_ok();
                ("*".to_string(), r)
            }
            Key::Service(k) => (format!("{}/{}", k.0, k.1), self.apply_service(k)),
        };
        self.failing.send_if_modified(|f| match &r {
            Ok(()) => f.remove(&name).is_some(),
            Err(e) => f.insert(name, format!("{e:#}")).is_none(),
        });
        r
    }
}

/// Keeps the maps in sync with the API until the process ends.
pub async fn sync(client: Client, instance: String, node_name: String) -> Result<()> {
    sync_reporting(client, instance, node_name, Default::default()).await
}

/// [`sync`], telling `failing` which services it could not program (a
/// full map, say) until a retry succeeds.
pub async fn sync_reporting(
    client: Client,
    instance: String,
    node_name: String,
    failing: tokio::sync::watch::Sender<Failing>,
) -> Result<()> {
    let maps = Maps::open(&instance).context("opening the datapath maps")?;
    let reconciler = Reconciler::adopt(maps, MaglevConfig::default())?;
    let mut inf = Informers::new(client);
    let mut inbox = Inbox::new();
    inf.watch_all(&mut inbox, Ev::Service);
    inf.watch_all(&mut inbox, Ev::Slice);
    let s = Sync {
        reconciler,
        options: Options {
            node_name: Some(node_name),
            default_algorithm: Default::default(),
        },
        index: ServiceIndex::new(),
        full_done: false,
        failing,
    };
    let _reflectors: Vec<AbortOnDrop> = inf.start().into_iter().map(AbortOnDrop).collect();
    skiff_runtime::drive("datapath", s, inbox).await;
    Ok(())
}
