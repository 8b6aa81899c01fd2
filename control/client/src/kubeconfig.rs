//! kubeconfig files, read as kubectl reads them: `--kubeconfig`, else
//! every file in `$KUBECONFIG` (merged, the first to name a cluster, user
//! or context wins), else `~/.kube/config`; the current context (or the
//! one asked for) names a cluster and a user. File paths inside resolve
//! against the file that holds them.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::Credentials;

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    namespace: String,
}

/// What a kubeconfig's context resolves to.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub credentials: Credentials,
    /// The context's namespace (empty: `default`).
    pub namespace: String,
    pub context: String,
}

/// The kubeconfig files to read: `explicit`, else `$KUBECONFIG`'s, else
/// `~/.kube/config` (only those that exist, except an explicit one).
pub fn files(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list)
            .filter(|p| p.exists())
            .collect();
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kube").join("config"))
        .filter(|p| p.exists())
        .into_iter()
        .collect()
}

fn b64(what: &str, s: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what}: not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{what}: not PEM text"))
}

fn read_rel(base: &Path, what: &str, path: &str) -> Result<String, String> {
    let p = base.join(path);
    std::fs::read_to_string(&p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// Resolves `context` (empty: the current one) across `files`.
pub fn load(files: &[PathBuf], context: Option<&str>) -> Result<Resolved, String> {
    let mut texts = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        texts.push((f.clone(), text));
    }
    resolve(&texts, context)
}

/// Resolves `context` across kubeconfigs already read: (the file's path,
/// for relative paths in it and for messages; its text).
pub fn resolve(texts: &[(PathBuf, String)], context: Option<&str>) -> Result<Resolved, String> {
    let mut clusters: Vec<(String, Cluster, PathBuf)> = Vec::new();
    let mut users: Vec<(String, User, PathBuf)> = Vec::new();
    let mut contexts: Vec<(String, Context)> = Vec::new();
    let mut current = String::new();
    for (f, text) in texts {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| format!("parse {}: {e}", f.display()))?
        };
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        for c in file.clusters {
            if !clusters.iter().any(|(n, ..)| *n == c.name) {
                clusters.push((c.name, c.cluster, dir.clone()));
            }
        }
        for u in file.users {
            if !users.iter().any(|(n, ..)| *n == u.name) {
                users.push((u.name, u.user, dir.clone()));
            }
        }
        for c in file.contexts {
            if !contexts.iter().any(|(n, _)| *n == c.name) {
                contexts.push((c.name, c.context));
            }
        }
        if current.is_empty() {
            current = file.current_context;
        }
    }
    let name = context.filter(|c| !c.is_empty()).unwrap_or(&current);
    if name.is_empty() {
        return Err("the kubeconfig names no current-context (use --context)".into());
    }
    let (_, ctx) = contexts
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| format!("context {name:?} is not in the kubeconfig"))?;
    let (_, cluster, cdir) = clusters
        .iter()
        .find(|(n, ..)| *n == ctx.cluster)
        .ok_or_else(|| {
            format!(
                "context {name:?} names cluster {:?}, which is not in the kubeconfig",
                ctx.cluster
            )
        })?;
    if cluster.server.is_empty() {
        return Err(format!("cluster {:?} has no server", ctx.cluster));
    }
    if cluster.insecure_skip_tls_verify {
        return Err(format!(
            "cluster {:?}: insecure-skip-tls-verify is not supported; give its certificate-authority",
            ctx.cluster
        ));
    }
    let mut creds = Credentials::plain(&cluster.server);
    creds.ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) => Some(b64("certificate-authority-data", d)?),
        (None, Some(p)) => Some(read_rel(cdir, "certificate-authority", p)?),
        (None, None) => None,
    };
    creds.tls_server_name = cluster.tls_server_name.clone();
    if !ctx.user.is_empty() {
        let (_, user, udir) = users.iter().find(|(n, ..)| *n == ctx.user).ok_or_else(|| {
            format!(
                "context {name:?} names user {:?}, which is not in the kubeconfig",
                ctx.user
            )
        })?;
        creds.cert_pem = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(d), _) => Some(b64("client-certificate-data", d)?),
            (None, Some(p)) => Some(read_rel(udir, "client-certificate", p)?),
            (None, None) => None,
        };
        creds.key_pem = match (&user.client_key_data, &user.client_key) {
            (Some(d), _) => Some(b64("client-key-data", d)?),
            (None, Some(p)) => Some(read_rel(udir, "client-key", p)?),
            (None, None) => None,
        };
        if creds.cert_pem.is_some() != creds.key_pem.is_some() {
            return Err(format!(
                "user {:?}: a client certificate needs its key and the other way round",
                ctx.user
            ));
        }
        creds.token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(p)) => Some(read_rel(udir, "tokenFile", p)?.trim().to_string()),
            (None, None) => None,
        };
    }
    Ok(Resolved {
        credentials: creds,
        namespace: ctx.namespace.clone(),
        context: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_merge_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA PEM").unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(
            &a,
            "apiVersion: v1\nkind: Config\ncurrent-context: one\nclusters:\n- name: c1\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\nusers:\n- name: u1\n  user:\n    token: secret\ncontexts:\n- name: one\n  context: {cluster: c1, user: u1, namespace: team}\n",
        )
        .unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode("CERT");
        let key = base64::engine::general_purpose::STANDARD.encode("KEY");
        std::fs::write(
            &b,
            format!(
                "current-context: two\nclusters:\n- name: c1\n  cluster: {{server: https://shadowed}}\n- name: c2\n  cluster: {{server: https://10.0.0.1:6443}}\nusers:\n- name: u2\n  user:\n    client-certificate-data: {data}\n    client-key-data: {key}\ncontexts:\n- name: two\n  context: {{cluster: c2, user: u2}}\n"
            ),
        )
        .unwrap();
        let r = load(&[a.clone(), b.clone()], None).unwrap();
        assert_eq!(r.context, "one");
        assert_eq!(r.namespace, "team");
        assert_eq!(r.credentials.server, "https://127.0.0.1:6443");
        assert_eq!(r.credentials.ca_pem.as_deref(), Some("CA PEM"));
        assert_eq!(r.credentials.token.as_deref(), Some("secret"));
        let r = load(&[a.clone(), b.clone()], Some("two")).unwrap();
        assert_eq!(r.credentials.server, "https://10.0.0.1:6443");
        assert_eq!(r.credentials.cert_pem.as_deref(), Some("CERT"));
        assert_eq!(r.credentials.key_pem.as_deref(), Some("KEY"));
        let e = load(&[a, b], Some("three")).unwrap_err();
        assert!(e.contains("\"three\" is not in the kubeconfig"), "{e}");
    }
}
