//! Pulling images from an OCI registry (Docker Registry HTTP API v2).

use anyhow::{Result, bail};

use super::Reference;
use crate::runtime::Containerd;

pub async fn pull(_ctd: &Containerd, reference: &Reference) -> Result<()> {
    bail!(
        "image {reference} is not present on this node and pulling is not available yet (import it with `skiff image import`)"
    )
}
