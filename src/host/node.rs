//! `skiff node`: the node daemon's command line.

use anyhow::Result;
use skiff_node::config::{DatapathConfig, NodeConfig};

use skiff_cli::args::{Global, NodeArgs};

/// The one place a node's settings are made, for `skiff node` and for
/// `skiff up` alike. `token` is the cluster token (None: read
/// `--token-file`).
pub fn config(server: &str, a: NodeArgs, token: Option<String>) -> Result<NodeConfig> {
    let name = a.name.unwrap_or_else(skiff_node::host::hostname);
    let mut cfg = NodeConfig::new(server, &name);
    cfg.node_ip = a.node_ip;
    cfg.pod_cidr = a.pod_cidr;
    cfg.data_dir = a.data_dir;
    cfg.run_dir = a.run_dir;
    cfg.log_dir = a.log_dir;
    cfg.containerd = a.containerd.containerd;
    cfg.containerd_namespace = a.containerd.containerd_namespace;
    cfg.cluster_dns = a.cluster_dns;
    cfg.cluster_domain = a.cluster_domain;
    cfg.cgroup_parent = a.cgroup_parent.clone();
    cfg.base_backoff = std::time::Duration::from_secs(a.restart_backoff.max(1));
    cfg.listen = a.listen;
    cfg.registry_cas = a.registry_ca.clone();
    cfg.token = match token.or(a.token) {
        Some(t) => Some(t),
        None => read_token(&a.token_file),
    };
    cfg.datapath = if a.no_datapath {
        None
    } else {
        Some(DatapathConfig {
            instance: a.datapath_instance,
            cgroup: if a.datapath_pods_only {
                Some(skiff_node::pods::cgroups::unified_parent(&a.cgroup_parent)?)
            } else {
                None
            },
            ifaces: a.iface,
        })
    };
    Ok(cfg)
}

/// The token the server wrote, if it can be read.
fn read_token(path: &std::path::Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Ok(_) | Err(_) => {
            tracing::warn!(
                "no token at {} (--token-file): a node without certificates cannot join a TLS server, and on a plain one logs and exec of its pods are refused",
                path.display()
            );
            None
        }
    }
}

pub async fn run(global: &Global, a: NodeArgs) -> Result<()> {
    let server = skiff_cli::config::server_url(global.server.as_deref())?;
    let cfg = config(&server, a, None)?;
    let running = skiff_node::daemon::start(cfg.clone()).await?;
    eprintln!(
        "skiff node {} running: node IP {}, podCIDR {}, containerd {} (namespace {})",
        cfg.name,
        running.node_ip,
        running.pod_cidr,
        cfg.containerd.display(),
        cfg.containerd_namespace
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping (pods keep running; a restart adopts them)");
    running.stop();
    Ok(())
}
