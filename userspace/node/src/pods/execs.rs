//! The exec'd processes in flight, per container.
//!
//! When a container's main process exits, the shim ends the processes
//! exec'd into it and reports their exit; but deleting the task tears the
//! shim down, and a caller still waiting for its exec's exit status would
//! get a broken connection instead. So the worker waits (a bounded time) for
//! the execs of a container to be settled before it deletes the task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Execs {
    running: Mutex<HashMap<String, usize>>,
    settled: Notify,
}

/// One exec in flight; dropping it settles it.
pub struct Guard {
    execs: Arc<Execs>,
    container: String,
}

impl Execs {
    /// Counts an exec into `container` until the guard is dropped.
    pub fn begin(self: &Arc<Self>, container: &str) -> Guard {
        *self
            .running
            .lock()
            .expect("execs")
            .entry(container.to_string())
            .or_default() += 1;
        Guard {
            execs: self.clone(),
            container: container.to_string(),
        }
    }

    fn count(&self, container: &str) -> usize {
        self.running
            .lock()
            .expect("execs")
            .get(container)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until no exec into `container` is in flight, at most `limit`;
    /// true when they all settled.
    pub async fn settled(&self, container: &str, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                // Registered before the check: a guard dropped in between
                // still wakes this waiter.
                notified.as_mut().enable();
                if self.count(container) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut running = self.execs.running.lock().expect("execs");
        if let Some(n) = running.get_mut(&self.container) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.container);
            }
        }
        drop(running);
        self.execs.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_container_is_settled_when_its_last_exec_ends() {
        let execs = Arc::new(Execs::default());
        assert!(execs.settled("a", Duration::from_millis(1)).await);
        let one = execs.begin("a");
        let two = execs.begin("a");
        let other = execs.begin("b");
        // Still running: the wait gives up at its limit.
        assert!(!execs.settled("a", Duration::from_millis(20)).await);
        let waiter = tokio::spawn({
            let execs = execs.clone();
            async move { execs.settled("a", Duration::from_secs(30)).await }
        });
        drop(one);
        assert_eq!(execs.count("a"), 1);
        assert!(!execs.settled("a", Duration::from_millis(20)).await);
        drop(two);
        assert!(waiter.await.unwrap(), "the last exec of a settles it");
        assert_eq!(execs.count("b"), 1, "others are untouched");
        drop(other);
        assert_eq!(execs.count("b"), 0);
    }
}
