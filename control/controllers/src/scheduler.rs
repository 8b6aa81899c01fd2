//! The scheduler: pods without a node are placed on one that fits —
//! Ready and schedulable, taints tolerated, nodeSelector and required node
//! affinity met, requests within allocatable minus what bound pods request
//! — preferring the least allocated node and spreading one owner's pods.
//! A pod no node takes gets PodScheduled=False with the reasons, and is
//! tried again when nodes or bound pods change, not on a timer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use skiff_api::selector::Selector;
use skiff_api::v1::{Condition, NodeSelectorRequirement, PodSpec, Taint, Time, Toleration};
use skiff_api::{Node, ParsedQuantity, Pod, Resource};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, Sender, Store};
use tokio::sync::Semaphore;

use crate::events::{NORMAL, Recorder, WARNING};
use crate::pods::{self, controller_of};

type Key = (String, String);

/// What a pod asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub cpu_milli: i64,
    pub memory: i64,
}

pub fn request(p: &Pod) -> Request {
    let mut r = Request::default();
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        let res = c.resources.as_ref();
        let q = |name: &str| {
            res.and_then(|r| r.requests.get(name).or_else(|| r.limits.get(name)))
                .and_then(|q| ParsedQuantity::parse(&q.value).ok())
        };
        r.cpu_milli += q("cpu").map(|q| q.milli_value()).unwrap_or(0);
        r.memory += q("memory").map(|q| q.value()).unwrap_or(0);
    }
    r
}

/// A node's room, as the scheduler tracks it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
    pub used: Request,
    pub used_pods: i64,
    /// Pods per owner uid (spreading).
    /// (owner key, pods) — a handful per node: a scan beats hashing.
    pub owners: Vec<(u64, i64)>,
    /// The pods here: (namespace, name) → labels (pod anti-affinity).
    pub residents: HashMap<(String, String), BTreeMap<String, String>>,
    /// The hostname anti-affinity terms of the pods here, which keep
    /// matching pods away (the rule is symmetric, as in Kubernetes).
    pub anti: HashMap<(String, String), Vec<AntiTerm>>,
}

/// A required pod anti-affinity term on `kubernetes.io/hostname`: no two
/// pods where one's term selects the other share a node.
#[derive(Debug, Clone)]
pub struct AntiTerm {
    pub namespaces: Vec<String>,
    pub selector: Selector,
}

pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// The pod's required anti-affinity terms on the hostname topology
/// (other topology keys are not enforced yet).
pub fn anti_terms(p: &Pod) -> Vec<AntiTerm> {
    let ns = p.namespace().to_string();
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .map(|a| {
            a.required_during_scheduling_ignored_during_execution
                .iter()
                .filter(|t| t.topology_key == HOSTNAME)
                .filter_map(|t| {
                    let selector =
                        Selector::from_label_selector(t.label_selector.as_ref()?).ok()?;
                    let namespaces = if t.namespaces.is_empty() {
                        vec![ns.clone()]
                    } else {
                        t.namespaces.clone()
                    };
                    Some(AntiTerm {
                        namespaces,
                        selector,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn term_selects(t: &AntiTerm, ns: &str, labels: &BTreeMap<String, String>) -> bool {
    t.namespaces.iter().any(|n| n == ns) && t.selector.matches(labels)
}

/// What `unfit` needs of the pod, worked out once per decision.
pub struct Candidate<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub spec: &'a PodSpec,
    pub anti: Vec<AntiTerm>,
    pub req: Request,
}

pub fn node_info(n: &Node) -> NodeInfo {
    let status = n.status.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    let alloc = |k: &str| {
        status
            .allocatable
            .get(k)
            .and_then(|q| ParsedQuantity::parse(&q.value).ok())
    };
    NodeInfo {
        name: n.name().to_string(),
        labels: n.meta().labels.clone(),
        ready: status
            .conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True"),
        unschedulable: spec.unschedulable,
        taints: spec.taints,
        cpu_milli: alloc("cpu").map(|q| q.milli_value()).unwrap_or(0),
        memory: alloc("memory").map(|q| q.value()).unwrap_or(0),
        pods: alloc("pods").map(|q| q.value()).unwrap_or(110),
        ..Default::default()
    }
}

pub fn tolerates(tolerations: &[Toleration], t: &Taint) -> bool {
    tolerations.iter().any(|tol| {
        let key_ok = tol.key.is_empty() && tol.operator == "Exists" || tol.key == t.key;
        let value_ok = tol.operator == "Exists" || tol.value == t.value;
        let effect_ok = tol.effect.is_empty() || tol.effect == t.effect;
        key_ok && value_ok && effect_ok
    })
}

fn requirement_met(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| r.values.contains(v)),
        "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                r.values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Why a node does not fit, in the words Kubernetes uses; `None`: it fits.
pub fn unfit(c: &Candidate, n: &NodeInfo) -> Option<&'static str> {
    let (spec, req) = (c.spec, c.req);
    if !n.ready {
        return Some("node(s) were not ready");
    }
    if n.unschedulable {
        return Some("node(s) were unschedulable");
    }
    if n.taints.iter().any(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&spec.tolerations, t)
    }) {
        return Some("node(s) had untolerated taint");
    }
    if !spec
        .node_selector
        .iter()
        .all(|(k, v)| n.labels.get(k) == Some(v))
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(sel) = required
        && !sel.node_selector_terms.is_empty()
        && !sel.node_selector_terms.iter().any(|t| {
            t.match_expressions
                .iter()
                .all(|r| requirement_met(r, &n.labels))
        })
    {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    if n.used_pods + 1 > n.pods {
        return Some("Too many pods");
    }
    if req.cpu_milli > 0 && n.used.cpu_milli + req.cpu_milli > n.cpu_milli {
        return Some("Insufficient cpu");
    }
    if req.memory > 0 && n.used.memory + req.memory > n.memory {
        return Some("Insufficient memory");
    }
    if c.anti.iter().any(|t| {
        n.residents
            .iter()
            .any(|((ns, _), labels)| term_selects(t, ns, labels))
    }) {
        return Some("node(s) didn't match pod anti-affinity rules");
    }
    if n.anti
        .values()
        .flatten()
        .any(|t| term_selects(t, c.namespace, c.labels))
    {
        return Some("node(s) didn't satisfy existing pods anti-affinity rules");
    }
    None
}

/// Whether a node update leaves everything the filters look at as it was.
fn same_constraints(a: &NodeInfo, b: &NodeInfo) -> bool {
    a.ready == b.ready
        && a.unschedulable == b.unschedulable
        && a.cpu_milli == b.cpu_milli
        && a.memory == b.memory
        && a.pods == b.pods
        && a.labels == b.labels
        && a.taints == b.taints
}

/// A cheap key for an owner uid (FNV-1a), computed once per decision.
pub fn owner_key(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Higher is better: least allocated after placing the pod, minus a
/// penalty per pod of the same owner already there.
pub fn score(req: Request, n: &NodeInfo, owner: Option<u64>) -> i64 {
    let free = |cap: i64, used: i64| {
        if cap <= 0 {
            0
        } else {
            ((cap - used) * 100 / cap).max(0)
        }
    };
    let cpu = free(n.cpu_milli, n.used.cpu_milli + req.cpu_milli);
    let mem = free(n.memory, n.used.memory + req.memory);
    let same = owner
        .and_then(|o| n.owners.iter().find(|(k, _)| *k == o))
        .map(|(_, c)| *c)
        .unwrap_or(0);
    (cpu + mem) / 2 - same * 10
}

/// How many feasible nodes are enough to choose from, as kube-scheduler's
/// adaptive percentageOfNodesToScore: every node below 100, else 50 %
/// minus 1 % per 125 nodes, at least 5 % and at least 100 nodes.
pub fn enough_feasible(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes.max(1);
    }
    let pct = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * pct / 100).max(100)
}

/// The chosen node, and the last node examined (the next pod starts after
/// it, so the sampled window rotates over the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub node: String,
    pub last: String,
}

/// The best of the first `enough` feasible nodes, or the summary of why
/// none fits (every node examined then).
pub fn pick<'a>(
    pod: &Pod,
    nodes: impl Iterator<Item = &'a NodeInfo>,
    enough: usize,
) -> Result<Picked, String> {
    let req = request(pod);
    let owner = pod
        .metadata
        .as_ref()
        .and_then(|m| controller_of(&m.owner_references))
        .map(|o| owner_key(&o.uid));
    let default = PodSpec::default();
    let no_labels = BTreeMap::new();
    let candidate = Candidate {
        namespace: pod.namespace(),
        labels: pod
            .metadata
            .as_ref()
            .map(|m| &m.labels)
            .unwrap_or(&no_labels),
        spec: pod.spec.as_ref().unwrap_or(&default),
        anti: anti_terms(pod),
        req,
    };
    let mut best: Option<(i64, &str)> = None;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    let mut feasible = 0;
    let mut last = "";
    for n in nodes {
        total += 1;
        last = &n.name;
        match unfit(&candidate, n) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => {
                feasible += 1;
                let s = score(req, n, owner);
                // Ties go to the first seen: the look starts at a rotating
                // place, which spreads them.
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, &n.name));
                }
                if feasible >= enough {
                    break;
                }
            }
        }
    }
    match best {
        Some((_, name)) => Ok(Picked {
            node: name.to_string(),
            last: last.to_string(),
        }),
        None => {
            let parts: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            Err(format!(
                "0/{total} nodes are available: {}.",
                parts.join(", ")
            ))
        }
    }
}

fn schedulable_here(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    let name = spec.map(|s| s.scheduler_name.as_str()).unwrap_or("");
    !pods::scheduled(p) && pods::active(p) && (name.is_empty() || name == "default-scheduler")
}

fn owner_uid(p: &Pod) -> Option<String> {
    p.metadata
        .as_ref()
        .and_then(|m| controller_of(&m.owner_references))
        .map(|o| o.uid.clone())
}

struct Scheduler {
    client: Client,
    events: Recorder,
    nodes: BTreeMap<String, NodeInfo>,
    pods: Store<Pod>,
    /// Pods assumed on a node while their binding is in flight (as
    /// kube-scheduler's cache): the shared store keeps what the server
    /// says; the next decision counts these.
    assumed: HashMap<Key, Arc<Pod>>,
    /// Pods no node fits now: tried again when the cluster changes.
    parked: BTreeSet<Key>,
    /// Where the next pod's look over the nodes starts.
    cursor: String,
    /// Bindings in flight, at most `BINDS` at once.
    binds: Arc<Semaphore>,
    bound_tx: Sender<Ev>,
}

/// Bindings run in the background (as kube-scheduler's binding cycle):
/// the pod is assumed on its node at once, so the next decision counts it.
const BINDS: usize = 64;

pub struct Binding {
    original: Arc<Pod>,
    assumed: Arc<Pod>,
    result: Result<(), skiff_client::ClientError>,
}

pub enum Ev {
    Node(Event<Node>),
    Pod(Event<Pod>),
    Bound(Binding),
}

/// The scheduler on the shared informers.
pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    inf.watch_all(&mut inbox, Ev::Node);
    let s = Scheduler {
        events: Recorder::new(client.clone(), "default-scheduler"),
        client,
        nodes: BTreeMap::new(),
        pods: inf.watch_all(&mut inbox, Ev::Pod),
        assumed: HashMap::new(),
        parked: BTreeSet::new(),
        cursor: String::new(),
        binds: Arc::new(Semaphore::new(BINDS)),
        bound_tx: inbox.sender(),
    };
    tokio::spawn(skiff_runtime::drive("scheduling", s, inbox))
}

impl Reconcile for Scheduler {
    type Key = Key;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Key>) {
        match ev {
            Ev::Node(ev) => self.on_node(ev, q),
            Ev::Pod(ev) => self.on_pod(ev, q),
            Ev::Bound(b) => self.bound(b, q),
        }
    }

    async fn sync(&mut self, k: &Key, _: &mut Queue<Key>) -> anyhow::Result<()> {
        self.schedule(k).await
    }
}

impl Scheduler {
    fn on_node(&mut self, ev: Event<Node>, q: &mut Queue<Key>) {
        // Parked pods are tried again only when a node could now take
        // more (not on every status heartbeat).
        let mut more_room = false;
        match ev {
            Event::Deleted(n) => {
                self.nodes.remove(n.name());
            }
            Event::Added(n) | Event::Updated { new: n, .. } => {
                let mut info = node_info(&n);
                match self.nodes.get_mut(&info.name) {
                    Some(prev) => {
                        more_room = !same_constraints(prev, &info);
                        info.used = prev.used;
                        info.used_pods = prev.used_pods;
                        info.owners = std::mem::take(&mut prev.owners);
                        info.residents = std::mem::take(&mut prev.residents);
                        info.anti = std::mem::take(&mut prev.anti);
                    }
                    None => more_room = true,
                }
                self.nodes.insert(info.name.clone(), info);
            }
            Event::Synced => {}
        }
        if more_room {
            self.unpark(q);
        }
    }

    fn on_pod(&mut self, ev: Event<Pod>, q: &mut Queue<Key>) {
        let (old, new) = ev.split();
        let Some(p) = new.or(old) else { return };
        let key = (p.namespace().to_string(), p.name().to_string());
        // What was counted: the assumption if there was one (the server's
        // news replaces it), else the version delivered before.
        match self.assumed.remove(&key) {
            Some(a) => self.account(&a, -1),
            None => {
                if let Some(o) = old {
                    self.account(o, -1);
                }
            }
        }
        if let Some(p) = new {
            self.account(p, 1);
            if schedulable_here(p) {
                q.add(key);
            }
        }
        // A bound pod that went away frees room.
        if new.is_none() && old.is_some_and(|o| pods::scheduled(o)) {
            self.unpark(q);
        }
    }

    /// Adds (or removes) a bound, active pod's requests to its node.
    fn account(&mut self, p: &Pod, sign: i64) {
        if !pods::scheduled(p) || !pods::active(p) {
            return;
        }
        let node = p
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        let r = request(p);
        n.used.cpu_milli += sign * r.cpu_milli;
        n.used.memory += sign * r.memory;
        n.used_pods += sign;
        let key = (p.namespace().to_string(), p.name().to_string());
        if sign > 0 {
            let labels = p
                .metadata
                .as_ref()
                .map(|m| m.labels.clone())
                .unwrap_or_default();
            n.residents.insert(key.clone(), labels);
            let terms = anti_terms(p);
            if !terms.is_empty() {
                n.anti.insert(key, terms);
            }
        } else {
            n.residents.remove(&key);
            n.anti.remove(&key);
        }
        if let Some(o) = owner_uid(p) {
            let k = owner_key(&o);
            match n.owners.iter_mut().position(|(x, _)| *x == k) {
                Some(i) => {
                    n.owners[i].1 += sign;
                    if n.owners[i].1 <= 0 {
                        n.owners.swap_remove(i);
                    }
                }
                None if sign > 0 => n.owners.push((k, sign)),
                None => {}
            }
        }
    }

    /// A binding finished: an event when it took; when it did not and our
    /// copy still holds the assumption, the pod is un-assumed.
    fn bound(&mut self, b: Binding, q: &mut Queue<Key>) {
        let (ns, name) = (
            b.assumed.namespace().to_string(),
            b.assumed.name().to_string(),
        );
        let node = b
            .assumed
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        let e = match b.result {
            Ok(()) => {
                tracing::debug!(pod = %format!("{ns}/{name}"), %node, "scheduled");
                let msg = format!("Successfully assigned {ns}/{name} to {node}");
                self.events.record(&*b.original, NORMAL, "Scheduled", &msg);
                return;
            }
            Err(e) => e,
        };
        let key = (ns, name);
        let ours = self
            .assumed
            .get(&key)
            .is_some_and(|a| Arc::ptr_eq(a, &b.assumed));
        if ours {
            self.assumed.remove(&key);
            self.account(&b.assumed, -1);
            self.account(&b.original, 1);
        }
        let (ns, name) = key;
        // A conflict or a deletion: the watch brings the news (and the
        // pod again if it still waits); anything else is tried again.
        if !e.is_conflict() && !e.is_not_found() {
            tracing::warn!(pod = %format!("{ns}/{name}"), "binding: {e}");
            q.retry((ns, name));
        }
    }

    fn unpark(&mut self, q: &mut Queue<Key>) {
        for k in std::mem::take(&mut self.parked) {
            q.add(k);
        }
    }

    async fn schedule(&mut self, k: &Key) -> anyhow::Result<()> {
        if self.assumed.contains_key(k) {
            return Ok(());
        }
        let Some(pod) = self.pods.get(&k.0, &k.1) else {
            return Ok(());
        };
        if !schedulable_here(&pod) {
            return Ok(());
        }
        // The look over the nodes starts after where the last one stopped.
        let start = self.cursor.as_str();
        let nodes = self
            .nodes
            .range::<str, _>((Bound::Excluded(start), Bound::Unbounded))
            .chain(
                self.nodes
                    .range::<str, _>((Bound::Unbounded, Bound::Included(start))),
            )
            .map(|(_, n)| n);
        match pick(&pod, nodes, enough_feasible(self.nodes.len())) {
            Ok(picked) => {
                self.cursor = picked.last;
                let mut assumed = Pod::clone(&pod);
                assumed.spec.get_or_insert_with(Default::default).node_name = picked.node;
                // Assume it there now; the watch event would be late.
                let assumed = Arc::new(assumed);
                self.account(&pod, -1);
                self.account(&assumed, 1);
                self.assumed.insert(k.clone(), assumed.clone());
                let permit = self.binds.clone().acquire_owned().await?;
                let (client, tx) = (self.client.clone(), self.bound_tx.clone());
                tokio::spawn(async move {
                    // The resourceVersion makes this a compare-and-set: a pod
                    // bound (or changed) meanwhile is never bound again.
                    let result = client.update(&*assumed).await.map(|_| ());
                    drop(permit);
                    tx.send(Ev::Bound(Binding {
                        original: pod,
                        assumed,
                        result,
                    }));
                });
            }
            Err(why) => {
                self.parked.insert(k.clone());
                let mut p = Pod::clone(&pod);
                let status = p.status.get_or_insert_with(Default::default);
                let cond = Condition {
                    r#type: "PodScheduled".into(),
                    status: "False".into(),
                    reason: "Unschedulable".into(),
                    message: why.clone(),
                    last_transition_time: Some(Time::now_seconds()),
                    ..Default::default()
                };
                let same = status
                    .conditions
                    .iter()
                    .any(|c| c.r#type == "PodScheduled" && c.status == "False" && c.message == why);
                if !same {
                    status.conditions.retain(|c| c.r#type != "PodScheduled");
                    status.conditions.push(cond);
                    if status.phase.is_empty() {
                        status.phase = "Pending".into();
                    }
                    if self.client.update_status(&p).await.is_ok() {
                        self.events.record(&*pod, WARNING, "FailedScheduling", &why);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::{Container, ObjectMeta, PodSpec, Quantity, ResourceRequirements};

    fn node(name: &str, cpu: i64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ready: true,
            cpu_milli: cpu,
            memory: 8 << 30,
            pods: 110,
            ..Default::default()
        }
    }

    fn pod_asking(cpu: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: "p".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    resources: Some(ResourceRequirements {
                        requests: [("cpu".to_string(), Quantity { value: cpu.into() })].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fits_prefers_room_and_explains_refusals() {
        let mut busy = node("a", 2000);
        busy.used.cpu_milli = 1500;
        let idle = node("b", 2000);
        assert_eq!(
            pick(&pod_asking("200m"), [&busy, &idle].into_iter(), usize::MAX).map(|p| p.node),
            Ok("b".into())
        );
        assert_eq!(
            pick(&pod_asking("600m"), [&busy].into_iter(), usize::MAX),
            Err("0/1 nodes are available: 1 Insufficient cpu.".into())
        );
        let mut tainted = node("c", 4000);
        tainted.taints.push(Taint {
            key: "k".into(),
            value: "v".into(),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let mut down = node("d", 4000);
        down.ready = false;
        let err = pick(
            &pod_asking("600m"),
            [&busy, &tainted, &down].into_iter(),
            usize::MAX,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint, 1 node(s) were not ready."
        );
        let mut tolerant = pod_asking("600m");
        tolerant
            .spec
            .as_mut()
            .unwrap()
            .tolerations
            .push(Toleration {
                key: "k".into(),
                operator: "Equal".into(),
                value: "v".into(),
                effect: "NoSchedule".into(),
                toleration_seconds: None,
            });
        assert_eq!(
            pick(&tolerant, [&busy, &tainted].into_iter(), usize::MAX).map(|p| p.node),
            Ok("c".into())
        );
    }

    #[test]
    fn hostname_anti_affinity_both_ways() {
        use skiff_api::v1::{Affinity, LabelSelector, PodAffinity, PodAffinityTerm};
        let labelled = |name: &str, app: &str, avoid: Option<&str>| {
            let mut p = pod_asking("100m");
            let m = p.metadata.get_or_insert_with(Default::default);
            m.name = name.into();
            m.namespace = "default".into();
            m.labels.insert("app".into(), app.into());
            if let Some(avoid) = avoid {
                p.spec.as_mut().unwrap().affinity = Some(Affinity {
                    pod_anti_affinity: Some(PodAffinity {
                        required_during_scheduling_ignored_during_execution: vec![
                            PodAffinityTerm {
                                label_selector: Some(LabelSelector {
                                    match_labels: [("app".to_string(), avoid.to_string())].into(),
                                    ..Default::default()
                                }),
                                namespaces: vec![],
                                topology_key: HOSTNAME.into(),
                            },
                        ],
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            p
        };
        let place = |n: &mut NodeInfo, p: &Pod| {
            let key = (p.namespace().to_string(), p.name().to_string());
            n.residents
                .insert(key.clone(), p.metadata.as_ref().unwrap().labels.clone());
            let t = anti_terms(p);
            if !t.is_empty() {
                n.anti.insert(key, t);
            }
        };
        let mut a = node("a", 4000);
        let b = node("b", 4000);
        place(&mut a, &labelled("web-1", "web", Some("web")));
        // A second web pod avoids the first one's node.
        let web2 = labelled("web-2", "web", Some("web"));
        assert_eq!(
            pick(&web2, [&a, &b].into_iter(), usize::MAX).map(|p| p.node),
            Ok("b".into())
        );
        assert_eq!(
            pick(&web2, [&a].into_iter(), usize::MAX),
            Err("0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.".into())
        );
        // Symmetric: a pod without terms is kept away by the resident's.
        let plain = labelled("web-3", "web", None);
        assert_eq!(
            pick(&plain, [&a].into_iter(), usize::MAX),
            Err(
                "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
                    .into()
            )
        );
        // Other labels are welcome.
        let db = labelled("db-1", "db", None);
        assert!(pick(&db, [&a].into_iter(), usize::MAX).is_ok());
    }

    #[test]
    fn selectors_and_spreading() {
        let mut a = node("a", 4000);
        a.labels.insert("disk".into(), "ssd".into());
        let b = node("b", 4000);
        let mut p = pod_asking("100m");
        p.spec
            .as_mut()
            .unwrap()
            .node_selector
            .insert("disk".into(), "ssd".into());
        assert_eq!(
            pick(&p, [&a, &b].into_iter(), usize::MAX).map(|p| p.node),
            Ok("a".into())
        );
        // Enough feasible nodes found: the rest are not looked at.
        let c = node("c", 8000);
        let q = pod_asking("100m");
        assert_eq!(
            pick(&q, [&b, &c].into_iter(), 1),
            Ok(Picked {
                node: "b".into(),
                last: "b".into()
            })
        );
        assert_eq!(enough_feasible(50), 50);
        assert_eq!(enough_feasible(1000), 420);
        assert_eq!(enough_feasible(5000), 500);
        assert_eq!(enough_feasible(20000), 1000);
        // Same free room: the node without a sibling wins.
        let mut a2 = node("a", 4000);
        a2.owners.push((owner_key("rs1"), 2));
        assert!(
            score(Request::default(), &a2, Some(owner_key("rs1")))
                < score(Request::default(), &b, Some(owner_key("rs1")))
        );
    }
}
