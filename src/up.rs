//! `skiff up`: the whole single-node cluster in one process — embedded
//! store and API server, scheduler and controllers, the node daemon with
//! its datapath, and the DNS addon — each the same library the separate
//! commands run.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use skiff_cli::UpArgs;
use skiff_cli::args::NodeArgs;

pub async fn up(a: UpArgs) -> Result<()> {
    if !is_root() {
        bail!("skiff up runs pods and programs the kernel: run it as root (sudo skiff up)");
    }
    let node_ip = match a.node_ip {
        Some(ip) => ip,
        None => skiff_node::host::default_ipv4()
            .context("cannot tell this host's address (no default route): pass --node-ip")?,
    };
    eprintln!(
        "==> starting the API server on {} (embedded store in {})",
        a.listen,
        a.data_dir.join("server").display()
    );
    let server = skiff_apiserver::start(skiff_apiserver::Config {
        listen: a.listen,
        data_dir: a.data_dir.join("server"),
        service_cidr: a.service_cidr.clone(),
        cluster_cidr: Some(a.cluster_cidr.clone()),
        tls: a.tls == "on",
        audit: crate::audit_settings(&a.audit, &a.data_dir.join("server")),
        // Pods reach the API (the `kubernetes` Service) at the node's address.
        advertise_address: Some(node_ip.into()),
        ..Default::default()
    })
    .await?;
    let url = server.url();
    let client = skiff_client::Client::connect_with(&crate::component_credentials(
        &server,
        "system:kube-controller-manager",
    ))
    .await?;
    let scheduler = skiff_client::Client::connect_with(&crate::component_credentials(
        &server,
        "system:kube-scheduler",
    ))
    .await?;
    let controllers = tokio::spawn(skiff_controllers::run_elected(
        client,
        scheduler,
        format!("{}-up", skiff_node::host::hostname()),
        skiff_controllers::Config::default(),
    ));
    eprintln!("==> scheduler and controllers running");

    let name = a.name.clone().unwrap_or_else(skiff_node::host::hostname);
    let node = crate::host::node::config(
        &url,
        node_args(&a, &name, node_ip),
        Some(server.token.clone()),
    )?;
    eprintln!(
        "==> starting node {name} ({node_ip}) on containerd at {}",
        node.containerd.display()
    );
    let running_node = skiff_node::daemon::start(node).await?;

    let dns = if a.no_dns {
        None
    } else {
        // Port 53 on the node's address, else any port: the kube-dns
        // Service's targetPort follows wherever it listens.
        let tries = match a.dns_listen {
            Some(addr) => vec![addr],
            None => vec![
                SocketAddr::from((node_ip, 53)),
                SocketAddr::from((node_ip, 0)),
            ],
        };
        let mut started = None;
        for (i, listen) in tries.iter().enumerate() {
            let config = skiff_dns::Config {
                server: crate::component_credentials(&server, "system:kube-dns"),
                listen: *listen,
                domain: "cluster.local".into(),
                upstreams: None,
                ttl: 5,
                metrics_listen: a.dns_metrics_listen,
                cache_size: 10_000,
                register: Some(a.cluster_dns.to_string()),
                // The pods and this node: no open resolver on its address.
                recursion_from: vec![
                    "127.0.0.0/8".into(),
                    "::1/128".into(),
                    a.cluster_cidr.clone(),
                    node_ip.to_string(),
                ],
            };
            match skiff_dns::start(config).await {
                Ok(r) => {
                    started = Some(r);
                    break;
                }
                Err(e) if i + 1 < tries.len() => {
                    eprintln!("    {listen} is taken ({e:#}); DNS takes another port")
                }
                Err(e) => return Err(e.context("starting the DNS addon")),
            }
        }
        let r = started.expect("started or returned");
        eprintln!(
            "==> cluster DNS answering on {} as {} (kube-system/kube-dns)",
            r.dns, a.cluster_dns
        );
        Some(r)
    };
    if !a.no_client_config {
        let written = skiff_cli::config::write_server_config(&url, server.kubeconfig.as_deref())?;
        eprintln!("==> {written}");
    }
    if let Some(k) = &server.kubeconfig {
        eprintln!(
            "==> admin kubeconfig: {} (kubectl --kubeconfig)",
            k.display()
        );
    }
    eprintln!(
        "\nskiff is up: node {name}, podCIDR {}, API {url}\n\n  skiff get nodes\n  skiff apply -f deploy/examples/hello.yaml\n  skiff get pods -o wide\n  skiff get svc\n  curl http://<ClusterIP>/        (from this host or any pod)\n  skiff logs <pod>   skiff exec <pod> -- sh\n\nCtrl-C stops skiff; pods keep running and the next `skiff up` adopts them.",
        running_node.pod_cidr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping skiff (pods keep running)");
    running_node.stop();
    controllers.abort();
    if let Some(d) = dns {
        d.shutdown().await?;
    }
    server.shutdown().await?;
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The node of `skiff up`, as `skiff node` flags would set it: its data
/// under the cluster's, the datapath instance's own cgroup parent.
fn node_args(a: &skiff_cli::args::UpArgs, name: &str, node_ip: std::net::Ipv4Addr) -> NodeArgs {
    NodeArgs {
        name: Some(name.to_string()),
        node_ip: Some(node_ip),
        pod_cidr: None,
        data_dir: a.data_dir.join("node"),
        run_dir: a.run_dir.clone(),
        log_dir: a.log_dir.clone(),
        containerd: a.containerd.clone(),
        cluster_dns: a.cluster_dns,
        cluster_domain: skiff_cli::args::CLUSTER_DOMAIN.into(),
        cgroup_parent: if a.datapath_instance == "default" {
            "skiff".into()
        } else {
            format!("skiff-{}", a.datapath_instance)
        },
        datapath_instance: a.datapath_instance.clone(),
        datapath_pods_only: false,
        iface: a.iface.clone(),
        no_datapath: false,
        listen: a.node_listen,
        registry_ca: Vec::new(),
        token: None,
        token_file: a.data_dir.join("server").join("token"),
        restart_backoff: skiff_cli::args::RESTART_BACKOFF_SECONDS,
    }
}
