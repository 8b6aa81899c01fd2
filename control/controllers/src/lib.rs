//! The control loops that run inside `skiff server`: the scheduler, the
//! ReplicaSet, Deployment, EndpointSlice and node lifecycle controllers and
//! the garbage collector. Each is one task fed by informers, with its
//! decisions in pure functions.

pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod failpoint;
pub mod gc;
pub mod informers;
pub mod leader;
pub mod nodelifecycle;
pub mod pods;
pub mod queue;
pub mod replicaset;
#[cfg(test)]
mod rollout_model;
pub mod scheduler;
pub mod store;

use skiff_client::Client;

/// Settings of the loops (`skiff server` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub node_lifecycle: nodelifecycle::Config,
}

/// Starts every loop, on shared informers; they run until the returned
/// tasks are aborted.
pub fn start(client: Client, cfg: Config) -> Vec<tokio::task::JoinHandle<()>> {
    let mut inf = informers::Informers::new(client.clone());
    let c = || client.clone();
    let mut tasks = vec![
        tokio::spawn(scheduler::run(c(), inf.all(), inf.all())),
        tokio::spawn(replicaset::run(c(), inf.all(), inf.all())),
        tokio::spawn(deployment::run(c(), inf.all(), inf.all())),
        tokio::spawn(endpointslice::run(
            c(),
            inf.all(),
            inf.all(),
            inf.subscribe("", endpointslice::managed()),
        )),
        tokio::spawn(nodelifecycle::run(
            c(),
            cfg.node_lifecycle,
            inf.all(),
            inf.subscribe(nodelifecycle::LEASE_NAMESPACE, Default::default()),
            inf.all(),
        )),
        tokio::spawn(gc::run(c(), gc::Watched::subscribe(&mut inf))),
    ];
    tasks.extend(inf.start());
    tasks
}

/// Runs the loops in this process while it holds the controllers' lease
/// (several servers on one etcd run them once).
pub async fn run_elected(client: Client, identity: String, cfg: Config) {
    leader::run_elected(client, identity, move |c| start(c, cfg)).await
}

/// A task that is aborted when this handle is dropped (a loop that stops
/// takes its helpers with it).
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a failed sync: a conflict is routine (another writer got there
/// first; the watch brings the newer object and the key is synced again),
/// anything else is worth a warning.
pub(crate) fn log_sync_error(what: &str, key: &dyn std::fmt::Debug, e: &anyhow::Error) {
    let conflict = e
        .downcast_ref::<skiff_client::ClientError>()
        .is_some_and(|c| c.is_conflict());
    if conflict {
        tracing::debug!(?key, "{what}: {e}");
    } else {
        tracing::warn!(?key, "{what}: {e}");
    }
}
