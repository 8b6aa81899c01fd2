//! The reflector store: one copy of the objects of a watch, shared by every
//! loop that reads them. Objects are `Arc`s: an event, the store and each
//! subscriber's own index point at the same decoded object.
//!
//! Only the reflector delivers events, and each event's `old` is the
//! version the previous event delivered, so a subscriber that adds and
//! subtracts per event (the scheduler's accounting) stays consistent. A
//! loop may put its own write in at once ([`Store::write_through`]): reads
//! see it, events are not changed by it; the watch brings the same
//! revision later.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use skiff_api::Resource;
use tokio::sync::watch;

/// A change to one watched object, as every subscriber receives it.
#[derive(Debug)]
pub enum Event<R> {
    Added(Arc<R>),
    Updated {
        old: Arc<R>,
        new: Arc<R>,
    },
    Deleted(Arc<R>),
    /// The store holds the complete state (after the first list, and again
    /// after each relist).
    Synced,
}

impl<R> Clone for Event<R> {
    fn clone(&self) -> Self {
        match self {
            Event::Added(o) => Event::Added(o.clone()),
            Event::Updated { old, new } => Event::Updated {
                old: old.clone(),
                new: new.clone(),
            },
            Event::Deleted(o) => Event::Deleted(o.clone()),
            Event::Synced => Event::Synced,
        }
    }
}

impl<R> Event<R> {
    /// The object before and after the change.
    pub fn split(&self) -> (Option<&Arc<R>>, Option<&Arc<R>>) {
        match self {
            Event::Added(o) => (None, Some(o)),
            Event::Updated { old, new } => (Some(old), Some(new)),
            Event::Deleted(o) => (Some(o), None),
            Event::Synced => (None, None),
        }
    }
}

pub(crate) fn revision<R: Resource>(o: &R) -> u64 {
    o.meta().resource_version.parse().unwrap_or(0)
}

/// One object's slot: what the last event delivered, and what reads see
/// (newer when a loop wrote it; `None` when a loop deleted it at once).
struct Entry<R> {
    delivered: Option<Arc<R>>,
    current: Option<Arc<R>>,
    /// The revision of a loop's own deletion: older events do not bring
    /// the object back to reads.
    deleted_at: u64,
}

/// The objects of one watch, by namespace then name.
pub struct Index<R> {
    by_ns: HashMap<String, BTreeMap<String, Entry<R>>>,
    len: usize,
    /// The newest revision the watch has brought: an object of that age or
    /// older that has no slot was deleted (or never matched the watch).
    seen: u64,
}

impl<R> Default for Index<R> {
    fn default() -> Self {
        Index {
            by_ns: HashMap::new(),
            len: 0,
            seen: 0,
        }
    }
}

impl<R: Resource> Index<R> {
    pub fn get(&self, ns: &str, name: &str) -> Option<&Arc<R>> {
        self.by_ns.get(ns)?.get(name)?.current.as_ref()
    }

    pub fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &Arc<R>> {
        self.by_ns
            .get(ns)
            .into_iter()
            .flat_map(|m| m.values().filter_map(|e| e.current.as_ref()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<R>> {
        self.by_ns
            .values()
            .flat_map(|m| m.values().filter_map(|e| e.current.as_ref()))
    }

    /// Objects that reads see.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the object has a slot (delivered, seen or hidden).
    fn has(&self, ns: &str, name: &str) -> bool {
        self.by_ns.get(ns).is_some_and(|m| m.contains_key(name))
    }

    fn slot(&mut self, ns: &str, name: &str) -> &mut Entry<R> {
        self.by_ns
            .entry(ns.to_string())
            .or_default()
            .entry(name.to_string())
            .or_insert(Entry {
                delivered: None,
                current: None,
                deleted_at: 0,
            })
    }

    fn set_current(&mut self, ns: &str, name: &str, o: Option<Arc<R>>) {
        let e = self.slot(ns, name);
        let before = e.current.is_some();
        let after = o.is_some();
        e.current = o;
        match (before, after) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
    }

    fn drop_if_empty(&mut self, ns: &str, name: &str) {
        if let Some(m) = self.by_ns.get_mut(ns) {
            if m.get(name)
                .is_some_and(|e| e.delivered.is_none() && e.current.is_none() && e.deleted_at == 0)
            {
                m.remove(name);
            }
            if m.is_empty() {
                self.by_ns.remove(ns);
            }
        }
    }

    /// A watch event: returns the event subscribers get (`None` when it
    /// changes nothing they saw, a deletion of something never delivered).
    pub(crate) fn observe(&mut self, o: R, deleted: bool) -> Option<Event<R>> {
        let (ns, name) = (o.namespace().to_string(), o.name().to_string());
        let rev = revision(&o);
        self.seen = self.seen.max(rev);
        let o = Arc::new(o);
        let e = self.slot(&ns, &name);
        let old = e.delivered.take();
        let current_rev = e.current.as_deref().map(revision).unwrap_or(0);
        let hidden = e.current.is_none() && e.deleted_at >= rev && e.deleted_at > 0;
        if deleted {
            e.deleted_at = 0;
            self.set_current(&ns, &name, None);
            self.drop_if_empty(&ns, &name);
            return old.map(Event::Deleted);
        }
        e.delivered = Some(o.clone());
        // Reads never go back in time behind a loop's own newer write or
        // deletion.
        let show = current_rev <= rev && !hidden;
        if show {
            e.deleted_at = 0;
            self.set_current(&ns, &name, Some(o.clone()));
        }
        Some(match old {
            Some(old) => Event::Updated { old, new: o },
            None => Event::Added(o),
        })
    }

    /// A fresh list replaces everything; returns the differences from what
    /// was delivered.
    pub(crate) fn replace(&mut self, items: Vec<R>, revision: u64) -> Vec<Event<R>> {
        self.seen = self.seen.max(revision);
        let mut fresh: HashMap<String, BTreeMap<String, R>> = HashMap::new();
        for o in items {
            fresh
                .entry(o.namespace().to_string())
                .or_default()
                .insert(o.name().to_string(), o);
        }
        let mut events = Vec::new();
        let gone: Vec<(String, String)> = self
            .by_ns
            .iter()
            .flat_map(|(ns, m)| {
                m.iter()
                    .filter(|(name, _)| fresh.get(ns).is_none_or(|f| !f.contains_key(*name)))
                    .map(|(name, _)| (ns.clone(), name.clone()))
            })
            .collect();
        for (ns, name) in gone {
            let e = self.slot(&ns, &name);
            let old = e.delivered.take();
            e.deleted_at = 0;
            self.set_current(&ns, &name, None);
            self.drop_if_empty(&ns, &name);
            events.extend(old.map(Event::Deleted));
        }
        for (_, m) in fresh {
            for (_, o) in m {
                let unchanged = self
                    .by_ns
                    .get(o.namespace())
                    .and_then(|m| m.get(o.name()))
                    .and_then(|e| e.delivered.as_ref())
                    .is_some_and(|d| d.meta().resource_version == o.meta().resource_version);
                if !unchanged {
                    events.extend(self.observe(o, false));
                }
            }
        }
        events
    }
}

/// A handle on one watch's shared objects; cheap to clone.
pub struct Store<R> {
    index: Arc<RwLock<Index<R>>>,
    synced: watch::Receiver<bool>,
}

impl<R> Clone for Store<R> {
    fn clone(&self) -> Self {
        Store {
            index: self.index.clone(),
            synced: self.synced.clone(),
        }
    }
}

/// The reflector's side of a store.
pub(crate) struct Writer<R> {
    pub(crate) index: Arc<RwLock<Index<R>>>,
    pub(crate) synced: watch::Sender<bool>,
}

impl<R> Writer<R> {
    pub(crate) fn new() -> Writer<R> {
        Writer {
            index: Arc::new(RwLock::new(Index::default())),
            synced: watch::channel(false).0,
        }
    }

    pub(crate) fn store(&self) -> Store<R> {
        Store {
            index: self.index.clone(),
            synced: self.synced.subscribe(),
        }
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index<R>> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl<R: Resource> Store<R> {
    /// Borrows the objects (no clone); keep the guard short and never
    /// across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Index<R>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<R>> {
        self.read().get(ns, name).cloned()
    }

    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<R>> {
        self.read().in_namespace(ns).cloned().collect()
    }

    pub fn list(&self) -> Vec<Arc<R>> {
        self.read().iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn wait_synced(&mut self) {
        let _ = self.synced.wait_for(|s| *s).await;
    }

    /// A loop's own write, as the server returned it: reads see it at once
    /// (never replacing a newer revision); subscribers hear of it when the
    /// watch brings it.
    pub fn write_through(&self, o: R) -> Arc<R> {
        let o = Arc::new(o);
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        let (ns, name) = (o.namespace().to_string(), o.name().to_string());
        let rev = revision(&*o);
        if !idx.has(&ns, &name) && rev <= idx.seen {
            // The watch has passed this revision without the object
            // staying: it was deleted meanwhile.
            return o;
        }
        let e = idx.slot(&ns, &name);
        let cur = e.current.as_deref().map(revision).unwrap_or(0);
        let hidden = e.current.is_none() && e.deleted_at >= rev;
        if cur <= rev && !hidden {
            idx.set_current(&ns, &name, Some(o.clone()));
        }
        o
    }

    /// A loop deleted the object and it is gone at once: reads stop seeing
    /// it (older events do not bring it back); subscribers hear of it when
    /// the watch brings the deletion.
    pub fn forget(&self, gone: &R) {
        let mut idx = self.index.write().unwrap_or_else(|e| e.into_inner());
        let (ns, name) = (gone.namespace().to_string(), gone.name().to_string());
        let rev = revision(gone).max(1);
        if !idx.has(&ns, &name) {
            // The watch already brought the deletion.
            return;
        }
        let e = idx.slot(&ns, &name);
        e.deleted_at = e.deleted_at.max(rev);
        idx.set_current(&ns, &name, None);
        idx.drop_if_empty(&ns, &name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::{ObjectMeta, Pod};

    fn pod(name: &str, rv: u64, node: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: rv.to_string(),
                ..Default::default()
            }),
            spec: Some(skiff_api::v1::PodSpec {
                node_name: node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node_of(p: &Pod) -> &str {
        &p.spec.as_ref().unwrap().node_name
    }

    #[test]
    fn events_carry_what_the_previous_event_delivered_despite_own_writes() {
        let w = Writer::<Pod>::new();
        let s = w.store();
        assert!(matches!(
            w.write().observe(pod("a", 1, ""), false),
            Some(Event::Added(_))
        ));
        // A loop binds the pod: reads see it at once.
        s.write_through(pod("a", 2, "n1"));
        assert_eq!(node_of(&s.get("default", "a").unwrap()), "n1");
        // An older event still on its way does not take reads back...
        let Some(Event::Updated { old, new }) = w.write().observe(pod("a", 1, ""), false) else {
            panic!("an update")
        };
        assert_eq!((revision(&*old), revision(&*new)), (1, 1));
        assert_eq!(node_of(&s.get("default", "a").unwrap()), "n1");
        // ...and the echo of the write is delivered against the last event.
        let Some(Event::Updated { old, new }) = w.write().observe(pod("a", 2, "n1"), false) else {
            panic!("an update")
        };
        assert_eq!((node_of(&old), node_of(&new)), ("", "n1"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn an_own_deletion_hides_the_object_until_the_watch_deletes_it() {
        let w = Writer::<Pod>::new();
        let s = w.store();
        w.write().observe(pod("a", 1, ""), false);
        s.forget(&pod("a", 3, ""));
        assert!(s.get("default", "a").is_none());
        assert_eq!(s.len(), 0);
        // An older modification is delivered but reads keep it hidden.
        assert!(w.write().observe(pod("a", 2, ""), false).is_some());
        assert!(s.get("default", "a").is_none());
        // The watch's deletion is still delivered, against what it saw.
        let Some(Event::Deleted(o)) = w.write().observe(pod("a", 3, ""), true) else {
            panic!("a deletion")
        };
        assert_eq!(revision(&*o), 2);
        // Recreated under the same name, it is seen again.
        assert!(matches!(
            w.write().observe(pod("a", 9, ""), false),
            Some(Event::Added(_))
        ));
        assert_eq!(s.len(), 1);
        assert!(s.read().by_ns["default"].contains_key("a"));
    }

    #[test]
    fn an_own_write_arriving_after_the_watch_deleted_the_object_is_ignored() {
        let w = Writer::<Pod>::new();
        let s = w.store();
        w.write().observe(pod("a", 1, ""), false);
        // The watch brings the deletion (rv 3) before the loop that
        // deleted it (gracefully, rv 2) records its write.
        w.write().observe(pod("a", 2, ""), false);
        assert!(w.write().observe(pod("a", 3, ""), true).is_some());
        s.write_through(pod("a", 2, ""));
        assert!(s.get("default", "a").is_none(), "not brought back");
        // A create newer than anything the watch has brought goes in.
        s.write_through(pod("b", 4, ""));
        assert!(s.get("default", "b").is_some());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_relist_reports_only_the_differences() {
        let w = Writer::<Pod>::new();
        let s = w.store();
        let first = w.write().replace(vec![pod("a", 1, ""), pod("b", 1, "")], 1);
        assert_eq!(first.len(), 2);
        let evs = w.write().replace(vec![pod("b", 2, ""), pod("c", 3, "")], 3);
        let kinds: Vec<String> = evs
            .iter()
            .map(|e| match e {
                Event::Added(o) => format!("+{}", o.name()),
                Event::Updated { new, .. } => format!("~{}", new.name()),
                Event::Deleted(o) => format!("-{}", o.name()),
                Event::Synced => "synced".into(),
            })
            .collect();
        assert_eq!(kinds, ["-a", "~b", "+c"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.in_namespace("default").len(), 2);
        assert!(s.in_namespace("other").is_empty());
    }
}
