//! Leader election over a Lease (`kube-system/skiff-controllers`): the
//! holder renews it every 2 s; another server takes over once it has not
//! been renewed for 10 s (so within 15 s of the leader's death, counting
//! the 2 s between tries and the Lease's one-second resolution). Writes are compare-and-set on the Lease's
//! resourceVersion, so two servers never both hold it.

use std::time::Duration;

use skiff_api::Lease;
use skiff_api::v1::{LeaseSpec, ObjectMeta, Time};
use skiff_client::Client;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "skiff-controllers";
pub const DURATION: Duration = Duration::from_secs(10);
pub const RENEW: Duration = Duration::from_secs(2);

fn now_secs() -> i64 {
    Time::now().seconds
}

/// Whether a lease held by someone else has run out at `now`.
pub fn expired(spec: &LeaseSpec, now: i64) -> bool {
    let renewed = spec.renew_time.map(|t| t.seconds).unwrap_or(0);
    let dur = i64::from(
        spec.lease_duration_seconds
            .unwrap_or(DURATION.as_secs() as i32),
    );
    now > renewed + dur
}

/// Tries once to take or keep the lease; `Ok(true)`: we hold it.
pub async fn try_acquire(client: &Client, me: &str) -> anyhow::Result<bool> {
    let now = Time::now();
    let fresh = |transitions: i32, acquired: Option<Time>| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(DURATION.as_secs() as i32),
        acquire_time: acquired.or(Some(now)),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
    };
    match client.get::<Lease>(NAMESPACE, NAME).await {
        Ok(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let mine = spec.holder_identity.as_deref() == Some(me);
            if !mine && !expired(&spec, now_secs()) {
                return Ok(false);
            }
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
            lease.spec = Some(fresh(
                transitions,
                if mine { spec.acquire_time } else { None },
            ));
            // Compare-and-set: the resourceVersion read above must still hold.
            match client.update(&lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                metadata: Some(ObjectMeta {
                    name: NAME.into(),
                    namespace: NAMESPACE.into(),
                    ..Default::default()
                }),
                spec: Some(fresh(0, None)),
            };
            match client.create(&lease).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `start` while this process leads; stops what it started when the
/// lease is lost, and competes again.
pub async fn run_elected<F>(client: Client, me: String, start: F)
where
    F: Fn(Client) -> Vec<tokio::task::JoinHandle<()>>,
{
    // Dropping this future (the task aborted) stops what it started.
    let mut running: Option<Vec<skiff_runtime::AbortOnDrop>> = None;
    let mut last_ok = std::time::Instant::now();
    loop {
        let held = match try_acquire(&client, &me).await {
            Ok(h) => {
                if h {
                    last_ok = std::time::Instant::now();
                }
                h
            }
            Err(e) => {
                tracing::warn!("leader election: {e}");
                // Keep leading only while the lease cannot have run out.
                running.is_some() && last_ok.elapsed() < DURATION - RENEW * 2
            }
        };
        match (held, running.is_some()) {
            (true, false) => {
                tracing::info!(identity = %me, "leading: starting the controllers and scheduler");
                running = Some(
                    start(client.clone())
                        .into_iter()
                        .map(skiff_runtime::AbortOnDrop)
                        .collect(),
                );
            }
            (false, true) => {
                tracing::warn!(identity = %me, "lost the lease: stopping the controllers and scheduler");
                running = None;
            }
            _ => {}
        }
        tokio::time::sleep(RENEW).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let spec = LeaseSpec {
            renew_time: Some(Time {
                seconds: 100,
                nanos: 0,
            }),
            lease_duration_seconds: Some(10),
            ..Default::default()
        };
        assert!(!expired(&spec, 105));
        assert!(!expired(&spec, 110));
        assert!(expired(&spec, 111));
    }
}
