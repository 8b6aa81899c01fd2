//! The audit log, as kube-apiserver writes it at level `Metadata`: one JSON
//! line (an `audit.k8s.io/v1` Event) for every request that changes
//! something — create, update, patch, delete, over REST or gRPC — and for
//! every exec, attach and port-forward, naming the user, the verb, the
//! object and the response code. The file is rotated by size
//! (`<file>.1` ... `<file>.N`); lines go through a bounded queue to one
//! writer task, so a slow disk slows requests down instead of growing
//! memory.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::authn::UserInfo;
use crate::tls::Peer;

/// Lines waiting for the writer, at most.
const QUEUE: usize = 4096;

/// What a request is about, read from its path (kube-apiserver's
/// RequestInfo): empty strings where a part is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// The resource a REST request names, or `None` for paths that name none
/// (discovery, health, OpenAPI).
pub fn request_info(method: &str, path: &str, query: &str) -> Option<RequestInfo> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (api_group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        // `/api/v1/namespaces/NAME` is the Namespace itself.
        ["namespaces", ns] => ("", &["namespaces", *ns][..]),
        _ => ("", rest),
    };
    let (resource, name, subresource) = match rest {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s] => (*r, *n, *s),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch");
    let verb = match (method, name.is_empty()) {
        ("GET" | "HEAD", true) if watch => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => return None,
    };
    Some(RequestInfo {
        verb: verb.into(),
        api_group: api_group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// Whether a request goes in the log: it changes something, or it opens a
/// stream into a container.
pub fn audited(info: &RequestInfo) -> bool {
    matches!(
        info.verb.as_str(),
        "create" | "update" | "patch" | "delete" | "deletecollection"
    ) || matches!(info.subresource.as_str(), "exec" | "attach" | "portforward")
}

/// One line: who did what to which object, and how it ended.
pub struct Entry<'a> {
    pub user: &'a UserInfo,
    pub source: Option<IpAddr>,
    pub uri: &'a str,
    pub info: RequestInfo,
    pub code: u16,
}

fn line(e: &Entry, now: time::OffsetDateTime) -> String {
    let at = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut object = serde_json::Map::new();
    let i = &e.info;
    for (k, v) in [
        ("resource", &i.resource),
        ("namespace", &i.namespace),
        ("name", &i.name),
        ("apiGroup", &i.api_group),
        ("subresource", &i.subresource),
    ] {
        if !v.is_empty() {
            object.insert(k.into(), Value::String(v.clone()));
        }
    }
    if !i.resource.is_empty() {
        object.insert(
            "apiVersion".into(),
            Value::String(if i.api_group.is_empty() {
                "v1".into()
            } else {
                format!("{}/v1", i.api_group)
            }),
        );
    }
    json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id(),
        "stage": "ResponseComplete",
        "requestURI": e.uri,
        "verb": i.verb,
        "user": {"username": e.user.name, "groups": e.user.groups},
        "sourceIPs": e.source.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
        "objectRef": object,
        "responseStatus": {"metadata": {}, "code": e.code},
        "requestReceivedTimestamp": at,
        "stageTimestamp": at,
    })
    .to_string()
}

/// A random UUID (v4) without a dependency for it.
fn audit_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The log: a queue to the writer task (`None`: no log).
#[derive(Clone, Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
}

/// Where and how much.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    /// Bytes a file may reach before it is rotated.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub backups: usize,
}

impl Audit {
    /// Opens (appends to) the log and starts its writer.
    pub fn open(s: Settings) -> std::io::Result<(Audit, tokio::task::JoinHandle<()>)> {
        if let Some(dir) = s.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&s.path)?;
        let size = file.metadata()?.len();
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::task::spawn_blocking(move || write_lines(s, file, size, rx));
        let task = tokio::spawn(async move {
            let _ = task.await;
        });
        Ok((Audit { tx: Some(tx) }, task))
    }

    pub async fn record(&self, e: Entry<'_>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(line(&e, time::OffsetDateTime::now_utc())).await;
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer: appends each line, rotating when the file would pass its
/// size. Ends when every sender is gone.
fn write_lines(
    s: Settings,
    mut file: std::fs::File,
    mut size: u64,
    mut rx: mpsc::Receiver<String>,
) {
    while let Some(mut text) = rx.blocking_recv() {
        text.push('\n');
        if size > 0 && size + text.len() as u64 > s.max_bytes {
            match rotate(&s).and_then(|()| open_append(&s.path)) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => tracing::error!("rotating the audit log {}: {e}", s.path.display()),
            }
        }
        match file.write_all(text.as_bytes()) {
            Ok(()) => size += text.len() as u64,
            Err(e) => tracing::error!("writing the audit log {}: {e}", s.path.display()),
        }
    }
    let _ = file.sync_all();
}

/// `log` → `log.1` → ... → `log.N`; the oldest goes.
fn rotate(s: &Settings) -> std::io::Result<()> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", s.path.display()));
    if s.backups == 0 {
        return std::fs::remove_file(&s.path);
    }
    let _ = std::fs::remove_file(numbered(s.backups));
    for n in (1..s.backups).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(&s.path, numbered(1))
}

/// The middleware for REST requests (gRPC calls are recorded by their
/// handlers, which know the object): runs inside authentication.
pub async fn audit_rest(State(audit): State<Audit>, req: Request, next: Next) -> Response {
    if audit.tx.is_none() || crate::authn::is_grpc(&req) {
        return next.run(req).await;
    }
    let Some(info) = request_info(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
    )
    .filter(audited) else {
        return next.run(req).await;
    };
    let user = req.extensions().get::<Arc<UserInfo>>().cloned();
    let source = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.addr.ip());
    // Path and query, as kube-apiserver records it (an HTTP/2 request's
    // URI carries the scheme and authority too).
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let resp = next.run(req).await;
    if let Some(user) = user {
        audit
            .record(Entry {
                user: &user,
                source,
                uri: &uri,
                info,
                code: resp.status().as_u16(),
            })
            .await;
    }
    resp
}

/// The user and address of a gRPC call, for its handler's record.
pub fn caller<T>(req: &tonic::Request<T>) -> (Option<Arc<UserInfo>>, Option<IpAddr>) {
    (
        req.extensions().get::<Arc<UserInfo>>().cloned(),
        req.extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.addr.ip()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> RequestInfo {
        RequestInfo {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn paths_name_their_resource_and_verb() {
        let cases = [
            (
                "GET",
                "/api/v1/pods",
                "",
                Some(info("list", "", "pods", "", "", "")),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods",
                "watch=true",
                Some(info("watch", "", "pods", "", "a", "")),
            ),
            (
                "POST",
                "/api/v1/namespaces/a/pods",
                "",
                Some(info("create", "", "pods", "", "a", "")),
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                "",
                Some(info("patch", "apps", "deployments", "scale", "a", "d")),
            ),
            (
                "POST",
                "/api/v1/namespaces/a/pods/p/exec",
                "command=sh",
                Some(info("create", "", "pods", "exec", "a", "p")),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/exec",
                "",
                Some(info("get", "", "pods", "exec", "a", "p")),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/x",
                "",
                Some(info("delete", "", "namespaces", "", "", "x")),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/a/configmaps",
                "",
                Some(info("deletecollection", "", "configmaps", "", "a", "")),
            ),
            (
                "PUT",
                "/api/v1/nodes/n1/status",
                "",
                Some(info("update", "", "nodes", "status", "", "n1")),
            ),
            ("GET", "/healthz", "", None),
            ("GET", "/apis", "", None),
            ("GET", "/openapi/v3/apis/apps/v1", "", None),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(request_info(method, path, query), want, "{method} {path}");
        }
        assert!(audited(&info("create", "", "pods", "", "a", "")));
        assert!(audited(&info("get", "", "pods", "exec", "a", "p")));
        assert!(!audited(&info("get", "", "pods", "", "a", "p")));
        assert!(!audited(&info("watch", "", "pods", "", "a", "")));
    }

    #[tokio::test]
    async fn lines_are_kubernetes_audit_events_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, task) = Audit::open(Settings {
            path: path.clone(),
            max_bytes: 2000,
            backups: 2,
        })
        .unwrap();
        let alice = UserInfo::authenticated("alice".into(), vec!["dev".into()]);
        for i in 0..20 {
            audit
                .record(Entry {
                    user: &alice,
                    source: Some("10.0.0.7".parse().unwrap()),
                    uri: "/api/v1/namespaces/a/configmaps",
                    info: info("create", "", "configmaps", "", "a", &format!("cm-{i}")),
                    code: 201,
                })
                .await;
        }
        drop(audit);
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["kind"], "Event");
        assert_eq!(last["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(last["verb"], "create");
        assert_eq!(last["user"]["username"], "alice");
        assert_eq!(last["user"]["groups"][0], "dev");
        assert_eq!(last["sourceIPs"][0], "10.0.0.7");
        assert_eq!(last["objectRef"]["resource"], "configmaps");
        assert_eq!(last["objectRef"]["namespace"], "a");
        assert_eq!(last["objectRef"]["name"], "cm-19");
        assert_eq!(last["responseStatus"]["code"], 201);
        assert_eq!(last["auditID"].as_str().unwrap().len(), 36);
        // Rotated: each file within its size, two backups, the oldest gone.
        for f in [
            path.clone(),
            dir.path().join("audit.log.1"),
            dir.path().join("audit.log.2"),
        ] {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len > 0 && len <= 2000, "{}: {len}", f.display());
        }
        assert!(!dir.path().join("audit.log.3").exists());
        let lines: usize = ["audit.log", "audit.log.1", "audit.log.2"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(dir.path().join(f))
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert!(lines < 20, "the oldest lines were rotated away");
    }
}
