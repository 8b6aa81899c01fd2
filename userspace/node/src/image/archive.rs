//! Reads an image archive — an OCI layout tar (`ctr export`, `docker save`
//! of Docker 25+, skopeo, buildkit) or a classic docker-archive (`docker
//! save`) — into the images it names and the blobs they need. Small JSON
//! blobs are kept in memory; layers are located by path and streamed from
//! the file later, so a large image never sits in memory.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use super::oci::{self, Descriptor, Index, Manifest};
use super::reference::Reference;

const KEEP_LIMIT: u64 = 4 << 20;

/// One file of the tar: its digest and size, its bytes when small.
#[derive(Debug, Clone)]
struct FileInfo {
    digest: String,
    size: u64,
    data: Option<Vec<u8>>,
    gzip: bool,
}

/// Where to get a blob's bytes.
#[derive(Debug, Clone)]
pub enum Blob {
    /// Held in memory (JSON documents, synthesized manifests).
    Inline(Vec<u8>),
    /// Streamed from this path inside the archive.
    InArchive { path: String, size: u64 },
}

#[derive(Debug, Default)]
pub struct Archive {
    /// (full image name, the descriptor its name points at)
    pub images: Vec<(String, Descriptor)>,
    pub blobs: HashMap<String, Blob>,
}

impl Archive {
    pub fn read(path: &Path) -> Result<Archive> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let files =
            scan(file).with_context(|| format!("reading {} as a tar archive", path.display()))?;
        Archive::from_files(files)
    }

    fn from_files(files: BTreeMap<String, FileInfo>) -> Result<Archive> {
        if let Some(index) = files.get("index.json") {
            return oci_layout(&files, index);
        }
        if let Some(manifest) = files.get("manifest.json") {
            return docker_archive(&files, manifest);
        }
        bail!("neither an OCI layout (no index.json) nor a docker archive (no manifest.json)")
    }

    /// A JSON blob's bytes (manifests, indexes, configs).
    pub fn json(&self, digest: &str) -> Result<&[u8]> {
        match self.blobs.get(digest) {
            Some(Blob::Inline(d)) => Ok(d),
            Some(Blob::InArchive { .. }) => bail!("blob {digest} is too large for a JSON document"),
            None => bail!("the archive lacks blob {digest}"),
        }
    }
}

fn scan(r: impl Read) -> Result<BTreeMap<String, FileInfo>> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(r);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.header().size()?;
        let mut hasher = Sha256::new();
        let mut kept = (size <= KEEP_LIMIT).then(|| Vec::with_capacity(size as usize));
        let mut buf = vec![0u8; 64 << 10];
        let mut first = [0u8; 2];
        let mut seen = 0u64;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if seen == 0 && n >= 2 {
                first.copy_from_slice(&buf[..2]);
            }
            seen += n as u64;
            hasher.update(&buf[..n]);
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&buf[..n]);
            }
        }
        out.insert(
            path,
            FileInfo {
                digest: format!("sha256:{}", oci::hex(&hasher.finalize())),
                size: seen,
                data: kept,
                gzip: first == [0x1f, 0x8b],
            },
        );
    }
    Ok(out)
}

fn json_of<'a>(f: &'a FileInfo, what: &str) -> Result<&'a [u8]> {
    f.data
        .as_deref()
        .with_context(|| format!("{what} is larger than {KEEP_LIMIT} bytes"))
}

fn oci_layout(files: &BTreeMap<String, FileInfo>, index: &FileInfo) -> Result<Archive> {
    let index: Index =
        serde_json::from_slice(json_of(index, "index.json")?).context("index.json")?;
    let mut archive = Archive::default();
    for (path, f) in files {
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let digest = format!("sha256:{hex}");
        if digest != f.digest {
            bail!(
                "{path}: content does not match its name (digest {})",
                f.digest
            );
        }
        let blob = match &f.data {
            Some(d) => Blob::Inline(d.clone()),
            None => Blob::InArchive {
                path: path.clone(),
                size: f.size,
            },
        };
        archive.blobs.insert(digest, blob);
    }
    for (i, m) in index.manifests.iter().enumerate() {
        let name = m
            .annotations
            .get(oci::ANNOTATION_IMAGE_NAME)
            .or_else(|| {
                m.annotations
                    .get(oci::ANNOTATION_REF_NAME)
                    .filter(|n| n.contains('/') || n.contains(':'))
            })
            .with_context(|| {
                format!(
                    "index.json manifests[{i}] has no image name annotation ({})",
                    oci::ANNOTATION_IMAGE_NAME
                )
            })?;
        let name = Reference::parse(name)?.to_string();
        if !archive.blobs.contains_key(&m.digest) {
            bail!(
                "index.json manifests[{i}] points at {} which the archive lacks",
                m.digest
            );
        }
        archive.images.push((name, m.clone()));
    }
    if archive.images.is_empty() {
        bail!("index.json lists no images");
    }
    Ok(archive)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn docker_archive(files: &BTreeMap<String, FileInfo>, manifest: &FileInfo) -> Result<Archive> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(json_of(manifest, "manifest.json")?).context("manifest.json")?;
    let mut archive = Archive::default();
    let file = |p: &str| {
        files
            .get(p)
            .with_context(|| format!("manifest.json names {p}, which the archive lacks"))
    };
    for (i, e) in entries.iter().enumerate() {
        let config = file(&e.config)?;
        let config_data = json_of(config, &e.config)?.to_vec();
        let mut layers = Vec::new();
        for l in &e.layers {
            let f = file(l)?;
            let media_type = if f.gzip {
                oci::DOCKER_LAYER_GZIP
            } else {
                oci::DOCKER_LAYER
            };
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest: f.digest.clone(),
                size: f.size as i64,
                annotations: BTreeMap::new(),
                platform: None,
            });
            archive.blobs.insert(
                f.digest.clone(),
                match &f.data {
                    Some(d) => Blob::Inline(d.clone()),
                    None => Blob::InArchive {
                        path: l.clone(),
                        size: f.size,
                    },
                },
            );
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: oci::DOCKER_MANIFEST.into(),
            config: Descriptor {
                media_type: oci::DOCKER_CONFIG.into(),
                digest: config.digest.clone(),
                size: config.size as i64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers,
        };
        let manifest = serde_json::to_vec(&manifest)?;
        let top = Descriptor {
            media_type: oci::DOCKER_MANIFEST.into(),
            digest: oci::sha256_digest(&manifest),
            size: manifest.len() as i64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        archive
            .blobs
            .insert(config.digest.clone(), Blob::Inline(config_data));
        archive
            .blobs
            .insert(top.digest.clone(), Blob::Inline(manifest));
        if e.repo_tags.is_empty() {
            bail!("manifest.json[{i}] has no RepoTags: the image has no name to import under");
        }
        for tag in &e.repo_tags {
            archive
                .images
                .push((Reference::parse(tag)?.to_string(), top.clone()));
        }
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::{RootfsBuilder, write_layout};
    use crate::image::oci::RunConfig;

    #[test]
    fn reads_back_an_oci_layout() {
        let mut fs = RootfsBuilder::default();
        fs.dir("bin")
            .file("bin/hello", 0o755, "#!/bin/sh\necho hi\n");
        let mut tar = Vec::new();
        let tops =
            write_layout(&mut tar, "example.com/hello:v1", &fs, RunConfig::default()).unwrap();
        let a = Archive::from_files(scan(tar.as_slice()).unwrap()).unwrap();
        assert_eq!(a.images.len(), 1);
        assert_eq!(a.images[0].0, "example.com/hello:v1");
        assert_eq!(a.images[0].1, tops[0]);
        let m: Manifest = serde_json::from_slice(a.json(&tops[0].digest).unwrap()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert!(a.blobs.contains_key(&m.layers[0].digest));
    }

    /// `docker save`'s classic layout: manifest.json, <id>.json, <id>/layer.tar.
    #[test]
    fn reads_a_docker_archive() {
        let layer = b"pretend layer tar".to_vec();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let manifest = br#"[{"Config":"abc.json","RepoTags":["busybox:1.36","example.com/x/y:2"],"Layers":["l1/layer.tar"]}]"#.to_vec();
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("manifest.json", &manifest),
            ("abc.json", &config),
            ("l1/layer.tar", &layer),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, data.as_slice()).unwrap();
        }
        let bytes = tar.into_inner().unwrap();
        let a = Archive::from_files(scan(bytes.as_slice()).unwrap()).unwrap();
        let names: Vec<&str> = a.images.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["docker.io/library/busybox:1.36", "example.com/x/y:2"]
        );
        let m: Manifest = serde_json::from_slice(a.json(&a.images[0].1.digest).unwrap()).unwrap();
        assert_eq!(m.media_type, oci::DOCKER_MANIFEST);
        assert_eq!(m.config.digest, oci::sha256_digest(&config));
        assert_eq!(m.layers[0].digest, oci::sha256_digest(&layer));
        assert_eq!(m.layers[0].media_type, oci::DOCKER_LAYER);
    }

    #[test]
    fn refuses_tampered_blobs_and_nameless_images() {
        let mut fs = RootfsBuilder::default();
        fs.dir("etc");
        let mut tar = Vec::new();
        write_layout(&mut tar, "example.com/x:v1", &fs, RunConfig::default()).unwrap();
        let mut files = scan(tar.as_slice()).unwrap();
        let blob = files
            .keys()
            .find(|k| k.starts_with("blobs/"))
            .unwrap()
            .clone();
        files.get_mut(&blob).unwrap().digest = oci::sha256_digest(b"other");
        let err = Archive::from_files(files).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");

        let err = Archive::from_files(BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither an OCI layout"), "{err}");
    }
}
