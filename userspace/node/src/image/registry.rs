//! Pulling an image from an OCI registry (the Docker Registry HTTP API v2):
//! the manifest (through an index to this platform's), the config and the
//! layers, streamed into containerd's content store with the GC labels an
//! import writes, then the image record and its unpacked snapshots.
//!
//! Registries are spoken to over HTTPS, checked against the system's CA
//! store (`/etc/ssl/certs/ca-certificates.crt`) and the node's
//! `--registry-ca` files; one on a loopback address or `localhost` that
//! does not speak TLS is spoken to over plain HTTP (as Docker does). When
//! a registry asks for credentials (401), the pod's `imagePullSecrets`
//! (`kubernetes.io/dockerconfigjson`) for that registry are sent: Basic, or
//! a Bearer token from the registry's token realm.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures::StreamExt;

use super::Reference;
use super::oci::{self, Descriptor, Index, Manifest};
use crate::runtime::Containerd;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A registry's host is a loopback one (plain HTTP is allowed there).
fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host == "[::1]"
}

/// The base URLs to try, in order: HTTPS, then (loopback only) HTTP.
pub fn base_urls(registry: &str) -> Vec<String> {
    let mut out = vec![format!("https://{registry}")];
    if loopback(registry) {
        out.push(format!("http://{registry}"));
    }
    out
}

/// Credentials for registries, by host (`registry.example.com:5000`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    /// Adds the `auths` of a `.dockerconfigjson` document.
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<()> {
        let v: serde_json::Value =
            serde_json::from_slice(json).context("a .dockerconfigjson that is not JSON")?;
        let Some(auths) = v["auths"].as_object() else {
            bail!("a .dockerconfigjson without auths");
        };
        for (host, a) in auths {
            let (user, pass) = match (a["username"].as_str(), a["password"].as_str()) {
                (Some(u), Some(p)) => (u.to_string(), p.to_string()),
                _ => {
                    let Some(auth) = a["auth"].as_str() else {
                        continue;
                    };
                    let plain = base64::engine::general_purpose::STANDARD
                        .decode(auth)
                        .context("an auth that is not base64")?;
                    let plain = String::from_utf8(plain).context("an auth that is not text")?;
                    let Some((u, p)) = plain.split_once(':') else {
                        bail!("an auth that is not user:password");
                    };
                    (u.to_string(), p.to_string())
                }
            };
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            self.by_host.entry(host).or_insert((user, pass));
        }
        Ok(())
    }

    fn for_host(&self, registry: &str) -> Option<&(String, String)> {
        self.by_host.get(registry).or_else(|| {
            // Docker Hub's many names.
            (registry == "docker.io" || registry == "registry-1.docker.io")
                .then(|| self.by_host.get("index.docker.io"))
                .flatten()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// An HTTP client that trusts the system's CAs and `extra` PEM files.
pub fn client(extra: &[PathBuf]) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    let mut files: Vec<PathBuf> = vec![PathBuf::from(SYSTEM_CAS)];
    files.extend(extra.iter().cloned());
    for (i, f) in files.iter().enumerate() {
        let pem = match std::fs::read(f) {
            Ok(p) => p,
            // The system store may be missing; a file asked for may not.
            Err(_) if i == 0 => continue,
            Err(e) => bail!("{}: {e}", f.display()),
        };
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", f.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// The parameters of a `WWW-Authenticate` challenge: its scheme and
/// `key="value"` pairs.
pub fn challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.split_once('"') {
                Some((val, tail)) => (val.to_string(), tail),
                None => (q.to_string(), ""),
            }
        } else {
            match v.split_once(',') {
                Some((val, tail)) => (val.trim().to_string(), tail),
                None => (v.trim().to_string(), ""),
            }
        };
        params.insert(k, value);
        rest = tail.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

struct Registry {
    http: reqwest::Client,
    base: String,
    repo: String,
    /// The user and password for this registry, if the pod has them.
    login: Option<(String, String)>,
    /// What to send once the registry asked (Basic, or a Bearer token).
    authorization: tokio::sync::Mutex<Option<String>>,
}

impl Registry {
    async fn get(&self, what: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{}/{what}", self.base, self.repo);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                req = req.header("Authorization", auth);
            }
            let resp = req.send().await.with_context(|| format!("GET {url}"))?;
            match resp.status().as_u16() {
                200 => return Ok(resp),
                404 => bail!("{url}: not found (404)"),
                401 if attempt == 0 => {
                    let header = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let auth = self.answer(&url, &header).await?;
                    *self.authorization.lock().await = Some(auth);
                }
                401 | 403 => bail!(
                    "{url}: the registry refused {} (HTTP {})",
                    if self.login.is_some() {
                        "the pod's imagePullSecrets"
                    } else {
                        "an anonymous pull: the pod names no imagePullSecrets for it"
                    },
                    resp.status().as_u16()
                ),
                code => bail!("{url}: HTTP {code}"),
            }
        }
        bail!("{url}: the registry kept asking for credentials")
    }

    /// The Authorization a registry's challenge asks for.
    async fn answer(&self, url: &str, header: &str) -> Result<String> {
        let (scheme, params) = challenge(header);
        let basic = |(u, p): &(String, String)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        match scheme.as_str() {
            "basic" => match &self.login {
                Some(l) => Ok(basic(l)),
                None => bail!(
                    "{url}: the registry wants credentials and the pod names no imagePullSecrets for it"
                ),
            },
            "bearer" => {
                let Some(realm) = params.get("realm") else {
                    bail!("{url}: a Bearer challenge without a realm");
                };
                let mut req = self.http.get(realm);
                let mut query = Vec::new();
                for k in ["service", "scope"] {
                    if let Some(v) = params.get(k) {
                        query.push((k, v.clone()));
                    }
                }
                req = req.query(&query);
                if let Some((u, p)) = &self.login {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.with_context(|| format!("GET {realm}"))?;
                if !resp.status().is_success() {
                    bail!(
                        "{realm}: the token service answered HTTP {}",
                        resp.status().as_u16()
                    );
                }
                let v: serde_json::Value =
                    resp.json().await.context("the token service's answer")?;
                let token = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| anyhow::anyhow!("{realm}: no token in the answer"))?;
                Ok(format!("Bearer {token}"))
            }
            other => bail!("{url}: the registry asks for {other:?} authentication"),
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

pub async fn pull(
    ctd: &Containerd,
    reference: &Reference,
    http: &reqwest::Client,
    creds: &Credentials,
) -> Result<()> {
    let name = reference.to_string();
    pull_named(ctd, reference, http, creds)
        .await
        .with_context(|| format!("pulling {name}"))
}

/// The first base URL that answers `/v2/` at all.
async fn reachable(http: &reqwest::Client, registry: &str) -> Result<String> {
    let mut errors = Vec::new();
    for base in base_urls(registry) {
        match http.get(format!("{base}/v2/")).send().await {
            Ok(_) => return Ok(base),
            Err(e) => errors.push(format!("{base}: {}", error_chain(&e))),
        }
    }
    bail!("cannot reach the registry: {}", errors.join("; "))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

async fn pull_named(
    ctd: &Containerd,
    reference: &Reference,
    http: &reqwest::Client,
    creds: &Credentials,
) -> Result<()> {
    let base = reachable(http, &reference.registry).await?;
    let reg = Registry {
        http: http.clone(),
        base,
        repo: reference.repository.clone(),
        login: creds.for_host(&reference.registry).cloned(),
        authorization: Default::default(),
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
    fn https_first_plain_http_only_on_loopback() {
        assert_eq!(
            base_urls("127.0.0.1:5000"),
            ["https://127.0.0.1:5000", "http://127.0.0.1:5000"]
        );
        assert_eq!(base_urls("localhost:5000")[1], "http://localhost:5000");
        assert_eq!(
            base_urls("registry.example.com"),
            ["https://registry.example.com"]
        );
    }

    #[test]
    fn challenges_and_docker_configs() {
        let (scheme, p) = challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (scheme, p) = challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (scheme.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let mut c = Credentials::default();
        c.add_docker_config(
            br#"{"auths":{"127.0.0.1:5000":{"auth":"dTpw"},"https://index.docker.io/v1/":{"username":"x","password":"y"}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.for_host("127.0.0.1:5000").unwrap(),
            &("u".to_string(), "p".to_string())
        );
        assert_eq!(c.for_host("docker.io").unwrap().0, "x");
        assert!(c.for_host("elsewhere:5000").is_none());
        assert!(c.add_docker_config(b"{}").is_err());
    }
}
