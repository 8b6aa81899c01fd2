//! ReplicaSet → Pods: creates and deletes pods (owner references to the
//! ReplicaSet) until the active count matches `replicas`, adopts matching
//! orphans, and reports status. Creates and deletes are remembered as
//! expectations, so a sync before the watch shows them does not act twice.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use skiff_api::selector::Selector;
use skiff_api::v1::{ObjectMeta, ReplicaSetStatus};
use skiff_api::{Pod, ReplicaSet, Resource};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Index, Informers, Queue, Reconcile, Store};

use crate::events::{NORMAL, Recorder, WARNING};
use crate::pods::{self, active, controller_of, owner_ref, ready};

/// Pods created or deleted at most at once per sync.
const BATCH: usize = 500;
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(300);

pub type Key = (String, String);

/// What one sync should do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
}

fn created(p: &Pod) -> i64 {
    p.metadata
        .as_ref()
        .and_then(|m| m.creation_timestamp)
        .map(|t| t.seconds)
        .unwrap_or(0)
}

/// The pods to remove first: unscheduled, then not running, then not
/// ready, then the newest (as Kubernetes ranks them).
pub fn deletion_order(pods: &mut [&Pod]) {
    pods.sort_by_key(|p| {
        let phase = p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
        (
            pods::scheduled(p),
            phase == "Running",
            ready(p),
            std::cmp::Reverse(created(p)),
        )
    });
}

pub fn plan(desired: usize, owned_active: &[&Pod]) -> Plan {
    let have = owned_active.len();
    if have < desired {
        return Plan {
            create: (desired - have).min(BATCH),
            delete: vec![],
        };
    }
    let mut order: Vec<&Pod> = owned_active.to_vec();
    deletion_order(&mut order);
    Plan {
        create: 0,
        delete: order
            .into_iter()
            .take((have - desired).min(BATCH))
            .map(|p| p.name().to_string())
            .collect(),
    }
}

/// The status of a ReplicaSet from its pods (this controller's own
/// creations and deletions included).
pub fn status(rs: &ReplicaSet, owned: &[&Pod]) -> ReplicaSetStatus {
    let act: Vec<&&Pod> = owned.iter().filter(|p| active(p)).collect();
    let labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    let ready_n = act.iter().filter(|p| ready(p)).count() as i32;
    let terminating = owned
        .iter()
        .filter(|p| pods::terminating(p) && !pods::finished(p))
        .count() as i32;
    ReplicaSetStatus {
        replicas: act.len() as i32,
        fully_labeled_replicas: act
            .iter()
            .filter(|p| {
                let l = &p
                    .metadata
                    .as_ref()
                    .map(|m| m.labels.clone())
                    .unwrap_or_default();
                labels.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .count() as i32,
        ready_replicas: ready_n,
        available_replicas: ready_n,
        observed_generation: rs.metadata.as_ref().map(|m| m.generation).unwrap_or(0),
        conditions: vec![],
        terminating_replicas: Some(terminating),
    }
}

/// A new pod from the ReplicaSet's template.
pub fn pod_for(rs: &ReplicaSet) -> Pod {
    let meta = rs.metadata.clone().unwrap_or_default();
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: Some(ObjectMeta {
            generate_name: format!("{}-", meta.name),
            namespace: meta.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: vec![owner_ref("ReplicaSet", "apps/v1", &meta.name, &meta.uid)],
            ..Default::default()
        }),
        spec: template.spec,
        status: None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Expect {
    adds: i64,
    dels: i64,
    since: Instant,
}

fn selector(rs: &ReplicaSet) -> Option<Selector> {
    let sel = rs.spec.as_ref()?.selector.as_ref()?;
    let s = Selector::from_label_selector(sel).ok()?;
    // An empty selector would adopt every pod of the namespace.
    (!sel.match_labels.is_empty() || !sel.match_expressions.is_empty()).then_some(s)
}

struct Controller {
    client: Client,
    events: Recorder,
    rss: Store<ReplicaSet>,
    pods: Store<Pod>,
    /// ReplicaSet uid → its pods (namespace, name).
    owned: HashMap<String, BTreeSet<Key>>,
    uid_to_rs: HashMap<String, Key>,
    expect: HashMap<Key, Expect>,
}

pub enum Ev {
    Rs(Event<ReplicaSet>),
    Pod(Event<Pod>),
}

/// The controller on the shared informers.
pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    let c = Controller {
        events: Recorder::new(client.clone(), "replicaset-controller"),
        client,
        rss: inf.watch_all(&mut inbox, Ev::Rs),
        pods: inf.watch_all(&mut inbox, Ev::Pod),
        owned: HashMap::new(),
        uid_to_rs: HashMap::new(),
        expect: HashMap::new(),
    };
    tokio::spawn(skiff_runtime::drive("replicaset sync", c, inbox))
}

impl Reconcile for Controller {
    type Key = Key;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Key>) {
        match ev {
            Ev::Rs(ev) => self.on_rs(ev, q),
            Ev::Pod(ev) => self.on_pod(ev, q),
        }
    }

    async fn sync(&mut self, key: &Key, _: &mut Queue<Key>) -> anyhow::Result<()> {
        self.sync_rs(key).await
    }
}

impl Controller {
    fn on_rs(&mut self, ev: Event<ReplicaSet>, q: &mut Queue<Key>) {
        let (old, new) = ev.split();
        if let Some(rs) = new {
            self.uid_to_rs.insert(
                uid(&**rs),
                (rs.namespace().to_string(), rs.name().to_string()),
            );
            q.add((rs.namespace().to_string(), rs.name().to_string()));
        } else if let Some(rs) = old {
            // Deleted: what happens to its pods is the garbage collector's
            // business (background, foreground or orphan).
            self.uid_to_rs.remove(&uid(&**rs));
            self.expect
                .remove(&(rs.namespace().to_string(), rs.name().to_string()));
        }
    }

    fn on_pod(&mut self, ev: Event<Pod>, q: &mut Queue<Key>) {
        let is_delete = matches!(ev, Event::Deleted(_));
        let is_add = matches!(ev, Event::Added(_));
        let (old, new) = ev.split();
        for (p, present) in [(old, false), (new, true)] {
            let Some(p) = p else { continue };
            let key = (p.namespace().to_string(), p.name().to_string());
            let owner = p
                .metadata
                .as_ref()
                .and_then(|m| controller_of(&m.owner_references))
                .cloned();
            match owner.filter(|o| o.kind == "ReplicaSet") {
                Some(o) => {
                    if present {
                        self.owned.entry(o.uid.clone()).or_default().insert(key);
                    } else if let Some(s) = self.owned.get_mut(&o.uid) {
                        s.remove(&key);
                    }
                    if let Some(rs_key) = self.uid_to_rs.get(&o.uid).cloned() {
                        if let Some(e) = self.expect.get_mut(&rs_key) {
                            if present && is_add {
                                e.adds -= 1;
                            }
                            if !present && is_delete {
                                e.dels -= 1;
                            }
                        }
                        q.add(rs_key);
                    }
                }
                None if present => {
                    // An orphan: any ReplicaSet whose selector matches may adopt it.
                    let labels = p
                        .metadata
                        .as_ref()
                        .map(|m| m.labels.clone())
                        .unwrap_or_default();
                    let matching: Vec<Key> = self
                        .rss
                        .read()
                        .in_namespace(p.namespace())
                        .filter(|rs| selector(rs).is_some_and(|s| s.matches(&labels)))
                        .map(|rs| (rs.namespace().to_string(), rs.name().to_string()))
                        .collect();
                    for k in matching {
                        q.add(k);
                    }
                }
                None => {}
            }
        }
    }

    async fn sync_rs(&mut self, key: &Key) -> anyhow::Result<()> {
        let Some(rs) = self.rss.get(&key.0, &key.1) else {
            return Ok(());
        };
        if rs
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(());
        }
        let rs_uid = uid(&*rs);
        self.adopt_orphans(&rs).await?;
        let satisfied = match self.expect.get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels <= 0) || e.since.elapsed() > EXPECTATION_TIMEOUT,
        };
        let work = satisfied.then(|| {
            // Borrowed from our copy, never cloned: a sync costs O(its pods).
            let pods = self.pods.read();
            let act: Vec<&Pod> = owned_refs(&self.owned, &pods, &rs_uid)
                .filter(|p| active(p))
                .collect();
            let desired = rs
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(0) as usize;
            plan(desired, &act)
        });
        if let Some(p) = work {
            self.expect.remove(key);
            if p.create > 0 || !p.delete.is_empty() {
                self.expect.insert(
                    key.clone(),
                    Expect {
                        adds: p.create as i64,
                        dels: p.delete.len() as i64,
                        since: Instant::now(),
                    },
                );
                self.execute(&rs, p).await?;
            }
        }
        // The status is computed after acting, from a copy that holds this
        // sync's own creations and deletions: one computed before would tell
        // the deployment controller that pods just deleted are still
        // available (and a rollout would go below maxUnavailable).
        let st = {
            let pods = self.pods.read();
            let refs: Vec<&Pod> = owned_refs(&self.owned, &pods, &rs_uid).collect();
            status(&rs, &refs)
        };
        if rs.status.as_ref() != Some(&st) {
            skiff_runtime::failpoint::hit("replicaset-status").await;
            let mut updated = ReplicaSet::clone(&rs);
            updated.status = Some(st);
            match self.client.update_status(&updated).await {
                // Our own write, in our copy before the watch brings it.
                Ok(written) => {
                    self.rss.write_through(written);
                }
                // A stale copy: the newer one is on its way and syncs again.
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates in growing batches (1, 2, 4, ...) so a template the API
    /// refuses fails once, not `replicas` times; deletes all at once.
    async fn execute(&mut self, rs: &ReplicaSet, p: Plan) -> anyhow::Result<()> {
        let key = (rs.namespace().to_string(), rs.name().to_string());
        let mut left = p.create;
        let mut batch = 1;
        while left > 0 {
            let n = batch.min(left);
            let pod = pod_for(rs);
            let results = futures::future::join_all((0..n).map(|_| self.client.create(&pod))).await;
            for made in results.iter().flatten() {
                let msg = format!("Created pod: {}", made.name());
                self.events.record(rs, NORMAL, "SuccessfulCreate", &msg);
                self.own_write(made.clone());
            }
            let failed = results.iter().filter(|r| r.is_err()).count();
            left -= n;
            if failed > 0 {
                if let Some(e) = self.expect.get_mut(&key) {
                    // Those never come: neither do the ones not tried.
                    e.adds -= (failed + left) as i64;
                }
                let err = results
                    .into_iter()
                    .find_map(|r| r.err())
                    .expect("a failure");
                self.events.record(
                    rs,
                    WARNING,
                    "FailedCreate",
                    &format!("Error creating: {err}"),
                );
                anyhow::bail!("creating pods: {err}");
            }
            batch *= 2;
        }
        let ns = rs.namespace().to_string();
        let deletes = p
            .delete
            .iter()
            .map(|name| self.client.delete::<Pod>(&ns, name));
        for (r, name) in futures::future::join_all(deletes)
            .await
            .into_iter()
            .zip(&p.delete)
        {
            if let Ok(gone) = &r {
                let msg = format!("Deleted pod: {name}");
                self.events.record(rs, NORMAL, "SuccessfulDelete", &msg);
                if gone.meta().deletion_timestamp.is_some() {
                    self.own_write(gone.clone());
                } else {
                    // Removed at once (a pod no node runs): an older event
                    // still on its way may show it again until the watch's
                    // deletion, as an unready pod, which no count trusts.
                    self.pods.forget(gone);
                }
            }
            if let Err(e) = r
                && !e.is_not_found()
            {
                if let Some(x) = self.expect.get_mut(&key) {
                    x.dels -= 1;
                }
                anyhow::bail!("deleting a pod: {e}");
            }
        }
        Ok(())
    }

    /// Puts a pod this controller wrote into its copy at once (the watch
    /// brings the same revision later; expectations count that event).
    fn own_write(&mut self, p: Pod) {
        let key = (p.namespace().to_string(), p.name().to_string());
        let owner = p
            .metadata
            .as_ref()
            .and_then(|m| controller_of(&m.owner_references))
            .map(|o| o.uid.clone());
        self.pods.write_through(p);
        if let Some(uid) = owner {
            self.owned.entry(uid).or_default().insert(key);
        }
    }

    /// Takes matching pods that have no controller.
    async fn adopt_orphans(&mut self, rs: &ReplicaSet) -> anyhow::Result<()> {
        let Some(sel) = selector(rs) else {
            return Ok(());
        };
        let orphans: Vec<Pod> = self
            .pods
            .read()
            .in_namespace(rs.namespace())
            .filter(|p| {
                p.metadata.as_ref().is_some_and(|m| {
                    controller_of(&m.owner_references).is_none() && sel.matches(&m.labels)
                }) && active(p)
            })
            .map(|p| Pod::clone(p))
            .collect();
        for mut p in orphans {
            let m = p.metadata.get_or_insert_with(Default::default);
            let meta = rs.metadata.clone().unwrap_or_default();
            m.owner_references
                .push(owner_ref("ReplicaSet", "apps/v1", &meta.name, &meta.uid));
            match self.client.update(&p).await {
                Ok(_) => tracing::info!(pod = %p.name(), replicaset = %rs.name(), "adopted"),
                Err(e) if e.is_conflict() || e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The pods of the ReplicaSet with this uid, borrowed from the copy.
fn owned_refs<'a>(
    owned: &'a HashMap<String, BTreeSet<Key>>,
    pods: &'a Index<Pod>,
    rs_uid: &str,
) -> impl Iterator<Item = &'a Pod> {
    owned
        .get(rs_uid)
        .into_iter()
        .flatten()
        .filter_map(|(ns, n)| pods.get(ns, n).map(|p| &**p))
}

fn uid<R: Resource>(r: &R) -> String {
    r.meta().uid.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::{Condition, PodSpec, PodStatus, Time};

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                creation_timestamp: Some(Time {
                    seconds: created,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: node.into(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: phase.into(),
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scale_up_and_down_with_kubernetes_preferences() {
        let a = pod("a", "n1", "Running", true, 1);
        let b = pod("b", "", "Pending", false, 2);
        let c = pod("c", "n1", "Running", false, 3);
        let d = pod("d", "n1", "Running", true, 4);
        let all = [&a, &b, &c, &d];
        assert_eq!(
            plan(6, &all),
            Plan {
                create: 2,
                delete: vec![]
            }
        );
        assert_eq!(plan(4, &all), Plan::default());
        // Unscheduled first, then not ready, then the newest ready one.
        assert_eq!(plan(1, &all).delete, ["b", "c", "d"]);
        assert_eq!(plan(0, &all).delete.len(), 4);
        assert_eq!(plan(100_000, &[]).create, BATCH);
    }

    #[test]
    fn status_counts_active_and_ready() {
        let rs = ReplicaSet::default();
        let a = pod("a", "n1", "Running", true, 1);
        let b = pod("b", "n1", "Running", false, 1);
        let gone = pod("g", "n1", "Failed", false, 1);
        let s = status(&rs, &[&a, &b, &gone]);
        assert_eq!(
            (s.replicas, s.ready_replicas, s.available_replicas),
            (2, 1, 1)
        );
    }
}
