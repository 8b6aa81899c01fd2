//! The one loop every controller runs: take the events that arrived (a
//! burst becomes one sync per key), and once every watch has its complete
//! state, sync the queued keys; a failed sync comes back with back-off.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use crate::informers::{Inbox, Msg};
use crate::queue::Queue;

/// A watch-driven loop: it maps events to keys and brings one key's part
/// of the world to what it should be.
pub trait Reconcile: Send {
    type Key: Hash + Eq + Clone + Debug + Send + Sync + 'static;
    type Event: Send + 'static;

    /// Takes an event in (updating the loop's own indexes) and queues the
    /// keys it touches.
    fn on_event(&mut self, ev: Self::Event, q: &mut Queue<Self::Key>);

    /// Called once, when every watch has its complete state for the first
    /// time (before the first sync).
    fn on_synced(&mut self, _q: &mut Queue<Self::Key>) {}

    /// Brings one key to its desired state (and may queue others, or this
    /// one again after a delay). An error requeues the key with back-off;
    /// a conflict is logged quietly (the watch brings the newer object,
    /// which queues the key again anyway).
    fn sync(
        &mut self,
        key: &Self::Key,
        q: &mut Queue<Self::Key>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Events taken before the queue is worked on (bounded, so syncs are not
/// starved by a firehose).
const DRAIN: usize = 4096;

/// Runs the loop (`name` in its logs) until its inbox closes (every watch
/// and sender gone) or the task is aborted.
pub async fn drive<C: Reconcile>(name: &'static str, mut c: C, inbox: Inbox<C::Event>) {
    let mut q: Queue<C::Key> = Queue::default();
    let Inbox {
        tx,
        mut rx,
        watches,
        ..
    } = inbox;
    // Only the watches and the loop's own senders keep it open.
    drop(tx);
    let mut synced: HashSet<usize> = HashSet::new();
    let mut ready = watches == 0;
    if ready {
        c.on_synced(&mut q);
    }
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
            k = q.next_retry() => {
                if let Some(k) = k {
                    q.add(k);
                }
                None
            }
        };
        let mut take = |m: Msg<C::Event>, c: &mut C, q: &mut Queue<C::Key>| match m {
            Msg::Event(e) => c.on_event(e, q),
            Msg::Synced(n) => {
                synced.insert(n);
            }
        };
        if let Some(m) = first {
            take(m, &mut c, &mut q);
        }
        for _ in 0..DRAIN {
            match rx.try_recv() {
                Ok(m) => take(m, &mut c, &mut q),
                Err(_) => break,
            }
        }
        if !ready {
            if synced.len() < watches {
                continue;
            }
            ready = true;
            c.on_synced(&mut q);
        }
        while let Some(k) = q.pop() {
            match c.sync(&k, &mut q).await {
                Ok(()) => q.done(&k),
                Err(e) => {
                    log_sync_error(name, &k, &e);
                    q.retry(k);
                }
            }
        }
    }
}

/// A conflict is routine (another writer got there first); anything else
/// is worth a warning.
pub fn log_sync_error(what: &str, key: &dyn Debug, e: &anyhow::Error) {
    let conflict = e
        .downcast_ref::<skiff_client::ClientError>()
        .is_some_and(|c| c.is_conflict());
    if conflict {
        tracing::debug!(?key, "{what}: {e:#}");
    } else {
        tracing::warn!(?key, "{what}: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Fails its first `fail` syncs of every key, records each attempt.
    struct Flaky {
        fail: u32,
        attempts: Arc<Mutex<Vec<u32>>>,
    }

    impl Reconcile for Flaky {
        type Key = u32;
        type Event = u32;

        fn on_event(&mut self, k: u32, q: &mut Queue<u32>) {
            q.add(k);
        }

        async fn sync(&mut self, k: &u32, _: &mut Queue<u32>) -> anyhow::Result<()> {
            let mut a = self.attempts.lock().unwrap();
            a.push(*k);
            let n = a.iter().filter(|x| *x == k).count() as u32;
            if n <= self.fail {
                anyhow::bail!("attempt {n} fails");
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_sync_comes_back_by_itself_until_it_succeeds() {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let inbox = Inbox::new();
        let tx = inbox.sender();
        // A burst about one key, queued before the loop looks.
        for _ in 0..5 {
            assert!(tx.send(7));
        }
        let task = tokio::spawn(drive(
            "flaky",
            Flaky {
                fail: 3,
                attempts: attempts.clone(),
            },
            inbox,
        ));
        // No further event: the retries alone bring it to success.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while attempts.lock().unwrap().len() < 4 {
            assert!(std::time::Instant::now() < deadline, "no retry came");
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            *attempts.lock().unwrap(),
            [7, 7, 7, 7],
            "three failures, then done"
        );
        task.abort();
    }
}
