//! The control loops that run inside `skiff server`: the scheduler, the
//! ReplicaSet, Deployment, EndpointSlice, Endpoints, ServiceAccount and
//! node lifecycle controllers and the garbage collector. Each is one task fed by informers, with its
//! decisions in pure functions.

pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod leader;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;
#[cfg(test)]
mod rollout_model;
pub mod scheduler;
pub mod serviceaccounts;

use skiff_client::Client;
use skiff_runtime::Informers;

/// Settings of the loops (`skiff server` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub node_lifecycle: nodelifecycle::Config,
}

/// Starts every loop on one set of shared informers (one reflector and
/// store per kind for all of them); they run until the returned tasks are
/// aborted. The scheduler writes through `scheduler` (its own identity,
/// `system:kube-scheduler`); the rest through `client`.
pub fn start(client: Client, scheduler: Client, cfg: Config) -> Vec<tokio::task::JoinHandle<()>> {
    let mut inf = Informers::new(client.clone());
    let mut tasks = vec![
        scheduler::start(scheduler, &mut inf),
        replicaset::start(client.clone(), &mut inf),
        deployment::start(client.clone(), &mut inf),
        endpointslice::start(client.clone(), &mut inf),
        endpoints::start(client.clone(), &mut inf),
        serviceaccounts::start(client.clone(), &mut inf),
        nodelifecycle::start(client.clone(), cfg.node_lifecycle, &mut inf),
        gc::start(client, &mut inf),
    ];
    tasks.extend(inf.start());
    tasks
}

/// Runs the loops in this process while it holds the controllers' lease
/// (several servers on one etcd run them once).
pub async fn run_elected(client: Client, scheduler: Client, identity: String, cfg: Config) {
    leader::run_elected(client, identity, move |c| start(c, scheduler.clone(), cfg)).await
}
