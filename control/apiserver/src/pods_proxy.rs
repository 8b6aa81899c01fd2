//! `Pods` (logs and exec) for clients: the API server finds the pod's node
//! and relays the stream to that node's endpoint, over mutual TLS (its
//! `kube-apiserver-kubelet-client` certificate; the node's serving
//! certificate checked against the server CA), or with the cluster token
//! on a plain development server. Clients never talk to nodes. The same logs are served over REST
//! as `pods/{name}/log`, the path kubectl reads.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use skiff_api::v1::pods_client::PodsClient;
use skiff_api::v1::pods_server::Pods;
use skiff_api::v1::{ExecInput, ExecOutput, LogChunk, LogsRequest, Node, Pod};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::registry::Registry;

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct Service {
    pub registry: Arc<Registry>,
    pub nodes: Arc<Nodes>,
    pub audit: crate::audit::Audit,
    /// Set when requests are authenticated: every call is authorized.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
}

/// How the API server calls nodes.
pub struct Nodes {
    /// The cluster token (plain development servers).
    token: String,
    /// With TLS: the server CA (node serving certificates) and the API
    /// server's client certificate.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Nodes {
    pub fn plain(token: String) -> Nodes {
        Nodes { token, tls: None }
    }

    pub fn tls(token: String, server_ca_pem: &str, client: &crate::pki::Issued) -> Nodes {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(server_ca_pem))
            .identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        Nodes {
            token,
            tls: Some(tls),
        }
    }

    /// A client to the node running `ns/pod`.
    async fn for_pod(
        &self,
        registry: &Registry,
        ns: &str,
        pod: &str,
    ) -> Result<PodsClient<Channel>, Status> {
        let p: Pod = registry
            .get(ns, pod)
            .await
            .map_err(|_| Status::not_found(format!("pod {ns}/{pod} not found")))?;
        self.dial(registry, &p).await
    }

    /// A request to a node: with the cluster token when plain (over TLS
    /// the certificate says who calls).
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if self.tls.is_none()
            && let Ok(v) = format!("Bearer {}", self.token).parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// A client to the node `p` is bound to.
    pub(crate) async fn dial(
        &self,
        registry: &Registry,
        p: &Pod,
    ) -> Result<PodsClient<Channel>, Status> {
        use skiff_api::Resource;
        let (ns, pod) = (&p.meta().namespace, &p.meta().name);
        let node_name = p
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        if node_name.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {ns}/{pod} is not scheduled to a node yet"
            )));
        }
        let node: Node = registry.get("", &node_name).await.map_err(|_| {
            Status::unavailable(format!(
                "node {node_name} of pod {ns}/{pod} is not registered"
            ))
        })?;
        let status = node.status.unwrap_or_default();
        let ip = status
            .addresses
            .iter()
            .find(|a| a.r#type == "InternalIP")
            .map(|a| a.address.clone())
            .ok_or_else(|| Status::unavailable(format!("node {node_name} has no InternalIP")))?;
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Status::unavailable(format!("node {node_name} has not published its endpoint"))
            })?;
        let host = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => ip.clone(),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}:{port}"))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            // The node's serving certificate names its address.
            endpoint = endpoint
                .tls_config(tls.clone().domain_name(ip.clone()))
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            Status::unavailable(format!(
                "cannot reach node {node_name} at {ip}:{port}: {msg}"
            ))
        })?;
        Ok(PodsClient::new(channel))
    }
}

/// `GET .../pods/{name}/log`: kubectl's parameters (`container`, `follow`,
/// `tailLines`, `previous`, `timestamps`, `sinceSeconds`, `limitBytes`), the container's
/// output as `text/plain`, streamed while `follow` lasts.
pub async fn rest_log(
    registry: &Registry,
    nodes: &Nodes,
    ns: &str,
    pod: &str,
    query: &std::collections::HashMap<String, String>,
) -> crate::error::ApiResult<axum::response::Response> {
    use crate::error::ApiError;
    let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
    let number = |k: &str| -> crate::error::ApiResult<Option<i64>> {
        query
            .get(k)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{k}: Invalid value: \"{v}\": must be an integer"
                    ))
                })
            })
            .transpose()
    };
    let req = LogsRequest {
        namespace: ns.to_string(),
        pod: pod.to_string(),
        container: query.get("container").cloned().unwrap_or_default(),
        follow: flag("follow"),
        tail_lines: number("tailLines")?.unwrap_or(-1),
        previous: flag("previous"),
        timestamps: flag("timestamps"),
        since_seconds: number("sinceSeconds")?,
    };
    let mut node = nodes
        .for_pod(registry, ns, pod)
        .await
        .map_err(ApiError::from_grpc)?;
    let stream = node
        .logs(nodes.request(req))
        .await
        .map_err(ApiError::from_grpc)?
        .into_inner();
    // limitBytes: the output ends once that much is sent, followed or not.
    let mut left = match number("limitBytes")? {
        Some(n) if n <= 0 => {
            return Err(ApiError::unprocessable(format!(
                "limitBytes: Invalid value: {n}: must be greater than 0"
            )));
        }
        Some(n) => n as u64,
        None => u64::MAX,
    };
    let body = async_stream::stream! {
        futures::pin_mut!(stream);
        while left > 0 {
            match stream.next().await {
                Some(Ok(c)) => {
                    let mut data = c.data;
                    data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    left -= data.len() as u64;
                    yield Ok::<_, tonic::Status>(axum::body::Bytes::from(data));
                }
                Some(Err(e)) => {
                    yield Err(e);
                    break;
                }
                None => break,
            }
        }
    };
    Ok(axum::response::Response::builder()
        .status(axum::http::StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "text/plain")
        .body(axum::body::Body::from_stream(body))
        .expect("static response parts"))
}

#[tonic::async_trait]
impl Pods for Service {
    type LogsStream = Out<LogChunk>;
    type ExecStream = Out<ExecOutput>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let user = req
            .extensions()
            .get::<Arc<crate::authn::UserInfo>>()
            .cloned();
        let r = req.into_inner();
        let ask = crate::authz::on(skiff_api::Kind::Pod, "get", "log", &r.namespace, &r.pod);
        crate::authz::check_grpc(self.authz.as_deref(), user.as_deref(), ask)?;
        let mut node = self
            .nodes
            .for_pod(&self.registry, &r.namespace, &r.pod)
            .await?;
        let stream = node.logs(self.nodes.request(r)).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn exec(
        &self,
        req: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (user, source) = crate::audit::caller(&req);
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty exec stream"))?;
        let start = first.start.clone().ok_or_else(|| {
            Status::invalid_argument("the first exec message must say what to run")
        })?;
        let ask = crate::authz::on(
            skiff_api::Kind::Pod,
            "create",
            "exec",
            &start.namespace,
            &start.pod,
        );
        crate::authz::check_grpc(self.authz.as_deref(), user.as_deref(), ask)?;
        let mut node = self
            .nodes
            .for_pod(&self.registry, &start.namespace, &start.pod)
            .await?;
        let rest = futures::stream::iter([first])
            .chain(input.filter_map(|m| futures::future::ready(m.ok())));
        let started = node.exec(self.nodes.request(rest)).await;
        if let Some(user) = user {
            let code = match &started {
                Ok(_) => 200,
                Err(s) => crate::error::ApiError::from_grpc(s.clone()).code,
            };
            self.audit
                .record(crate::audit::Entry {
                    user: &user,
                    source,
                    uri: "/skiff.v1.Pods/Exec",
                    info: crate::audit::RequestInfo {
                        verb: "create".into(),
                        resource: "pods".into(),
                        subresource: "exec".into(),
                        namespace: start.namespace.clone(),
                        name: start.pod.clone(),
                        ..Default::default()
                    },
                    code,
                })
                .await;
        }
        let stream = started?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The cluster token: read from `path`, or made (random, 0600) when the
/// file does not exist yet.
pub fn load_or_create_token(path: &std::path::Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}
