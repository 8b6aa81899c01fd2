//! Images: references, the OCI format, archives to import, and building the
//! small demo image. Talking to containerd about them is in `runtime`.

pub mod archive;
pub mod build;
pub mod oci;
pub mod reference;
pub mod registry;

pub use reference::Reference;
