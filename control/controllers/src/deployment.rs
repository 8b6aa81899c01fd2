//! Deployment → ReplicaSets: one ReplicaSet per pod template (named and
//! labelled by the template's hash), rolled by RollingUpdate within
//! maxSurge / maxUnavailable as pods become available, or by Recreate;
//! old ReplicaSets beyond revisionHistoryLimit are removed; status and the
//! Available / Progressing conditions are reported.

use std::collections::{BTreeSet, HashMap};

use skiff_api::v1::{
    Condition, DeploymentStatus, IntOrString, LabelSelector, ObjectMeta, PodTemplateSpec,
    ReplicaSetSpec, Time,
};
use skiff_api::{Deployment, ReplicaSet, Resource};
use std::sync::Arc;

use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, Store};

use crate::events::{NORMAL, Recorder};
use crate::pods::{controller_of, owner_ref, template_hash};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// What `rollout history` shows for a revision; set on the Deployment
/// (`kubectl annotate ... kubernetes.io/change-cause=...`), carried by its
/// newest ReplicaSet.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

fn change_cause<R: Resource>(r: &R) -> Option<&String> {
    r.meta().annotations.get(CHANGE_CAUSE)
}

type Key = (String, String);

/// `25%` of 10 rounds up for surge and down for unavailability.
pub fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let (is_pct, text, int) = match v {
        Some(v) if v.is_string || !v.str_val.is_empty() => (true, v.str_val.clone(), 0),
        Some(v) => (false, String::new(), v.int_val),
        None => (true, default.to_string(), 0),
    };
    if !is_pct {
        return int.max(0);
    }
    let pct: i64 = text.trim_end_matches('%').parse().unwrap_or(25);
    let scaled = i64::from(total) * pct;
    let n = if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    };
    n.max(0) as i32
}

/// (maxSurge, maxUnavailable) of a deployment; never both zero.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .unwrap_or_default();
    let surge = resolve(ru.max_surge.as_ref(), replicas, true, "25%");
    let mut unavailable = resolve(ru.max_unavailable.as_ref(), replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas.max(0)))
}

/// One ReplicaSet as the rollout sees it: its spec, and its status as last
/// reported — which may be older than the spec (the deployment controller
/// has just changed it, or the ReplicaSet controller has not yet seen its
/// own deletions), so the rollout only trusts what such a status proves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RsView {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`: pods not terminating.
    pub status_replicas: i32,
    /// `status.availableReplicas`.
    pub status_available: i32,
    /// `status.terminatingReplicas`.
    pub status_terminating: i32,
    /// The status was computed after the ReplicaSet controller saw this spec
    /// (`status.observedGeneration >= metadata.generation`).
    pub observed: bool,
    pub created: i64,
}

impl RsView {
    /// Available pods that stay when the ReplicaSet reaches `spec`: a
    /// scale-down removes pods that are not ready first, and pods only
    /// become ready or go, so an older status' count, capped by the spec,
    /// is a floor.
    pub fn surely_available(&self, spec: i32) -> i32 {
        self.status_available.min(spec).max(0)
    }

    /// Pods (not terminating) that may exist: once the status has seen the
    /// spec it counts them; before that a scale-down may not have happened.
    pub fn at_most(&self) -> i32 {
        if self.observed {
            self.status_replicas.max(0)
        } else {
            self.replicas.max(self.status_replicas).max(0)
        }
    }
}

/// Desired replica counts for the new and the old ReplicaSets under
/// RollingUpdate, as Kubernetes' deployment controller computes them: the
/// new one grows while every pod that may exist stays within
/// `desired + surge`, old ones shrink while the pods surely available stay
/// at `desired - max_unavailable` or more (not-ready old pods first). Both
/// hold whatever order the ReplicaSet controller acts in and however old
/// the statuses are.
pub fn rolling(
    desired: i32,
    surge: i32,
    max_unavailable: i32,
    new: &RsView,
    old: &[RsView],
) -> (i32, Vec<(String, i32)>) {
    // Scale the new ReplicaSet up, as far as the surge allows. Until an old
    // ReplicaSet's status has seen its spec, its pods are counted at the
    // larger of the two.
    let all: i32 = new.replicas + old.iter().map(RsView::at_most).sum::<i32>();
    let new_target = if new.replicas >= desired {
        desired
    } else {
        let room = (desired + surge - all).max(0);
        new.replicas + room.min(desired - new.replicas)
    };
    // Scale old ones down, as far as availability allows: only pods surely
    // available count, so the new pods this sync adds count for nothing.
    let min_available = desired - max_unavailable;
    let new_available = new.surely_available(new.replicas.min(new_target));
    let old_spec: i32 = old.iter().map(|o| o.replicas.max(0)).sum();
    let old_available: i32 = old.iter().map(|o| o.surely_available(o.replicas)).sum();
    let mut can_remove = (old_spec + new_available - min_available).max(0);
    let mut budget_available = (old_available + new_available - min_available).max(0);
    let mut by_age: Vec<&RsView> = old.iter().collect();
    by_age.sort_by_key(|o| o.created);
    let mut old_targets = Vec::new();
    for o in &by_age {
        // Pods not surely available go first: removing them costs nothing.
        let spec = o.replicas.max(0);
        let unavailable = spec - o.surely_available(spec);
        let take_unavail = unavailable.min(can_remove);
        can_remove -= take_unavail;
        let take_avail = (spec - take_unavail).min(can_remove).min(budget_available);
        can_remove -= take_avail;
        budget_available -= take_avail;
        old_targets.push((o.name.clone(), spec - take_unavail - take_avail));
    }
    (new_target, old_targets)
}

/// Desired replica counts under Recreate: every old ReplicaSet goes to 0,
/// and the new one grows only when no old pod is left — terminating ones
/// included, as Kubernetes waits for them, by a status that has seen the
/// scale-down.
pub fn recreate_targets(desired: i32, new: &RsView, old: &[RsView]) -> (i32, Vec<(String, i32)>) {
    let old_gone = old.iter().all(|o| {
        o.replicas == 0 && o.observed && o.status_replicas == 0 && o.status_terminating == 0
    });
    let new_target = if old_gone { desired } else { new.replicas };
    (
        new_target,
        old.iter().map(|o| (o.name.clone(), 0)).collect(),
    )
}

fn owned_by(rs: &ReplicaSet, d: &Deployment) -> bool {
    rs.metadata
        .as_ref()
        .and_then(|m| controller_of(&m.owner_references))
        .is_some_and(|o| o.uid == d.meta().uid)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .as_ref()
        .and_then(|m| m.annotations.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn view(rs: &ReplicaSet) -> RsView {
    let none = skiff_api::v1::ReplicaSetStatus::default();
    let st = rs.status.as_ref().unwrap_or(&none);
    RsView {
        name: rs.name().to_string(),
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        status_replicas: st.replicas,
        status_available: st.available_replicas,
        status_terminating: st.terminating_replicas.unwrap_or(0),
        observed: st.observed_generation >= rs.meta().generation,
        created: rs.meta().creation_timestamp.map(|t| t.seconds).unwrap_or(0),
    }
}

/// The ReplicaSet for the deployment's current template.
pub fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, rev: i64) -> ReplicaSet {
    let meta = d.metadata.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let mut template: PodTemplateSpec = spec.template.clone().unwrap_or_default();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .insert(HASH_LABEL.into(), hash.to_string());
    let mut selector: LabelSelector = spec.selector.clone().unwrap_or_default();
    selector
        .match_labels
        .insert(HASH_LABEL.into(), hash.to_string());
    let mut labels = template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.to_string());
    ReplicaSet {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        metadata: Some(ObjectMeta {
            name: format!("{}-{hash}", meta.name),
            namespace: meta.namespace.clone(),
            labels,
            annotations: [(REVISION.to_string(), rev.to_string())]
                .into_iter()
                .chain(
                    meta.annotations
                        .get(CHANGE_CAUSE)
                        .map(|c| (CHANGE_CAUSE.to_string(), c.clone())),
                )
                .collect(),
            owner_references: vec![owner_ref("Deployment", "apps/v1", &meta.name, &meta.uid)],
            ..Default::default()
        }),
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector: Some(selector),
            template: Some(template),
        }),
        status: None,
    }
}

pub fn status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    max_unavailable: i32,
) -> DeploymentStatus {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let sum = |f: fn(&skiff_api::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|r| r.status.as_ref()).map(f).sum()
    };
    let available = sum(|s| s.available_replicas);
    let updated = new
        .and_then(|n| n.status.as_ref())
        .map(|s| s.replicas)
        .unwrap_or(0);
    let now = Time::now_seconds();
    let prev = d.status.clone().unwrap_or_default();
    let cond = |kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let same = prev
            .conditions
            .iter()
            .find(|c| c.r#type == kind && c.status == status);
        Condition {
            r#type: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: Some(same.and_then(|c| c.last_transition_time).unwrap_or(now)),
            last_update_time: Some(same.and_then(|c| c.last_update_time).unwrap_or(now)),
            ..Default::default()
        }
    };
    let is_available = available >= desired - max_unavailable;
    let complete = updated == desired
        && available >= desired
        && all.len()
            <= 1 + all
                .iter()
                .filter(|r| r.spec.as_ref().and_then(|s| s.replicas) == Some(0))
                .count();
    let name = d.name();
    DeploymentStatus {
        observed_generation: d.meta().generation,
        replicas: sum(|s| s.replicas),
        updated_replicas: updated,
        ready_replicas: sum(|s| s.ready_replicas),
        available_replicas: available,
        unavailable_replicas: (desired - available).max(0),
        conditions: vec![
            cond(
                "Available",
                is_available,
                if is_available {
                    "MinimumReplicasAvailable"
                } else {
                    "MinimumReplicasUnavailable"
                },
                if is_available {
                    "Deployment has minimum availability.".into()
                } else {
                    "Deployment does not have minimum availability.".into()
                },
            ),
            cond(
                "Progressing",
                true,
                if complete {
                    "NewReplicaSetAvailable"
                } else {
                    "ReplicaSetUpdated"
                },
                match new {
                    Some(n) if complete => {
                        format!("ReplicaSet \"{}\" has successfully progressed.", n.name())
                    }
                    Some(n) => format!("ReplicaSet \"{}\" is progressing.", n.name()),
                    None => format!("Deployment \"{name}\" is progressing."),
                },
            ),
        ],
        collision_count: None,
    }
}

struct Controller {
    client: Client,
    events: Recorder,
    deps: Store<Deployment>,
    rss: Store<ReplicaSet>,
    uid_to_dep: HashMap<String, Key>,
}

pub enum Ev {
    Deployment(Event<Deployment>),
    Rs(Event<ReplicaSet>),
}

/// The controller on the shared informers.
pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    let c = Controller {
        events: Recorder::new(client.clone(), "deployment-controller"),
        client,
        deps: inf.watch_all(&mut inbox, Ev::Deployment),
        rss: inf.watch_all(&mut inbox, Ev::Rs),
        uid_to_dep: HashMap::new(),
    };
    tokio::spawn(skiff_runtime::drive("deployment sync", c, inbox))
}

impl Reconcile for Controller {
    type Key = Key;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Key>) {
        match ev {
            Ev::Deployment(ev) => match ev.split() {
                (_, Some(d)) => {
                    self.uid_to_dep.insert(d.meta().uid.clone(), key(&**d));
                    q.add(key(&**d));
                }
                // Its ReplicaSets are the garbage collector's business.
                (Some(d), None) => {
                    self.uid_to_dep.remove(&d.meta().uid);
                }
                (None, None) => {}
            },
            Ev::Rs(ev) => {
                let (old, new) = ev.split();
                for rs in [old, new].into_iter().flatten() {
                    if let Some(o) = rs
                        .metadata
                        .as_ref()
                        .and_then(|m| controller_of(&m.owner_references))
                        && let Some(k) = self.uid_to_dep.get(&o.uid)
                    {
                        q.add(k.clone());
                    }
                }
            }
        }
    }

    async fn sync(&mut self, key: &Key, _: &mut Queue<Key>) -> anyhow::Result<()> {
        self.sync_deployment(key).await
    }
}

fn key<R: Resource>(r: &R) -> Key {
    (r.namespace().to_string(), r.name().to_string())
}

impl Controller {
    async fn set_replicas(
        &mut self,
        d: &Deployment,
        rs: &ReplicaSet,
        n: i32,
    ) -> anyhow::Result<()> {
        let current = rs.spec.as_ref().and_then(|s| s.replicas);
        if current == Some(n) {
            return Ok(());
        }
        let was = current.unwrap_or(0);
        let mut u = rs.clone();
        u.spec.get_or_insert_with(Default::default).replicas = Some(n);
        let written = self.client.update(&u).await?;
        self.rss.write_through(written);
        let dir = if n > was { "up" } else { "down" };
        let msg = format!("Scaled {dir} replica set {} from {was} to {n}", rs.name());
        self.events.record(d, NORMAL, "ScalingReplicaSet", &msg);
        Ok(())
    }

    async fn sync_deployment(&mut self, k: &Key) -> anyhow::Result<()> {
        let Some(d) = self.deps.get(&k.0, &k.1) else {
            return Ok(());
        };
        let d: &Deployment = &d;
        if d.meta().deletion_timestamp.is_some() {
            return Ok(());
        }
        let spec = d.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0);
        let template = spec.template.clone().unwrap_or_default();
        let hash = template_hash(&template);
        let owned: Vec<Arc<ReplicaSet>> = self
            .rss
            .read()
            .in_namespace(&k.0)
            .filter(|rs| owned_by(rs, d))
            .cloned()
            .collect();
        let new = owned
            .iter()
            .find(|rs| rs.meta().labels.get(HASH_LABEL) == Some(&hash))
            .cloned();
        let old: Vec<Arc<ReplicaSet>> = owned
            .iter()
            .filter(|rs| rs.meta().labels.get(HASH_LABEL) != Some(&hash))
            .cloned()
            .collect();
        let (surge, max_unavailable) = surge_and_unavailable(d);
        let recreate = spec
            .strategy
            .as_ref()
            .is_some_and(|s| s.r#type == "Recreate");
        let old_views: Vec<RsView> = old.iter().map(|o| view(o)).collect();
        let plan = |new: &RsView| {
            if recreate {
                recreate_targets(desired, new, &old_views)
            } else {
                rolling(desired, surge, max_unavailable, new, &old_views)
            }
        };
        if !spec.paused {
            let new = match new.clone() {
                Some(n) => {
                    // An older template again (rollout undo): its ReplicaSet
                    // becomes the newest revision, as in Kubernetes.
                    let top = owned.iter().map(|r| revision(r)).max().unwrap_or(0);
                    if revision(&n) < top {
                        let mut u = ReplicaSet::clone(&n);
                        u.meta_mut()
                            .annotations
                            .insert(REVISION.into(), (top + 1).to_string());
                        self.client.update(&u).await?;
                        self.events.record(
                            d,
                            NORMAL,
                            "DeploymentRollback",
                            &format!(
                                "Rolled back to revision {} as revision {}",
                                revision(&n),
                                top + 1
                            ),
                        );
                        return Ok(());
                    }
                    // The change cause annotated after the rollout began.
                    if let Some(cause) = change_cause(d)
                        && change_cause(&*n) != Some(cause)
                    {
                        let mut u = ReplicaSet::clone(&n);
                        u.meta_mut()
                            .annotations
                            .insert(CHANGE_CAUSE.into(), cause.clone());
                        self.client.update(&u).await?;
                        return Ok(());
                    }
                    n
                }
                None => {
                    let rev = owned.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
                    let start = plan(&RsView::default()).0;
                    let rs = new_replicaset(d, &hash, start, rev);
                    match self.client.create(&rs).await {
                        Ok(created) => {
                            let msg =
                                format!("Scaled up replica set {} to {start}", created.name());
                            self.events.record(d, NORMAL, "ScalingReplicaSet", &msg);
                            self.rss.write_through(created)
                        }
                        Err(e) if e.is_already_exists() => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let (new_target, old_targets) = plan(&view(&new));
            // Each target is safe alone (the surge counts the old pods
            // before this sync's scale-down; the availability floor counts
            // none of this sync's new pods), so a write refused half-way
            // leaves the rollout within its bounds.
            for (name, n) in old_targets {
                if let Some(o) = old.iter().find(|o| o.name() == name) {
                    self.set_replicas(d, o, n).await?;
                }
            }
            self.set_replicas(d, &new, new_target).await?;
            self.prune_history(d, &old).await?;
        }
        let all: Vec<&ReplicaSet> = owned.iter().map(|r| &**r).collect();
        let st = status(d, new.as_deref(), &all, max_unavailable);
        let changed = d.status.as_ref().is_none_or(|s| {
            let mut a = s.clone();
            let mut b = st.clone();
            for c in a.conditions.iter_mut().chain(b.conditions.iter_mut()) {
                c.last_update_time = None;
            }
            a != b
        });
        if changed {
            let mut u = d.clone();
            u.status = Some(st);
            match self.client.update_status(&u).await {
                Ok(written) => {
                    self.deps.write_through(written);
                }
                // Our copy is stale: the watch brings the newer one, which
                // syncs again (re-queueing here would spin on the stale copy).
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Keeps `revisionHistoryLimit` (default 10) scaled-down old
    /// ReplicaSets, the newest ones.
    async fn prune_history(&self, d: &Deployment, old: &[Arc<ReplicaSet>]) -> anyhow::Result<()> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&ReplicaSet> = old
            .iter()
            .map(|o| &**o)
            .filter(|o| {
                o.spec.as_ref().and_then(|s| s.replicas) == Some(0)
                    && o.status.as_ref().is_none_or(|s| s.replicas == 0)
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|o| revision(o));
        let excess: BTreeSet<String> = idle[..idle.len() - limit]
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for name in excess {
            if let Err(e) = self.client.delete::<ReplicaSet>(d.namespace(), &name).await
                && !e.is_not_found()
            {
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString {
            str_val: s.into(),
            is_string: true,
            ..Default::default()
        }
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(resolve(Some(&pct("25%")), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&pct("25%")), 10, false, "25%"), 2);
        assert_eq!(resolve(None, 3, true, "25%"), 1);
        assert_eq!(resolve(None, 3, false, "25%"), 0);
        let two = IntOrString {
            int_val: 2,
            ..Default::default()
        };
        assert_eq!(resolve(Some(&two), 10, true, "25%"), 2);
    }

    #[test]
    fn zero_surge_and_unavailability_is_refused() {
        let mut d = Deployment::default();
        let spec = d.spec.get_or_insert_with(Default::default);
        spec.replicas = Some(4);
        let zero = IntOrString::default();
        spec.strategy = Some(skiff_api::v1::DeploymentStrategy {
            r#type: "RollingUpdate".into(),
            rolling_update: Some(skiff_api::v1::RollingUpdateDeployment {
                max_unavailable: Some(zero.clone()),
                max_surge: Some(zero),
            }),
        });
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }
}
