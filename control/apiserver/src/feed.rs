//! The watch cache's feed: one watch on the whole store, its events decoded
//! (when first needed) into the cache and the allocation hints. A gap
//! (compaction during a disconnect) resets the cache, which ends current
//! watches so their clients relist.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use skiff_store::{Revision, StoreError};

use crate::alloc;
use crate::registry::Registry;
use crate::watch_cache::decode_event;

/// Follows the whole store with one watch and feeds the watch cache and
/// the allocation hints. A gap (compaction during a disconnect) resets the
/// cache, which ends current watches so their clients relist.
pub(crate) async fn feed_cache(
    registry: Arc<Registry>,
    feeding: Arc<AtomicBool>,
    mut after: Revision,
) {
    // Events of revision `after + 1` may arrive in several pieces; count
    // what was taken of the last revision so a resume does not repeat it.
    let mut last_rev = after;
    let mut taken_of_last = 0usize;
    loop {
        let resume_from = if taken_of_last > 0 {
            last_rev - 1
        } else {
            after
        };
        let mut gap = false;
        match registry.store.watch("", resume_from).await {
            Ok(events) => {
                feeding.store(true, Ordering::Release);
                let mut skip = taken_of_last;
                let mut events = events.peekable();
                while let Some(ev) = events.next().await {
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(StoreError::Compacted { .. }) => {
                            gap = true;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("store watch ended: {e}");
                            break;
                        }
                    };
                    if ev.revision == last_rev && skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    if ev.revision != last_rev {
                        last_rev = ev.revision;
                        taken_of_last = 0;
                        after = ev.revision - 1;
                    }
                    taken_of_last += 1;
                    if let Some(a) = alloc::Allocation::from_key(&ev.key) {
                        registry
                            .alloc
                            .observe(a, ev.kind == skiff_store::EventKind::Put);
                    }
                    if let Some(ce) = decode_event(&ev) {
                        registry.observe(&ce);
                        registry.cache.push(ce);
                    }
                    // The store's watches hand over whole revisions: with
                    // nothing more ready, this revision is complete.
                    if std::pin::Pin::new(&mut events)
                        .peek()
                        .now_or_never()
                        .is_none()
                    {
                        registry.cache.complete_to(last_rev);
                    }
                }
            }
            Err(StoreError::Compacted { .. }) => gap = true,
            Err(e) => tracing::warn!("store watch: {e}"),
        }
        feeding.store(false, Ordering::Release);
        if gap {
            // History we never saw is gone: start over from now. Current
            // watches end (their clients resume or relist) and the hints
            // are reloaded.
            tracing::warn!("the watch cache missed compacted history; resetting it");
            match registry.store.revision().await {
                Ok(rev) => {
                    registry.cache.reset(rev);
                    (after, last_rev, taken_of_last) = (rev, rev, 0);
                    let _ = registry.load_allocations().await;
                    let _ = registry.load_namespaces().await;
                    if let Err(e) = registry.authz.load(registry.store.as_ref()).await {
                        tracing::warn!("reloading the authorization policy: {e}");
                    }
                    continue;
                }
                Err(e) => tracing::warn!("store: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
