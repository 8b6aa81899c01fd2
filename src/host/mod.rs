//! The host verbs, which run on this machine rather than through the API:
//! `skiff node` (the node daemon), `skiff image` (this node's containerd),
//! `skiff bpf` (the datapath's maps, straight from their pins). The CLI
//! crate only parses their arguments; it knows nothing of the host.

pub mod bpf;
pub mod image;
pub mod node;
