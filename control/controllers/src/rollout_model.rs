//! A model check of a rollout: every interleaving of the deployment
//! controller (acting on a copy of the ReplicaSets that may lag the
//! server's), the ReplicaSet controller and the pods (becoming ready,
//! finishing termination), explored exhaustively from a template change.
//! In every reachable state the strategy's bounds hold, and every state
//! where nothing can happen any more is the finished rollout.
//!
//! The deployment controller's decisions are the real ones
//! ([`rolling`], [`recreate_targets`]); the ReplicaSet controller is
//! modelled as `replicaset::sync` acts: it creates or deletes (not-ready
//! pods first) to its spec, then reports a status that counts its own
//! creations and deletions. Its writes are atomic here; in the real loop a
//! status write made from an older copy fails its compare-and-set, which is
//! the same as not having happened.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::deployment::{RsView, recreate_targets, rolling};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Status {
    replicas: i32,
    available: i32,
    terminating: i32,
    observed: u32,
}

/// One version of a ReplicaSet object: spec, generation, status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Version {
    spec: i32,
    generation: u32,
    status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Rs {
    server: Version,
    /// The deployment controller's copy, and whether it is the latest
    /// (its compare-and-set succeeds only then).
    seen: Version,
    fresh: bool,
    pending: i32,
    ready: i32,
    terminating: i32,
}

impl Rs {
    fn live(&self) -> i32 {
        self.pending + self.ready
    }
    fn any(&self) -> i32 {
        self.live() + self.terminating
    }
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Rolling { surge: i32, unavailable: i32 },
    Recreate,
}

/// `[old, new]`.
type World = [Rs; 2];

fn view(name: &str, v: &Version, created: i64) -> RsView {
    RsView {
        name: name.into(),
        replicas: v.spec,
        status_replicas: v.status.replicas,
        status_available: v.status.available,
        status_terminating: v.status.terminating,
        observed: v.status.observed >= v.generation,
        created,
    }
}

fn plan(strategy: Strategy, desired: i32, new: &RsView, old: &[RsView]) -> (i32, i32) {
    let (n, o) = match strategy {
        Strategy::Rolling { surge, unavailable } => rolling(desired, surge, unavailable, new, old),
        Strategy::Recreate => recreate_targets(desired, new, old),
    };
    (n, o[0].1)
}

/// The deployment controller's sync: old first, then new, each a
/// compare-and-set against its copy; a refused write ends the sync.
fn deployment_sync(w: &mut World, strategy: Strategy, desired: i32) {
    let old = view("old", &w[0].seen, 1);
    let new = view("new", &w[1].seen, 2);
    let (new_target, old_target) = plan(strategy, desired, &new, &[old]);
    for (i, target) in [(0, old_target), (1, new_target)] {
        let rs = &mut w[i];
        if rs.seen.spec == target {
            continue;
        }
        if !rs.fresh {
            return;
        }
        rs.server.spec = target;
        rs.server.generation += 1;
        rs.seen = rs.server;
    }
}

/// The ReplicaSet controller's sync of one ReplicaSet.
fn replicaset_sync(rs: &mut Rs) {
    let spec = rs.server.spec;
    if rs.live() < spec {
        rs.pending += spec - rs.live();
    } else if rs.live() > spec {
        let mut n = rs.live() - spec;
        let p = n.min(rs.pending);
        rs.pending -= p;
        n -= p;
        rs.ready -= n;
        rs.terminating += p + n;
    }
    let st = Status {
        replicas: rs.live(),
        available: rs.ready,
        terminating: rs.terminating,
        observed: rs.server.generation,
    };
    if st != rs.server.status {
        rs.server.status = st;
        rs.fresh = false;
    }
}

fn successors(w: &World, strategy: Strategy, desired: i32) -> Vec<World> {
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut World)| {
        let mut n = *w;
        f(&mut n);
        if n != *w {
            out.push(n);
        }
    };
    push(&|n| deployment_sync(n, strategy, desired));
    for i in 0..2 {
        push(&|n| {
            n[i].seen = n[i].server;
            n[i].fresh = true;
        });
        push(&|n| replicaset_sync(&mut n[i]));
        push(&|n| {
            if n[i].pending > 0 {
                n[i].pending -= 1;
                n[i].ready += 1;
            }
        });
        push(&|n| {
            if n[i].terminating > 0 {
                n[i].terminating -= 1;
            }
        });
    }
    out
}

fn violation(w: &World, strategy: Strategy, desired: i32) -> Option<String> {
    let [old, new] = w;
    match strategy {
        Strategy::Rolling { surge, unavailable } => {
            let ready = old.ready + new.ready;
            let live = old.live() + new.live();
            if ready < desired - unavailable {
                return Some(format!("{ready} ready, below {desired} - {unavailable}"));
            }
            if live > desired + surge {
                return Some(format!("{live} pods, above {desired} + {surge}"));
            }
        }
        Strategy::Recreate => {
            if new.any() > 0 && old.any() > 0 {
                return Some(format!(
                    "{} new pods while {} old ones are there",
                    new.any(),
                    old.any()
                ));
            }
        }
    }
    None
}

fn initial(strategy: Strategy, desired: i32) -> World {
    let settled = |spec: i32, pods: i32| {
        let server = Version {
            spec,
            generation: 1,
            status: Status {
                replicas: pods,
                available: pods,
                terminating: 0,
                observed: 1,
            },
        };
        Rs {
            server,
            seen: server,
            fresh: true,
            pending: 0,
            ready: pods,
            terminating: 0,
        }
    };
    let old = settled(desired, desired);
    // The deployment controller creates the new ReplicaSet at the size its
    // decision gives an empty one (no status yet).
    let empty = RsView::default();
    let start = plan(strategy, desired, &empty, &[view("old", &old.seen, 1)]).0;
    let mut new = settled(start, 0);
    new.server.status = Status::default();
    new.seen = new.server;
    [old, new]
}

fn finished(w: &World, desired: i32) -> bool {
    let [old, new] = w;
    new.server.spec == desired
        && new.ready == desired
        && new.pending == 0
        && old.server.spec == 0
        && old.any() == 0
}

/// Explores every state reachable after the template change; returns how
/// many there are, or the path to the first bad one.
fn check(strategy: Strategy, desired: i32) -> Result<usize, String> {
    let first = initial(strategy, desired);
    let mut seen: HashSet<World> = HashSet::from([first]);
    let mut parent: HashMap<World, World> = HashMap::new();
    let mut queue = VecDeque::from([first]);
    let path = |parent: &HashMap<World, World>, mut w: World| {
        let mut steps = vec![w];
        while let Some(p) = parent.get(&w) {
            steps.push(*p);
            w = *p;
        }
        steps.reverse();
        steps
            .iter()
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    while let Some(w) = queue.pop_front() {
        if let Some(why) = violation(&w, strategy, desired) {
            return Err(format!("{why} after:\n{}", path(&parent, w)));
        }
        let next = successors(&w, strategy, desired);
        if next.is_empty() && !finished(&w, desired) {
            return Err(format!("stuck after:\n{}", path(&parent, w)));
        }
        for n in next {
            if seen.insert(n) {
                parent.insert(n, w);
                queue.push_back(n);
            }
        }
    }
    Ok(seen.len())
}

/// Every interleaving keeps the bounds, over at least `at_least` states
/// (so the exploration did happen).
fn explore(strategy: Strategy, desired: i32, at_least: usize) {
    let states = check(strategy, desired).unwrap_or_else(|e| panic!("{e}"));
    assert!(states > at_least, "explored {states} states");
}

#[test]
fn rolling_update_with_no_unavailability_never_drops_a_ready_pod() {
    // The reported case: 6 replicas, maxSurge 1, maxUnavailable 0.
    let strategy = Strategy::Rolling {
        surge: 1,
        unavailable: 0,
    };
    explore(strategy, 6, 1000);
}

#[test]
fn rolling_update_by_percentages_stays_in_bounds() {
    // 25% / 25% of 8: surge 2, unavailable 2, every interleaving.
    let strategy = Strategy::Rolling {
        surge: 2,
        unavailable: 2,
    };
    explore(strategy, 8, 1000);
}

/// 25% / 25% of 20 (surge 5, unavailable 5) has too many states to list:
/// random schedules (a fixed seed, so a failure repeats) to the end.
#[test]
fn rolling_update_of_20_by_percentages_stays_in_bounds_on_random_schedules() {
    let strategy = Strategy::Rolling {
        surge: 5,
        unavailable: 5,
    };
    let desired = 20;
    let mut seed: u64 = 0x5eed_2026;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let first = initial(strategy, desired);
    for walk in 0..2000 {
        let mut w = first;
        for _ in 0..100_000 {
            if let Some(why) = violation(&w, strategy, desired) {
                panic!("walk {walk}: {why} at {w:?}");
            }
            let next_states = successors(&w, strategy, desired);
            if next_states.is_empty() {
                break;
            }
            w = next_states[(next() % next_states.len() as u64) as usize];
        }
        assert!(finished(&w, desired), "walk {walk} did not finish: {w:?}");
    }
}

#[test]
fn rolling_update_with_surge_zero_stays_in_bounds() {
    let strategy = Strategy::Rolling {
        surge: 0,
        unavailable: 1,
    };
    explore(strategy, 4, 100);
}

#[test]
fn recreate_starts_no_new_pod_while_an_old_one_is_there() {
    explore(Strategy::Recreate, 4, 100);
}
