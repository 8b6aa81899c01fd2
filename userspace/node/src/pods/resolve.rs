//! What a container gets from its pod before it starts — its environment
//! (values, downward-API fields, ConfigMap keys) and its volume mounts —
//! as pure functions, and the typed reasons a start fails with, as the
//! kubelet reports them in the container's waiting state.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use skiff_api::v1::{Container, PodSpec, Secret};
use skiff_api::{ConfigMap, ObjectMeta};

/// Why a container did not start: the waiting reason the status shows.
#[derive(Debug)]
pub enum StartError {
    /// The image reference does not parse.
    InvalidImageName(anyhow::Error),
    /// The image is neither here nor pullable.
    ErrImagePull(anyhow::Error),
    /// The container's configuration cannot be made (a missing ConfigMap
    /// key, a mount of an unknown volume, a spec the runtime refuses).
    CreateContainerConfigError(anyhow::Error),
    /// containerd did not create or start it.
    RunContainerError(anyhow::Error),
}

impl StartError {
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::InvalidImageName(_) => "InvalidImageName",
            StartError::ErrImagePull(_) => "ErrImagePull",
            StartError::CreateContainerConfigError(_) => "CreateContainerConfigError",
            StartError::RunContainerError(_) => "RunContainerError",
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            StartError::InvalidImageName(e)
            | StartError::ErrImagePull(e)
            | StartError::CreateContainerConfigError(e)
            | StartError::RunContainerError(e) => e,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.reason(), self.error())
    }
}

/// The pod facts a container's environment can refer to.
pub struct EnvSource<'a> {
    pub meta: &'a ObjectMeta,
    pub spec: &'a PodSpec,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
}

/// The ConfigMaps the container's env refers to (to fetch before
/// [`env`]).
pub fn config_maps_needed(c: &Container) -> Vec<String> {
    let mut names: Vec<String> = c
        .env
        .iter()
        .filter_map(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
        .map(|k| k.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The Secrets the container's env refers to (to fetch before [`env`]).
pub fn secrets_needed(c: &Container) -> Vec<String> {
    let mut names: Vec<String> = c
        .env
        .iter()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|k| k.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A Secret's value: its base64 decoded, as text.
pub fn secret_value(s: &Secret, key: &str) -> Option<anyhow::Result<String>> {
    use base64::Engine;
    let v = s.data.get(key)?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| anyhow::anyhow!("secret key {key:?} is not base64"))
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| {
                    anyhow::anyhow!(
                        "secret key {key:?} is not text: it cannot be an environment variable"
                    )
                })
            }),
    )
}

/// A downward-API field (`fieldRef.fieldPath`).
pub fn field(path: &str, src: &EnvSource) -> Option<String> {
    Some(match path {
        "metadata.name" => src.meta.name.clone(),
        "metadata.namespace" => src.meta.namespace.clone(),
        "metadata.uid" => src.meta.uid.clone(),
        "spec.nodeName" => src.spec.node_name.clone(),
        "spec.serviceAccountName" => src.spec.service_account_name.clone(),
        "status.podIP" => src.pod_ip.to_string(),
        "status.hostIP" => src.host_ip.to_string(),
        p => {
            let keyed = |prefix: &str, m: &std::collections::BTreeMap<String, String>| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(|k| m.get(k).cloned().unwrap_or_default())
            };
            return keyed("metadata.labels['", &src.meta.labels)
                .or_else(|| keyed("metadata.annotations['", &src.meta.annotations));
        }
    })
}

/// The container's environment with every valueFrom resolved; `maps` holds
/// the fetched ConfigMaps (`None`: it does not exist).
pub fn env(
    c: &Container,
    src: &EnvSource,
    maps: &HashMap<String, Option<ConfigMap>>,
    secrets: &HashMap<String, Option<Secret>>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, e) in c.env.iter().enumerate() {
        let Some(from) = &e.value_from else {
            out.push((e.name.clone(), e.value.clone()));
            continue;
        };
        if let Some(f) = &from.field_ref {
            let v = field(&f.field_path, src).ok_or_else(|| {
                anyhow::anyhow!(
                    "env[{i}].valueFrom.fieldRef.fieldPath: {:?} is not supported",
                    f.field_path
                )
            })?;
            out.push((e.name.clone(), v));
        } else if let Some(k) = &from.config_map_key_ref {
            let optional = k.optional == Some(true);
            let Some(map) = maps.get(&k.name).and_then(Option::as_ref) else {
                if optional {
                    continue;
                }
                anyhow::bail!("env[{i}] ({}): configmap {:?} not found", e.name, k.name);
            };
            match map.data.get(&k.key) {
                Some(v) => out.push((e.name.clone(), v.clone())),
                None if optional => {}
                None => anyhow::bail!(
                    "env[{i}] ({}): configmap {:?} has no key {:?}",
                    e.name,
                    k.name,
                    k.key
                ),
            }
        } else if let Some(k) = &from.secret_key_ref {
            let optional = k.optional == Some(true);
            let Some(secret) = secrets.get(&k.name).and_then(Option::as_ref) else {
                if optional {
                    continue;
                }
                anyhow::bail!("env[{i}] ({}): secret {:?} not found", e.name, k.name);
            };
            match secret_value(secret, &k.key) {
                Some(v) => out.push((e.name.clone(), v?)),
                None if optional => {}
                None => anyhow::bail!(
                    "env[{i}] ({}): secret {:?} has no key {:?}",
                    e.name,
                    k.name,
                    k.key
                ),
            }
        }
    }
    Ok(out)
}

/// A bind mount: (host source, container destination, read-only).
pub type Mount = (PathBuf, String, bool);

/// The container's mounts: the sandbox's own, then its volumeMounts on the
/// pod's volumes (`volumes`: name → host directory), subPath kept inside
/// its volume.
pub fn mounts(
    c: &Container,
    base: &[Mount],
    volumes: &[(String, PathBuf)],
) -> anyhow::Result<Vec<Mount>> {
    let mut out = base.to_vec();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let Some((_, dir)) = volumes.iter().find(|(n, _)| *n == m.name) else {
            anyhow::bail!("volumeMounts[{i}]: the pod has no volume {:?}", m.name);
        };
        let src = if m.sub_path.is_empty() {
            dir.clone()
        } else {
            if m.sub_path.starts_with('/') || m.sub_path.split('/').any(|c| c == "..") {
                anyhow::bail!("volumeMounts[{i}].subPath must stay inside the volume");
            }
            dir.join(&m.sub_path)
        };
        out.push((src, m.mount_path.clone(), m.read_only));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).expect("a container")
    }

    fn source<'a>(meta: &'a ObjectMeta, spec: &'a PodSpec) -> EnvSource<'a> {
        EnvSource {
            meta,
            spec,
            pod_ip: Ipv4Addr::new(10, 244, 0, 7),
            host_ip: Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    #[test]
    fn env_takes_values_fields_and_config_map_keys() {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "web-1", "namespace": "shop", "labels": {"app": "web"},
            "annotations": {"team": "blue"}
        }))
        .unwrap();
        let spec: PodSpec = serde_json::from_value(serde_json::json!({"nodeName": "n1"})).unwrap();
        let c = container(serde_json::json!({
            "name": "c",
            "env": [
                {"name": "PLAIN", "value": "1"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": true}}}
            ]
        }));
        assert_eq!(config_maps_needed(&c), ["cfg", "gone"]);
        let cfg: ConfigMap =
            serde_json::from_value(serde_json::json!({"data": {"mode": "fast"}})).unwrap();
        let maps = HashMap::from([("cfg".to_string(), Some(cfg)), ("gone".to_string(), None)]);
        let got = env(&c, &source(&meta, &spec), &maps, &HashMap::new()).unwrap();
        let got: Vec<String> = got.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "PLAIN=1",
                "POD=web-1",
                "IP=10.244.0.7",
                "HOST=192.0.2.1",
                "NODE=n1",
                "APP=web",
                "TEAM=blue",
                "MODE=fast"
            ]
        );
    }

    #[test]
    fn a_missing_key_or_map_or_field_is_a_clear_error() {
        let (meta, spec) = (ObjectMeta::default(), PodSpec::default());
        let src = source(&meta, &spec);
        let key = container(serde_json::json!({"name": "c", "env": [
            {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}]}));
        let cfg: ConfigMap = serde_json::from_value(serde_json::json!({"data": {}})).unwrap();
        let maps = HashMap::from([("cfg".to_string(), Some(cfg))]);
        let e = env(&key, &src, &maps, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("env[0] (K): configmap \"cfg\" has no key \"nope\""),
            "{e}"
        );
        let e = env(&key, &src, &HashMap::new(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("configmap \"cfg\" not found"), "{e}");
        let f = container(serde_json::json!({"name": "c", "env": [
            {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]}));
        let e = env(&f, &src, &HashMap::new(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"status.phase\" is not supported"), "{e}");
        // A Secret's key, decoded; a missing one is an error unless optional.
        let s = container(serde_json::json!({"name": "c", "env": [
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "Q", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}}]}));
        assert_eq!(secrets_needed(&s), ["db", "gone"]);
        let mut db = Secret::default();
        db.data.insert("password".into(), "aHVudGVyMg==".into());
        let secrets = HashMap::from([("db".to_string(), Some(db)), ("gone".to_string(), None)]);
        let got = env(&s, &src, &HashMap::new(), &secrets).unwrap();
        assert_eq!(got, [("P".to_string(), "hunter2".to_string())]);
        let e = env(&s, &src, &HashMap::new(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret \"db\" not found"), "{e}");
    }

    #[test]
    fn mounts_follow_volumes_and_keep_sub_paths_inside() {
        let base = vec![(
            PathBuf::from("/run/pod/hosts"),
            "/etc/hosts".to_string(),
            true,
        )];
        let volumes = vec![("data".to_string(), PathBuf::from("/var/lib/pod/data"))];
        let c = container(serde_json::json!({"name": "c", "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/logs", "subPath": "logs/app", "readOnly": true}]}));
        let m = mounts(&c, &base, &volumes).unwrap();
        assert_eq!(
            m[1..],
            [
                (
                    PathBuf::from("/var/lib/pod/data"),
                    "/data".to_string(),
                    false
                ),
                (
                    PathBuf::from("/var/lib/pod/data/logs/app"),
                    "/logs".to_string(),
                    true
                ),
            ]
        );
        assert_eq!(m[0], base[0]);
        for bad in ["../etc", "a/../../b", "/etc"] {
            let c = container(serde_json::json!({"name": "c", "volumeMounts": [
                {"name": "data", "mountPath": "/x", "subPath": bad}]}));
            let e = mounts(&c, &base, &volumes).unwrap_err().to_string();
            assert!(e.contains("must stay inside the volume"), "{bad}: {e}");
        }
        let c = container(serde_json::json!({"name": "c", "volumeMounts": [
            {"name": "nope", "mountPath": "/x"}]}));
        let e = mounts(&c, &base, &volumes).unwrap_err().to_string();
        assert!(
            e.contains("volumeMounts[0]: the pod has no volume \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn reasons_are_the_kubelet_s() {
        let e = StartError::ErrImagePull(anyhow::anyhow!("no such image"));
        assert_eq!(e.reason(), "ErrImagePull");
        assert_eq!(e.to_string(), "ErrImagePull: no such image");
    }
}
