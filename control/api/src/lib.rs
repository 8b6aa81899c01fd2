//! skiff's API objects.
//!
//! The types are generated from `proto/skiff/v1/*.proto` (the single source
//! of truth) and carry serde attributes that give them Kubernetes' JSON and
//! YAML form. On top of them this crate adds what every component needs to
//! handle objects generically: the [`Kind`] table, the [`Resource`] trait,
//! the [`Object`] enum over all kinds, manifest parsing with unknown-field
//! warnings, patches, label and field selectors, quantities and validation.
//!
//! This crate does no I/O: it knows nothing of the store, the network or
//! the kernel.

pub mod columns;
mod kind;
pub mod manifest;
pub(crate) mod names;
pub mod nodes;
mod object;
pub mod openapi;
pub mod patch;
pub mod quantity;
mod resource;
pub mod selector;
pub mod validation;
pub mod wire;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The generated protobuf types (objects, and the gRPC service).
pub mod join;

pub mod v1 {
    #![allow(clippy::all, reason = "generated code")]
    tonic::include_proto!("skiff.v1");
}

pub use kind::{Kind, RBAC_GROUP};
pub use object::Object;
pub use quantity::Quantity as ParsedQuantity;
pub use resource::Resource;
pub use v1::{
    ConfigMap, Deployment, EndpointSlice, Endpoints, Event, Lease, Namespace, Node, ObjectMeta,
    Pod, ReplicaSet, Service, ServiceAccount,
};
