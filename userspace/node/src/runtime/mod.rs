//! containerd over its gRPC socket: the one place that knows containerd's
//! API. Images are imported and unpacked with Content + Images + Diff +
//! Snapshots (containerd 1.6 has no Transfer service), containers and tasks
//! are created from an OCI runtime spec the caller builds.

mod images;
mod tasks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{CreateNamespaceRequest, GetNamespaceRequest, Namespace};
use tonic::transport::Channel;
use tonic::{Code, Request};

pub use images::ImageSummary;
pub use tasks::{ContainerSpec, ExecIo, ExitStatus, TaskInfo, TaskState};

/// The snapshotter every skiff container uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime shim.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The default containerd namespace of a node.
pub const DEFAULT_NAMESPACE: &str = "skiff";

#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    address: PathBuf,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "containerd at {} (namespace {})",
            self.address.display(),
            self.namespace
        )
    }
}

impl Containerd {
    /// Connects, checks containerd answers, and makes sure the namespace
    /// exists.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd> {
        let not_running = || {
            format!(
                "cannot reach containerd at {} (is it running? start it with `containerd &` or `systemctl start containerd`)",
                address.display()
            )
        };
        let channel =
            tokio::time::timeout(Duration::from_secs(5), containerd_client::connect(address))
                .await
                .ok()
                .with_context(not_running)?
                .with_context(not_running)?;
        let c = Containerd {
            channel,
            namespace: namespace.to_string(),
            address: address.to_path_buf(),
        };
        c.version().await.with_context(not_running)?;
        c.ensure_namespace().await?;
        Ok(c)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn version(&self) -> Result<String> {
        let v = VersionClient::new(self.channel.clone()).version(()).await?;
        Ok(v.into_inner().version)
    }

    async fn ensure_namespace(&self) -> Result<()> {
        let mut ns = NamespacesClient::new(self.channel.clone());
        let get = ns
            .get(GetNamespaceRequest {
                name: self.namespace.clone(),
            })
            .await;
        match get {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => {
                let created = ns
                    .create(CreateNamespaceRequest {
                        namespace: Some(Namespace {
                            name: self.namespace.clone(),
                            labels: HashMap::new(),
                        }),
                    })
                    .await;
                match created {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                    Err(s) => Err(status(s, "creating the containerd namespace")),
                }
            }
            Err(s) => Err(status(s, "reading the containerd namespace")),
        }
    }

    /// Removes the namespace (it must be empty: no containers, images,
    /// snapshots or leases). Used by tests and `skiff node --cleanup`.
    pub async fn remove_namespace(&self) -> Result<()> {
        use containerd_client::services::v1::DeleteNamespaceRequest;
        NamespacesClient::new(self.channel.clone())
            .delete(DeleteNamespaceRequest {
                name: self.namespace.clone(),
            })
            .await
            .map_err(|s| status(s, "removing the containerd namespace"))?;
        Ok(())
    }

    /// A request in this client's namespace, optionally inside a lease.
    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", l);
        }
        r
    }

    /// Creates a lease that expires by itself after `ttl` should this
    /// process die before deleting it.
    pub(crate) async fn lease(&self, ttl: Duration) -> Result<String> {
        use containerd_client::services::v1::CreateRequest;
        use containerd_client::services::v1::leases_client::LeasesClient;
        let id = format!("skiff-{}", unique());
        let expire = time::OffsetDateTime::now_utc() + ttl;
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(
                CreateRequest {
                    id: id.clone(),
                    labels,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "creating a containerd lease"))?;
        Ok(id)
    }

    pub(crate) async fn drop_lease(&self, id: &str) {
        use containerd_client::services::v1::DeleteRequest;
        use containerd_client::services::v1::leases_client::LeasesClient;
        let r = LeasesClient::new(self.channel.clone())
            .delete(self.req(
                DeleteRequest {
                    id: id.to_string(),
                    sync: false,
                },
                None,
            ))
            .await;
        if let Err(e) = r {
            tracing::debug!("deleting lease {id}: {e}");
        }
    }
}

/// A containerd error with what we were doing.
fn status(s: tonic::Status, doing: &str) -> anyhow::Error {
    anyhow::anyhow!("{doing}: containerd says {:?}: {}", s.code(), s.message())
}

/// A short id unique to this process and moment.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
