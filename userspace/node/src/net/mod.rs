//! Pod networking: namespaces, address management, veths and routes.

pub mod ipam;
pub mod netns;
pub mod podnet;

pub use ipam::{Cidr, Ipam};
pub use podnet::PodNetwork;
