//! The garbage collector: a graph of owners and dependents built from the
//! ownerReferences of every kind, fed by informers.
//!
//! - **Background**: an object whose owners are all gone is deleted.
//! - **Foreground**: an owner marked `foregroundDeletion` has its
//!   dependents deleted (foreground too, so it recurses); once none is
//!   left the finalizer goes and the server removes the owner.
//! - **Orphan**: an owner marked `orphan` has the references to it removed
//!   from its dependents; then the finalizer goes.
//!
//! An owner missing from the graph is asked for at the server before a
//! dependent is deleted (the informers of two kinds are not in step).

use std::collections::{HashMap, HashSet};

use skiff_api::v1::OwnerReference;
use skiff_api::{
    ConfigMap, Deployment, EndpointSlice, Kind, Lease, Pod, ReplicaSet, Resource, Service,
};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// What the collector knows of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Obj {
    fn of<R: Resource>(r: &R) -> Obj {
        let m = r.meta();
        Obj {
            kind: R::KIND,
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            uid: m.uid.clone(),
            owners: m.owner_references.clone(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone(),
        }
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|x| x == f)
    }
}

/// The state of one owner, as a dependent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    Alive,
    /// Being deleted in the foreground: dependents go first.
    Foreground,
    Absent,
}

/// What to do with a dependent given its owners' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Delete { foreground: bool },
}

/// Kubernetes' rule: a dependent with any live owner stays; one whose
/// owners are all gone is deleted; one whose remaining owners are being
/// deleted in the foreground is deleted in the foreground (when it blocks
/// them) so the deletion recurses.
pub fn verdict(owners: &[(OwnerState, bool)]) -> Verdict {
    if owners.is_empty() || owners.iter().any(|(s, _)| *s == OwnerState::Alive) {
        return Verdict::Keep;
    }
    let waiting: Vec<bool> = owners
        .iter()
        .filter(|(s, _)| *s == OwnerState::Foreground)
        .map(|(_, block)| *block)
        .collect();
    Verdict::Delete {
        foreground: waiting.iter().any(|b| *b),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    /// Does this dependent still have an owner?
    Attempt(String),
    /// This owner is deleted in the foreground: delete its dependents, or
    /// let it go when none is left.
    Foreground(String),
    /// This owner is deleted orphaning its dependents.
    Orphan(String),
}

struct Change {
    old: Option<Obj>,
    new: Option<Obj>,
}

/// What the collector keeps of an event: the ownership part only.
fn change<R: Resource>(ev: Event<R>) -> Change {
    let (old, new) = ev.split();
    Change {
        old: old.map(|o| Obj::of(&**o)),
        new: new.map(|o| Obj::of(&**o)),
    }
}

#[derive(Default)]
struct Graph {
    objs: HashMap<String, Obj>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn insert(&mut self, o: Obj) {
        self.remove(&o.uid);
        for r in &o.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(o.uid.clone());
        }
        self.objs.insert(o.uid.clone(), o);
    }

    fn remove(&mut self, uid: &str) -> Option<Obj> {
        let o = self.objs.remove(uid)?;
        for r in &o.owners {
            if let Some(d) = self.dependents.get_mut(&r.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        Some(o)
    }

    fn dependents_of(&self, uid: &str) -> Vec<Obj> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.objs.get(d).cloned())
            .collect()
    }
}

struct Collector {
    client: Client,
    graph: Graph,
}

/// The collector on the shared informers: every kind that can own or be
/// owned.
pub fn start(client: Client, inf: &mut Informers) -> tokio::task::JoinHandle<()> {
    let mut inbox = Inbox::new();
    inf.watch_all(&mut inbox, change::<Pod>);
    inf.watch_all(&mut inbox, change::<ReplicaSet>);
    inf.watch_all(&mut inbox, change::<Deployment>);
    inf.watch_all(&mut inbox, change::<Service>);
    inf.watch_all(&mut inbox, change::<EndpointSlice>);
    inf.watch_all(&mut inbox, change::<ConfigMap>);
    inf.watch_all(&mut inbox, change::<Lease>);
    let c = Collector {
        client,
        graph: Graph::default(),
    };
    tokio::spawn(skiff_runtime::drive("garbage collection", c, inbox))
}

impl Reconcile for Collector {
    type Key = Item;
    type Event = Change;

    fn on_event(&mut self, ch: Change, q: &mut Queue<Item>) {
        on_change(&mut self.graph, q, ch);
    }

    async fn sync(&mut self, item: &Item, _: &mut Queue<Item>) -> anyhow::Result<()> {
        sync(&self.client, &self.graph, item).await
    }
}

fn on_change(g: &mut Graph, q: &mut Queue<Item>, ch: Change) {
    if let Some(old) = &ch.old
        && ch.new.is_none()
    {
        g.remove(&old.uid);
        // Its dependents may have lost their last owner.
        for d in g.dependents_of(&old.uid) {
            q.add(Item::Attempt(d.uid));
        }
        // An owner deleted in the foreground waits for this one.
        for r in &old.owners {
            if g.objs
                .get(&r.uid)
                .is_some_and(|o| o.has_finalizer(FOREGROUND))
            {
                q.add(Item::Foreground(r.uid.clone()));
            }
        }
        return;
    }
    let Some(new) = ch.new else { return };
    if new.has_finalizer(ORPHAN) {
        q.add(Item::Orphan(new.uid.clone()));
    }
    if new.has_finalizer(FOREGROUND) {
        q.add(Item::Foreground(new.uid.clone()));
    }
    let check = new.owners.iter().any(|r| match g.objs.get(&r.uid) {
        None => true,
        Some(o) => o.has_finalizer(FOREGROUND),
    });
    if check {
        q.add(Item::Attempt(new.uid.clone()));
    }
    g.insert(new);
}

async fn sync(client: &Client, g: &Graph, item: &Item) -> anyhow::Result<()> {
    match item {
        Item::Attempt(uid) => attempt(client, g, uid).await,
        Item::Foreground(uid) => foreground(client, g, uid).await,
        Item::Orphan(uid) => orphan(client, g, uid).await,
    }
}

/// The state of an owner reference of `dep`: from the graph, or from the
/// server when the graph has not seen it (yet).
async fn owner_state(
    client: &Client,
    g: &Graph,
    dep: &Obj,
    r: &OwnerReference,
) -> anyhow::Result<OwnerState> {
    if let Some(o) = g.objs.get(&r.uid) {
        return Ok(if o.has_finalizer(FOREGROUND) {
            OwnerState::Foreground
        } else {
            OwnerState::Alive
        });
    }
    let Some(kind) = Kind::from_name(&r.kind) else {
        // A kind this server does not serve: what it means is unknown, so
        // nothing is deleted on its account (Kubernetes waits too).
        return Ok(OwnerState::Alive);
    };
    let ns = if kind.namespaced() {
        dep.namespace.as_str()
    } else {
        ""
    };
    match client.get_object(kind, ns, &r.name).await {
        Ok(o) if o.meta().uid == r.uid => Ok(OwnerState::Alive),
        Ok(_) => Ok(OwnerState::Absent),
        Err(e) if e.is_not_found() => Ok(OwnerState::Absent),
        Err(e) => Err(e.into()),
    }
}

async fn attempt(client: &Client, g: &Graph, uid: &str) -> anyhow::Result<()> {
    let Some(dep) = g.objs.get(uid) else {
        return Ok(());
    };
    if dep.owners.is_empty() {
        return Ok(());
    }
    let mut states = Vec::new();
    for r in &dep.owners {
        states.push((
            owner_state(client, g, dep, r).await?,
            r.block_owner_deletion == Some(true),
        ));
    }
    let Verdict::Delete { foreground } = verdict(&states) else {
        return Ok(());
    };
    if dep.deleting && !foreground {
        return Ok(());
    }
    let policy = if foreground {
        "Foreground"
    } else {
        "Background"
    };
    tracing::debug!(kind = %dep.kind, name = %dep.name, policy, "collecting a dependent");
    let params = skiff_client::DeleteParams {
        propagation: policy.into(),
        ..Default::default()
    };
    match client
        .delete_object_with(dep.kind, &dep.namespace, &dep.name, &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn foreground(client: &Client, g: &Graph, uid: &str) -> anyhow::Result<()> {
    let Some(owner) = g.objs.get(uid) else {
        return Ok(());
    };
    if !owner.has_finalizer(FOREGROUND) {
        return Ok(());
    }
    let deps = g.dependents_of(uid);
    if deps.is_empty() {
        return remove_finalizer(client, owner, FOREGROUND).await;
    }
    for d in deps {
        if !d.deleting {
            attempt(client, g, &d.uid).await?;
        }
    }
    Ok(())
}

async fn orphan(client: &Client, g: &Graph, uid: &str) -> anyhow::Result<()> {
    let Some(owner) = g.objs.get(uid) else {
        return Ok(());
    };
    if !owner.has_finalizer(ORPHAN) {
        return Ok(());
    }
    for d in g.dependents_of(uid) {
        loop {
            let mut cur = match client.get_object(d.kind, &d.namespace, &d.name).await {
                Ok(o) => o,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into()),
            };
            let refs = &mut cur.meta_mut().owner_references;
            let before = refs.len();
            refs.retain(|r| r.uid != uid);
            if refs.len() == before {
                break;
            }
            match client.update_object(&cur).await {
                Ok(_) => break,
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    remove_finalizer(client, owner, ORPHAN).await
}

async fn remove_finalizer(client: &Client, o: &Obj, finalizer: &str) -> anyhow::Result<()> {
    loop {
        let mut cur = match client.get_object(o.kind, &o.namespace, &o.name).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if cur.meta().uid != o.uid {
            return Ok(());
        }
        let f = &mut cur.meta_mut().finalizers;
        let before = f.len();
        f.retain(|x| x != finalizer);
        if f.len() == before {
            return Ok(());
        }
        match client.update_object(&cur).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OwnerState::*;

    #[test]
    fn dependents_go_with_their_last_owner() {
        assert_eq!(verdict(&[]), Verdict::Keep);
        assert_eq!(verdict(&[(Alive, true)]), Verdict::Keep);
        assert_eq!(verdict(&[(Absent, true), (Alive, false)]), Verdict::Keep);
        assert_eq!(
            verdict(&[(Absent, true)]),
            Verdict::Delete { foreground: false }
        );
        assert_eq!(
            verdict(&[(Foreground, true)]),
            Verdict::Delete { foreground: true }
        );
        assert_eq!(
            verdict(&[(Foreground, false), (Absent, true)]),
            Verdict::Delete { foreground: false }
        );
        assert_eq!(verdict(&[(Foreground, true), (Alive, true)]), Verdict::Keep);
    }

    fn obj(uid: &str, owners: &[&str]) -> Obj {
        Obj {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    uid: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    #[test]
    fn graph_tracks_edges_through_updates_and_removals() {
        let mut g = Graph::default();
        g.insert(obj("rs", &["dep"]));
        g.insert(obj("p1", &["rs"]));
        g.insert(obj("p2", &["rs"]));
        assert_eq!(g.dependents_of("rs").len(), 2);
        // p2 is released (owner reference removed).
        g.insert(obj("p2", &[]));
        let d: Vec<String> = g.dependents_of("rs").into_iter().map(|o| o.uid).collect();
        assert_eq!(d, ["p1"]);
        g.remove("p1");
        assert!(g.dependents_of("rs").is_empty());
        assert!(!g.dependents.contains_key("rs"));
        assert_eq!(g.dependents_of("dep").len(), 1);
    }
}
