//! The pod's ServiceAccount token, as the kubelet projects it: a token
//! bound to the pod (it stops working when the pod goes), the cluster CA
//! and the namespace, in `<pod dir>/serviceaccount`, which every container
//! gets read-only at `/var/run/secrets/kubernetes.io/serviceaccount`. The
//! token is renewed when 80% of its life has passed; the files are replaced
//! by rename, so readers see one whole token or the other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::json;
use skiff_api::Pod;

use super::Ctx;

pub const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The life the node asks for (the kubelet's default, one hour).
pub const SECONDS: i64 = 3600;

/// Whether the pod gets a token (`automountServiceAccountToken: false`
/// opts out).
pub fn wanted(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.automount_service_account_token != Some(false))
}

pub fn dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("serviceaccount")
}

/// When a token of `seconds` got now is renewed.
pub fn renew_at(now: Instant, seconds: i64) -> Instant {
    now + Duration::from_secs(u64::try_from(seconds.max(60)).unwrap_or(60) * 4 / 5)
}

fn write(path: &Path, data: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Asks the API server for the pod's token and writes the three files;
/// returns when to renew it.
pub async fn refresh(ctx: &Ctx, pod: &Pod, pod_dir: &Path, ca: &str) -> Result<Instant> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .map(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": SECONDS,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta.name, "uid": meta.uid},
        },
    });
    let asked = Instant::now();
    let answer = ctx
        .client
        .service_account_token(&meta.namespace, &account, &request)
        .await
        .with_context(|| format!("a token of service account {account:?}"))?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("the TokenRequest answer has no token"))?;
    let seconds = answer["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(SECONDS);
    let d = dir(pod_dir);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    write(&d.join("ca.crt"), ca)?;
    write(&d.join("namespace"), &meta.namespace)?;
    write(&d.join("token"), token)?;
    Ok(renew_at(asked, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_four_fifths() {
        let now = Instant::now();
        assert_eq!(renew_at(now, 3600) - now, Duration::from_secs(2880));
        assert_eq!(renew_at(now, 0) - now, Duration::from_secs(48));
        let mut pod = Pod::default();
        assert!(!wanted(&pod), "no spec, nothing to run");
        pod.spec = Some(Default::default());
        assert!(wanted(&pod));
        pod.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert!(!wanted(&pod));
    }
}
