//! Image import, unpack, listing and resolution through containerd's
//! Content, Images, Diff and Snapshots services.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ListImagesRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor as CDescriptor;
use futures::StreamExt;
use tonic::Code;

use super::{Containerd, SNAPSHOTTER, status, unique};
use crate::image::archive::{Archive, Blob};
use crate::image::oci::{self, Descriptor, ImageConfig, Index, Manifest};

const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of the manifest, config and layers for this platform.
    pub size: i64,
}

/// What a container is made from: the config, and the snapshot to start
/// from (the chain ID of the top layer).
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub name: String,
    pub config: ImageConfig,
    pub config_digest: String,
    pub chain_id: String,
}

fn to_cd(d: &Descriptor) -> CDescriptor {
    CDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

impl Containerd {
    /// Imports every image of an archive (OCI layout or docker-archive)
    /// and unpacks it for this platform; returns the names imported.
    pub async fn import(&self, path: &Path) -> Result<Vec<String>> {
        let archive = {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || Archive::read(&p)).await??
        };
        let lease = self.lease(Duration::from_secs(3600)).await?;
        let r = self.import_archive(path, &archive, &lease).await;
        self.drop_lease(&lease).await;
        r
    }

    async fn import_archive(
        &self,
        path: &Path,
        archive: &Archive,
        lease: &str,
    ) -> Result<Vec<String>> {
        // Every blob reachable from the named images, with the GC labels
        // that keep children alive as long as their parent.
        let mut needed: Vec<(Descriptor, HashMap<String, String>)> = Vec::new();
        let mut stack: Vec<Descriptor> = archive.images.iter().map(|(_, d)| d.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            let mut labels = HashMap::new();
            if oci::is_index(&d.media_type) {
                let idx: Index = serde_json::from_slice(archive.json(&d.digest)?)
                    .with_context(|| format!("index {}", d.digest))?;
                for (i, m) in idx.manifests.iter().enumerate() {
                    // Only this platform's manifests need to be present.
                    if oci::for_this_platform(m) && archive.blobs.contains_key(&m.digest) {
                        labels.insert(
                            format!("containerd.io/gc.ref.content.m.{i}"),
                            m.digest.clone(),
                        );
                        stack.push(m.clone());
                    }
                }
            } else if oci::is_manifest(&d.media_type) {
                let m: Manifest = serde_json::from_slice(archive.json(&d.digest)?)
                    .with_context(|| format!("manifest {}", d.digest))?;
                labels.insert(
                    "containerd.io/gc.ref.content.config".into(),
                    m.config.digest.clone(),
                );
                stack.push(m.config.clone());
                for (i, l) in m.layers.iter().enumerate() {
                    labels.insert(
                        format!("containerd.io/gc.ref.content.l.{i}"),
                        l.digest.clone(),
                    );
                    stack.push(l.clone());
                }
            }
            if !archive.blobs.contains_key(&d.digest) {
                bail!("the archive lacks blob {} ({})", d.digest, d.media_type);
            }
            needed.push((d, labels));
        }
        // Inline blobs first, then layers streamed from the archive.
        let mut from_archive = HashMap::new();
        for (d, labels) in &needed {
            if self.has_content(&d.digest).await? {
                continue;
            }
            match &archive.blobs[&d.digest] {
                Blob::Inline(data) => {
                    self.write_blob(d, data.clone(), labels.clone(), lease)
                        .await?
                }
                Blob::InArchive { path, size } => {
                    from_archive.insert(path.clone(), (d.clone(), *size, labels.clone()));
                }
            }
        }
        if !from_archive.is_empty() {
            self.stream_layers(path, from_archive, lease).await?;
        }
        let mut names = Vec::new();
        for (name, target) in &archive.images {
            self.put_image(name, target).await?;
            self.unpack(name, lease).await?;
            names.push(name.clone());
        }
        Ok(names)
    }

    pub(crate) async fn has_content(&self, digest: &str) -> Result<bool> {
        let r = ContentClient::new(self.channel.clone())
            .info(self.req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status(s, "reading content info")),
        }
    }

    /// Writes one blob from memory.
    pub(crate) async fn write_blob(
        &self,
        d: &Descriptor,
        data: Vec<u8>,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(data).await.ok();
        drop(tx);
        self.write_stream(d, rx, labels, lease).await
    }

    /// Writes one blob whose bytes arrive on `chunks`, committing it under
    /// its expected digest (containerd verifies it).
    pub(crate) async fn write_stream(
        &self,
        d: &Descriptor,
        chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<()> {
        let reference = format!("skiff-import-{}-{}", d.digest, unique());
        let total = d.size;
        let digest = d.digest.clone();
        let requests = write_requests(reference, total, digest, labels, chunks);
        let mut responses = ContentClient::new(self.channel.clone())
            .write(self.req(requests, Some(lease)))
            .await
            .map_err(|s| status(s, &format!("writing blob {}", d.digest)))?
            .into_inner();
        while let Some(r) = responses.next().await {
            let r = r.map_err(|s| status(s, &format!("writing blob {}", d.digest)))?;
            if r.action == WriteAction::Commit as i32 {
                return Ok(());
            }
        }
        bail!(
            "containerd closed the write of {} before committing it",
            d.digest
        )
    }

    /// Streams the named archive members into the content store, one
    /// after the other, reading the tar on a blocking thread.
    async fn stream_layers(
        &self,
        path: &Path,
        mut wanted: HashMap<String, (Descriptor, u64, HashMap<String, String>)>,
        lease: &str,
    ) -> Result<()> {
        let (blob_tx, mut blob_rx) =
            tokio::sync::mpsc::channel::<(String, tokio::sync::mpsc::Receiver<Vec<u8>>)>(1);
        let names: std::collections::HashSet<String> = wanted.keys().cloned().collect();
        let file = path.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut tar = tar::Archive::new(std::fs::File::open(&file)?);
            for entry in tar.entries()? {
                let mut entry = entry?;
                let name = entry
                    .path()?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                if !names.contains(&name) {
                    continue;
                }
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                if blob_tx.blocking_send((name, rx)).is_err() {
                    return Ok(());
                }
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let n = entry.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    if tx.blocking_send(buf).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        while let Some((name, rx)) = blob_rx.recv().await {
            if let Some((d, _size, labels)) = wanted.remove(&name) {
                self.write_stream(&d, rx, labels, lease).await?;
            }
        }
        reader.await??;
        if let Some(name) = wanted.keys().next() {
            bail!("the archive changed while importing: {name} is gone");
        }
        Ok(())
    }

    pub(crate) async fn put_image(&self, name: &str, target: &Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(to_cd(target)),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let r = images
            .create(self.req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.req(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        None,
                    ))
                    .await
                    .map_err(|s| status(s, &format!("updating image {name}")))?;
                Ok(())
            }
            Err(s) => Err(status(s, &format!("creating image {name}"))),
        }
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("reading blob {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| status(s, &format!("reading blob {digest}")))?;
            out.extend_from_slice(&chunk.data);
            if out.len() > 16 << 20 {
                bail!("blob {digest} is too large to be a JSON document");
            }
        }
        Ok(out)
    }

    /// The image's target descriptor, or `None` when it is not present.
    async fn image_target(&self, name: &str) -> Result<Option<Descriptor>> {
        let r = ImagesClient::new(self.channel.clone())
            .get(self.req(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await;
        let image = match r {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(status(s, &format!("reading image {name}"))),
        };
        let t = image
            .and_then(|i| i.target)
            .context("image without a target")?;
        Ok(Some(Descriptor {
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            annotations: t.annotations.into_iter().collect(),
            platform: None,
        }))
    }

    /// Follows an index to this platform's manifest.
    async fn platform_manifest(&self, target: Descriptor) -> Result<(Descriptor, Manifest)> {
        let mut d = target;
        for _ in 0..4 {
            let data = self.read_blob(&d.digest).await?;
            if oci::is_manifest(&d.media_type) {
                return Ok((d, serde_json::from_slice(&data)?));
            }
            if !oci::is_index(&d.media_type) {
                bail!("unsupported image media type {}", d.media_type);
            }
            let idx: Index = serde_json::from_slice(&data)?;
            d = idx.manifests[oci::pick_platform(&idx)?].clone();
        }
        bail!("image indexes nested too deep")
    }

    /// Resolves a present image to its config and top snapshot, unpacking
    /// it when needed. `None`: the image is not present.
    pub async fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>> {
        let Some(target) = self.image_target(name).await? else {
            return Ok(None);
        };
        let (_, manifest) = self.platform_manifest(target).await?;
        let config: ImageConfig =
            serde_json::from_slice(&self.read_blob(&manifest.config.digest).await?)
                .context("image config")?;
        let chain = oci::chain_ids(&config.rootfs.diff_ids);
        let top = chain.last().cloned().context("the image has no layers")?;
        if !self.has_snapshot(&top).await? {
            let lease = self.lease(Duration::from_secs(3600)).await?;
            let r = self.unpack(name, &lease).await;
            self.drop_lease(&lease).await;
            r?;
        }
        Ok(Some(ResolvedImage {
            name: name.to_string(),
            config,
            config_digest: manifest.config.digest,
            chain_id: top,
        }))
    }

    async fn has_snapshot(&self, key: &str) -> Result<bool> {
        let r = SnapshotsClient::new(self.channel.clone())
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status(s, "reading a snapshot")),
        }
    }

    /// Applies the layers of an image to snapshots named by chain ID.
    pub(crate) async fn unpack(&self, name: &str, lease: &str) -> Result<()> {
        let target = self
            .image_target(name)
            .await?
            .with_context(|| format!("image {name} vanished"))?;
        let (_, manifest) = self.platform_manifest(target).await?;
        let config: ImageConfig =
            serde_json::from_slice(&self.read_blob(&manifest.config.digest).await?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            bail!(
                "image {name}: the config lists {} layers, the manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            );
        }
        let chain = oci::chain_ids(&config.rootfs.diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        for (i, layer) in manifest.layers.iter().enumerate() {
            if self.has_snapshot(&chain[i]).await? {
                continue;
            }
            let key = format!("skiff-extract-{}-{}", unique(), chain[i]);
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let mounts = snapshots
                .prepare(self.req(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await
                .map_err(|s| status(s, "preparing a snapshot to unpack into"))?
                .into_inner()
                .mounts;
            let applied = DiffClient::new(self.channel.clone())
                .apply(self.req(
                    ApplyRequest {
                        diff: Some(to_cd(layer)),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    Some(lease),
                ))
                .await;
            let applied = match applied {
                Ok(a) => a.into_inner().applied,
                Err(s) => {
                    self.remove_snapshot(&key).await;
                    return Err(status(s, &format!("applying layer {}", layer.digest)));
                }
            };
            let diff_id = applied.map(|a| a.digest).unwrap_or_default();
            if diff_id != config.rootfs.diff_ids[i] {
                self.remove_snapshot(&key).await;
                bail!(
                    "layer {} unpacked to {diff_id}, but the image config says {}",
                    layer.digest,
                    config.rootfs.diff_ids[i]
                );
            }
            let committed = snapshots
                .commit(self.req(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain[i].clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await;
            match committed {
                Ok(_) => {}
                // Another unpack of the same layer won the race.
                Err(s) if s.code() == Code::AlreadyExists => self.remove_snapshot(&key).await,
                Err(s) => return Err(status(s, "committing an unpacked layer")),
            }
        }
        // Keep the unpacked snapshots as long as the image's config.
        let top = chain.last().cloned().unwrap_or_default();
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        ContentClient::new(self.channel.clone())
            .update(self.req(
                UpdateRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: manifest.config.digest.clone(),
                        size: 0,
                        created_at: None,
                        updated_at: None,
                        labels: HashMap::from([(label.clone(), top)]),
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{label}")],
                    }),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "labelling the image config"))?;
        Ok(())
    }

    pub(super) async fn remove_snapshot(&self, key: &str) {
        let r = SnapshotsClient::new(self.channel.clone())
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                },
                None,
            ))
            .await;
        if let Err(s) = r
            && s.code() != Code::NotFound
        {
            tracing::warn!("removing snapshot {key}: {}", s.message());
        }
    }

    /// The images in this namespace.
    pub async fn images(&self) -> Result<Vec<ImageSummary>> {
        let list = ImagesClient::new(self.channel.clone())
            .list(self.req(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(|s| status(s, "listing images"))?
            .into_inner()
            .images;
        let mut out = Vec::new();
        for i in list {
            let Some(t) = i.target else { continue };
            let mut size = t.size;
            let d = Descriptor {
                media_type: t.media_type.clone(),
                digest: t.digest.clone(),
                size: t.size,
                annotations: Default::default(),
                platform: None,
            };
            if let Ok((_, m)) = self.platform_manifest(d).await {
                size += m.config.size + m.layers.iter().map(|l| l.size).sum::<i64>();
            }
            out.push(ImageSummary {
                name: i.name,
                digest: t.digest,
                media_type: t.media_type,
                size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes an image record (content and snapshots go with containerd's
    /// garbage collection once nothing uses them).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        use containerd_client::services::v1::DeleteImageRequest;
        ImagesClient::new(self.channel.clone())
            .delete(self.req(
                DeleteImageRequest {
                    name: name.to_string(),
                    sync: true,
                    target: None,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("removing image {name}")))?;
        Ok(())
    }
}

/// The request stream of one content write: data chunks at increasing
/// offsets, then a commit with the total and the expected digest.
fn write_requests(
    reference: String,
    total: i64,
    expected: String,
    labels: HashMap<String, String>,
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl futures::Stream<Item = WriteContentRequest> + Send + 'static {
    let state = (chunks, 0i64, Some(labels));
    futures::stream::unfold(state, move |(mut chunks, offset, labels)| {
        let reference = reference.clone();
        let expected = expected.clone();
        async move {
            // `labels` is taken by the commit, which ends the stream.
            let labels_left = labels?;
            match chunks.recv().await {
                Some(data) => {
                    let len = data.len() as i64;
                    let req = WriteContentRequest {
                        action: WriteAction::Write as i32,
                        r#ref: reference,
                        total,
                        expected: String::new(),
                        offset,
                        data,
                        labels: HashMap::new(),
                    };
                    Some((req, (chunks, offset + len, Some(labels_left))))
                }
                None => {
                    let req = WriteContentRequest {
                        action: WriteAction::Commit as i32,
                        r#ref: reference,
                        total,
                        expected,
                        offset,
                        data: vec![],
                        labels: labels_left,
                    };
                    Some((req, (chunks, offset, None)))
                }
            }
        }
    })
}
