//! Where the CLI finds the API server and which credentials it shows:
//! `--server` (or `$SKIFF_SERVER`) alone is just an address; otherwise the
//! kubeconfig (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`; `--context`)
//! gives both, and `--server` next to `--kubeconfig` overrides its server;
//! with no kubeconfig, `~/.skiff/config` (written by `skiff server` and
//! `skiff up`: the server's URL and, with TLS, the path of its admin
//! kubeconfig), then the default port on loopback.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub server: String,
    /// The server's admin kubeconfig, whose credentials the CLI shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// `~/.skiff/config`, when there is one.
fn client_config() -> Result<Option<ClientConfig>> {
    let Some(path) = config_path().filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let cfg = serde_yaml_ng::from_str(&text).with_context(|| {
        format!(
            "parse {} (expected `server: URL` and, with TLS, `kubeconfig: PATH`)",
            path.display()
        )
    })?;
    Ok(Some(cfg))
}

pub fn config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".skiff").join("config"))
}

/// The server and credentials for the global flags.
pub fn credentials(global: &crate::args::Global) -> Result<skiff_client::Credentials> {
    target(global).map(|(creds, _)| creds)
}

/// The server, the credentials and the kubeconfig context's namespace
/// (kubectl's default when `-n` is not given), for the global flags.
pub fn target(global: &crate::args::Global) -> Result<(skiff_client::Credentials, Option<String>)> {
    let explicit = global.kubeconfig.is_some() || global.context.is_some();
    if global.server.is_some() && !explicit {
        return Ok((
            skiff_client::Credentials::plain(&server_url(global.server.as_deref())?),
            None,
        ));
    }
    let mut files = skiff_client::kubeconfig::files(global.kubeconfig.as_deref());
    if files.is_empty() {
        // The kubeconfig the local server named, if any.
        match client_config()? {
            Some(ClientConfig {
                kubeconfig: Some(k),
                ..
            }) => files.push(k),
            _ if explicit => {
                anyhow::bail!("--context needs a kubeconfig: none in $KUBECONFIG or ~/.kube/config")
            }
            _ => return Ok((skiff_client::Credentials::plain(&server_url(None)?), None)),
        }
    }
    let resolved = skiff_client::kubeconfig::load(&files, global.context.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut creds = resolved.credentials;
    if let Some(s) = &global.server {
        creds.server = normalize(s);
    }
    let namespace = (!resolved.namespace.is_empty()).then_some(resolved.namespace);
    Ok((creds, namespace))
}

pub fn server_url(flag: Option<&str>) -> Result<String> {
    if let Some(s) = flag {
        return Ok(normalize(s));
    }
    if let Some(cfg) = client_config()? {
        return Ok(normalize(&cfg.server));
    }
    Ok("https://127.0.0.1:6443".into())
}

/// A bare `host:port` is `https://` (as kubectl takes it); a plain
/// development server is named `http://`.
fn normalize(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    }
}

/// What [`write_server_config`] did.
pub enum Written {
    /// The file now points at this server.
    Written(PathBuf),
    /// It points at another server and was left alone.
    Kept(PathBuf, String),
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Written(p) => write!(f, "client configuration written to {}", p.display()),
            Written::Kept(p, other) => write!(
                f,
                "{} points at {other}: left alone (remove it, or use --server, to reach this server)",
                p.display()
            ),
        }
    }
}

/// Records the server's URL (and, with TLS, its admin kubeconfig) for the
/// CLI on this machine, unless the file already points at another server:
/// a second server starting never silently repoints the CLI.
pub fn write_server_config(server: &str, kubeconfig: Option<&std::path::Path>) -> Result<Written> {
    write_server_config_at(
        config_path().context("HOME is not set")?,
        server,
        kubeconfig,
    )
}

fn write_server_config_at(
    path: PathBuf,
    server: &str,
    kubeconfig: Option<&std::path::Path>,
) -> Result<Written> {
    let server = normalize(server);
    if let Ok(old) = std::fs::read_to_string(&path)
        && let Ok(cfg) = serde_yaml_ng::from_str::<ClientConfig>(&old)
        && normalize(&cfg.server) != server
    {
        return Ok(Written::Kept(path, cfg.server));
    }
    let text = serde_yaml_ng::to_string(&ClientConfig {
        server,
        kubeconfig: kubeconfig.map(|k| k.to_path_buf()),
    })?;
    let dir = path.parent().expect("a file in ~/.skiff");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(Written::Written(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_server_never_repoints_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".skiff").join("config");
        let (a, b) = ("https://127.0.0.1:6443", "https://127.0.0.1:7443");
        let k = std::path::Path::new("/var/lib/skiff/server/admin.kubeconfig");
        assert!(matches!(
            write_server_config_at(path.clone(), a, Some(k)).unwrap(),
            Written::Written(_)
        ));
        // The same server again (a restart) rewrites it.
        assert!(matches!(
            write_server_config_at(path.clone(), a, Some(k)).unwrap(),
            Written::Written(_)
        ));
        let written: ClientConfig =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written.kubeconfig.as_deref(), Some(k));
        let kept = write_server_config_at(path.clone(), b, None).unwrap();
        assert!(
            kept.to_string()
                .contains("points at https://127.0.0.1:6443: left alone"),
            "{kept}"
        );
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("127.0.0.1:6443")
        );
    }
}
