//! `skiff dns`: the cluster DNS addon on hickory-server.
//!
//! Two informers (Services, EndpointSlices) feed an in-memory [`View`] of
//! the Kubernetes DNS-Based Service Discovery records; queries are answered
//! from it — never an API call per query. Names outside the cluster domain
//! go to upstream resolvers through a cache. Metrics and health on HTTP.
//!
//! This crate knows the API (through `skiff-client`) and DNS; it knows
//! nothing of the store, the datapath or the node.

mod forward;
mod handler;
mod metrics;
pub mod offline;
mod records;
pub mod recursion;
pub mod register;
mod udp;
pub mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_api::{EndpointSlice, Service};
use skiff_client::Client;
use skiff_runtime::{Event, Inbox, Informers, Queue, Reconcile};

pub use view::View;

#[derive(Clone, Debug)]
pub struct Config {
    /// The API server and the credentials to show it.
    pub server: skiff_client::Credentials,
    pub listen: SocketAddr,
    /// Cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Upstream resolvers; `None`: the host's /etc/resolv.conf.
    pub upstreams: Option<Vec<SocketAddr>>,
    pub ttl: u32,
    pub metrics_listen: SocketAddr,
    pub cache_size: usize,
    /// Register `kube-system/kube-dns` with this ClusterIP and an
    /// EndpointSlice naming this server (None: do not).
    pub register: Option<String>,
    /// The sources (`address/prefix`) whose other names are forwarded:
    /// the pod network and the nodes; anyone else gets REFUSED for them.
    pub recursion_from: Vec<String>,
}

pub struct Running {
    pub dns: SocketAddr,
    pub metrics: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    server: hickory_server::Server<handler::Handler>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Runs until the DNS server stops (an I/O error).
    pub async fn wait(&mut self) -> Result<()> {
        self.server.block_until_done().await.context("DNS server")?;
        Ok(())
    }

    pub async fn shutdown(mut self) -> Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        self.server
            .shutdown_gracefully()
            .await
            .context("DNS server shutdown")?;
        Ok(())
    }
}

/// Nameservers of a resolv.conf, port 53, except `own` (no loop to self).
pub fn resolv_conf_upstreams(text: &str, own: SocketAddr) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| *a != own && !(own.ip().is_unspecified() && a.port() == own.port()))
        .collect()
}

enum Change {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
}

/// Feeds the view from the watches; it has nothing to sync per key (each
/// event is applied at once, O(that service)).
struct Feed {
    view: Arc<RwLock<View>>,
    answers: Arc<udp::AnswerCache>,
    synced: Arc<AtomicBool>,
}

impl Reconcile for Feed {
    type Key = ();
    type Event = Change;

    fn on_event(&mut self, ev: Change, _: &mut Queue<()>) {
        let mut view = self.view.write().expect("view lock");
        self.answers.invalidate();
        match ev {
            Change::Service(e) => view.on_service(e),
            Change::Slice(e) => view.on_slice(e),
        }
    }

    fn on_synced(&mut self, _: &mut Queue<()>) {
        self.synced.store(true, Ordering::Relaxed);
        tracing::info!("DNS view synced with the API");
    }

    async fn sync(&mut self, _: &(), _: &mut Queue<()>) -> anyhow::Result<()> {
        Ok(())
    }
}

pub async fn start(config: Config) -> Result<Running> {
    let client = Client::connect_with(&config.server)
        .await
        .with_context(|| format!("connect to the API server at {}", config.server.server))?;
    let registrar = client.clone();
    let view = Arc::new(RwLock::new(View::new(&config.domain)));
    let synced = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    let mut inf = Informers::new(client);
    let mut inbox = Inbox::new();
    inf.watch_all(&mut inbox, Change::Service);
    inf.watch_all(&mut inbox, Change::Slice);
    let answers = Arc::new(udp::AnswerCache::new());
    tasks.extend(inf.start());
    tasks.push(tokio::spawn(skiff_runtime::drive(
        "dns view",
        Feed {
            view: view.clone(),
            answers: answers.clone(),
            synced: synced.clone(),
        },
        inbox,
    )));

    let upstreams = match &config.upstreams {
        Some(u) => u.clone(),
        None => resolv_conf_upstreams(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            config.listen,
        ),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let handler = handler::Handler {
        view,
        forwarder: Arc::new(forward::Forwarder::new(
            upstreams.clone(),
            config.cache_size,
        )),
        metrics: metrics.clone(),
        recursion: Arc::new(
            recursion::Recursion::parse(&config.recursion_from)
                .map_err(|e| anyhow::anyhow!("--recursion-from {e}"))?,
        ),
        ttl: config.ttl,
    };
    let udp = tokio::net::UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("bind UDP {}", config.listen))?;
    let dns = udp.local_addr()?;
    // TCP on the same port as UDP (an ephemeral UDP port is reused).
    let tcp = tokio::net::TcpListener::bind(dns)
        .await
        .with_context(|| format!("bind TCP {dns}"))?;
    // UDP through the answer cache in front of the handler; TCP through
    // hickory-server's own listener.
    tasks.push(tokio::spawn(udp::serve(
        Arc::new(udp),
        handler.clone(),
        answers,
    )));
    let mut server = hickory_server::Server::new(handler);
    server.register_listener(tcp, Duration::from_secs(10), 64);

    if let Some(ip) = &config.register {
        let instance = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_ascii_lowercase())
            .unwrap_or_else(|_| "local".into());
        let instance = format!("{instance}-{}", dns.port());
        if let Err(e) = register::ensure(&registrar, ip, dns, &instance).await {
            tracing::warn!(error = %e, "could not register the cluster DNS Service; answering anyway");
        }
    }
    let http = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("bind metrics {}", config.metrics_listen))?;
    let metrics_addr = http.local_addr()?;
    let health = synced.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let ok = health.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "not synced with the API yet",
                        )
                    }
                }
            }),
        );
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    }));
    Ok(Running {
        dns,
        metrics: metrics_addr,
        upstreams,
        server,
        tasks,
    })
}
