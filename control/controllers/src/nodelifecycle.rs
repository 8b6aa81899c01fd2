//! Node lifecycle: a node whose Lease has not been renewed for the grace
//! period (40 s) gets `Ready=Unknown` and the `node.kubernetes.io/unreachable`
//! taints; its pods turn not-ready at once (so their endpoints do), and are
//! evicted once their toleration of the taint runs out (300 s unless the pod
//! says otherwise). A node that renews again loses the taints. Pods bound
//! to a node that no longer exists are deleted (what Kubernetes' pod GC does).
//!
//! Time-based conditions are timers on single keys (`Queue::after`), never
//! a sweep over all nodes or pods.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use skiff_api::v1::{Condition, Taint, Time, Toleration};
use skiff_api::{Lease, Node, Pod, Resource};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile, Store};

use crate::events::{NORMAL, Recorder, WARNING};
use crate::pods;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub use skiff_api::nodes::LEASE_NAMESPACE;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long a node may go without renewing its Lease.
    pub grace: Duration,
    /// How long pods that do not say otherwise stay on an unreachable node.
    pub default_toleration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: Duration::from_secs(40),
            default_toleration: Duration::from_secs(300),
        }
    }
}

// ------------------------------------------------------------ pure logic

pub fn ready_status(n: &Node) -> &str {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .map(|c| c.status.as_str())
        .unwrap_or("Unknown")
}

pub fn unreachable_taint(n: &Node) -> Option<&Taint> {
    n.spec
        .as_ref()?
        .taints
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
}

/// The node with Ready=Unknown (status) — what it looks like unreachable.
pub fn mark_unknown(n: &Node, now: Time) -> Node {
    let mut n = n.clone();
    let status = n.status.get_or_insert_with(Default::default);
    let heartbeat = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .and_then(|c| c.last_heartbeat_time);
    status.conditions.retain(|c| c.r#type != "Ready");
    status.conditions.push(Condition {
        r#type: "Ready".into(),
        status: "Unknown".into(),
        last_heartbeat_time: heartbeat,
        last_transition_time: Some(now),
        reason: "NodeStatusUnknown".into(),
        message: "Kubelet stopped posting node status.".into(),
        ..Default::default()
    });
    n
}

/// The node with (`on`) or without the unreachable NoSchedule and
/// NoExecute taints; `None` when nothing changes.
pub fn set_unreachable_taints(n: &Node, on: bool, now: Time) -> Option<Node> {
    let has = |effect: &str, n: &Node| {
        n.spec.as_ref().is_some_and(|s| {
            s.taints
                .iter()
                .any(|t| t.key == UNREACHABLE && t.effect == effect)
        })
    };
    let complete = has("NoSchedule", n) && has("NoExecute", n);
    let any = has("NoSchedule", n) || has("NoExecute", n);
    if (on && complete) || (!on && !any) {
        return None;
    }
    let mut n = n.clone();
    let spec = n.spec.get_or_insert_with(Default::default);
    if on {
        for effect in ["NoSchedule", "NoExecute"] {
            if !spec
                .taints
                .iter()
                .any(|t| t.key == UNREACHABLE && t.effect == effect)
            {
                spec.taints.push(Taint {
                    key: UNREACHABLE.into(),
                    value: String::new(),
                    effect: effect.into(),
                    time_added: Some(now),
                });
            }
        }
    } else {
        spec.taints.retain(|t| t.key != UNREACHABLE);
    }
    Some(n)
}

/// How long a pod may stay on a node with `taint`: `None` forever (it
/// tolerates the taint without a limit), else its tolerationSeconds, or
/// `default` when it does not tolerate the taint at all (Kubernetes adds
/// that default toleration to every pod at admission).
pub fn toleration(
    tolerations: &[Toleration],
    taint: &Taint,
    default: Duration,
) -> Option<Duration> {
    let matching: Vec<&Toleration> = tolerations
        .iter()
        .filter(|t| crate::scheduler::tolerates(std::slice::from_ref(*t), taint))
        .collect();
    if matching.is_empty() {
        return Some(default);
    }
    // The most lenient matching toleration counts.
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    matching
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .max()
        .map(|s| Duration::from_secs(s.max(0) as u64))
}

/// The pod with Ready=False and ContainersReady=False, as the node
/// lifecycle controller marks pods of an unreachable node; `None` when it
/// is not ready already.
pub fn mark_not_ready(p: &Pod, now: Time) -> Option<Pod> {
    if !pods::ready(p) {
        return None;
    }
    let mut p = p.clone();
    let status = p.status.get_or_insert_with(Default::default);
    for c in status.conditions.iter_mut() {
        if c.r#type == "Ready" || c.r#type == "ContainersReady" {
            c.status = "False".into();
            c.reason = "NodeNotReady".into();
            c.last_transition_time = Some(now);
        }
    }
    for cs in status.container_statuses.iter_mut() {
        cs.ready = false;
    }
    Some(p)
}

// ------------------------------------------------------------------ loop

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Node(String),
    Pod(String, String),
}

struct Controller {
    client: Client,
    cfg: Config,
    events: Recorder,
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// When each node's Lease was last seen renewed (our clock, as the
    /// Kubernetes controller uses its own: clocks of nodes may differ).
    heard: HashMap<String, Instant>,
    pods_on: HashMap<String, BTreeSet<(String, String)>>,
    /// When each node's pending expiry check fires.
    armed: HashMap<String, Instant>,
}

fn node_of(p: &Pod) -> &str {
    p.spec.as_ref().map(|s| s.node_name.as_str()).unwrap_or("")
}

pub enum Ev {
    Node(Event<Node>),
    Lease(Event<Lease>),
    Pod(Event<Pod>),
}

/// The controller on the shared informers.
pub fn start(client: Client, cfg: Config, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    let nodes = inf.watch_all(&mut inbox, Ev::Node);
    inf.watch(&mut inbox, LEASE_NAMESPACE, Default::default(), Ev::Lease);
    let c = Controller {
        events: Recorder::new(client.clone(), "node-controller"),
        client,
        cfg,
        nodes,
        pods: inf.watch_all(&mut inbox, Ev::Pod),
        heard: HashMap::new(),
        pods_on: HashMap::new(),
        armed: HashMap::new(),
    };
    tokio::spawn(skiff_runtime::drive("node lifecycle", c, inbox))
}

impl Reconcile for Controller {
    type Key = Item;
    type Event = Ev;

    fn on_event(&mut self, ev: Ev, q: &mut Queue<Item>) {
        match ev {
            Ev::Node(ev) => match ev.split() {
                (_, Some(n)) => {
                    // A node we never heard of gets a full grace period.
                    self.heard
                        .entry(n.name().to_string())
                        .or_insert_with(Instant::now);
                    q.add(Item::Node(n.name().to_string()));
                }
                (Some(n), None) => {
                    self.heard.remove(n.name());
                    self.armed.remove(n.name());
                    // Its pods have nowhere to run: delete them.
                    for (ns, name) in self.pods_on.get(n.name()).cloned().unwrap_or_default() {
                        q.add(Item::Pod(ns, name));
                    }
                }
                _ => {}
            },
            Ev::Lease(ev) => {
                let renewed = match &ev {
                    Event::Added(l) => Some(l.name().to_string()),
                    Event::Updated { old, new } => {
                        let t = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time);
                        (t(old) != t(new)).then(|| new.name().to_string())
                    }
                    _ => None,
                };
                if let Some(name) = renewed {
                    self.heard.insert(name.clone(), Instant::now());
                    q.add(Item::Node(name));
                }
            }
            Ev::Pod(ev) => {
                let (old, new) = ev.split();
                if let Some(p) = old
                    && let Some(set) = self.pods_on.get_mut(node_of(p))
                {
                    set.remove(&(p.namespace().to_string(), p.name().to_string()));
                }
                if let Some(p) = new
                    && !node_of(p).is_empty()
                {
                    let key = (p.namespace().to_string(), p.name().to_string());
                    self.pods_on
                        .entry(node_of(p).to_string())
                        .or_default()
                        .insert(key.clone());
                    let node = self.nodes.get("", node_of(p));
                    if node.is_none_or(|n| unreachable_taint(&n).is_some()) {
                        q.add(Item::Pod(key.0, key.1));
                    }
                }
            }
        }
    }

    async fn sync(&mut self, k: &Item, q: &mut Queue<Item>) -> anyhow::Result<()> {
        match k {
            Item::Node(n) => self.sync_node(n, q).await,
            Item::Pod(ns, n) => self.sync_pod(ns, n, q).await,
        }
    }
}

impl Controller {
    async fn sync_node(&mut self, name: &str, q: &mut Queue<Item>) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get("", name) else {
            return Ok(());
        };
        let node: &Node = &node;
        let since = self
            .heard
            .get(name)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let now = Time::now_seconds();
        if since < self.cfg.grace {
            // Heard from in time: check again when the grace would run out
            // (one pending timer per node; a late one re-arms itself).
            let pending = self.armed.get(name).is_some_and(|t| *t > Instant::now());
            if !pending {
                let wait = self.cfg.grace - since + Duration::from_millis(100);
                self.armed.insert(name.to_string(), Instant::now() + wait);
                q.after(Item::Node(name.to_string()), wait);
            }
            if let Some(n) = set_unreachable_taints(node, false, now) {
                match self.client.update(&n).await {
                    Ok(_) => self.events.record(
                        node,
                        NORMAL,
                        "NodeReachable",
                        "Node is renewing its lease again",
                    ),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        let mut node = node.clone();
        if ready_status(&node) != "Unknown" {
            let marked = mark_unknown(&node, now);
            match self.client.update_status(&marked).await {
                Ok(n) => {
                    self.events.record(
                        &n,
                        NORMAL,
                        "NodeNotReady",
                        &format!(
                            "Node {name} status is now: NodeNotReady (no lease renewal for {}s)",
                            since.as_secs()
                        ),
                    );
                    node = n;
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(n) = set_unreachable_taints(&node, true, now) {
            match self.client.update(&n).await {
                Ok(n) => {
                    // In the store now, so the pods below see the taint.
                    self.nodes.write_through(n);
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        for (ns, pod) in self.pods_on.get(name).cloned().unwrap_or_default() {
            q.add(Item::Pod(ns, pod));
        }
        Ok(())
    }

    async fn sync_pod(&mut self, ns: &str, name: &str, q: &mut Queue<Item>) -> anyhow::Result<()> {
        let Some(pod) = self.pods.get(ns, name) else {
            return Ok(());
        };
        let pod: &Pod = &pod;
        let node_name = node_of(pod).to_string();
        if node_name.is_empty() {
            return Ok(());
        }
        let node = self.nodes.get("", &node_name);
        let Some(node) = node.as_deref() else {
            // Bound to a node we do not know: ask the server before deleting.
            match self.client.get::<Node>("", &node_name).await {
                Err(e) if e.is_not_found() => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            match self.client.delete_with_grace::<Pod>(ns, name, 0).await {
                Ok(_) => {
                    self.events.record(
                        pod,
                        NORMAL,
                        "PodGC",
                        &format!("Deleted: node {node_name} is gone"),
                    );
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        };
        let Some(taint) = unreachable_taint(node).cloned() else {
            return Ok(());
        };
        if pods::terminating(pod) {
            return Ok(());
        }
        let now = Time::now_seconds();
        if let Some(p) = mark_not_ready(pod, now) {
            match self.client.update_status(&p).await {
                Ok(_) | Err(_) => {}
            }
        }
        let tolerations = pod
            .spec
            .as_ref()
            .map(|s| s.tolerations.clone())
            .unwrap_or_default();
        let Some(allowed) = toleration(&tolerations, &taint, self.cfg.default_toleration) else {
            return Ok(());
        };
        let added = taint.time_added.map(|t| t.seconds).unwrap_or(now.seconds);
        let deadline = added + allowed.as_secs() as i64;
        if now.seconds < deadline {
            let wait = Duration::from_secs((deadline - now.seconds) as u64);
            q.after(Item::Pod(ns.to_string(), name.to_string()), wait);
            return Ok(());
        }
        match self.client.delete::<Pod>(ns, name).await {
            Ok(_) => self.events.record(
                pod,
                WARNING,
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{name}: node {node_name} is unreachable"),
            ),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::{NodeStatus, ObjectMeta};

    fn t(s: i64) -> Time {
        Time {
            seconds: s,
            nanos: 0,
        }
    }

    fn node() -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: "n1".into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: vec![Condition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(t(5)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn unreachable_node_is_marked_and_tainted_once() {
        let n = node();
        assert_eq!(ready_status(&n), "True");
        let u = mark_unknown(&n, t(50));
        assert_eq!(ready_status(&u), "Unknown");
        let ready = &u.status.as_ref().unwrap().conditions[0];
        assert_eq!(ready.last_heartbeat_time, Some(t(5)));
        assert_eq!(ready.reason, "NodeStatusUnknown");

        let tainted = set_unreachable_taints(&u, true, t(50)).expect("taints added");
        assert_eq!(unreachable_taint(&tainted).unwrap().time_added, Some(t(50)));
        assert_eq!(tainted.spec.as_ref().unwrap().taints.len(), 2);
        assert!(
            set_unreachable_taints(&tainted, true, t(60)).is_none(),
            "already tainted"
        );
        let back = set_unreachable_taints(&tainted, false, t(70)).expect("taints removed");
        assert!(back.spec.as_ref().unwrap().taints.is_empty());
        assert!(set_unreachable_taints(&back, false, t(80)).is_none());
    }

    #[test]
    fn tolerations_decide_the_eviction_delay() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        let default = Duration::from_secs(300);
        assert_eq!(toleration(&[], &taint, default), Some(default));
        let tol = |secs: Option<i64>, key: &str| Toleration {
            key: key.into(),
            operator: "Exists".into(),
            effect: "NoExecute".into(),
            toleration_seconds: secs,
            ..Default::default()
        };
        assert_eq!(
            toleration(&[tol(Some(5), UNREACHABLE)], &taint, default),
            Some(Duration::from_secs(5))
        );
        assert_eq!(toleration(&[tol(None, UNREACHABLE)], &taint, default), None);
        // A toleration of another taint does not count.
        assert_eq!(
            toleration(&[tol(Some(5), "other")], &taint, default),
            Some(default)
        );
        // The most lenient of several matching ones wins.
        assert_eq!(
            toleration(
                &[tol(Some(5), UNREACHABLE), tol(Some(60), "")],
                &taint,
                default
            ),
            Some(Duration::from_secs(60))
        );
    }
}
