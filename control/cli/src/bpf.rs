//! `skiff bpf ...`: the datapath seen and driven from the node, straight
//! through the pinned maps (works while no node daemon runs; needs root).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use skiff_datapath::{Maps, Reconciler, Snapshot, maglev};
use skiff_ebpf_common::{Counters, global};

use crate::args::*;
use crate::table::render;

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
    let mut list = Vec::new();
    for s in &snap.services {
        for b in &s.backends {
            list.push(json!({
                "id": b.id,
                "address": b.addr.to_string(),
                "protocol": s.proto,
                "service": s.name,
                "state": if b.terminating { "terminating" } else { "active" },
            }));
        }
    }
    list.sort_by_key(|v| v["id"].as_u64());
    if a.output.is_some() {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            ["id", "address", "protocol", "state", "service"]
                .iter()
                .map(|k| match &v[*k] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    println!(
        "{}",
        render(&["ID", "ADDRESS", "PROTOCOL", "STATE", "SERVICE"], &rows)
    );
    Ok(())
}

fn names_by_id(snap: &Snapshot) -> HashMap<u32, String> {
    snap.services
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect()
}

fn affinity(a: BpfPlainArgs) -> Result<()> {
    let (maps, snap) = snapshot(&a.instance)?;
    let names = names_by_id(&snap);
    let backends: HashMap<u32, String> = snap
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.id, b.addr.to_string())))
        .collect();
    let now = skiff_datapath::monotonic_seconds();
    let mut list = Vec::new();
    for item in maps.affinity.iter() {
        let (k, v) = item.context("read the affinity map")?;
        let client = if k.kind == 1 {
            Ipv4Addr::from(u32::from_be(k.client as u32)).to_string()
        } else {
            format!("netns:{}", k.client)
        };
        list.push(json!({
            "client": client,
            "service": names.get(&k.service_id).cloned().unwrap_or_else(|| format!("id {}", k.service_id)),
            "backend": backends.get(&v.backend_id).cloned().unwrap_or_else(|| format!("id {} (gone)", v.backend_id)),
            "idleSeconds": now.saturating_sub(v.last_used),
        }));
    }
    if a.output.is_some() {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            vec![
                v["client"].as_str().unwrap_or("").to_string(),
                v["service"].as_str().unwrap_or("").to_string(),
                v["backend"].as_str().unwrap_or("").to_string(),
                v["idleSeconds"].to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["CLIENT", "SERVICE", "BACKEND", "IDLE (s)"], &rows)
    );
    Ok(())
}

/// Whether `name` (ns/svc:port/PROTO[#local]) is selected by `filter`
/// (ns/svc, or a full name).
fn matches_service(name: &str, filter: &str) -> bool {
    name == filter
        || name
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with(':'))
}

fn ct(a: BpfCtArgs) -> Result<()> {
    let (maps, snap) = snapshot(&a.instance)?;
    let names = names_by_id(&snap);
    let mut list = Vec::new();
    for item in maps.rev_sock.iter() {
        let (k, v) = item.context("read the connection map")?;
        let service = names.get(&v.service_id).cloned().unwrap_or_default();
        if a.service
            .as_ref()
            .is_some_and(|f| !matches_service(&service, f))
        {
            continue;
        }
        list.push(json!({
            "socketCookie": k.cookie,
            "backend": format!("{}:{}", Ipv4Addr::from(u32::from_be(k.addr_be)), u16::from_be(k.port_be)),
            "frontend": format!("{}:{}", Ipv4Addr::from(u32::from_be(v.addr_be)), u16::from_be(v.port_be)),
            "service": service,
        }));
    }
    let now = skiff_datapath::monotonic_seconds();
    let addr = |a: u32, p: u16| format!("{}:{}", Ipv4Addr::from(u32::from_be(a)), u16::from_be(p));
    let mut packets = Vec::new();
    for item in maps.ct.iter() {
        let (k, v) = item.context("read the conntrack map")?;
        if k.dir != skiff_ebpf_common::CT_FORWARD {
            continue;
        }
        let service = names.get(&v.service_id).cloned().unwrap_or_default();
        if a.service
            .as_ref()
            .is_some_and(|f| !matches_service(&service, f))
        {
            continue;
        }
        let snat = v.flags & skiff_ebpf_common::CT_SNAT != 0;
        packets.push(json!({
            "protocol": if k.proto == 6 { "TCP" } else { "UDP" },
            "client": addr(k.src_be, k.sport_be),
            "frontend": addr(k.dst_be, k.dport_be),
            "backend": addr(v.nat_addr_be, v.nat_port_be),
            "snat": snat.then(|| addr(v.snat_addr_be, v.snat_port_be)),
            "closing": v.flags & skiff_ebpf_common::CT_CLOSING != 0,
            "idleSeconds": now.saturating_sub(v.last_seen),
            "service": service,
        }));
    }
    if a.output.is_some() {
        return print_json(&json!({"packet": packets, "socket": list}));
    }
    let rows: Vec<Vec<String>> = packets
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
            vec![
                s("protocol"),
                s("client"),
                s("frontend"),
                s("backend"),
                s("snat"),
                v["idleSeconds"].to_string(),
                s("service"),
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
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|v| {
            vec![
                v["socketCookie"].to_string(),
                v["frontend"].as_str().unwrap_or("").into(),
                v["backend"].as_str().unwrap_or("").into(),
                v["service"].as_str().unwrap_or("").into(),
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
    let chosen: Vec<_> = snap
        .services
        .iter()
        .filter(|s| matches_service(&s.name, &a.service))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no service {} in instance {}",
            a.service,
            a.instance.instance
        );
    }
    let mut out = Vec::new();
    for s in chosen {
        let Some(size) = s.maglev_size else {
            out.push(json!({"service": s.name, "algorithm": "random"}));
            continue;
        };
        let table = maps
            .maglev
            .get(&s.id, 0)
            .with_context(|| format!("read the Maglev table of {}", s.name))?;
        let ids = &table.backend_ids[..size as usize];
        let mut share: HashMap<u32, usize> = HashMap::new();
        ids.iter()
            .for_each(|id| *share.entry(*id).or_default() += 1);
        let backends: Vec<_> = s
            .backends
            .iter()
            .map(|b| json!({"id": b.id, "address": b.addr.to_string(), "entries": share.get(&b.id).copied().unwrap_or(0)}))
            .collect();
        out.push(json!({"service": s.name, "algorithm": "maglev", "size": size, "backends": backends, "table": ids}));
    }
    if a.output.is_some() {
        return print_json(&out);
    }
    for v in out {
        println!(
            "{} ({}{})",
            v["service"].as_str().unwrap_or(""),
            v["algorithm"].as_str().unwrap_or(""),
            v.get("size")
                .map(|s| format!(", table size {s}"))
                .unwrap_or_default()
        );
        let rows: Vec<Vec<String>> = v["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                vec![
                    b["id"].to_string(),
                    b["address"].as_str().unwrap_or("").into(),
                    b["entries"].to_string(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            println!("{}", render(&["ID", "BACKEND", "ENTRIES"], &rows));
        }
    }
    Ok(())
}

fn counters_json(c: &Counters) -> serde_json::Value {
    json!({
        "packets": c.packets, "bytes": c.bytes, "connections": c.connections,
        "refused": c.refused, "dropped": c.dropped,
    })
}

fn stats(a: BpfStatsArgs) -> Result<()> {
    let mut previous: HashMap<String, Counters> = HashMap::new();
    let mut last = Instant::now();
    loop {
        let (maps, snap) = snapshot(&a.instance)?;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let mut rows = Vec::new();
        let mut list = Vec::new();
        let mut push = |label: String, service: &str, c: Counters, rows: &mut Vec<Vec<String>>| {
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
            list.push(json!({"name": label, "service": service, "counters": counters_json(&c)}));
            previous.insert(label, c);
        };
        for s in &snap.services {
            push(
                format!("service {}", s.id),
                &s.name,
                maps.service_counters(s.id),
                &mut rows,
            );
            for b in &s.backends {
                push(
                    format!("  backend {} {}", b.id, b.addr),
                    &s.name,
                    maps.backend_counters(b.id),
                    &mut rows,
                );
            }
        }
        let g = maps.global_counters();
        if a.output.is_some() {
            print_json(&json!({
                "counters": list,
                "global": {
                    "missingBackend": g[global::MISSING_BACKEND as usize],
                    "connectionMapFull": g[global::REV_SOCK_FULL as usize],
                    "affinityMapFull": g[global::AFFINITY_FULL as usize],
                    "conntrackFull": g[global::CT_FULL as usize],
                    "malformed": g[global::MALFORMED as usize],
                    "noRoute": g[global::NO_ROUTE as usize],
                    "refuseFailed": g[global::REFUSE_FAILED as usize],
                    "xdpTransmitted": g[global::XDP_TX as usize],
                }
            }))?;
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
                g[global::MISSING_BACKEND as usize],
                g[global::REV_SOCK_FULL as usize],
                g[global::AFFINITY_FULL as usize],
                g[global::CT_FULL as usize],
                g[global::NO_ROUTE as usize],
                g[global::REFUSE_FAILED as usize],
                g[global::XDP_TX as usize]
            );
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(a.interval.max(0.1)));
        println!();
    }
}
