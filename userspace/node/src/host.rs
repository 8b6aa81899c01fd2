//! Facts about the host the Node object reports: capacity, addresses,
//! system info. Parsing is pure; reading /proc and /etc is at the edges.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Total memory in bytes from /proc/meminfo's text.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// `PRETTY_NAME` from /etc/os-release's text.
pub fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// Capacity as the Node reports it: cpu, memory, pods, ephemeral storage.
pub fn capacity(cpus: usize, memory: u64, max_pods: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpu".to_string(), cpus.to_string()),
        ("memory".to_string(), format!("{}Ki", memory / 1024)),
        ("pods".to_string(), max_pods.to_string()),
    ])
}

/// What pods may use: capacity less a reserve for the system (100m CPU and
/// 256 MiB, or what there is).
pub fn allocatable(cpus: usize, memory: u64, max_pods: u32) -> BTreeMap<String, String> {
    let milli = (cpus as u64 * 1000).saturating_sub(100).max(100);
    let mem = memory.saturating_sub(256 << 20).max(memory / 2);
    BTreeMap::from([
        ("cpu".to_string(), format!("{milli}m")),
        ("memory".to_string(), format!("{}Ki", mem / 1024)),
        ("pods".to_string(), max_pods.to_string()),
    ])
}

pub fn read_mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .unwrap_or(0)
}

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub fn read_os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .map(|t| os_image(&t))
        .unwrap_or_else(|_| "Linux".into())
}

pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The source address the kernel would use to reach the outside (the
/// default route's): a UDP connect sends no packet.
pub fn default_ipv4() -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-1: never sent to, only routed.
    s.connect("192.0.2.1:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_os_release() {
        assert_eq!(
            mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        assert_eq!(
            os_image("ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn allocatable_leaves_a_reserve() {
        let a = allocatable(2, 8 << 30, 110);
        assert_eq!(a["cpu"], "1900m");
        assert_eq!(
            a["memory"],
            format!("{}Ki", ((8u64 << 30) - (256 << 20)) / 1024)
        );
        assert_eq!(capacity(2, 8 << 30, 110)["pods"], "110");
    }
}
