//! Failpoints for fault tests, as etcd's gofail: `SKIFF_FAILPOINTS` names
//! points and what happens there, `name=delay(MS)` separated by `;` (for
//! example `replicaset-status=delay(400)`). Read once; unset, a point costs
//! one lookup in an empty map.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

fn points() -> &'static HashMap<String, Duration> {
    static POINTS: OnceLock<HashMap<String, Duration>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("SKIFF_FAILPOINTS").unwrap_or_default();
        let parsed = parse(&spec);
        if !parsed.is_empty() {
            tracing::warn!("failpoints enabled: {spec}");
        }
        parsed
    })
}

/// `a=delay(10);b=delay(20)` → {a: 10 ms, b: 20 ms}; anything else is
/// ignored with a warning.
pub fn parse(spec: &str) -> HashMap<String, Duration> {
    let mut out = HashMap::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let ms = part.split_once('=').and_then(|(name, action)| {
            let ms = action.strip_prefix("delay(")?.strip_suffix(')')?;
            Some((name.trim().to_string(), ms.trim().parse::<u64>().ok()?))
        });
        match ms {
            Some((name, ms)) => {
                out.insert(name, Duration::from_millis(ms));
            }
            None => tracing::warn!("failpoint {part:?} not understood (name=delay(MS))"),
        }
    }
    out
}

/// Waits as the failpoint `name` says (not at all when it is not set).
pub async fn hit(name: &str) {
    if let Some(d) = points().get(name) {
        tokio::time::sleep(*d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delays_and_skips_the_rest() {
        let p = parse("replicaset-status=delay(400); x=delay(1);bad;y=sleep(3)");
        assert_eq!(p.len(), 2);
        assert_eq!(p["replicaset-status"], Duration::from_millis(400));
        assert_eq!(p["x"], Duration::from_millis(1));
    }
}
