//! The skiff node daemon (the kubelet): runs the pods bound to its node
//! through containerd, gives each a network namespace over netlink, keeps
//! their status in the API, and keeps the node's eBPF datapath in sync.

pub mod bootstrap;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod host;
pub mod image;
pub mod logs;
pub mod net;
pub mod pods;
pub mod register;
pub mod runtime;
pub mod server;
pub mod spec;
