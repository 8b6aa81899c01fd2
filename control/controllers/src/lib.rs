//! The control loops that run inside `skiff server`: the scheduler and the
//! ReplicaSet, Deployment and EndpointSlice controllers. Each is one task
//! fed by informers, with its decisions in pure functions.

pub mod deployment;
pub mod endpointslice;
pub mod leader;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod store;

use skiff_client::Client;

/// Starts every loop; they run until the returned tasks are aborted.
pub fn start(client: Client) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(scheduler::run(client.clone())),
        tokio::spawn(replicaset::run(client.clone())),
        tokio::spawn(deployment::run(client.clone())),
        tokio::spawn(endpointslice::run(client)),
    ]
}

/// Runs the loops in this process while it holds the controllers' lease
/// (several servers on one etcd run them once).
pub async fn run_elected(client: Client, identity: String) {
    leader::run_elected(client, identity, start).await
}
