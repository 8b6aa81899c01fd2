//! The informer: keeps a local copy of the objects of one kind (optionally
//! one namespace and selectors) by listing and then watching, resumes a
//! broken watch from the last resourceVersion it saw, and relists when the
//! server says that history is gone (410). Every change reaches the
//! consumer as an [`InformerEvent`]; after a relist only the differences
//! are reported, so handlers see a consistent story.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use skiff_api::Resource;
use tokio::sync::{mpsc, watch};

use crate::{Client, ListParams, WatchEvent};

#[derive(Clone, Debug, PartialEq)]
pub enum InformerEvent<R> {
    Added(R),
    Updated {
        old: R,
        new: R,
    },
    Deleted(R),
    /// The cache holds the complete state (after the first list, and again
    /// after each relist).
    Synced,
}

/// The informer's local copy, keyed by `namespace/name` (or `name`).
#[derive(Clone)]
pub struct Cache<R> {
    objects: Arc<RwLock<BTreeMap<String, R>>>,
    synced: watch::Receiver<bool>,
}

impl<R: Resource> Cache<R> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<R> {
        let key = if R::KIND.namespaced() {
            format!("{namespace}/{name}")
        } else {
            name.to_string()
        };
        self.objects
            .read()
            .expect("cache poisoned")
            .get(&key)
            .cloned()
    }

    pub fn list(&self) -> Vec<R> {
        self.objects
            .read()
            .expect("cache poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.read().expect("cache poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_synced(&mut self) {
        let _ = self.synced.wait_for(|s| *s).await;
    }
}

pub struct Informer<R> {
    client: Client,
    namespace: String,
    params: ListParams,
    cache: Arc<RwLock<BTreeMap<String, R>>>,
    synced: watch::Sender<bool>,
}

impl<R: Resource> Informer<R> {
    pub fn new(client: Client, namespace: &str, params: ListParams) -> Informer<R> {
        Informer {
            client,
            namespace: namespace.to_string(),
            params,
            cache: Arc::default(),
            synced: watch::channel(false).0,
        }
    }

    pub fn cache(&self) -> Cache<R> {
        Cache {
            objects: self.cache.clone(),
            synced: self.synced.subscribe(),
        }
    }

    /// Starts the informer; events arrive on the returned channel. The task
    /// ends when the receiver is dropped.
    pub fn spawn(
        self,
    ) -> (
        Cache<R>,
        mpsc::Receiver<InformerEvent<R>>,
        tokio::task::JoinHandle<()>,
    ) {
        let cache = self.cache();
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(self.run(tx));
        (cache, rx, task)
    }

    async fn run(self, tx: mpsc::Sender<InformerEvent<R>>) {
        let mut backoff = Duration::from_millis(100);
        'relist: loop {
            let list = match self.client.list::<R>(&self.namespace, &self.params).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(kind = %R::KIND, "informer list: {e}");
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            for ev in self.replace(list.items) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            self.synced.send_replace(true);
            if tx.send(InformerEvent::Synced).await.is_err() {
                return;
            }
            let mut rv = list.resource_version;
            loop {
                let mut stream = match self
                    .client
                    .watch::<R>(&self.namespace, &self.params, Some(&rv))
                    .await
                {
                    Ok(s) => s,
                    Err(e) if e.is_gone() => continue 'relist,
                    Err(e) => {
                        tracing::warn!(kind = %R::KIND, "informer watch: {e}");
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(ev) => {
                            rv = ev.object().meta().resource_version.clone();
                            if let Some(out) = self.apply(ev)
                                && tx.send(out).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(e) if e.is_gone() => continue 'relist,
                        Err(e) => {
                            tracing::warn!(kind = %R::KIND, "informer watch ended: {e}");
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                // The stream ended (server restart, network): resume.
                tokio::time::sleep(backoff).await;
            }
        }
    }

    fn key(obj: &R) -> String {
        obj.full_name()
    }

    /// Replaces the cache with a fresh list and reports the differences.
    fn replace(&self, items: Vec<R>) -> Vec<InformerEvent<R>> {
        let mut cache = self.cache.write().expect("cache poisoned");
        let mut fresh: BTreeMap<String, R> =
            items.into_iter().map(|o| (Self::key(&o), o)).collect();
        let mut events = Vec::new();
        for (k, old) in cache.iter() {
            match fresh.get(k) {
                None => events.push(InformerEvent::Deleted(old.clone())),
                Some(new) if new.meta().resource_version != old.meta().resource_version => {
                    events.push(InformerEvent::Updated {
                        old: old.clone(),
                        new: new.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        for (k, new) in &fresh {
            if !cache.contains_key(k) {
                events.push(InformerEvent::Added(new.clone()));
            }
        }
        std::mem::swap(&mut *cache, &mut fresh);
        events
    }

    fn apply(&self, ev: WatchEvent<R>) -> Option<InformerEvent<R>> {
        let mut cache = self.cache.write().expect("cache poisoned");
        match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                let old = cache.insert(Self::key(&o), o.clone());
                Some(match old {
                    Some(old) => InformerEvent::Updated { old, new: o },
                    None => InformerEvent::Added(o),
                })
            }
            WatchEvent::Deleted(o) => cache.remove(&Self::key(&o)).map(InformerEvent::Deleted),
        }
    }
}
