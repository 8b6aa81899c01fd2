//! Pulling an image from an OCI registry (the Docker Registry HTTP API v2):
//! the manifest (through an index to this platform's), the config and the
//! layers, streamed into containerd's content store with the GC labels an
//! import writes, then the image record and its unpacked snapshots.
//!
//! Registries on loopback addresses and `localhost` are spoken to over
//! plain HTTP (as Docker does); HTTPS registries and registry credentials
//! are not supported yet, and say so.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;

use super::Reference;
use super::oci::{self, Descriptor, Index, Manifest};
use crate::runtime::Containerd;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The base URL of a registry, when skiff can speak to it.
pub fn base_url(registry: &str) -> Result<String> {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let loopback = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host == "[::1]";
    if !loopback {
        bail!(
            "pulling from {registry} needs HTTPS, which skiff does not speak yet: import the image with `skiff image import` (or serve it from a registry on 127.0.0.1)"
        );
    }
    Ok(format!("http://{registry}"))
}

struct Registry {
    http: reqwest::Client,
    base: String,
    repo: String,
}

impl Registry {
    async fn get(&self, what: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{}/{what}", self.base, self.repo);
        let mut req = self.http.get(&url);
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            404 => bail!("{url}: not found (404)"),
            401 | 403 => {
                bail!("{url}: the registry wants credentials, which skiff does not send yet")
            }
            code => bail!("{url}: HTTP {code}"),
        }
    }

    /// A manifest or index by tag or digest: (descriptor, bytes).
    async fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>)> {
        let resp = self
            .get(&format!("manifests/{reference}"), Some(ACCEPT))
            .await?;
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let body = resp.bytes().await?.to_vec();
        if body.len() > 4 << 20 {
            bail!("the manifest of {reference} is larger than 4 MiB");
        }
        let digest = oci::sha256_digest(&body);
        if reference.starts_with("sha256:") && reference != digest {
            bail!("the registry sent {digest} for {reference}");
        }
        // Some registries send a generic type: the document's own says.
        let media_type = if oci::is_index(&media_type) || oci::is_manifest(&media_type) {
            media_type
        } else {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| oci::OCI_MANIFEST.to_string())
        };
        Ok((
            Descriptor {
                media_type,
                digest,
                size: body.len() as i64,
                annotations: Default::default(),
                platform: None,
            },
            body,
        ))
    }
}

pub async fn pull(ctd: &Containerd, reference: &Reference) -> Result<()> {
    let name = reference.to_string();
    pull_named(ctd, reference)
        .await
        .with_context(|| format!("pulling {name}"))
}

async fn pull_named(ctd: &Containerd, reference: &Reference) -> Result<()> {
    let base = base_url(&reference.registry)?;
    let reg = Registry {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
        base,
        repo: reference.repository.clone(),
    };
    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let name = reference.to_string();
    tracing::info!(image = %name, "pulling");
    let lease = ctd.lease(Duration::from_secs(3600)).await?;
    let r = pull_in(ctd, &reg, &wanted, &name, &lease).await;
    ctd.drop_lease(&lease).await;
    r
}

async fn pull_in(
    ctd: &Containerd,
    reg: &Registry,
    wanted: &str,
    name: &str,
    lease: &str,
) -> Result<()> {
    let (top, top_body) = reg.manifest(wanted).await?;
    let (manifest_desc, manifest_body, index) = if oci::is_index(&top.media_type) {
        let idx: Index = serde_json::from_slice(&top_body).context("the image index")?;
        let pick = oci::pick_platform(&idx)?;
        let (d, body) = reg.manifest(&idx.manifests[pick].digest).await?;
        (d, body, Some((pick, idx.manifests[pick].digest.clone())))
    } else {
        (top.clone(), top_body.clone(), None)
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_body).context("the image manifest")?;
    // Children first: config and layers, streamed.
    for blob in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        if !oci::valid_digest(&blob.digest) {
            bail!("the manifest names an invalid digest {:?}", blob.digest);
        }
        if ctd.has_content(&blob.digest).await? {
            continue;
        }
        let resp = reg.get(&format!("blobs/{}", blob.digest), None).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = resp.bytes_stream();
        let feeder = tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => {
                        if tx.send(c.to_vec()).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(anyhow::anyhow!("reading the blob: {e}")),
                }
            }
            Ok(())
        });
        ctd.write_stream(blob, rx, HashMap::new(), lease).await?;
        feeder.await??;
    }
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        manifest.config.digest.clone(),
    )]);
    for (i, l) in manifest.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    if !ctd.has_content(&manifest_desc.digest).await? {
        ctd.write_blob(&manifest_desc, manifest_body, labels, lease)
            .await?;
    }
    if let Some((i, digest)) = index {
        let labels = HashMap::from([(format!("containerd.io/gc.ref.content.m.{i}"), digest)]);
        if !ctd.has_content(&top.digest).await? {
            ctd.write_blob(&top, top_body, labels, lease).await?;
        }
    }
    ctd.put_image(name, &top).await?;
    ctd.unpack(name, lease).await?;
    tracing::info!(image = %name, "pulled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_for_now() {
        assert_eq!(base_url("127.0.0.1:5000").unwrap(), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost:5000").unwrap(), "http://localhost:5000");
        let err = base_url("docker.io").unwrap_err().to_string();
        assert!(
            err.contains("HTTPS") && err.contains("skiff image import"),
            "{err}"
        );
    }
}
