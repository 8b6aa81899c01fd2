//! The OCI runtime spec of a container, built from its pod: pure, so every
//! rule (command vs entrypoint, env, limits, mounts) is unit-tested.

use std::path::PathBuf;

use serde_json::{Value, json};
use skiff_api::ParsedQuantity;
use skiff_api::v1::Container;

use crate::image::oci::ImageConfig;

/// Everything about the container's surroundings the spec needs.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    /// Environment resolved from the container's `env` (valueFrom done).
    pub env: Vec<(String, String)>,
    pub hostname: String,
    /// The pod's network namespace; `None`: the host's (hostNetwork).
    pub netns: Option<PathBuf>,
    /// cgroup path (relative to each hierarchy's root).
    pub cgroup: String,
    /// Bind mounts: (source on the host, destination, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
}

/// Linux capabilities Docker and containerd give a container by default.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process's argv, by Kubernetes' rules: `command` replaces the
/// image's entrypoint (and drops its cmd); `args` replace the image's cmd.
pub fn argv(c: &Container, image: &ImageConfig) -> Result<Vec<String>, String> {
    let entry = if c.command.is_empty() {
        image.config.entrypoint.clone().unwrap_or_default()
    } else {
        c.command.clone()
    };
    let args = if !c.args.is_empty() {
        c.args.clone()
    } else if c.command.is_empty() {
        image.config.cmd.clone().unwrap_or_default()
    } else {
        Vec::new()
    };
    let argv: Vec<String> = entry.into_iter().chain(args).collect();
    if argv.is_empty() {
        return Err(
            "no command: the container sets none and the image has no entrypoint or cmd".into(),
        );
    }
    Ok(argv)
}

/// Image env first, then the container's (which wins on the same name).
pub fn environment(image: &ImageConfig, env: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for e in image.config.env.iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    set("HOSTNAME", hostname);
    for (k, v) in env {
        set(k, v);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn limit(c: &Container, name: &str) -> Option<ParsedQuantity> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.get(name))
        .and_then(|q| ParsedQuantity::parse(&q.value).ok())
}

fn request(c: &Container, name: &str) -> Option<ParsedQuantity> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.get(name))
        .and_then(|q| ParsedQuantity::parse(&q.value).ok())
}

/// cgroup resources from requests and limits, as the kubelet sets them.
pub fn resources(c: &Container) -> Value {
    let mut r = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(mem) = limit(c, "memory").filter(|q| !q.is_zero()) {
        r["memory"] = json!({ "limit": mem.value() });
    }
    let mut cpu = serde_json::Map::new();
    // Requests (else limits, as Kubernetes defaults them) weight the CPU.
    if let Some(req) = request(c, "cpu").or_else(|| limit(c, "cpu")) {
        let shares = (req.milli_value() * 1024 / 1000).max(2);
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(lim) = limit(c, "cpu").filter(|q| !q.is_zero()) {
        let period = 100_000i64;
        cpu.insert(
            "quota".into(),
            json!((lim.milli_value() * period / 1000).max(1000)),
        );
        cpu.insert("period".into(), json!(period));
    }
    if !cpu.is_empty() {
        r["cpu"] = Value::Object(cpu);
    }
    r
}

pub fn build(input: &SpecInput<'_>) -> Result<Value, String> {
    let c = input.container;
    let args = argv(c, input.image)?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        input
            .image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(format!("workingDir {cwd:?} must be an absolute path"));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for (src, dst, ro) in &input.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if *ro {
            opts.push("ro");
        }
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": opts}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &input.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": environment(input.image, &input.env, &input.hostname),
            "cwd": cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "noNewPrivileges": false,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": input.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": resources(c),
            "cgroupsPath": input.cgroup,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ],
        },
    }))
}

/// The OCI Process of an exec in a running container.
pub fn exec_process(command: &[String], env: Vec<String>, terminal: bool) -> Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": command,
        "env": env,
        "cwd": "/",
        "capabilities": {
            "bounding": CAPABILITIES,
            "effective": CAPABILITIES,
            "permitted": CAPABILITIES,
        },
        "noNewPrivileges": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::oci::RunConfig;
    use skiff_api::v1::{Quantity, ResourceRequirements};

    fn image(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        let v = |s: &[&str]| (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect());
        ImageConfig {
            config: RunConfig {
                entrypoint: v(entry),
                cmd: v(cmd),
                env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn container(command: &[&str], args: &[&str]) -> Container {
        Container {
            name: "c".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let img = image(&["/entry"], &["cmd1"]);
        assert_eq!(
            argv(&container(&[], &[]), &img).unwrap(),
            ["/entry", "cmd1"]
        );
        assert_eq!(
            argv(&container(&[], &["a"]), &img).unwrap(),
            ["/entry", "a"]
        );
        assert_eq!(argv(&container(&["sh"], &[]), &img).unwrap(), ["sh"]);
        assert_eq!(
            argv(&container(&["sh"], &["-c", "x"]), &img).unwrap(),
            ["sh", "-c", "x"]
        );
        assert!(argv(&container(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn env_container_wins_and_hostname_is_set() {
        let env = environment(&image(&[], &["x"]), &[("A".into(), "pod".into())], "web-0");
        assert!(env.contains(&"PATH=/bin".to_string()));
        assert!(env.contains(&"A=pod".to_string()));
        assert!(env.contains(&"HOSTNAME=web-0".to_string()));
        assert!(!env.contains(&"A=image".to_string()));
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let mut c = container(&["x"], &[]);
        c.resources = Some(ResourceRequirements {
            limits: [
                (
                    "memory".to_string(),
                    Quantity {
                        value: "64Mi".into(),
                    },
                ),
                (
                    "cpu".to_string(),
                    Quantity {
                        value: "250m".into(),
                    },
                ),
            ]
            .into(),
            requests: [(
                "cpu".to_string(),
                Quantity {
                    value: "100m".into(),
                },
            )]
            .into(),
        });
        let r = resources(&c);
        assert_eq!(r["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(r["cpu"]["quota"], 25_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["shares"], 102);
        assert!(resources(&container(&["x"], &[])).get("memory").is_none());
    }

    #[test]
    fn spec_has_the_pod_netns_cgroup_and_mounts() {
        let c = container(&["httpd"], &["-f"]);
        let img = image(&[], &[]);
        let s = build(&SpecInput {
            container: &c,
            image: &img,
            env: vec![],
            hostname: "p".into(),
            netns: Some("/run/skiff/netns/u1".into()),
            cgroup: "/skiff/pods/u1/c".into(),
            mounts: vec![(
                "/var/lib/skiff/pods/u1/resolv.conf".into(),
                "/etc/resolv.conf".into(),
                true,
            )],
        })
        .unwrap();
        assert_eq!(s["process"]["args"], json!(["httpd", "-f"]));
        assert_eq!(s["linux"]["cgroupsPath"], "/skiff/pods/u1/c");
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/skiff/netns/u1")
        );
        let m = s["mounts"].as_array().unwrap();
        assert!(m.iter().any(|m| m["destination"] == "/etc/resolv.conf"
            && m["options"].as_array().unwrap().contains(&json!("ro"))));
    }
}
