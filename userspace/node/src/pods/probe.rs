//! Liveness, readiness and startup probes: exec (in the container), HTTP
//! GET and TCP connect to the pod's address, each with its timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use skiff_api::v1::{Container, IntOrString, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::{Containerd, ExecIo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

/// Probe timings with Kubernetes' defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: i32, default: u64| Duration::from_secs(if v > 0 { v as u64 } else { default });
    Timing {
        initial_delay: Duration::from_secs(p.initial_delay_seconds.max(0) as u64),
        period: secs(p.period_seconds, 10),
        timeout: secs(p.timeout_seconds, 1),
        success_threshold: if p.success_threshold > 0 {
            p.success_threshold as u32
        } else {
            1
        },
        failure_threshold: if p.failure_threshold > 0 {
            p.failure_threshold as u32
        } else {
            3
        },
    }
}

/// A named or numbered port of the container.
pub fn resolve_port(c: &Container, port: Option<&IntOrString>) -> Result<u16, String> {
    let Some(p) = port else {
        return Err("the probe has no port".into());
    };
    if p.is_string || !p.str_val.is_empty() {
        return c
            .ports
            .iter()
            .find(|cp| cp.name == p.str_val)
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {:?}", p.str_val));
    }
    u16::try_from(p.int_val)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {} is out of range", p.int_val))
}

/// Runs one probe; `Ok(())` is success, `Err` says why it failed.
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    runtime: &Containerd,
    container_id: &str,
    exec_seq: u64,
) -> Result<(), String> {
    let t = timing(probe);
    if let Some(exec) = &probe.exec {
        let exec_id = format!("probe-{exec_seq}");
        let process = crate::spec::exec_process(
            &exec.command,
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            false,
        );
        let r = tokio::time::timeout(t.timeout, async {
            runtime
                .exec(container_id, &exec_id, &process, &ExecIo::default())
                .await
                .map_err(|e| e.to_string())?;
            runtime
                .wait(container_id, &exec_id)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        let _ = runtime.delete_exec(container_id, &exec_id).await;
        return match r {
            Err(_) => {
                let _ = runtime.kill_exec(container_id, &exec_id, 9).await;
                Err(format!("command timed out after {:?}", t.timeout))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(s)) if s.code == 0 => Ok(()),
            Ok(Ok(s)) => Err(format!("command exited with {}", s.code)),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = resolve_port(container, http.port.as_ref())?;
        let host: IpAddr = if http.host.is_empty() {
            pod_ip
        } else {
            http.host
                .parse()
                .map_err(|_| format!("host {:?} is not an IP address", http.host))?
        };
        let path = if http.path.is_empty() {
            "/"
        } else {
            http.path.as_str()
        };
        return tokio::time::timeout(
            t.timeout,
            http_get(SocketAddr::new(host, port), path, &http.http_headers),
        )
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} timed out after {:?}", t.timeout)));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(container, tcp.port.as_ref())?;
        let addr = SocketAddr::new(pod_ip, port);
        return match tokio::time::timeout(t.timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial {addr}: {e}")),
            Err(_) => Err(format!("dial {addr} timed out")),
        };
    }
    Err("the probe has no handler (exec, httpGet or tcpSocket)".into())
}

/// An HTTP/1.1 GET; 200–399 is success, as in the kubelet.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[skiff_api::v1::HttpHeader],
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in headers {
        if h.name.contains(['\r', '\n']) || h.value.contains(['\r', '\n']) {
            return Err("a probe header holds a line break".into());
        }
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let code: u16 = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: not an HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET http://{addr}{path}: HTTP {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::v1::ContainerPort;

    #[test]
    fn defaults_and_ports() {
        let t = timing(&Probe::default());
        assert_eq!(
            (
                t.period.as_secs(),
                t.timeout.as_secs(),
                t.success_threshold,
                t.failure_threshold
            ),
            (10, 1, 1, 3)
        );
        let c = Container {
            ports: vec![ContainerPort {
                name: "http".into(),
                container_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        let named = IntOrString {
            str_val: "http".into(),
            is_string: true,
            ..Default::default()
        };
        assert_eq!(resolve_port(&c, Some(&named)), Ok(8080));
        let num = IntOrString {
            int_val: 81,
            ..Default::default()
        };
        assert_eq!(resolve_port(&c, Some(&num)), Ok(81));
        let bad = IntOrString {
            str_val: "nope".into(),
            is_string: true,
            ..Default::default()
        };
        assert!(resolve_port(&c, Some(&bad)).is_err());
    }
}
