//! Builds small single-layer OCI images as OCI layout tars, the format
//! `skiff image import` and `ctr import` read. The demo and test image is
//! busybox-static with its applets as symlinks (sh, httpd, nc, sleep, ...).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::oci::{self, Descriptor, ImageConfig, Index, Manifest, RootFs, RunConfig};

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

/// A root filesystem to put in one layer.
#[derive(Default)]
pub struct RootfsBuilder {
    entries: BTreeMap<String, Entry>,
}

impl RootfsBuilder {
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entries
            .insert(path.trim_matches('/').to_string(), Entry::Dir);
        self
    }
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        let data = data.into();
        self.entries.insert(
            path.trim_matches('/').to_string(),
            Entry::File { mode, data },
        );
        self
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.insert(
            path.trim_matches('/').to_string(),
            Entry::Symlink(target.to_string()),
        );
        self
    }

    /// The layer as an uncompressed tar, byte-for-byte reproducible.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// Writes an OCI layout tar holding one image called `name` (a full
/// reference such as `docker.io/library/busybox:latest`).
pub fn write_layout(
    out: &mut impl Write,
    name: &str,
    rootfs: &RootfsBuilder,
    run: RunConfig,
) -> Result<Vec<Descriptor>> {
    let layer = rootfs.layer()?;
    let layer_digest = oci::sha256_digest(&layer);
    let config = ImageConfig {
        architecture: oci::host_platform().architecture,
        os: "linux".into(),
        config: run,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer_digest.clone()],
        },
    };
    let config = serde_json::to_vec(&config)?;
    let desc = |media_type: &str, data: &[u8]| Descriptor {
        media_type: media_type.into(),
        digest: oci::sha256_digest(data),
        size: data.len() as i64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::OCI_MANIFEST.into(),
        config: desc(oci::OCI_CONFIG, &config),
        layers: vec![desc(oci::OCI_LAYER, &layer)],
    };
    let manifest = serde_json::to_vec(&manifest)?;
    let mut top = desc(oci::OCI_MANIFEST, &manifest);
    top.platform = Some(oci::host_platform());
    top.annotations
        .insert(oci::ANNOTATION_IMAGE_NAME.into(), name.to_string());
    if let Some((_, tag)) = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        top.annotations
            .insert(oci::ANNOTATION_REF_NAME.into(), tag.to_string());
    }
    let index = Index {
        schema_version: 2,
        media_type: oci::OCI_INDEX.into(),
        manifests: vec![top.clone()],
    };

    let mut tar = tar::Builder::new(out);
    let mut put = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data)?;
        Ok(())
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in [&layer, &config, &manifest] {
        let d = oci::sha256_digest(blob);
        put(&format!("blobs/sha256/{}", &d["sha256:".len()..]), blob)?;
    }
    put("index.json", &serde_json::to_vec(&index)?)?;
    tar.finish()?;
    Ok(vec![top])
}

/// The demo/test image: `busybox` (a static build) with a symlink per
/// applet, `/etc/passwd`, `/tmp`, `/var/www` and `sh` as its command.
pub fn busybox_rootfs(busybox: &Path) -> Result<RootfsBuilder> {
    let binary = std::fs::read(busybox).with_context(|| {
        format!(
            "reading {} (apt-get install busybox-static)",
            busybox.display()
        )
    })?;
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    if !list.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    let mut fs = RootfsBuilder::default();
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "var", "var/www", "usr", "usr/bin",
        "sbin",
    ] {
        fs.dir(d);
    }
    fs.file("bin/busybox", 0o755, binary);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            fs.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    fs.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    fs.file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n");
    fs.file("var/www/index.html", 0o644, "hello from skiff\n");
    Ok(fs)
}

/// The default run config of the busybox image.
pub fn busybox_run_config() -> RunConfig {
    RunConfig {
        env: Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()]),
        cmd: Some(vec!["sh".into()]),
        working_dir: Some("/".into()),
        ..RunConfig::default()
    }
}

/// The demo image's name: a web server on port 80 by default, so public
/// manifests (nginx-deployment.yaml) run with only their image swapped.
pub const DEMO_IMAGE: &str = "skiff.local/demo:1.0";

/// busybox plus a default command: `httpd` on port 80 answering
/// "hello from <pod name>" — what an nginx image does, in 1 MiB.
pub fn demo_run_config() -> RunConfig {
    RunConfig {
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            // sh stays PID 1 with a TERM trap: httpd as PID 1 would ignore
            // SIGTERM and every deletion would wait out its grace period.
            "mkdir -p /www; echo \"hello from $(hostname)\" > /www/index.html; \
             trap 'kill $pid; exit 0' TERM INT; httpd -f -v -p 80 -h /www & pid=$!; wait"
                .into(),
        ]),
        ..busybox_run_config()
    }
}

/// Builds the busybox image (`demo`: the demo web server) as an OCI
/// layout tar at `out`.
pub fn image(busybox: &Path, name: &str, out: &Path, demo: bool) -> Result<()> {
    let fs = busybox_rootfs(busybox)?;
    let tmp = out.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let config = if demo {
        demo_run_config()
    } else {
        busybox_run_config()
    };
    write_layout(&mut f, name, &fs, config)?;
    f.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}
