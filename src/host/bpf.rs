//! `skiff bpf ...`: the datapath seen and driven from the node, straight
//! through the pinned maps (works while no node daemon runs; needs root).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use skiff_cli::args::*;
use skiff_cli::table::render;
use skiff_datapath::inspect::{self, CounterValues, GlobalCounters};
use skiff_datapath::{Maps, Reconciler, Snapshot, maglev};

pub async fn run(command: BpfCommand) -> Result<()> {
    // Everything here is a few syscalls on maps: run it off the runtime.
    tokio::task::spawn_blocking(move || run_blocking(command)).await?
}

fn run_blocking(command: BpfCommand) -> Result<()> {
    match command {
        BpfCommand::Attach(a) => attach(a),
        BpfCommand::Detach(a) => {
            let r = skiff_datapath::detach(&a.instance.instance)?;
            if a.output.is_some() {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.links.is_empty() && r.maps.is_empty() {
                println!("instance {} was not attached", r.instance);
            } else {
                println!(
                    "instance {} detached: {} programs, {} maps unpinned",
                    r.instance,
                    r.links.len(),
                    r.maps.len()
                );
            }
            Ok(())
        }
        BpfCommand::Sync(a) => sync(a),
        BpfCommand::Services(a) => services(a),
        BpfCommand::Backends(a) => backends(a),
        BpfCommand::Affinity(a) => affinity(a),
        BpfCommand::Ct(a) => ct(a),
        BpfCommand::Maglev(a) => maglev_cmd(a),
        BpfCommand::Stats(a) => stats(a),
        BpfCommand::Gc(a) => gc(a),
    }
}

fn gc(a: BpfGcArgs) -> Result<()> {
    let mut maps = Maps::open(&a.instance.instance)?;
    let policy = skiff_datapath::gc::GcPolicy {
        tcp_idle: Duration::from_secs(a.tcp_idle),
        tcp_closing: Duration::from_secs(a.tcp_closing),
        udp_idle: Duration::from_secs(a.udp_idle),
    };
    let r = skiff_datapath::gc::collect(&mut maps, &policy)?;
    if a.output.is_some() {
        return print_json(&r);
    }
    println!(
        "scanned {} conntrack entries: {} removed (backend gone), {} removed (idle); {} affinity entries and {} socket translations removed",
        r.scanned, r.backend_gone, r.idle, r.affinity_expired, r.socket_entries_of_removed_services
    );
    Ok(())
}

fn attach(a: BpfAttachArgs) -> Result<()> {
    let options = skiff_datapath::AttachOptions {
        instance: a.instance.instance.clone(),
        cgroup: a.cgroup,
        ifaces: a.ifaces,
        pod_ifaces: a.pod_ifaces,
        node_ips: a.node_ips,
        no_xdp: a.no_xdp,
        netns: a.netns,
        sizes: skiff_datapath::MapSizes {
            services: a.services_max,
            backends: a.backends_max,
            conntrack: a.ct_max,
            affinity: a.affinity_max,
            maglev: a.maglev_max,
        },
    };
    let r = skiff_datapath::attach(&options)?;
    if a.output.is_some() {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "instance {} attached to cgroup {} (pins in {}): {} hooks attached, {} adopted",
            r.instance,
            r.cgroup.display(),
            r.pin_dir.display(),
            r.attached.len(),
            r.adopted.len()
        );
        if !r.node_ips.is_empty() {
            let ips: Vec<String> = r.node_ips.iter().map(|i| i.to_string()).collect();
            println!("NodePorts answer on {}", ips.join(", "));
        }
        if !r.xdp.is_empty() {
            println!("XDP fast path on {}", r.xdp.join(", "));
        }
        for u in &r.xdp_unsupported {
            println!("no native XDP on {u}; tc serves it");
        }
    }
    if !a.stay {
        return Ok(());
    }
    // The datapath does not depend on this process: it only sweeps the
    // connection tables until it is stopped (or killed).
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let policy = skiff_datapath::gc::GcPolicy::default();
    loop {
        std::thread::sleep(Duration::from_secs(a.gc_interval.max(1)));
        let mut maps = Maps::open(&r.instance)?;
        match skiff_datapath::gc::collect(&mut maps, &policy) {
            Ok(g) if g.backend_gone + g.idle + g.affinity_expired > 0 => tracing::info!(
                instance = %r.instance,
                backend_gone = g.backend_gone,
                idle = g.idle,
                affinity = g.affinity_expired,
                "connection tables swept"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %r.instance, error = %e, "garbage collection failed")
            }
        }
    }
}

fn sync(a: BpfSyncArgs) -> Result<()> {
    let text = if a.file == "-" {
        std::io::read_to_string(std::io::stdin()).context("read standard input")?
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("read {}", a.file))?
    };
    let options = skiff_datapath::Options {
        node_name: a.node_name.clone(),
        default_algorithm: if a.algorithm == "maglev" {
            skiff_datapath::Algorithm::Maglev
        } else {
            skiff_datapath::Algorithm::Random
        },
    };
    let desired = skiff_datapath::sync::desired_from_manifest(&a.file, &text, &options)?;
    let maps = Maps::open(&a.instance.instance)?;
    let config = skiff_datapath::MaglevConfig {
        size: a.maglev_size,
        seed: a.maglev_seed.unwrap_or(maglev::DEFAULT_SEED),
    };
    let mut reconciler = Reconciler::adopt(maps, config)?;
    if a.dry_run {
        let installed: std::collections::BTreeSet<&str> = reconciler.installed().collect();
        let add = desired
            .services
            .keys()
            .filter(|n| !installed.contains(n.as_str()))
            .count();
        let remove = installed
            .iter()
            .filter(|n| !desired.services.contains_key(**n))
            .count();
        println!(
            "would program {} services ({} frontends, {} backends): {add} new, {remove} removed",
            desired.services.len(),
            desired.frontend_count(),
            desired.backend_count()
        );
        return Ok(());
    }
    let started = Instant::now();
    let report = reconciler.apply(&desired)?;
    let took = started.elapsed();
    if a.output.is_some() {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = json!(took.as_secs_f64());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "synced {} services in {:.1} ms: {} added, {} changed, {} removed, {} unchanged ({} map writes, {} deletes)",
            desired.services.len(),
            took.as_secs_f64() * 1e3,
            report.added,
            report.changed,
            report.removed,
            report.unchanged,
            report.writes,
            report.deletes
        );
    }
    Ok(())
}

fn snapshot(instance: &Instance) -> Result<(Maps, Snapshot)> {
    let maps = Maps::open(&instance.instance)?;
    let snap = Snapshot::read(&maps)?;
    Ok((maps, snap))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn kind_name(k: skiff_datapath::FrontendKind) -> &'static str {
    match k {
        skiff_datapath::FrontendKind::ClusterIp => "ClusterIP",
        skiff_datapath::FrontendKind::ExternalIp => "ExternalIP",
        skiff_datapath::FrontendKind::NodePort => "NodePort",
    }
}

fn services(a: BpfPlainArgs) -> Result<()> {
    let (_, snap) = snapshot(&a.instance)?;
    if a.output.is_some() {
        return print_json(&snap.services);
    }
    let mut rows = Vec::new();
    for s in &snap.services {
        let backends = if s.backends.is_empty() {
            "(none: refused)".to_string()
        } else {
            s.backends
                .iter()
                .map(|b| format!("{} ({})", b.addr, b.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for f in &s.frontends {
            let mut flags = vec![kind_name(f.kind).to_string()];
            if s.maglev_size.is_some() {
                flags.push("maglev".into());
            }
            if let Some(t) = s.affinity_timeout {
                flags.push(format!("affinity {t}s"));
            }
            rows.push(vec![
                f.frontend.to_string(),
                flags.join(", "),
                s.name.clone(),
                backends.clone(),
            ]);
        }
    }
    println!(
        "{}",
        render(&["FRONTEND", "TYPE", "SERVICE", "BACKENDS (ID)"], &rows)
    );
    Ok(())
}

fn backends(a: BpfPlainArgs) -> Result<()> {
    let (_, snap) = snapshot(&a.instance)?;
    let list = inspect::backends(&snap);
    if a.output.is_some() {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.address.clone(),
                b.protocol.as_str().to_string(),
                b.state.to_string(),
                b.service.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["ID", "ADDRESS", "PROTOCOL", "STATE", "SERVICE"], &rows)
    );
    Ok(())
}

fn affinity(a: BpfPlainArgs) -> Result<()> {
    let (maps, snap) = snapshot(&a.instance)?;
    let list = inspect::affinity(&maps, &snap, skiff_datapath::monotonic_seconds())?;
    if a.output.is_some() {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.client.clone(),
                e.service.clone(),
                e.backend.clone(),
                e.idle_seconds.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["CLIENT", "SERVICE", "BACKEND", "IDLE (s)"], &rows)
    );
    Ok(())
}

fn ct(a: BpfCtArgs) -> Result<()> {
    let (maps, snap) = snapshot(&a.instance)?;
    let now = skiff_datapath::monotonic_seconds();
    let c = inspect::connections(&maps, &snap, a.service.as_deref(), now)?;
    if a.output.is_some() {
        return print_json(&c);
    }
    let rows: Vec<Vec<String>> = c
        .packet
        .iter()
        .map(|f| {
            vec![
                f.protocol.to_string(),
                f.client.clone(),
                f.frontend.clone(),
                f.backend.clone(),
                f.snat.clone().unwrap_or_else(|| "-".into()),
                f.idle_seconds.to_string(),
                f.service.clone(),
            ]
        })
        .collect();
    println!("packet level:");
    println!(
        "{}",
        render(
            &[
                "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "IDLE (s)", "SERVICE"
            ],
            &rows
        )
    );
    println!("socket level:");
    let rows: Vec<Vec<String>> = c
        .socket
        .iter()
        .map(|s| {
            vec![
                s.socket_cookie.to_string(),
                s.frontend.clone(),
                s.backend.clone(),
                s.service.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["SOCKET", "FRONTEND", "BACKEND", "SERVICE"], &rows)
    );
    Ok(())
}

fn maglev_cmd(a: BpfMaglevArgs) -> Result<()> {
    let (maps, snap) = snapshot(&a.instance)?;
    let out = inspect::maglev(&maps, &snap, &a.service)?;
    if out.is_empty() {
        bail!(
            "no service {} in instance {}",
            a.service,
            a.instance.instance
        );
    }
    if a.output.is_some() {
        return print_json(&out);
    }
    for v in out {
        println!(
            "{} ({}{})",
            v.service,
            v.algorithm,
            v.size
                .map(|s| format!(", table size {s}"))
                .unwrap_or_default()
        );
        let rows: Vec<Vec<String>> = v
            .backends
            .iter()
            .flatten()
            .map(|b| vec![b.id.to_string(), b.address.clone(), b.entries.to_string()])
            .collect();
        if !rows.is_empty() {
            println!("{}", render(&["ID", "BACKEND", "ENTRIES"], &rows));
        }
    }
    Ok(())
}

fn stats(a: BpfStatsArgs) -> Result<()> {
    let mut previous: HashMap<String, CounterValues> = HashMap::new();
    let mut last = Instant::now();
    loop {
        let (maps, snap) = snapshot(&a.instance)?;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let mut rows = Vec::new();
        let mut list = Vec::new();
        let mut push =
            |label: String, service: &str, c: CounterValues, rows: &mut Vec<Vec<String>>| {
                let rate = previous
                    .get(&label)
                    .map(|p| {
                        format!(
                            "{:.0}/s",
                            c.connections.saturating_sub(p.connections) as f64 / dt
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                rows.push(vec![
                    label.clone(),
                    service.to_string(),
                    c.connections.to_string(),
                    rate,
                    c.refused.to_string(),
                    c.dropped.to_string(),
                    c.packets.to_string(),
                    c.bytes.to_string(),
                ]);
                list.push(json!({"name": label, "service": service, "counters": c}));
                previous.insert(label, c);
            };
        for s in &snap.services {
            push(
                format!("service {}", s.id),
                &s.name,
                maps.service_counters(s.id).into(),
                &mut rows,
            );
            for b in &s.backends {
                push(
                    format!("  backend {} {}", b.id, b.addr),
                    &s.name,
                    maps.backend_counters(b.id).into(),
                    &mut rows,
                );
            }
        }
        let g = GlobalCounters::read(&maps);
        if a.output.is_some() {
            print_json(&json!({"counters": list, "global": g}))?;
        } else {
            println!(
                "{}",
                render(
                    &[
                        "COUNTER",
                        "SERVICE",
                        "CONNECTIONS",
                        "RATE",
                        "REFUSED",
                        "DROPPED",
                        "PACKETS",
                        "BYTES"
                    ],
                    &rows
                )
            );
            println!(
                "datapath: {} missing backends, {} socket-map full, {} affinity-map full, {} conntrack full, {} no route, {} refusals not sent, {} XDP fast-path packets",
                g.missing_backend,
                g.connection_map_full,
                g.affinity_map_full,
                g.conntrack_full,
                g.no_route,
                g.refuse_failed,
                g.xdp_transmitted
            );
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(a.interval.max(0.1)));
        println!();
    }
}
