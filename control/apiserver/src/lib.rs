//! `skiff server`: the API server. It alone talks to the store; everything
//! else — the CLI, controllers, node daemons, DNS — goes through it.
//!
//! One port serves gRPC (the uniform `Resources` service, for components
//! and the CLI) and REST/JSON with Kubernetes paths (for people, scripts
//! and the dashboard), plus `/healthz`, `/readyz` and `/metrics`.

mod alloc;
mod apply;
pub mod audit;
pub mod authn;
pub mod authz;
mod budget;
mod codec;
mod defaults;
mod discovery;
pub mod encryption;
mod error;
mod exec;
mod feed;
mod grpc;
pub mod join;
mod k8s_protobuf;
mod kubernetes_service;
mod managed;
mod metrics;
mod namespaces;
mod node_claims;
mod patch;
pub mod pki;
pub mod pods_proxy;
mod registry;
mod rest;
mod scale;
mod service_claims;
pub mod serviceaccount;
mod shared_ca;
mod strategy;
mod table;
pub mod tls;
mod watch_cache;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{any, get};
use skiff_store::{Revision, Store, StoreError};
use thiserror::Error;
use tokio::sync::oneshot;

pub use alloc::Cidr;
pub use error::ApiError;
use registry::Registry;
use watch_cache::WatchCache;

/// Events the watch cache keeps for resuming watchers, at most, and the
/// memory they may take (stored bytes and what decoding adds).
const WATCH_WINDOW: usize = 20_000;
const WATCH_WINDOW_BYTES: usize = 64 << 20;

/// How often history older than one period is compacted away.
const COMPACTION_PERIOD: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `etcd://h1:2379,h2:2379`; `None` for the embedded store.
    pub store: Option<String>,
    pub service_cidr: String,
    pub node_port_range: RangeInclusive<u16>,
    /// The pod network nodes get their podCIDR from; `None`: nodes bring
    /// their own.
    pub cluster_cidr: Option<String>,
    /// Prefix length of one node's podCIDR.
    pub node_cidr_mask: u8,
    /// The cluster token (shared with the nodes: the API server presents it
    /// when it calls them); default `<data_dir>/token`, made when missing.
    pub token_file: Option<PathBuf>,
    /// How long an Event lives after its last write (kube-apiserver's
    /// `--event-ttl`, 1 h).
    pub event_ttl: std::time::Duration,
    /// TLS on the API port and authentication of every request (client
    /// certificates from the data dir's client CA, bearer tokens), the
    /// default; off is plain HTTP with no authentication, for development
    /// only.
    pub tls: bool,
    /// kube-apiserver's `--token-auth-file`: `token,user,uid,"groups"`.
    pub token_auth_file: Option<PathBuf>,
    /// The audit log of authenticated requests (with TLS); `None`: none.
    pub audit: Option<audit::Settings>,
    /// The address pods and other hosts reach this server at
    /// (kube-apiserver's `--advertise-address`): the `kubernetes` Service
    /// points there, and the server listens there too (at the listen
    /// port). Default: the listen address, unless it is a loopback or
    /// unspecified one.
    pub advertise_address: Option<std::net::IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6443".parse().expect("static address"),
            data_dir: PathBuf::from("/var/lib/skiff/server"),
            store: None,
            service_cidr: "10.96.0.0/16".into(),
            node_port_range: 30000..=32767,
            cluster_cidr: Some("10.244.0.0/16".into()),
            node_cidr_mask: 24,
            token_file: None,
            event_ttl: std::time::Duration::from_secs(3600),
            tls: true,
            token_auth_file: None,
            audit: None,
            advertise_address: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("serve: {0}")]
    Serve(std::io::Error),
}

pub(crate) struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<metrics::Metrics>,
    feeding: Arc<AtomicBool>,
    /// How to call nodes (pods/log, pods/exec).
    nodes: Arc<pods_proxy::Nodes>,
    /// With TLS: the server CA bundle (`/cacerts`).
    ca_pem: Option<String>,
    /// Request bodies held at once.
    bodies: Arc<budget::Budget>,
    /// Requests are authenticated and authorized (TLS on).
    authorizing: bool,
    /// Signs ServiceAccount tokens (TLS on).
    signer: Option<Arc<serviceaccount::Signer>>,
}

/// A running server; dropping it (or calling [`Running::shutdown`]) stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub store: String,
    /// The cluster token nodes need (see `Config::token_file`).
    pub token: String,
    pub token_file: PathBuf,
    /// With TLS: the admin kubeconfig (`<data-dir>/admin.kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// With TLS: the CA that signs the serving certificate (PEM).
    pub ca_pem: Option<String>,
    pki: Option<Arc<pki::Pki>>,
    registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), ServerError>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving (open watches get a few seconds to end) and waits
    /// until the store is released, so it can be opened again at once.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.registry.close_watches();
        for t in std::mem::take(&mut self.background) {
            t.abort();
            let _ = t.await;
        }
        let served = match tokio::time::timeout(Duration::from_secs(5), &mut self.done).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_cancelled() => Ok(()),
            Ok(Err(e)) => Err(ServerError::Serve(std::io::Error::other(e))),
            Err(_) => {
                self.done.abort();
                let _ = (&mut self.done).await;
                Ok(())
            }
        };
        // Connection tasks drop their handle on the registry (and so on the
        // store) a moment after the server says they closed; wait for that,
        // so the store is released when this returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.registry) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        served
    }

    /// The URL clients reach this server at (loopback for a wildcard
    /// listen address).
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port())
        } else {
            self.addr
        };
        match self.pki {
            Some(_) => format!("https://{host}"),
            None => format!("http://{host}"),
        }
    }

    /// With TLS: a client certificate (PEM certificate and key) for `user`
    /// in `groups`, signed by the client CA, for the components this
    /// process runs (the controllers as `system:kube-controller-manager`).
    pub fn issue_client_certificate(&self, user: &str, groups: &[&str]) -> Option<pki::Issued> {
        let pki = self.pki.as_ref()?;
        match pki.client_ca.issue(user, groups, None) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!("issue a client certificate for {user}: {e}");
                None
            }
        }
    }

    /// Serves until the server fails.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        match (&mut self.done).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.registry.close_watches();
        for t in &self.background {
            t.abort();
        }
        self.done.abort();
    }
}

/// Opens the store, prepares the cluster's starting state and starts
/// serving. Returns once the port is bound.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let cidr = Cidr::parse(&config.service_cidr)
        .map_err(|e| ServerError::Config(format!("--service-cidr: {e}")))?;
    let cluster = match &config.cluster_cidr {
        Some(c) => {
            let cluster =
                Cidr::parse(c).map_err(|e| ServerError::Config(format!("--cluster-cidr: {e}")))?;
            if config.node_cidr_mask < cluster.prefix() || config.node_cidr_mask > 30 {
                return Err(ServerError::Config(format!(
                    "--node-cidr-mask {} must lie between the cluster CIDR's prefix ({}) and 30",
                    config.node_cidr_mask,
                    cluster.prefix()
                )));
            }
            Some(cluster)
        }
        None => None,
    };
    let token_file = config
        .token_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("token"));
    let kubernetes_ip = std::net::IpAddr::V4(cidr.nth(1));
    // Where pods reach this server: as asked, else the listen address when
    // it is one another host can reach.
    let advertised = config
        .advertise_address
        .or_else(|| {
            let ip = config.listen.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
        .map(|ip| SocketAddr::new(ip, config.listen.port()));
    let raw_store = skiff_store::open(config.store.as_deref(), &config.data_dir).await?;
    let store = raw_store.clone();
    let server_token = if config.tls {
        let token = join::server_secret(&token_file)
            .map_err(|e| ServerError::Config(format!("join token: {e}")))?;
        // Servers on one etcd share the CAs, encrypted with the token.
        if config.store.is_some() {
            let data_dir = config.data_dir.clone();
            shared_ca::sync(store.as_ref(), &config.data_dir, &token.secret, move || {
                pki::ensure_cas(&data_dir)
            })
            .await
            .map_err(ServerError::Config)?;
        }
        Some(token)
    } else {
        None
    };
    let pki = if config.tls {
        // The `kubernetes` Service's ClusterIP, the range's first address
        // (kube-apiserver's choice), so in-cluster clients can verify.
        let mut names = pki::Names::for_server(config.listen.ip(), Some(kubernetes_ip));
        if let Some(ip) = advertised.map(|a| a.ip())
            && !names.ips.contains(&ip)
        {
            names.ips.push(ip);
        }
        Some(Arc::new(
            pki::Pki::load_or_create(&config.data_dir, &names).map_err(ServerError::Config)?,
        ))
    } else {
        None
    };
    // Secrets are sealed at rest (the keys come with the shared CAs).
    let keys = pki::tls_dir(&config.data_dir)
        .and_then(|dir| encryption::Keys::load_or_create(&dir))
        .map_err(ServerError::Config)?;
    let store: Arc<dyn skiff_store::Store> =
        Arc::new(encryption::EncryptedStore::new(raw_store, keys));
    let tokens = Arc::new(join::Tokens::new(store.clone()));
    // With TLS the token is a join token (`K10<CA hash>::server:<secret>`);
    // plain, a shared secret the server presents to nodes.
    let (token, nodes) = match (&pki, server_token) {
        (Some(pki), Some(server_token)) => {
            let (join_token, full) =
                join::write_server_token(&token_file, server_token, &pki.server_ca.cert_pem)
                    .map_err(|e| ServerError::Config(format!("join token: {e}")))?;
            tokens.ensure(&join_token, "the server's own token").await?;
            let nodes =
                pods_proxy::Nodes::tls(full.clone(), &pki.server_ca.cert_pem, &pki.kubelet_client);
            (full, nodes)
        }
        _ => {
            let token = pods_proxy::load_or_create_token(&token_file).map_err(|e| {
                ServerError::Config(format!("cluster token {}: {e}", token_file.display()))
            })?;
            (token.clone(), pods_proxy::Nodes::plain(token))
        }
    };
    let nodes = Arc::new(nodes);
    let signer = match &pki {
        Some(p) => Some(Arc::new(
            serviceaccount::Signer::load_or_create(&p.dir).map_err(ServerError::Config)?,
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;

    let start_rev = store.revision().await?;
    let mut registry = Registry::new(
        store.clone(),
        match cluster {
            Some(c) => alloc::Allocators::new(cidr, config.node_port_range.clone())
                .with_cluster_cidr(c, config.node_cidr_mask),
            None => alloc::Allocators::new(cidr, config.node_port_range.clone()),
        },
        Arc::new(WatchCache::new(start_rev, WATCH_WINDOW, WATCH_WINDOW_BYTES)),
    );
    registry.ttl = config.event_ttl;
    let registry = Arc::new(registry);
    let state = Arc::new(AppState {
        registry: registry.clone(),
        metrics: metrics::Metrics::new(),
        feeding: Arc::new(AtomicBool::new(false)),
        nodes: nodes.clone(),
        ca_pem: pki.as_ref().map(|p| p.server_ca.cert_pem.clone()),
        bodies: budget::Budget::new(BODY_BUDGET, MAX_BODY),
        authorizing: pki.is_some(),
        signer: signer.clone(),
    });
    let bodies = state.bodies.clone();
    // The policy is loaded before the feed starts from `start_rev`: the
    // feed's replay of what the load already saw converges on the same.
    registry.authz.load(store.as_ref()).await?;
    let authz = pki.as_ref().map(|_| registry.authz.clone());
    let mut background = vec![tokio::spawn(feed::feed_cache(
        state.registry.clone(),
        state.feeding.clone(),
        start_rev,
    ))];
    let audit = match &config.audit {
        Some(s) => {
            let (audit, task) = audit::Audit::open(s.clone())
                .map_err(|e| ServerError::Config(format!("audit log {}: {e}", s.path.display())))?;
            background.push(task);
            audit
        }
        None => audit::Audit::default(),
    };
    registry.load_allocations().await?;
    registry.load_namespaces().await?;
    registry.ensure_system_namespaces().await?;
    authz::defaults::ensure(&registry).await?;
    kubernetes_service::ensure(
        &registry,
        &kubernetes_ip.to_string(),
        advertised.map(|a| SocketAddr::new(a.ip(), addr.port())),
        addr.port(),
    )
    .await?;
    background.push(tokio::spawn(compact_periodically(store.clone())));
    background.push(tokio::spawn(namespaces::finalize_terminating(
        registry.clone(),
    )));

    // Message limits set on purpose: a request carries one object (as a
    // REST body, at most 3 MiB); a response at most a list chunk.
    let grpc = tonic::service::Routes::new(
        skiff_api::v1::resources_server::ResourcesServer::new(grpc::Service {
            registry: registry.clone(),
            metrics: state.metrics.clone(),
            audit: audit.clone(),
            authz: authz.clone(),
        })
        .max_decoding_message_size(MAX_BODY)
        .max_encoding_message_size(registry::CHUNK_BYTES * 2),
    )
    .add_service(skiff_api::v1::pods_server::PodsServer::new(
        pods_proxy::Service {
            registry: registry.clone(),
            nodes: nodes.clone(),
            audit: audit.clone(),
            authz: authz.clone(),
        },
    ))
    .add_service(skiff_api::v1::auth_server::AuthServer::new(
        authz::reviews::Service {
            authz: authz.clone(),
            registry: registry.clone(),
            signer: signer.clone(),
        },
    ));
    let grpc = match &pki {
        Some(pki) => grpc.add_service(skiff_api::v1::bootstrap_server::BootstrapServer::new(
            join::Service {
                tokens: tokens.clone(),
                pki: pki.clone(),
            },
        )),
        None => grpc,
    }
    .into_axum_router();
    let rest = Router::new()
        .route("/healthz", get(readyz))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/version", get(|| async { axum::Json(version()) }))
        .route("/cacerts", get(cacerts))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_root))
        .route("/openapi/v3/{*path}", get(openapi_v3))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            any(exec::handle),
        )
        .route(
            "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
            axum::routing::post(token_request),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            axum::routing::post(authn::self_subject_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/{review}",
            axum::routing::post(authz::reviews::handle),
        )
        .route("/api", any(rest::handle))
        .route("/api/{*rest}", any(rest::handle))
        .route("/apis", any(rest::handle))
        .route("/apis/{*rest}", any(rest::handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    // gRPC requests go to the gRPC services; any other path nothing
    // serves is a 404 Status, not an empty gRPC answer.
    let app = rest.fallback(move |req: axum::extract::Request| {
        let grpc = grpc.clone();
        async move {
            if authn::is_grpc(&req) {
                use tower::ServiceExt;
                match grpc.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            } else {
                rest::unknown_path(req.uri().path())
            }
        }
    });

    let app = app.layer(axum::middleware::from_fn_with_state(bodies, budget::limit));
    let (app, tls, kubeconfig) = if let Some(pki) = &pki {
        let tls = tls::server_config(pki).map_err(ServerError::Config)?;
        let auth = match &config.token_auth_file {
            Some(f) => authn::Authenticator::with_token_file(f).map_err(ServerError::Config)?,
            None => authn::Authenticator::default(),
        }
        .with_join_tokens(tokens.clone())
        .with_service_accounts(serviceaccount::Tokens {
            signer: signer.clone().expect("a signer with TLS"),
            registry: registry.clone(),
        })
        .with_impersonation(registry.authz.clone());
        let kubeconfig = write_admin_kubeconfig(&config.data_dir, addr, pki)?;
        // Authorization inside the audit (refusals are recorded), the
        // audit inside authentication: it records who.
        let app = app
            .layer(axum::middleware::from_fn_with_state(
                registry.authz.clone(),
                authz::authorize_rest,
            ))
            .layer(axum::middleware::from_fn_with_state(
                audit.clone(),
                audit::audit_rest,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(auth),
                authn::authenticate,
            ));
        (app, Some(tls), Some(kubeconfig))
    } else {
        tracing::warn!(
            "serving plain HTTP with no authentication on {addr}: for development only; anyone who reaches the port can do anything"
        );
        (app, None, None)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    // The advertised address is served too when the listen address does
    // not cover it (a loopback listen, with pods reaching the node's).
    let also = advertised
        .map(|a| SocketAddr::new(a.ip(), addr.port()))
        .filter(|a| !config.listen.ip().is_unspecified() && a.ip() != config.listen.ip());
    let extra = match also {
        Some(a) => {
            let tcp = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Listen { addr: a, source })?;
            Some(
                tls::Listener::new(tcp, tls.clone())
                    .map_err(|source| ServerError::Listen { addr: a, source })?,
            )
        }
        None => None,
    };
    let listener = tls::Listener::new(listener, tls).map_err(|source| ServerError::Listen {
        addr: config.listen,
        source,
    })?;
    let app = app.into_make_service_with_connect_info::<tls::Peer>();
    if let Some(extra) = extra {
        let app = app.clone();
        background.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(extra, app).await {
                tracing::warn!("serving the advertised address: {e}");
            }
        }));
    }
    let done = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .map_err(ServerError::Serve)
    });
    tracing::info!(%addr, store = %store.describe(), "API server listening");
    Ok(Running {
        addr,
        store: store.describe(),
        token,
        token_file,
        kubeconfig,
        ca_pem: pki.as_ref().map(|p| p.server_ca.cert_pem.clone()),
        pki,
        registry,
        stop: Some(stop),
        done,
        background,
    })
}

/// `POST .../serviceaccounts/{name}/token` (`kubectl create token`).
async fn token_request(
    State(state): State<Arc<AppState>>,
    user: Option<axum::Extension<Arc<authn::UserInfo>>>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let Some(signer) = &state.signer else {
        return rest::error_response(&error::ApiError::bad_request(
            "ServiceAccount tokens need TLS (the server runs with --tls off)",
        ));
    };
    let user = user.map(|axum::Extension(u)| u);
    match serviceaccount::token_request(&state.registry, signer, user.as_deref(), &ns, &name, &body)
        .await
    {
        Ok(v) => rest::json_response(axum::http::StatusCode::CREATED, &v, &[]),
        Err(e) => rest::error_response(&e),
    }
}

/// `<data-dir>/admin.kubeconfig` (0600): the `system:masters` admin, for
/// `skiff` and kubectl alike. Written at every start (the address may have
/// changed); nothing outside the data dir is touched.
fn write_admin_kubeconfig(
    data_dir: &std::path::Path,
    addr: SocketAddr,
    pki: &pki::Pki,
) -> Result<PathBuf, ServerError> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {
            "server": format!("https://{host}"),
            "certificate-authority-data": b64(&pki.server_ca.cert_pem),
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(&pki.admin.cert_pem),
            "client-key-data": b64(&pki.admin.key_pem),
        }}],
        "contexts": [{"name": "skiff", "context": {"cluster": "skiff", "user": "admin"}}],
        "current-context": "skiff",
        "preferences": {},
    });
    let text = serde_yaml_ng::to_string(&doc)
        .map_err(|e| ServerError::Config(format!("admin kubeconfig: {e}")))?;
    let path = data_dir.join("admin.kubeconfig");
    pki::write_secret(&path, &text).map_err(ServerError::Config)?;
    Ok(path)
}

/// `/cacerts` (k3s' path, public): the CA bundle a joining node checks
/// against the hash in its join token.
async fn cacerts(State(state): State<Arc<AppState>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match &state.ca_pem {
        Some(ca) => ca.clone().into_response(),
        None => rest::unknown_path("/cacerts"),
    }
}

/// `/openapi/v3`: where each group-version's document is.
async fn openapi_v3_root() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CACHE_CONTROL, "no-cache, private")],
        axum::Json(skiff_api::openapi::root()),
    )
        .into_response()
}

/// `/openapi/v3/api/v1` and the like (`kubectl explain` reads them): a
/// URL with the current `hash` may be cached for good.
async fn openapi_v3(
    axum::extract::Path(path): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(doc) = skiff_api::openapi::document(&path) else {
        return rest::unknown_path(&format!("/openapi/v3/{path}"));
    };
    let current = query.get("hash").is_some_and(|h| {
        skiff_api::openapi::document_hash(&path).is_some_and(|c| c.eq_ignore_ascii_case(h))
    });
    let cache = if current {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, cache),
        ],
        doc,
    )
        .into_response()
}

/// The OpenAPI v2 document is published empty (protobuf or JSON, as
/// asked), which kubectl's client-side validation reads as "nothing to
/// check against"; the schemas are in v3.
async fn openapi_v2(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("protobuf") {
        // The gnostic `Document` with every field unset.
        let media = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
        return (
            [(axum::http::header::CONTENT_TYPE, media)],
            Vec::<u8>::new(),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({
        "swagger": "2.0",
        "info": {"title": "skiff", "version": "v1.32.0"},
        "paths": {},
        "definitions": {},
    }))
    .into_response()
}

/// The Kubernetes version this server speaks (its API and kubectl's),
/// and skiff's own in the build metadata.
fn version() -> serde_json::Value {
    serde_json::json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0+skiff-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    })
}

/// The largest request body (kube-apiserver's limit too).
const MAX_BODY: usize = 3 << 20;

/// Request bodies the server holds at once (about ten of the largest;
/// thousands of ordinary ones).
const BODY_BUDGET: usize = 32 << 20;

/// `/readyz` (and `/healthz`, which Kubernetes also fails when its store
/// does): ready while the store serves reads and writes and the watch
/// cache follows it. `/livez` stays ok: the server recovers by itself, so
/// restarting it would not help.
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let store = &state.registry.store;
    let failed = if let Some(fault) = store.fault() {
        Some(format!("[-]store failed: {fault}"))
    } else if let Err(e) = store.revision().await {
        Some(format!("[-]store failed: {e}"))
    } else if !state.feeding.load(Ordering::Acquire) {
        Some("[-]watch-cache failed: not following the store".to_string())
    } else {
        None
    };
    match failed {
        None => (StatusCode::OK, "ok\n".into()),
        Some(check) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{check}\nreadyz check failed\n"),
        ),
    }
}

async fn metrics_text(
    State(state): State<Arc<AppState>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut text = state.metrics.render();
    // What follows goes before OpenMetrics' end marker.
    if text.ends_with("# EOF\n") {
        text.truncate(text.len() - "# EOF\n".len());
    }
    text.push_str(&format!(
        "# HELP skiff_apiserver_cache_watchers Watchers on the watch cache.\n# TYPE skiff_apiserver_cache_watchers gauge\nskiff_apiserver_cache_watchers {}\n",
        state.registry.cache.watchers()
    ));
    let store = &state.registry.store;
    text.push_str(&format!(
        "# HELP skiff_store_errors Failures of the storage under the store (I/O errors, a full disk).\n# TYPE skiff_store_errors counter\nskiff_store_errors_total {}\n# HELP skiff_store_healthy Whether the store can serve reads and writes (0 while it recovers from a fault).\n# TYPE skiff_store_healthy gauge\nskiff_store_healthy {}\n",
        store.errors(),
        u8::from(store.fault().is_none()),
    ));
    text.push_str(&format!(
        "# HELP skiff_apiserver_request_body_bytes Request bodies held now, of a budget of {BODY_BUDGET} bytes (past it requests wait, then get 429).\n# TYPE skiff_apiserver_request_body_bytes gauge\nskiff_apiserver_request_body_bytes {}\n",
        state.bodies.in_use(),
    ));
    text.push_str("# EOF\n");
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Every period, forgets history older than the previous period, as the
/// Kubernetes API server does for etcd.
async fn compact_periodically(store: Arc<dyn Store>) {
    let mut previous: Option<Revision> = None;
    let mut tick = tokio::time::interval(COMPACTION_PERIOD);
    loop {
        tick.tick().await;
        if let Some(rev) = previous
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!("compact store to revision {rev}: {e}");
        }
        previous = store.revision().await.ok();
    }
}

/// Entry points for the fuzz targets (`control/fuzz`): the pure parts of
/// reading a request, which must never panic whatever they are given.
#[doc(hidden)]
pub mod fuzzing {
    /// A REST request's path and query, as the router and the audit log
    /// read them.
    pub fn request_path(method: &str, path: &str, query: &str) {
        let _ = crate::rest::parse_path(path);
        let _ = crate::audit::request_info(method, path, query);
    }

    /// A `--token-auth-file`.
    pub fn token_file(text: &str) -> bool {
        crate::authn::Authenticator::parse_tokens(text).is_ok()
    }
}
