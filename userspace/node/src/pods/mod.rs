//! The pods bound to this node: an informer on them (field selector
//! `spec.nodeName`), one worker task per pod, adoption of the containers a
//! previous run left, and removal of those whose pod is gone.

pub mod cgroups;
pub mod execs;
pub mod probe;
pub mod resolve;
pub mod restart;
pub mod sandbox;
pub mod satoken;
pub mod status;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Result;
use skiff_api::v1::{EventSource, ObjectReference, Time};
use skiff_api::{Event, ObjectMeta, Pod};
use skiff_client::{Client, ListParams};
use skiff_runtime::Event as Change;
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::datapath::Datapath;
use crate::image::Reference;
use crate::net::Ipam;
use crate::runtime::{Containerd, TaskState};
use worker::{Msg, Worker};

/// containerd labels on every container skiff makes.
pub mod labels {
    pub const POD_UID: &str = "io.skiff.pod.uid";
    pub const POD_NAME: &str = "io.skiff.pod.name";
    pub const POD_NAMESPACE: &str = "io.skiff.pod.namespace";
    pub const CONTAINER: &str = "io.skiff.container.name";
    pub const RESTART: &str = "io.skiff.container.restart";
}

/// What every pod worker shares.
pub struct Ctx {
    pub cfg: NodeConfig,
    pub client: Client,
    pub ctd: Containerd,
    pub netlink: rtnetlink::Handle,
    pub ipam: Ipam,
    pub node_ip: Ipv4Addr,
    pub datapath: Option<Arc<Datapath>>,
    /// The exec'd processes in flight, which a container's exit waits for.
    pub execs: Arc<execs::Execs>,
    /// Speaks to image registries (the system's CAs and `--registry-ca`).
    pub registries: reqwest::Client,
    /// The CA that checks the API server (with TLS): pods get it with
    /// their ServiceAccount token. `None`: a plain server, no tokens.
    pub server_ca: Option<String>,
}

impl Ctx {
    /// Records an Event about a pod (best effort, in the background).
    pub fn event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let meta = pod.metadata.clone().unwrap_or_default();
        let now = Time::now_seconds();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let ev = Event {
            api_version: "v1".into(),
            kind: "Event".into(),
            metadata: Some(ObjectMeta {
                name: format!("{}.{:x}", meta.name, nanos),
                namespace: meta.namespace.clone(),
                ..Default::default()
            }),
            involved_object: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                api_version: "v1".into(),
                ..Default::default()
            }),
            reason: reason.into(),
            message: message.into(),
            source: Some(EventSource {
                component: "kubelet".into(),
                host: self.cfg.name.clone(),
            }),
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            count: 1,
            r#type: kind.into(),
            reporting_component: "skiff-node".into(),
            ..Default::default()
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.create(&ev).await {
                tracing::debug!("recording an event: {e}");
            }
        });
    }

    /// Fetches an image that is not on the node, with the credentials the
    /// pod's imagePullSecrets hold.
    pub async fn pull(
        &self,
        reference: &Reference,
        creds: &crate::image::registry::Credentials,
    ) -> Result<()> {
        crate::image::registry::pull(&self.ctd, reference, &self.registries, creds).await
    }
}

/// A container found in containerd at start.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub restart: i32,
    pub running: bool,
}

/// What containerd holds for skiff, grouped by pod uid.
async fn inventory(ctd: &Containerd) -> Result<BTreeMap<String, Vec<Adopted>>> {
    let tasks: HashMap<String, TaskState> = ctd
        .tasks()
        .await?
        .into_iter()
        .map(|t| (t.container_id, t.state))
        .collect();
    let mut out: BTreeMap<String, Vec<Adopted>> = BTreeMap::new();
    for (id, labels) in ctd.containers().await? {
        let Some(uid) = labels.get(labels::POD_UID).cloned() else {
            continue;
        };
        let restart = labels
            .get(labels::RESTART)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let state = tasks.get(&id).copied();
        let running = matches!(
            state,
            Some(TaskState::Running | TaskState::Created | TaskState::Paused | TaskState::Unknown)
        );
        out.entry(uid).or_default().push(Adopted {
            id,
            labels,
            restart,
            running,
        });
    }
    Ok(out)
}

/// Runs the pods bound to this node until the informer ends.
pub async fn run(ctx: Arc<Ctx>) -> Result<()> {
    let mut leftovers = inventory(&ctx.ctd).await?;
    let params = ListParams::default().fields(&format!("spec.nodeName={}", ctx.cfg.name));
    let (_store, mut events, _task) = skiff_runtime::reflect::<Pod>(ctx.client.clone(), "", params);
    let mut workers: HashMap<String, mpsc::Sender<Msg>> = HashMap::new();
    let mut synced_once = false;
    while let Some(ev) = events.recv().await {
        match ev {
            Change::Added(pod) | Change::Updated { new: pod, .. } => {
                let uid = sandbox::uid_of(&pod).to_string();
                if let Some(tx) = workers.get(&uid) {
                    if tx.send(Msg::Update(pod.clone())).await.is_ok() {
                        continue;
                    }
                    workers.remove(&uid);
                    // The worker finished (the pod was removed): a pod still
                    // listed with the same uid has nothing left to run.
                    continue;
                }
                let (tx, rx) = mpsc::channel(256);
                let mut w = Worker::new(ctx.clone(), Pod::clone(&pod), tx.clone());
                let found = leftovers.remove(&uid).unwrap_or_default();
                workers.insert(uid, tx);
                tokio::spawn(async move {
                    w.adopt(found).await;
                    w.run(rx).await;
                });
            }
            Change::Deleted(pod) => {
                let uid = sandbox::uid_of(&pod).to_string();
                if let Some(tx) = workers.remove(&uid) {
                    let _ = tx.send(Msg::Gone(pod)).await;
                }
            }
            Change::Synced => {
                if !synced_once {
                    synced_once = true;
                    // Containers whose pod no longer exists.
                    for (uid, found) in std::mem::take(&mut leftovers) {
                        tracing::info!(pod = %uid, "removing the containers of a pod that is gone");
                        for a in &found {
                            worker::stop_container(
                                &ctx.ctd,
                                &a.id,
                                std::time::Duration::from_secs(2),
                            )
                            .await;
                            let _ = ctx.ctd.delete_task(&a.id).await;
                            let _ = ctx.ctd.delete_container(&a.id).await;
                        }
                        if let Err(e) = sandbox::teardown(&ctx, &uid).await {
                            tracing::warn!(pod = %uid, "removing the sandbox: {e:#}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
