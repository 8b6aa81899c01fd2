//! When a stopped container starts again: the restart policy, and the
//! kubelet's crash back-off (immediately the first time, then 10 s doubling
//! to 5 min; reset once a container ran for 10 minutes).

use std::time::Duration;

/// Whether a container that exited with `exit_code` restarts.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    /// The delay the next crash gets; `None`: restart at once.
    next: Option<Duration>,
}

/// A container that ran this long is healthy again: its back-off resets.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            next: None,
        }
    }

    /// The delay before restarting a container that ran for `ran`.
    pub fn on_exit(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = None;
        }
        let delay = self.next.unwrap_or(Duration::ZERO);
        self.next = Some(match self.next {
            None => self.base,
            Some(d) => (d * 2).min(self.max),
        });
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("", 0));
        assert!(should_restart("OnFailure", 2));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.on_exit(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.on_exit(RESET_AFTER).as_secs(), 0);
        assert_eq!(b.on_exit(short).as_secs(), 10);
    }
}
