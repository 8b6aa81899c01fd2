//! A controller's own copy of one kind, fed by informer events and indexed
//! by namespace, so a sync looks at one namespace, never the whole cluster.

use std::collections::{BTreeMap, HashMap};

use skiff_api::Resource;
use skiff_client::InformerEvent;

fn revision<R: Resource>(o: &R) -> u64 {
    o.meta().resource_version.parse().unwrap_or(0)
}

pub struct Store<R> {
    by_ns: HashMap<String, BTreeMap<String, R>>,
    synced: bool,
}

impl<R> Default for Store<R> {
    fn default() -> Self {
        Store {
            by_ns: HashMap::new(),
            synced: false,
        }
    }
}

impl<R: Resource + Clone> Store<R> {
    /// Applies an event; returns the object before and after it.
    pub fn apply(&mut self, ev: InformerEvent<R>) -> (Option<R>, Option<R>) {
        match ev {
            InformerEvent::Added(o) | InformerEvent::Updated { new: o, .. } => {
                // A controller may have put its own newer write here first:
                // an older event does not go back in time.
                if let Some(cur) = self.get(o.namespace(), o.name())
                    && revision(cur) > revision(&o)
                {
                    return (Some(cur.clone()), Some(cur.clone()));
                }
                let old = self.insert(o.clone());
                (old, Some(o))
            }
            InformerEvent::Deleted(o) => {
                let old = self.remove(o.namespace(), o.name());
                (old.or(Some(o)), None)
            }
            InformerEvent::Synced => {
                self.synced = true;
                (None, None)
            }
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    fn insert(&mut self, o: R) -> Option<R> {
        self.by_ns
            .entry(o.namespace().to_string())
            .or_default()
            .insert(o.name().to_string(), o)
    }

    fn remove(&mut self, ns: &str, name: &str) -> Option<R> {
        let m = self.by_ns.get_mut(ns)?;
        let o = m.remove(name);
        if m.is_empty() {
            self.by_ns.remove(ns);
        }
        o
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<&R> {
        self.by_ns.get(ns)?.get(name)
    }

    pub fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &R> {
        self.by_ns.get(ns).into_iter().flat_map(|m| m.values())
    }

    pub fn all(&self) -> impl Iterator<Item = &R> {
        self.by_ns.values().flat_map(|m| m.values())
    }
}
