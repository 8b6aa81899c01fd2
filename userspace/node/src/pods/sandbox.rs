//! A pod's sandbox: its network (namespace, veth, address — or the host's
//! for hostNetwork pods) and its files: /etc/hosts, /etc/resolv.conf,
//! /etc/hostname and the volumes (emptyDir, configMap, hostPath).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use skiff_api::v1::Secret;
use skiff_api::{ConfigMap, Pod};

use super::Ctx;
use crate::net::{netns, podnet};

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub ip: Ipv4Addr,
    /// `None` for hostNetwork pods.
    pub netns: Option<PathBuf>,
    pub host_veth: Option<String>,
    /// Bind mounts every container gets: (source, destination, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Volume name → host directory.
    pub volumes: Vec<(String, PathBuf)>,
    /// When the ServiceAccount token is due for renewal (none mounted:
    /// `None`).
    pub token_renew: Option<std::time::Instant>,
}

pub fn uid_of(pod: &Pod) -> &str {
    pod.metadata.as_ref().map(|m| m.uid.as_str()).unwrap_or("")
}

pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.host_network)
}

/// The pod's hostname: spec.hostname, else its name (63 bytes at most).
pub fn hostname(pod: &Pod) -> String {
    let spec_name = pod
        .spec
        .as_ref()
        .map(|s| s.hostname.clone())
        .unwrap_or_default();
    let name = if spec_name.is_empty() {
        pod.metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    } else {
        spec_name
    };
    name.chars().take(63).collect()
}

/// /etc/hosts of a pod, as the kubelet writes it.
pub fn hosts_file(ip: Ipv4Addr, hostname: &str, fqdn: Option<&str>) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (skiff).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    match fqdn {
        Some(f) => s.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
        None => s.push_str(&format!("{ip}\t{hostname}\n")),
    }
    s
}

/// /etc/resolv.conf for the cluster DNS (dnsPolicy ClusterFirst).
pub fn resolv_conf(dns: Ipv4Addr, namespace: &str, domain: &str) -> String {
    format!(
        "search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n"
    )
}

pub(super) fn pod_dir(ctx: &Ctx, uid: &str) -> PathBuf {
    ctx.cfg.data_dir.join("pods").join(uid)
}

pub fn netns_path(ctx: &Ctx, uid: &str) -> PathBuf {
    ctx.cfg.run_dir.join("netns").join(uid)
}

fn write_file(path: &Path, data: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Makes (or finishes making, or finds) the pod's sandbox.
pub async fn ensure(ctx: &Ctx, pod: &Pod) -> Result<Sandbox> {
    let uid = uid_of(pod).to_string();
    if uid.is_empty() {
        bail!("the pod has no uid");
    }
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let dir = pod_dir(ctx, &uid);
    std::fs::create_dir_all(dir.join("etc"))
        .with_context(|| format!("creating {}", dir.display()))?;

    let (ip, netns, host_veth) = if spec.host_network {
        (ctx.node_ip, None, None)
    } else {
        let ip = ctx.ipam.allocate(&uid)?;
        let ns = netns_path(ctx, &uid);
        netns::create(&ns)?;
        let net = podnet::setup(&ctx.netlink, &ns, &uid, ip, ctx.ipam.cidr(), None).await?;
        if let Some(dp) = &ctx.datapath {
            dp.add_pod_iface(&net.host_veth).await?;
        }
        (ip, Some(ns), Some(net.host_veth))
    };

    let host = hostname(pod);
    let fqdn = (!spec.subdomain.is_empty()).then(|| {
        format!(
            "{host}.{}.{}.svc.{}",
            spec.subdomain, meta.namespace, ctx.cfg.cluster_domain
        )
    });
    let etc = dir.join("etc");
    write_file(&etc.join("hosts"), &hosts_file(ip, &host, fqdn.as_deref()))?;
    write_file(&etc.join("hostname"), &format!("{host}\n"))?;
    let cluster_first = match spec.dns_policy.as_str() {
        "" | "ClusterFirst" => !spec.host_network,
        "ClusterFirstWithHostNet" => true,
        _ => false,
    };
    let resolv = if cluster_first {
        resolv_conf(
            ctx.cfg.cluster_dns,
            &meta.namespace,
            &ctx.cfg.cluster_domain,
        )
    } else {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    };
    write_file(&etc.join("resolv.conf"), &resolv)?;
    let mut mounts = vec![
        (etc.join("hosts"), "/etc/hosts".to_string(), false),
        (etc.join("hostname"), "/etc/hostname".to_string(), false),
        (
            etc.join("resolv.conf"),
            "/etc/resolv.conf".to_string(),
            false,
        ),
    ];
    mounts.retain(|m| m.0.exists());
    let token_renew = match &ctx.server_ca {
        Some(ca) if super::satoken::wanted(pod) => {
            let renew = super::satoken::refresh(ctx, pod, &dir, ca).await?;
            mounts.push((
                super::satoken::dir(&dir),
                super::satoken::MOUNT.to_string(),
                true,
            ));
            Some(renew)
        }
        _ => None,
    };

    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let path = if let Some(hp) = &v.host_path {
            PathBuf::from(&hp.path)
        } else if v.empty_dir.is_some() {
            let d = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&d)?;
            d
        } else if let Some(cm) = &v.config_map {
            let d = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&d)?;
            match ctx.client.get::<ConfigMap>(&meta.namespace, &cm.name).await {
                Ok(map) => {
                    let items: Vec<(String, String)> = if cm.items.is_empty() {
                        map.data.keys().map(|k| (k.clone(), k.clone())).collect()
                    } else {
                        cm.items
                            .iter()
                            .map(|i| (i.key.clone(), i.path.clone()))
                            .collect()
                    };
                    for (key, rel) in items {
                        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
                            bail!(
                                "spec.volumes[{i}].configMap: path {rel:?} is not a relative path inside the volume"
                            );
                        }
                        let Some(value) = map.data.get(&key) else {
                            bail!(
                                "spec.volumes[{i}].configMap: ConfigMap {} has no key {key:?}",
                                cm.name
                            );
                        };
                        let target = d.join(&rel);
                        if let Some(parent) = target.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        write_file(&target, value)?;
                    }
                }
                Err(e) if e.is_not_found() && cm.optional == Some(true) => {}
                Err(e) => bail!("spec.volumes[{i}].configMap: ConfigMap {:?}: {e}", cm.name),
            }
            d
        } else if let Some(sv) = &v.secret {
            let d = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&d)?;
            tmpfs(&d)
                .with_context(|| format!("spec.volumes[{i}].secret: a tmpfs on {}", d.display()))?;
            match ctx
                .client
                .get::<Secret>(&meta.namespace, &sv.secret_name)
                .await
            {
                Ok(secret) => write_secret_volume(&d, &secret, sv)
                    .with_context(|| format!("spec.volumes[{i}].secret ({})", sv.secret_name))?,
                Err(e) if e.is_not_found() && sv.optional == Some(true) => {}
                Err(e) => bail!("spec.volumes[{i}].secret: Secret {:?}: {e}", sv.secret_name),
            }
            d
        } else {
            bail!(
                "spec.volumes[{i}] ({}): only emptyDir, configMap, secret and hostPath volumes are supported",
                v.name
            );
        };
        volumes.push((v.name.clone(), path));
    }
    Ok(Sandbox {
        ip,
        netns,
        host_veth,
        mounts,
        volumes,
        token_renew,
    })
}

/// Mounts a tmpfs on `dir` unless one is there already (a restarted node
/// making the sandbox again): Secrets never touch the node's disk.
fn tmpfs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(dir);
    let dev = |p: &Path| rustix::fs::stat(p).map(|s| s.st_dev);
    if dev(dir)? != dev(parent)? {
        return Ok(());
    }
    use rustix::mount::MountFlags;
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=0755"),
    )?;
    Ok(())
}

/// A Secret's keys (or the items asked for) as files, with their modes.
fn write_secret_volume(
    dir: &Path,
    secret: &Secret,
    sv: &skiff_api::v1::SecretVolumeSource,
) -> Result<()> {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let default_mode = sv.default_mode.unwrap_or(0o644);
    let items: Vec<(String, String, i32)> = if sv.items.is_empty() {
        secret
            .data
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect()
    } else {
        sv.items
            .iter()
            .map(|i| {
                (
                    i.key.clone(),
                    i.path.clone(),
                    i.mode.unwrap_or(default_mode),
                )
            })
            .collect()
    };
    for (key, rel, mode) in items {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("path {rel:?} is not a relative path inside the volume");
        }
        let Some(value) = secret.data.get(&key) else {
            bail!("the Secret has no key {key:?}");
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| anyhow::anyhow!("key {key:?} is not base64"))?;
        let target = dir.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = target.with_extension("tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        let mode = u32::try_from(mode).unwrap_or(0o644) & 0o777;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &target)?;
    }
    Ok(())
}

/// Unmounts the pod's tmpfs volumes (the Secrets'): a detach, so a reader
/// still inside does not keep the teardown waiting.
fn unmount_volumes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("volumes")) else {
        return;
    };
    for e in entries.flatten() {
        let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// Removes everything `ensure` made. Safe to repeat, and on a sandbox that
/// was never finished.
pub async fn teardown(ctx: &Ctx, uid: &str) -> Result<()> {
    let veth = podnet::host_veth_name(uid);
    if let Some(dp) = &ctx.datapath {
        dp.remove_pod_iface(&veth).await?;
    }
    podnet::teardown(&ctx.netlink, uid).await?;
    netns::remove(&netns_path(ctx, uid))?;
    ctx.ipam.release(uid)?;
    let dir = pod_dir(ctx, uid);
    unmount_volumes(&dir);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    super::cgroups::remove_pod(&ctx.cfg.cgroup_parent, uid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_files_read_like_the_kubelets() {
        let r = resolv_conf(Ipv4Addr::new(10, 96, 0, 10), "shop", "cluster.local");
        assert_eq!(
            r,
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let h = hosts_file(
            Ipv4Addr::new(10, 244, 0, 7),
            "web-0",
            Some("web-0.web.shop.svc.cluster.local"),
        );
        assert!(h.contains("10.244.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"));
        assert!(h.contains("127.0.0.1\tlocalhost"));
    }
}
