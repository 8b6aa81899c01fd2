//! The runtime every watch-driven loop runs on — the controllers and the
//! scheduler in `skiff server`, the node daemon's pod watch and datapath
//! sync, the DNS addon's view — with kube-runtime and client-go as the
//! models:
//!
//! - [`Informers`]: one reflector (list + watch) per distinct watch for
//!   the whole process; events carry `Arc`s, so one decoded object is
//!   shared by every subscriber;
//! - [`Store`]: the reflector's objects, one copy that every loop reads;
//! - [`Queue`]: keys de-duplicated while queued, failed keys back with
//!   exponential back-off per key;
//! - [`drive`]: the one loop: events → keys → `sync`, once every watch has
//!   synced;
//! - [`ServiceIndex`]: Services with their EndpointSlices, by service;
//! - [`failpoint`]: delays injected by fault tests.

pub mod drive;
pub mod failpoint;
pub mod informers;
pub mod queue;
pub mod reflector;
pub mod services;
pub mod store;

pub use drive::{Reconcile, drive, log_sync_error};
pub use informers::{Inbox, Informers, Msg, Sender};
pub use queue::Queue;
pub use reflector::reflect;
pub use services::{SERVICE_NAME_LABEL, ServiceIndex, ServiceKey};
pub use store::{Event, Index, Store};

/// A task that is aborted when this handle is dropped (a loop that stops
/// takes its reflectors and helpers with it).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
