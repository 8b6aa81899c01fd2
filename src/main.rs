//! `skiff`: parses the command line and hands off to the library crates.

mod host;
mod up;

use clap::Parser;
use skiff_cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Server(_)
            | Command::Dns(_)
            | Command::Node(_)
            | Command::Up(_)
            | Command::ShimLogger { .. }
            | Command::Sim(_)
    ) {
        default_sigpipe();
    }
    let result = match cli.command {
        Command::Server(args) => server(args).await,
        Command::Client(cmd) => skiff_cli::run(&cli.global, cmd).await,
        Command::Bpf(cmd) => host::bpf::run(cmd).await,
        Command::Image(cmd) => host::image::run(cmd).await,
        Command::Node(args) => host::node::run(&cli.global, args).await,
        Command::ShimLogger { path } => skiff_node::logs::shim_logger::run(&path),
        Command::Dns(args) => dns(&cli.global, args).await,
        Command::Sim(cmd) => skiff_cli::sim(&cli.global, cmd).await,
        Command::Up(args) => up::up(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dns(
    global: &skiff_cli::args::Global,
    args: skiff_cli::args::DnsArgs,
) -> anyhow::Result<()> {
    let config = skiff_dns::Config {
        server: skiff_cli::config::credentials(global)?,
        listen: args.listen,
        domain: args.domain,
        upstreams: if args.no_forward {
            Some(Vec::new())
        } else {
            args.upstream
        },
        ttl: args.ttl,
        metrics_listen: args.metrics_listen,
        cache_size: args.cache_size,
        register: (!args.no_register).then_some(args.cluster_ip),
        recursion_from: args.recursion_from,
    };
    let mut running = skiff_dns::start(config).await?;
    let upstreams: Vec<String> = running.upstreams.iter().map(|u| u.to_string()).collect();
    eprintln!(
        "skiff dns answering on {} (UDP and TCP), metrics on http://{}/metrics, upstreams: {}",
        running.dns,
        running.metrics,
        if upstreams.is_empty() {
            "none (REFUSED)".to_string()
        } else {
            upstreams.join(", ")
        }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = running.wait() => return r,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown().await
}

async fn server(args: skiff_cli::ServerArgs) -> anyhow::Result<()> {
    let config = skiff_apiserver::Config {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        store: args.store,
        service_cidr: args.service_cidr,
        node_port_range: skiff_cli::args::parse_port_range(&args.service_node_port_range)?,
        cluster_cidr: Some(args.cluster_cidr),
        node_cidr_mask: args.node_cidr_mask,
        token_file: args.token_file,
        event_ttl: std::time::Duration::from_secs(args.event_ttl.max(1)),
        tls: args.tls == "on",
        token_auth_file: args.token_auth_file,
        audit: audit_settings(&args.audit, &args.data_dir),
        advertise_address: args.advertise_address,
    };
    let mut running = skiff_apiserver::start(config).await?;
    eprintln!(
        "skiff server listening on {} (store: {})",
        running.url(),
        running.store
    );
    if let Some(k) = &running.kubeconfig {
        eprintln!(
            "admin kubeconfig: {} (skiff --kubeconfig, kubectl --kubeconfig)",
            k.display()
        );
    }
    // The CLI's config as soon as the server answers (before the
    // controllers' connections): a client may come at once.
    if !args.no_client_config {
        let written =
            skiff_cli::config::write_server_config(&running.url(), running.kubeconfig.as_deref())?;
        eprintln!("{written}");
    }
    let controllers = if args.no_controllers {
        None
    } else {
        let cfg = skiff_controllers::Config {
            node_lifecycle: skiff_controllers::nodelifecycle::Config {
                grace: std::time::Duration::from_secs(args.node_monitor_grace_period),
                default_toleration: std::time::Duration::from_secs(
                    args.default_unreachable_toleration_seconds,
                ),
            },
        };
        Some(start_controllers(&running, cfg).await?)
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = running.wait() => return Ok(r?),
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
    if let Some(c) = controllers {
        c.abort();
    }
    running.shutdown().await?;
    Ok(())
}

/// The audit log's settings from the flags.
pub fn audit_settings(
    a: &skiff_cli::args::AuditArgs,
    data_dir: &std::path::Path,
) -> Option<skiff_apiserver::audit::Settings> {
    a.settings(data_dir).map(
        |(path, max_bytes, backups)| skiff_apiserver::audit::Settings {
            path,
            max_bytes,
            backups,
        },
    )
}

/// The credentials of a component this process runs next to the server:
/// a client certificate of its own (with TLS).
pub fn component_credentials(
    running: &skiff_apiserver::Running,
    user: &str,
) -> skiff_client::Credentials {
    let mut creds = skiff_client::Credentials::plain(&running.url());
    creds.ca_pem = running.ca_pem.clone();
    if let Some(cert) = running.issue_client_certificate(user, &[]) {
        creds.cert_pem = Some(cert.cert_pem);
        creds.key_pem = Some(cert.key_pem);
    }
    creds
}

/// The scheduler and controllers, talking to this server like any client,
/// while this server holds their lease.
async fn start_controllers(
    running: &skiff_apiserver::Running,
    cfg: skiff_controllers::Config,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let creds = component_credentials(running, "system:kube-controller-manager");
    let client = skiff_client::Client::connect_with(&creds).await?;
    let scheduler = skiff_client::Client::connect_with(&component_credentials(
        running,
        "system:kube-scheduler",
    ))
    .await?;
    let identity = format!(
        "{}-{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "server".into()),
        std::process::id()
    );
    Ok(tokio::spawn(skiff_controllers::run_elected(
        client, scheduler, identity, cfg,
    )))
}

/// Client verbs die quietly when their reader goes away (`skiff get po |
/// head`), as Unix tools do, instead of failing on EPIPE; the server keeps
/// Rust's default (SIGPIPE ignored).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler, so there is no
    // handler code to be async-signal-safe; it replaces the SIG_IGN Rust's
    // runtime set at startup, which nothing else here relies on.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
