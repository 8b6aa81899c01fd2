//! The DNS addon end to end: a real `skiff server`, `skiff dns` on a free
//! port, objects created with `skiff apply`, and questions asked with `dig`
//! over UDP and TCP; forwarding to a real dnsmasq on loopback.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_testkit::server::Server;
use skiff_testkit::{KillOnDrop, free_port, require_tool, wait_http_ok};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

struct Lab {
    dns_port: u16,
    metrics: String,
    // Dropped first: skiff dns goes before its server.
    _dns: KillOnDrop,
    server: Server,
}

/// A dnsmasq on 127.0.0.1 answering `*.example.test` itself (cacheable for
/// 60 s) and nothing else.
fn dnsmasq() -> Option<(KillOnDrop, u16)> {
    require_tool("dnsmasq")?;
    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--address=/example.test/192.0.2.7",
            "--local-ttl=60",
            "--user=root",
        ])
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    let proc = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig_at(port, &["+short", "a.example.test"]).trim() != "192.0.2.7" {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((proc, port))
}

fn dig_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    /// `upstream`: Some(port) forwards there; None forwards nothing.
    fn start(upstream: Option<u16>) -> Option<Lab> {
        Lab::start_with(upstream, &[])
    }

    /// Like [`Lab::start`], with more `skiff dns` flags.
    fn start_with(upstream: Option<u16>, flags: &[&str]) -> Option<Lab> {
        require_tool("dig")?;
        let server = Server::start(std::path::Path::new(SKIFF), &[], &[]);
        let dns_port = free_port();
        let metrics = format!("127.0.0.1:{}", free_port());
        let upstream_arg = match upstream {
            Some(p) => format!("--upstream=127.0.0.1:{p}"),
            None => "--no-forward".to_string(),
        };
        let dns = KillOnDrop(
            server
                .cmd(&["dns", "--listen"])
                .arg(format!("127.0.0.1:{dns_port}"))
                .args(["--metrics-listen", &metrics, &upstream_arg])
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start skiff dns"),
        );
        assert!(
            wait_http_ok(&metrics, "/healthz", Duration::from_secs(30)),
            "skiff dns did not sync"
        );
        Some(Lab {
            dns_port,
            metrics,
            _dns: dns,
            server,
        })
    }

    fn apply(&self, manifest: &str) {
        let out = self.skiff(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn skiff(&self, args: &[&str], stdin: &str) -> Output {
        self.server.output_stdin(args, stdin)
    }

    fn dig(&self, args: &[&str]) -> String {
        dig_at(self.dns_port, args)
    }

    fn short(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec!["+short"];
        a.extend(args);
        let mut v: Vec<String> = self.dig(&a).lines().map(str::to_string).collect();
        v.sort();
        v
    }

    fn metric(&self, name: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", self.metrics)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Polls until `f` holds; the time it took.
    fn until(&self, what: &str, f: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what}: not within 5 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }
}

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.50.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  clusterIP: 10.96.50.12
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.0.5]
  hostname: db-0
- addresses: [10.244.0.6]
- addresses: [10.244.0.7]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: example.org
";

#[test]
fn every_record_kind_of_the_kubernetes_dns_specification() {
    let Some(lab) = Lab::start(None) else { return };
    lab.apply(SERVICES);
    lab.until("records appear", || {
        !lab.short(&["ext.default.svc.cluster.local"]).is_empty()
    });

    // ClusterIP: A, SRV for named ports only, PTR.
    assert_eq!(
        lab.short(&["web.default.svc.cluster.local"]),
        ["10.96.50.10"]
    );
    assert_eq!(
        lab.short(&["WEB.Default.svc.cluster.local."]),
        ["10.96.50.10"],
        "names are case-insensitive"
    );
    assert_eq!(
        lab.short(&["SRV", "_http._tcp.web.default.svc.cluster.local"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        lab.short(&["-x", "10.96.50.10"]),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        lab.short(&["plain.default.svc.cluster.local"]),
        ["10.96.50.12"]
    );
    let srv = lab.dig(&["SRV", "_9000._tcp.plain.default.svc.cluster.local"]);
    assert!(
        srv.contains("status: NXDOMAIN"),
        "no SRV for an unnamed port: {srv}"
    );
    // Headless: ready endpoints only, by hostname or address, SRV per endpoint, PTR.
    assert_eq!(
        lab.short(&["db.default.svc.cluster.local"]),
        ["10.244.0.5", "10.244.0.6"]
    );
    assert_eq!(
        lab.short(&["db-0.db.default.svc.cluster.local"]),
        ["10.244.0.5"]
    );
    assert_eq!(
        lab.short(&["10-244-0-6.db.default.svc.cluster.local"]),
        ["10.244.0.6"]
    );
    assert_eq!(
        lab.short(&["SRV", "_pg._tcp.db.default.svc.cluster.local"]),
        [
            "0 100 5432 10-244-0-6.db.default.svc.cluster.local.",
            "0 100 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        lab.short(&["-x", "10.244.0.5"]),
        ["db-0.db.default.svc.cluster.local."]
    );
    // ExternalName: a CNAME, whatever the type asked.
    assert_eq!(
        lab.short(&["ext.default.svc.cluster.local", "CNAME"]),
        ["example.org."]
    );
    assert_eq!(
        lab.short(&["ext.default.svc.cluster.local", "A"]),
        ["example.org."]
    );
    // Pods, the schema version.
    assert_eq!(
        lab.short(&["10-1-2-3.default.pod.cluster.local"]),
        ["10.1.2.3"]
    );
    assert_eq!(
        lab.short(&["TXT", "dns-version.cluster.local"]),
        ["\"1.1.0\""]
    );

    // NXDOMAIN with the SOA; NODATA (NOERROR, no answer, SOA) for a name
    // that exists without the type; an empty non-terminal exists.
    let nx = lab.dig(&["nope.default.svc.cluster.local"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{nx}"
    );
    assert!(nx.contains("flags: qr aa"), "authoritative: {nx}");
    let nodata = lab.dig(&["AAAA", "web.default.svc.cluster.local"]);
    assert!(
        nodata.contains("status: NOERROR")
            && nodata.contains("ANSWER: 0")
            && nodata.contains("SOA"),
        "{nodata}"
    );
    let ent = lab.dig(&["default.svc.cluster.local"]);
    assert!(
        ent.contains("status: NOERROR") && ent.contains("ANSWER: 0"),
        "{ent}"
    );
    // TTL: the default 5 s.
    let full = lab.dig(&["web.default.svc.cluster.local"]);
    let words: Vec<String> = full
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        words
            .iter()
            .any(|l| l == "web.default.svc.cluster.local. 5 IN A 10.96.50.10"),
        "{full}"
    );
    // Over TCP too.
    assert_eq!(
        lab.short(&["+tcp", "web.default.svc.cluster.local"]),
        ["10.96.50.10"]
    );
    // The addon registered itself as the cluster's DNS Service.
    assert_eq!(
        lab.short(&["kube-dns.kube-system.svc.cluster.local"]),
        ["10.96.0.10"]
    );
    let slice = lab.skiff(
        &["get", "endpointslices", "-n", "kube-system", "-o", "json"],
        "",
    );
    let slice = String::from_utf8_lossy(&slice.stdout);
    assert!(
        slice.contains(&format!("\"port\": {}", lab.dns_port)) && slice.contains("127.0.0.1"),
        "{slice}"
    );
    // Nothing is forwarded without an upstream: REFUSED.
    let refused = lab.dig(&["example.com"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    assert!(lab.metric("skiff_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\"}") >= 1);
}

#[test]
fn api_changes_show_in_answers_at_once_and_deleted_services_are_gone() {
    let Some(lab) = Lab::start(None) else { return };
    lab.apply(SERVICES);
    lab.until("web appears", || {
        !lab.short(&["web.default.svc.cluster.local"]).is_empty()
    });
    let created = Instant::now();
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: default}\nspec:\n  clusterIP: 10.96.50.11\n  ports: [{port: 80}]\n",
    );
    let applied = created.elapsed();
    let seen = lab.until("a new Service answers", || {
        lab.short(&["late.default.svc.cluster.local"]) == ["10.96.50.11"]
    });
    eprintln!(
        "new Service answered {seen:?} after `skiff apply` returned (apply took {applied:?})"
    );
    let out = lab.skiff(&["delete", "service", "late"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.until("a deleted Service is NXDOMAIN", || {
        lab.dig(&["late.default.svc.cluster.local"])
            .contains("status: NXDOMAIN")
    });
    // An endpoint turning not ready leaves the headless answer.
    lab.apply(&SERVICES.replace(
        "- addresses: [10.244.0.6]\n",
        "- addresses: [10.244.0.6]\n  conditions: {ready: false}\n",
    ));
    lab.until("a not-ready endpoint leaves", || {
        lab.short(&["db.default.svc.cluster.local"]) == ["10.244.0.5"]
    });
}

#[test]
fn other_names_are_forwarded_and_cached() {
    let Some((_dnsmasq, port)) = dnsmasq() else {
        return;
    };
    let Some(lab) = Lab::start(Some(port)) else {
        return;
    };
    assert_eq!(lab.short(&["www.example.test"]), ["192.0.2.7"]);
    let hits = lab.metric("skiff_dns_cache_hits_total");
    assert_eq!(lab.short(&["www.example.test"]), ["192.0.2.7"]);
    assert_eq!(
        lab.metric("skiff_dns_cache_hits_total"),
        hits + 1,
        "the second answer came from the cache"
    );
    // Negative answers are forwarded (and the cluster zone never is).
    let nx = lab.dig(&["nothing.invalid"]);
    assert!(
        nx.contains("status: REFUSED") || nx.contains("status: NXDOMAIN"),
        "{nx}"
    );
    let own = lab.dig(&["nope.svc.cluster.local"]);
    assert!(own.contains("status: NXDOMAIN"), "{own}");
}

#[test]
fn only_pods_and_nodes_get_other_names_resolved() {
    let Some((_dnsmasq, port)) = dnsmasq() else {
        return;
    };
    // Loopback is not among the sources that may recurse here.
    let Some(lab) = Lab::start_with(Some(port), &["--recursion-from", "10.244.0.0/16"]) else {
        return;
    };
    lab.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.7.7\n  ports: [{port: 80}]\n");
    lab.until("the service answers", || {
        lab.short(&["web.default.svc.cluster.local"]) == ["10.96.7.7"]
    });
    let other = lab.dig(&["www.example.test"]);
    assert!(other.contains("status: REFUSED"), "{other}");
    // The default networks include loopback: the same name resolves.
    drop(lab);
    let Some(lab) = Lab::start(Some(port)) else {
        return;
    };
    assert_eq!(lab.short(&["www.example.test"]), ["192.0.2.7"]);
}

#[test]
fn a_large_headless_answer_truncates_over_udp_and_arrives_whole_over_tcp() {
    let Some(lab) = Lab::start(None) else { return };
    let mut m = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: default}\nspec:\n  clusterIP: None\n  ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: default, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nendpoints:\n",
    );
    for i in 0..100 {
        m.push_str(&format!("- addresses: [10.244.1.{i}]\n"));
    }
    lab.apply(&m);
    lab.until("big appears", || {
        lab.dig(&["+tcp", "big.default.svc.cluster.local"])
            .contains("ANSWER: 100")
    });
    let udp = lab.dig(&["+noedns", "+ignore", "big.default.svc.cluster.local"]);
    assert!(
        udp.contains(" tc"),
        "TC set over UDP without EDNS (512 bytes): {udp}"
    );
    let tcp = lab.dig(&["+tcp", "big.default.svc.cluster.local"]);
    assert!(tcp.contains("ANSWER: 100") && !tcp.contains(" tc"), "{tcp}");
    // With a 4096-byte EDNS buffer 100 A records (about 4.5 kB) still do not fit.
    let edns = lab.dig(&["+bufsize=4096", "+ignore", "big.default.svc.cluster.local"]);
    assert!(
        edns.contains(" tc") || edns.contains("ANSWER: 100"),
        "{edns}"
    );
}

#[test]
fn malformed_packets_never_stop_the_server() {
    let Some(lab) = Lab::start(None) else { return };
    lab.apply(SERVICES);
    lab.until("web appears", || {
        !lab.short(&["web.default.svc.cluster.local"]).is_empty()
    });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("127.0.0.1:{}", lab.dns_port);
    let valid = [
        0x12u8, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, b'w', b'e',
        b'b', 0x00, 0x00, 0x01, 0x00, 0x01,
    ];
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        valid[..11].to_vec(),                               // truncated header
        valid[..15].to_vec(),                               // truncated question
        vec![0xff; 512],                                    // garbage
        vec![0u8; 4000],                                    // oversized, all zero
        [&valid[..12], &[0xc0, 0x0c, 0, 1, 0, 1]].concat(), // compression loop
        [&valid[..12], &[63u8; 300][..]].concat(),          // over-long labels
    ];
    // Every record type and a query with 10 questions.
    for t in [0u16, 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 252, 255, 65535] {
        let mut q = valid.to_vec();
        q[17..19].copy_from_slice(&t.to_be_bytes());
        junk.push(q);
    }
    let mut many = valid.to_vec();
    many[5] = 10;
    junk.push(many);
    for j in &junk {
        socket.send_to(j, &target).unwrap();
    }
    // Still answering, over both transports.
    assert_eq!(
        lab.short(&["web.default.svc.cluster.local"]),
        ["10.96.50.10"]
    );
    assert_eq!(
        lab.short(&["+tcp", "web.default.svc.cluster.local"]),
        ["10.96.50.10"]
    );
    let formerr = lab.metric("skiff_dns_requests_total{type=\"-\",rcode=\"FORMERR\"}");
    eprintln!("FORMERR answers: {formerr}");
}
