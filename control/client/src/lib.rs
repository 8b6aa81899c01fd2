//! The client library every skiff component uses to talk to the API
//! server: typed calls over gRPC ([`Client`]). The informers that loops
//! build on (list + watch + resume + relist, shared stores) are in
//! `skiff-runtime`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::Value;
use skiff_api::v1::resources_client::ResourcesClient;
use skiff_api::v1::{DeleteRequest, GetRequest, ListRequest, RawObject, WatchRequest};
use skiff_api::{Kind, Object, Resource};
use thiserror::Error;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub mod join;
pub mod kubeconfig;

/// Where the API server is and how to prove who we are: what a kubeconfig
/// context resolves to.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `https://host:port` (or `http://` for a development server).
    pub server: String,
    /// The CA that signs the server's certificate (PEM).
    pub ca_pem: Option<String>,
    /// A client certificate and its key (PEM).
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// A bearer token.
    pub token: Option<String>,
    /// The name to check the server's certificate against, when not the
    /// URL's host.
    pub tls_server_name: Option<String>,
}

impl Credentials {
    /// Just an address: no TLS settings, no credentials.
    pub fn plain(server: &str) -> Credentials {
        Credentials {
            server: server.to_string(),
            ..Credentials::default()
        }
    }
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The transport of every call: the channel with the credentials on it.
pub type Transport = InterceptedService<Channel, Auth>;

#[derive(Debug, Error, Clone)]
pub enum ClientError {
    #[error(
        "cannot reach the API server at {server}: {message} (is `skiff server` running? set --server or SKIFF_SERVER)"
    )]
    Connect { server: String, message: String },
    /// The server refused: `code` is the HTTP-style status (404, 409,
    /// 422, ...), `reason` Kubernetes' reason, `causes` the field errors.
    #[error("{message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
        causes: Vec<String>,
    },
    #[error("malformed response from the server: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn code(&self) -> u16 {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => 0,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == 404
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, reason, .. } if reason == "Conflict")
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Api { reason, .. } if reason == "AlreadyExists")
    }
    pub fn is_forbidden(&self) -> bool {
        self.code() == 403
    }
    /// The watch's starting point is gone: relist.
    pub fn is_gone(&self) -> bool {
        self.code() == 410
    }

    fn from_status(s: tonic::Status) -> ClientError {
        // The server sends its Kubernetes Status object in the details.
        if let Ok(status) = serde_json::from_slice::<Value>(s.details()) {
            let causes = status
                .pointer("/details/causes")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            format!(
                                "{}: {}",
                                c.get("field").and_then(Value::as_str).unwrap_or(""),
                                c.get("message").and_then(Value::as_str).unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            return ClientError::Api {
                code: status.get("code").and_then(Value::as_u64).unwrap_or(500) as u16,
                reason: status
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                message: status
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(s.message())
                    .to_string(),
                causes,
            };
        }
        let (code, reason) = match s.code() {
            tonic::Code::NotFound => (404, "NotFound"),
            tonic::Code::AlreadyExists => (409, "AlreadyExists"),
            tonic::Code::Aborted => (409, "Conflict"),
            tonic::Code::InvalidArgument => (400, "BadRequest"),
            tonic::Code::OutOfRange => (410, "Expired"),
            tonic::Code::Unimplemented => (405, "MethodNotAllowed"),
            tonic::Code::Unavailable => (503, "ServiceUnavailable"),
            _ => (500, "InternalError"),
        };
        ClientError::Api {
            code,
            reason: reason.into(),
            message: s.message().to_string(),
            causes: Vec::new(),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Label and field selectors for list and watch.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: String,
    pub field_selector: String,
}

impl ListParams {
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_string();
        self
    }
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = selector.to_string();
        self
    }
}

pub struct ObjectList<R> {
    pub items: Vec<R>,
    pub resource_version: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<R> {
    Added(R),
    Modified(R),
    Deleted(R),
    /// Every change up to this resourceVersion has been sent (only when
    /// [`WatchOptions::bookmarks`] asked for them).
    Bookmark(String),
}

impl<R: Resource> WatchEvent<R> {
    /// The changed object; `None` for a bookmark.
    pub fn object(&self) -> Option<&R> {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => Some(o),
            WatchEvent::Bookmark(_) => None,
        }
    }

    /// Where a watch resumes after this event.
    pub fn resource_version(&self) -> &str {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                &o.meta().resource_version
            }
            WatchEvent::Bookmark(rv) => rv,
        }
    }
}

/// Objects per list request: a list of any size arrives in chunks this
/// large (client-go's reflectors use the same).
const LIST_CHUNK: i64 = 500;

/// How a watch runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchOptions {
    /// Ask for bookmarks, so a resumed watch starts from a recent
    /// resourceVersion even when nothing it selects has changed.
    pub bookmarks: bool,
    /// When the server should end the watch; 0 leaves it to the server
    /// (30 to 60 minutes).
    pub timeout_seconds: i64,
}

pub type WatchStream<R> = Pin<Box<dyn Stream<Item = Result<WatchEvent<R>>> + Send>>;

/// A connection to the API server; cheap to clone.
#[derive(Clone)]
pub struct Client {
    rpc: ResourcesClient<Transport>,
    pods: skiff_api::v1::pods_client::PodsClient<Transport>,
    bootstrap: skiff_api::v1::bootstrap_client::BootstrapClient<Transport>,
    auth: skiff_api::v1::auth_client::AuthClient<Transport>,
    server: String,
    /// Recorded in managedFields for this client's creates and updates.
    field_manager: Option<Arc<str>>,
}

fn decode<R: Resource>(bytes: &[u8]) -> Result<R> {
    R::decode(bytes).map_err(|e| ClientError::Decode(format!("{}: {e}", R::KIND)))
}

fn raw<R: Resource>(obj: &R) -> RawObject {
    RawObject {
        kind: R::KIND.name().to_string(),
        raw: obj.encode_to_vec(),
        dry_run: false,
        field_manager: String::new(),
    }
}

/// How a delete goes.
#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    /// Seconds a pod gets to stop (None: its own terminationGracePeriod).
    pub grace_seconds: Option<i64>,
    /// `Background` (or empty), `Foreground` or `Orphan`: what happens to
    /// the objects it owns.
    pub propagation: String,
    /// Check everything, delete nothing.
    pub dry_run: bool,
    /// Delete only while the object is at this resourceVersion (a
    /// precondition; empty: whatever it is). Otherwise 409 Conflict.
    pub resource_version: String,
}

impl Client {
    /// Connects to `http://host:port` (the API server's one port).
    pub async fn connect(server: &str) -> Result<Client> {
        Self::connect_with(&Credentials::plain(server)).await
    }

    /// Connects with TLS and credentials (`https://`), or plainly.
    pub async fn connect_with(creds: &Credentials) -> Result<Client> {
        let server = creds.server.as_str();
        let connect_err = |message: String| ClientError::Connect {
            server: server.to_string(),
            message,
        };
        let mut endpoint = Endpoint::from_shared(server.to_string())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        if server.starts_with("https://") {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let ca = creds.ca_pem.as_deref().ok_or_else(|| {
                connect_err("no certificate authority to check the server against (the kubeconfig's certificate-authority-data)".into())
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let (Some(cert), Some(key)) = (&creds.cert_pem, &creds.key_pem) {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &creds.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| connect_err(source_chain(&e)))?;
        } else if creds.cert_pem.is_some() || creds.token.is_some() {
            return Err(connect_err(
                "credentials would travel in plain text: use an https:// server".into(),
            ));
        }
        let auth =
            match &creds.token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    connect_err("the bearer token is not valid header text".into())
                })?),
                None => None,
            };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_err(source_chain(&e)))?;
        let channel = InterceptedService::new(channel, Auth(auth));
        Ok(Client {
            rpc: ResourcesClient::new(channel.clone()).max_decoding_message_size(256 * 1024 * 1024),
            pods: skiff_api::v1::pods_client::PodsClient::new(channel.clone()),
            bootstrap: skiff_api::v1::bootstrap_client::BootstrapClient::new(channel.clone()),
            auth: skiff_api::v1::auth_client::AuthClient::new(channel),
            server: server.to_string(),
            field_manager: None,
        })
    }

    /// A client whose creates and updates are recorded in managedFields
    /// under `manager` (people's tools name one; components need not).
    pub fn with_field_manager(mut self, manager: &str) -> Client {
        self.field_manager = Some(manager.into());
        self
    }

    /// Server-side apply of a configuration (`apiVersion`, `kind`,
    /// `metadata.name` and the fields `manager` sets); returns the object
    /// and whether it was created. Conflicts with other managers' fields
    /// are a 409 naming them, unless `force`.
    pub async fn apply_object(
        &self,
        kind: Kind,
        namespace: &str,
        config: &Value,
        manager: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<(Object, bool)> {
        let name = config
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let out = self
            .rpc
            .clone()
            .apply(skiff_api::v1::ApplyRequest {
                kind: kind.name().to_string(),
                namespace: namespace.to_string(),
                name,
                config: serde_json::to_vec(config).unwrap_or_default(),
                field_manager: manager.to_string(),
                force,
                dry_run,
            })
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        let raw = out
            .object
            .ok_or_else(|| ClientError::Decode("apply answered no object".into()))?;
        Ok((
            Object::from_raw(&raw).map_err(ClientError::Decode)?,
            out.created,
        ))
    }

    fn managed(&self, mut obj: RawObject) -> RawObject {
        if let Some(m) = &self.field_manager {
            obj.field_manager = m.to_string();
        }
        obj
    }

    /// Logs and exec of pods (relayed by the API server to their node).
    pub fn pods(&self) -> skiff_api::v1::pods_client::PodsClient<Transport> {
        self.pods.clone()
    }

    /// Joining nodes and join tokens.
    pub fn bootstrap(&self) -> skiff_api::v1::bootstrap_client::BootstrapClient<Transport> {
        self.bootstrap.clone()
    }

    /// Answers a Kubernetes review (`selfsubjectaccessreviews`,
    /// `selfsubjectrulesreviews`, `subjectaccessreviews`,
    /// `selfsubjectreviews`) given as JSON.
    pub async fn review(
        &self,
        review: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let out = self
            .auth
            .clone()
            .review(skiff_api::v1::ReviewRequest {
                review: review.to_string(),
                body: body.to_string().into_bytes(),
            })
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        serde_json::from_slice(&out.body).map_err(|e| ClientError::Decode(format!("{review}: {e}")))
    }

    /// A token of ServiceAccount `namespace/name`: `request` is a
    /// TokenRequest (authentication.k8s.io/v1); the answer carries
    /// `status.token` and `status.expirationTimestamp`.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let out = self
            .auth
            .clone()
            .token(skiff_api::v1::TokenCall {
                namespace: namespace.to_string(),
                name: name.to_string(),
                body: request.to_string().into_bytes(),
            })
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        serde_json::from_slice(&out.body)
            .map_err(|e| ClientError::Decode(format!("TokenRequest: {e}")))
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub async fn get<R: Resource>(&self, namespace: &str, name: &str) -> Result<R> {
        let obj = self.get_raw(R::KIND, namespace, name).await?;
        decode(&obj.raw)
    }

    pub async fn list<R: Resource>(
        &self,
        namespace: &str,
        params: &ListParams,
    ) -> Result<ObjectList<R>> {
        let list = self.list_raw(R::KIND, namespace, params).await?;
        Ok(ObjectList {
            items: list
                .items
                .iter()
                .map(|b| decode(b))
                .collect::<Result<_>>()?,
            resource_version: list.resource_version,
        })
    }

    pub async fn create<R: Resource>(&self, obj: &R) -> Result<R> {
        let out = self.create_object_raw(raw(obj)).await?;
        decode(&out.raw)
    }

    /// Replaces the object; its resourceVersion (if set) must be current.
    pub async fn update<R: Resource>(&self, obj: &R) -> Result<R> {
        let out = self.update_raw(raw(obj), false).await?;
        decode(&out.raw)
    }

    pub async fn update_status<R: Resource>(&self, obj: &R) -> Result<R> {
        let out = self.update_raw(raw(obj), true).await?;
        decode(&out.raw)
    }

    /// Deletes (or starts deleting) the object; returns its last state.
    pub async fn delete<R: Resource>(&self, namespace: &str, name: &str) -> Result<R> {
        let obj = self.delete_raw(R::KIND, namespace, name, None).await?;
        decode(&obj.raw)
    }

    /// Deletes a pod with an explicit grace period (0: at once).
    pub async fn delete_with_grace<R: Resource>(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: i64,
    ) -> Result<R> {
        let obj = self
            .delete_raw(R::KIND, namespace, name, Some(grace_seconds))
            .await?;
        decode(&obj.raw)
    }

    /// Changes after `resource_version`; `None` starts with the current
    /// objects as `Added` events.
    pub async fn watch<R: Resource>(
        &self,
        namespace: &str,
        params: &ListParams,
        resource_version: Option<&str>,
    ) -> Result<WatchStream<R>> {
        self.watch_with(namespace, params, resource_version, WatchOptions::default())
            .await
    }

    /// A watch with bookmarks or a timeout.
    pub async fn watch_with<R: Resource>(
        &self,
        namespace: &str,
        params: &ListParams,
        resource_version: Option<&str>,
        options: WatchOptions,
    ) -> Result<WatchStream<R>> {
        let events = self
            .watch_raw(R::KIND, namespace, params, resource_version, options)
            .await?;
        Ok(Box::pin(events.map(|e| {
            e.and_then(|ev| {
                let (t, obj) = match ev {
                    RawWatched::Bookmark(rv) => return Ok(WatchEvent::Bookmark(rv)),
                    RawWatched::Event(t, obj) => (t, obj),
                };
                let obj = R::from_object(obj)
                    .ok_or_else(|| ClientError::Decode("wrong kind in watch".into()))?;
                Ok(match t {
                    WatchType::Added => WatchEvent::Added(obj),
                    WatchType::Modified => WatchEvent::Modified(obj),
                    WatchType::Deleted => WatchEvent::Deleted(obj),
                })
            })
        })))
    }

    // ---- untyped calls, for code that handles kinds chosen at run time

    pub async fn get_object(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object> {
        let raw = self.get_raw(kind, namespace, name).await?;
        Object::from_raw(&raw).map_err(ClientError::Decode)
    }

    pub async fn list_objects(
        &self,
        kind: Kind,
        namespace: &str,
        params: &ListParams,
    ) -> Result<(Vec<Object>, String)> {
        let list = self.list_raw(kind, namespace, params).await?;
        let items = list
            .items
            .iter()
            .map(|b| Object::decode(kind, b).map_err(|e| ClientError::Decode(e.to_string())))
            .collect::<Result<_>>()?;
        Ok((items, list.resource_version))
    }

    pub async fn create_object(&self, obj: &Object) -> Result<Object> {
        self.create_object_with(obj, false).await
    }

    /// A create; with `dry_run` the server checks everything, stores
    /// nothing and answers with what it would have stored.
    pub async fn create_object_with(&self, obj: &Object, dry_run: bool) -> Result<Object> {
        let raw = RawObject {
            dry_run,
            ..obj.to_raw()
        };
        let out = self.create_object_raw(raw).await?;
        Object::from_raw(&out).map_err(ClientError::Decode)
    }

    pub async fn update_object(&self, obj: &Object) -> Result<Object> {
        self.update_object_with(obj, false).await
    }

    /// An update; `dry_run` as for [`Client::create_object_with`].
    pub async fn update_object_with(&self, obj: &Object, dry_run: bool) -> Result<Object> {
        let raw = RawObject {
            dry_run,
            ..obj.to_raw()
        };
        let out = self.update_raw(raw, false).await?;
        Object::from_raw(&out).map_err(ClientError::Decode)
    }

    pub async fn delete_object(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object> {
        let raw = self.delete_raw(kind, namespace, name, None).await?;
        Object::from_raw(&raw).map_err(ClientError::Decode)
    }

    pub async fn watch_objects(
        &self,
        kind: Kind,
        namespace: &str,
        params: &ListParams,
        resource_version: Option<&str>,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<(WatchType, Object)>> + Send>>> {
        let events = self
            .watch_raw(
                kind,
                namespace,
                params,
                resource_version,
                WatchOptions::default(),
            )
            .await?;
        Ok(Box::pin(events.filter_map(|e| async move {
            match e {
                Ok(RawWatched::Event(t, obj)) => Some(Ok((t, obj))),
                Ok(RawWatched::Bookmark(_)) => None,
                Err(e) => Some(Err(e)),
            }
        })))
    }

    async fn list_raw(
        &self,
        kind: Kind,
        namespace: &str,
        params: &ListParams,
    ) -> Result<skiff_api::v1::RawList> {
        // In chunks, all read at the first one's revision; if the server
        // compacts that away meanwhile (410), the list starts over.
        let mut restarts = 0;
        'list: loop {
            let mut all = skiff_api::v1::RawList::default();
            let mut token = String::new();
            loop {
                let req = ListRequest {
                    kind: kind.name().into(),
                    namespace: namespace.into(),
                    label_selector: params.label_selector.clone(),
                    field_selector: params.field_selector.clone(),
                    limit: LIST_CHUNK,
                    continue_token: token,
                };
                let chunk = match self.rpc.clone().list(req).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => {
                        let e = ClientError::from_status(status);
                        if e.is_gone() && restarts < 3 {
                            restarts += 1;
                            continue 'list;
                        }
                        return Err(e);
                    }
                };
                all.kind = chunk.kind;
                all.resource_version = chunk.resource_version;
                all.items.extend(chunk.items);
                if chunk.continue_token.is_empty() {
                    return Ok(all);
                }
                token = chunk.continue_token;
            }
        }
    }

    async fn create_object_raw(&self, obj: RawObject) -> Result<RawObject> {
        Ok(self
            .rpc
            .clone()
            .create(self.managed(obj))
            .await
            .map_err(ClientError::from_status)?
            .into_inner())
    }

    async fn update_raw(&self, obj: RawObject, status: bool) -> Result<RawObject> {
        let mut rpc = self.rpc.clone();
        let out = if status {
            rpc.update_status(obj).await
        } else {
            rpc.update(self.managed(obj)).await
        };
        Ok(out.map_err(ClientError::from_status)?.into_inner())
    }

    async fn get_raw(&self, kind: Kind, namespace: &str, name: &str) -> Result<RawObject> {
        let req = GetRequest {
            kind: kind.name().into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        Ok(self
            .rpc
            .clone()
            .get(req)
            .await
            .map_err(ClientError::from_status)?
            .into_inner())
    }

    async fn delete_raw(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        grace: Option<i64>,
    ) -> Result<RawObject> {
        let params = DeleteParams {
            grace_seconds: grace,
            ..Default::default()
        };
        self.delete_raw_with(kind, namespace, name, &params).await
    }

    /// Deletes (or starts deleting, or with `dry_run` checks deleting) the
    /// object; returns its last state.
    pub async fn delete_object_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<Object> {
        let raw = self.delete_raw_with(kind, namespace, name, params).await?;
        Object::from_raw(&raw).map_err(ClientError::Decode)
    }

    async fn delete_raw_with(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<RawObject> {
        let req = DeleteRequest {
            kind: kind.name().into(),
            namespace: namespace.into(),
            name: name.into(),
            resource_version: params.resource_version.clone(),
            grace_period_seconds: params.grace_seconds,
            propagation_policy: params.propagation.clone(),
            dry_run: params.dry_run,
        };
        Ok(self
            .rpc
            .clone()
            .delete(req)
            .await
            .map_err(ClientError::from_status)?
            .into_inner())
    }

    async fn watch_raw(
        &self,
        kind: Kind,
        namespace: &str,
        params: &ListParams,
        resource_version: Option<&str>,
        options: WatchOptions,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<RawWatched>> + Send>>> {
        let req = WatchRequest {
            kind: kind.name().into(),
            namespace: namespace.into(),
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            resource_version: resource_version.unwrap_or("").into(),
            timeout_seconds: options.timeout_seconds,
            allow_bookmarks: options.bookmarks,
        };
        let stream = self
            .rpc
            .clone()
            .watch(req)
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        Ok(Box::pin(stream.map(move |item| {
            let ev = item.map_err(ClientError::from_status)?;
            let t = match ev.r#type.as_str() {
                "ADDED" => WatchType::Added,
                "MODIFIED" => WatchType::Modified,
                "DELETED" => WatchType::Deleted,
                "BOOKMARK" => return Ok(RawWatched::Bookmark(ev.resource_version)),
                _ => {
                    return Err(ClientError::Api {
                        code: u16::try_from(ev.code).unwrap_or(500),
                        reason: if ev.code == 410 {
                            "Expired".into()
                        } else if ev.code == 504 {
                            "Timeout".into()
                        } else {
                            "InternalError".into()
                        },
                        message: ev.error,
                        causes: Vec::new(),
                    });
                }
            };
            let obj =
                Object::decode(kind, &ev.raw).map_err(|e| ClientError::Decode(e.to_string()))?;
            Ok(RawWatched::Event(t, obj))
        })))
    }
}

/// One item of a watch as it comes off the wire.
#[expect(
    clippy::large_enum_variant,
    reason = "events are the common case and as large as before; a bookmark is rare"
)]
enum RawWatched {
    Event(WatchType, Object),
    Bookmark(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
