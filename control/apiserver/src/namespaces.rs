//! Namespace deletion: a deleted namespace turns Terminating, its content
//! is deleted (honouring finalizers and pod grace periods), and the
//! namespace goes once nothing is left in it. Driven by watch events; runs
//! again for every terminating namespace when the server starts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::v1::Namespace;
use skiff_api::{Kind, Resource, with_resource};
use skiff_store::{Compare, Op, Txn};

use crate::registry::{DeleteOptions, ListOptions, Registry, Watched};
use crate::watch_cache::Filter;

pub async fn finalize_terminating(registry: Arc<Registry>) {
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let filter = Filter {
            kind: Kind::Namespace,
            namespace: String::new(),
            labels: Selector::everything(),
            fields: FieldSelector::default(),
        };
        let mut events = match registry.watch(filter, None, Default::default()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("watch namespaces: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(Ok(Watched::Event(_, obj))) = events.next().await {
            let meta = obj.object.meta();
            if meta.deletion_timestamp.is_none() {
                continue;
            }
            let name = meta.name.clone();
            if !running.lock().expect("poisoned").insert(name.clone()) {
                continue;
            }
            let registry = registry.clone();
            let running = running.clone();
            tokio::spawn(async move {
                if let Err(e) = finalize(&registry, &name).await {
                    tracing::warn!(namespace = %name, "finalize namespace: {e}");
                }
                running.lock().expect("poisoned").remove(&name);
            });
        }
    }
}

async fn finalize(registry: &Arc<Registry>, ns: &str) -> Result<(), crate::ApiError> {
    loop {
        // Wake on any change in the namespace, or after a while regardless.
        let (_, mut changes) = registry
            .cache
            .subscribe_from(i64::MAX)
            .unwrap_or_else(|| (Vec::new(), tokio::sync::broadcast::channel(1).1));
        let mut left = 0usize;
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            with_resource!(kind, R => {
                let opts = ListOptions { namespace: ns.to_string(), ..Default::default() };
                let (items, _) = registry.list::<R>(&opts).await?;
                left += items.len();
                for item in items {
                    match registry.delete::<R>(ns, item.name(), &DeleteOptions::default()).await {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            });
        }
        if left == 0 {
            let key = Kind::Namespace.key("", ns);
            let Some(kv) = registry.store.get(&key).await? else {
                return Ok(());
            };
            let current: Namespace = crate::codec::decode(&kv)?;
            if current.meta().deletion_timestamp.is_none() {
                return Ok(());
            }
            let r = registry
                .store
                .txn(
                    Txn::default()
                        .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                        .then(Op::Delete { key }),
                )
                .await?;
            if r.succeeded {
                return Ok(());
            }
            continue;
        }
        let wait = async {
            loop {
                match changes.recv().await {
                    Ok(ev) if ev.object().is_some_and(|o| o.object.meta().namespace == ns) => {
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}
