//! A work queue of keys: adding a key already queued does nothing, so a
//! burst of events about one object becomes one sync; failed syncs come
//! back after a growing delay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::sync::mpsc;

pub struct Queue<K> {
    queued: HashSet<K>,
    order: VecDeque<K>,
    failures: HashMap<K, u32>,
    retry_tx: mpsc::UnboundedSender<K>,
    retry_rx: mpsc::UnboundedReceiver<K>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Default for Queue<K> {
    fn default() -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        Queue {
            queued: HashSet::new(),
            order: VecDeque::new(),
            failures: HashMap::new(),
            retry_tx,
            retry_rx,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Queue<K> {
    pub fn add(&mut self, key: K) {
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    pub fn pop(&mut self) -> Option<K> {
        while let Ok(k) = self.retry_rx.try_recv() {
            self.add(k);
        }
        let k = self.order.pop_front()?;
        self.queued.remove(&k);
        Some(k)
    }

    /// The key synced fine: its retry delay resets.
    pub fn done(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// The key failed: it comes back after 5 ms doubling up to 30 s.
    pub fn retry(&mut self, key: K) {
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n += 1;
        let delay = Duration::from_millis(5u64 << (*n).min(13)).min(Duration::from_secs(30));
        self.after(key, delay);
    }

    /// Syncs the key again after `delay` (a time-based condition).
    pub fn after(&self, key: K, delay: Duration) {
        let tx = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(key);
        });
    }

    /// Waits for a retry to come due (when nothing else is queued).
    pub async fn next_retry(&mut self) -> Option<K> {
        self.retry_rx.recv().await
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
