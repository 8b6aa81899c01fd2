//! The skiff node daemon (the kubelet): runs the pods bound to its node
//! through containerd, gives each a network namespace over netlink, keeps
//! their status in the API, and keeps the node's eBPF datapath in sync.

pub mod image;
pub mod net;
pub mod runtime;
