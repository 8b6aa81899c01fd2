//! A history checker, the idea of Jepsen's Knossos and of Porcupine
//! written for a store with revisions: concurrent clients record each
//! operation's invocation, completion and outcome; the store's own change
//! history (a watch from before the run) gives every committed write its
//! revision. The history is linearizable per key when
//!
//! - every change is a write some client invoked (no phantom), and no
//!   refused write took effect; every acknowledged write is there, at the
//!   revision it was acknowledged with (no loss);
//! - each change follows from the one before it on its key: a create
//!   over nothing, a compare-and-set or a conditional delete over the
//!   revision it named;
//! - revisions respect real time: a write that completed before another
//!   was invoked has the lower revision;
//! - each read saw the key as it was at some revision between the newest
//!   write completed before the read began and the oldest write begun
//!   after it ended;
//!
//! and every watch saw each change after its start once, in order, with
//! no gap. Operations whose outcome is unknown (a timeout, a crash, an
//! ambiguous error) may or may not have happened; the checker takes the
//! history's word for which.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

pub type Rev = i64;

#[derive(Clone, Debug)]
pub enum Call {
    Create {
        value: String,
    },
    /// A compare-and-set from the revision a read returned.
    Update {
        value: String,
        from: Rev,
    },
    /// A delete with the precondition that the key is at `from`.
    Delete {
        from: Rev,
    },
    Get,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An acknowledged write, at this revision.
    Written(Rev),
    /// What a get read: the value and its revision, or nothing.
    Read(Option<(Rev, String)>),
    /// Refused: nothing changed.
    Failed,
    /// No answer, or an ambiguous one: it may have happened.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub process: usize,
    pub key: String,
    pub call: Call,
    pub invoke: Instant,
    pub complete: Instant,
    pub outcome: Outcome,
}

/// One committed change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: Rev,
    pub key: String,
    pub deleted: bool,
    /// The value written (for a delete: the value it removed).
    pub value: String,
}

/// What one watch delivered, across its resumptions, after `from`.
#[derive(Clone, Debug, Default)]
pub struct WatchLog {
    pub from: Rev,
    pub changes: Vec<Change>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    pub acknowledged_writes: usize,
    pub unknown_writes: usize,
    pub refused_writes: usize,
    pub reads: usize,
    pub changes: usize,
    pub watched: usize,
    pub anomalies: Vec<String>,
}

/// Revisions of writes that took effect, by time: for "the newest
/// completed before t" and "the oldest invoked after t".
struct Timeline {
    /// (complete, rev) by complete, with the running maximum of rev.
    completed: Vec<(Instant, Rev)>,
    /// (invoke, rev) by invoke, with the minimum of rev from there on.
    invoked: Vec<(Instant, Rev)>,
}

impl Timeline {
    fn new(effective: &[(&Op, Rev)]) -> Timeline {
        let mut completed: Vec<(Instant, Rev)> = effective
            .iter()
            .filter(|(op, _)| matches!(op.outcome, Outcome::Written(_)))
            .map(|(op, rev)| (op.complete, *rev))
            .collect();
        completed.sort();
        let mut max = 0;
        for c in &mut completed {
            max = max.max(c.1);
            c.1 = max;
        }
        let mut invoked: Vec<(Instant, Rev)> = effective
            .iter()
            .map(|(op, rev)| (op.invoke, *rev))
            .collect();
        invoked.sort();
        let mut min = Rev::MAX;
        for c in invoked.iter_mut().rev() {
            min = min.min(c.1);
            c.1 = min;
        }
        Timeline { completed, invoked }
    }

    /// The newest revision of an acknowledged write completed before `t`.
    fn completed_before(&self, t: Instant) -> Rev {
        let n = self.completed.partition_point(|(c, _)| *c < t);
        if n == 0 { 0 } else { self.completed[n - 1].1 }
    }

    /// The oldest revision of a write invoked after `t`.
    fn invoked_after(&self, t: Instant) -> Rev {
        let n = self.invoked.partition_point(|(i, _)| *i <= t);
        self.invoked.get(n).map_or(Rev::MAX, |x| x.1)
    }
}

pub fn check(ops: &[Op], history: &[Change], watches: &[WatchLog]) -> Report {
    let mut report = Report {
        ops: ops.len(),
        changes: history.len(),
        ..Default::default()
    };
    let anomalies = &mut report.anomalies;
    for w in history.windows(2) {
        if w[1].rev <= w[0].rev {
            anomalies.push(format!("history out of order: {:?} then {:?}", w[0], w[1]));
        }
    }

    // Which operation made each change.
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match &op.call {
            Call::Create { value } | Call::Update { value, .. } => {
                by_value.insert(value.as_str(), i);
            }
            _ => {}
        }
        match (&op.call, &op.outcome) {
            (Call::Get, Outcome::Read(_)) => report.reads += 1,
            (Call::Get, _) => {}
            (_, Outcome::Written(_)) => report.acknowledged_writes += 1,
            (_, Outcome::Unknown) => report.unknown_writes += 1,
            (_, Outcome::Failed) => report.refused_writes += 1,
            _ => {}
        }
    }
    let mut made_by: Vec<Option<usize>> = vec![None; history.len()];
    let mut used = vec![false; ops.len()];
    // The key's state before each change: (rev, deleted) of the previous.
    let mut before: Vec<Option<(Rev, bool)>> = Vec::with_capacity(history.len());
    let mut last: HashMap<&str, (Rev, bool)> = HashMap::new();
    for c in history {
        before.push(last.get(c.key.as_str()).copied());
        last.insert(c.key.as_str(), (c.rev, c.deleted));
    }
    for (h, c) in history.iter().enumerate() {
        let found = if c.deleted {
            // A delete is known by its revision, or it is one whose answer
            // never came, on this key, conditioned on what was there.
            let prev = before[h].map(|(r, _)| r);
            let acknowledged = ops.iter().enumerate().position(|(i, op)| {
                !used[i]
                    && op.key == c.key
                    && matches!((&op.call, &op.outcome), (Call::Delete { .. }, Outcome::Written(r)) if *r == c.rev)
            });
            acknowledged.or_else(|| {
                ops.iter().enumerate().position(|(i, op)| {
                    !used[i]
                        && op.key == c.key
                        && matches!((&op.call, &op.outcome), (Call::Delete { from }, Outcome::Unknown) if Some(*from) == prev)
                })
            })
        } else {
            by_value.get(c.value.as_str()).copied()
        };
        let Some(i) = found else {
            anomalies.push(format!("a change no client made: {c:?}"));
            continue;
        };
        if used[i] {
            anomalies.push(format!("one write applied twice: {c:?}"));
            continue;
        }
        used[i] = true;
        made_by[h] = Some(i);
        let op = &ops[i];
        if op.key != c.key {
            anomalies.push(format!("{c:?} was written to {}", op.key));
        }
        match op.outcome {
            Outcome::Failed => {
                anomalies.push(format!("a refused write took effect: {op:?} as {c:?}"))
            }
            Outcome::Written(r) if r != c.rev => anomalies.push(format!(
                "acknowledged at revision {r} but committed at {}: {op:?}",
                c.rev
            )),
            _ => {}
        }
        let prev = before[h];
        let ok = match &op.call {
            Call::Create { .. } => prev.is_none_or(|(_, deleted)| deleted),
            Call::Update { from, .. } | Call::Delete { from } => prev == Some((*from, false)),
            Call::Get => false,
        };
        if !ok {
            anomalies.push(format!(
                "{:?} applied over {prev:?} (revision, deleted): {c:?}",
                op.call
            ));
        }
    }
    for (i, op) in ops.iter().enumerate() {
        if let Outcome::Written(r) = op.outcome
            && !used[i]
        {
            anomalies.push(format!(
                "an acknowledged write is lost (revision {r}): {op:?}"
            ));
        }
    }

    // Real time.
    let effective: Vec<(&Op, Rev)> = made_by
        .iter()
        .enumerate()
        .filter_map(|(h, i)| i.map(|i| (&ops[i], history[h].rev)))
        .collect();
    let timeline = Timeline::new(&effective);
    for (op, rev) in &effective {
        let earlier = timeline.completed_before(op.invoke);
        if earlier >= *rev {
            anomalies.push(format!(
                "revision {rev} committed after revision {earlier}, whose write completed before it began: {op:?}"
            ));
        }
    }

    // Reads: each key's versions as (from revision, value or none).
    let mut versions: BTreeMap<&str, Vec<(Rev, Option<&str>)>> = BTreeMap::new();
    for c in history {
        versions
            .entry(c.key.as_str())
            .or_insert_with(|| vec![(0, None)])
            .push((c.rev, (!c.deleted).then_some(c.value.as_str())));
    }
    let absent = vec![(0, None)];
    for op in ops {
        let (Call::Get, Outcome::Read(read)) = (&op.call, &op.outcome) else {
            continue;
        };
        let low = timeline.completed_before(op.invoke);
        let high = timeline.invoked_after(op.complete);
        let vs = versions.get(op.key.as_str()).unwrap_or(&absent);
        let visible = |i: usize| {
            let from = vs[i].0;
            let until = vs.get(i + 1).map_or(Rev::MAX, |v| v.0);
            low.max(from) < high.min(until)
        };
        let ok = match read {
            Some((rev, value)) => match vs.iter().position(|v| v.0 == *rev) {
                Some(i) if vs[i].1 == Some(value.as_str()) => visible(i),
                _ => {
                    anomalies.push(format!("read a version never written: {op:?}"));
                    continue;
                }
            },
            None => (0..vs.len()).any(|i| vs[i].1.is_none() && visible(i)),
        };
        if !ok {
            anomalies.push(format!(
                "a stale or early read (must lie between revisions {low} and {high}): {op:?}"
            ));
        }
    }

    // Watches.
    for (n, w) in watches.iter().enumerate() {
        report.watched += w.changes.len();
        let expected: Vec<&Change> = history.iter().filter(|c| c.rev > w.from).collect();
        for (i, got) in w.changes.iter().enumerate() {
            match expected.get(i) {
                Some(want) if *want == got => {}
                Some(want) => {
                    anomalies.push(format!(
                        "watch {n}: change {i} is {got:?}, the history's is {want:?} (a gap, a repeat or a reorder)"
                    ));
                    break;
                }
                None => {
                    anomalies.push(format!("watch {n}: a change the history lacks: {got:?}"));
                    break;
                }
            }
        }
        if w.changes.len() < expected.len() {
            anomalies.push(format!(
                "watch {n}: saw {} of the {} changes after its start",
                w.changes.len(),
                expected.len()
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn op(c: &Clock, key: &str, call: Call, span: (u64, u64), outcome: Outcome) -> Op {
        Op {
            process: 0,
            key: key.into(),
            call,
            invoke: c.at(span.0),
            complete: c.at(span.1),
            outcome,
        }
    }

    fn put(rev: Rev, key: &str, value: &str) -> Change {
        Change {
            rev,
            key: key.into(),
            deleted: false,
            value: value.into(),
        }
    }

    fn create(v: &str) -> Call {
        Call::Create { value: v.into() }
    }

    /// A correct history passes; each kind of anomaly is found.
    #[test]
    fn finds_each_anomaly() {
        let c = Clock(Instant::now());
        let good_ops = vec![
            op(&c, "a", create("a1"), (0, 10), Outcome::Written(5)),
            op(
                &c,
                "a",
                Call::Update {
                    value: "a2".into(),
                    from: 5,
                },
                (20, 30),
                Outcome::Written(7),
            ),
            op(
                &c,
                "a",
                Call::Get,
                (40, 50),
                Outcome::Read(Some((7, "a2".into()))),
            ),
            op(&c, "b", create("b1"), (0, 100), Outcome::Unknown),
            op(&c, "b", Call::Get, (5, 8), Outcome::Read(None)),
        ];
        let history = vec![put(5, "a", "a1"), put(6, "b", "b1"), put(7, "a", "a2")];
        let watch = WatchLog {
            from: 5,
            changes: history[1..].to_vec(),
        };
        let r = check(&good_ops, &history, std::slice::from_ref(&watch));
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(
            (r.acknowledged_writes, r.unknown_writes, r.reads),
            (2, 1, 2)
        );

        let anomalies = |ops: &[Op], history: &[Change], watches: &[WatchLog]| {
            check(ops, history, watches).anomalies
        };
        // A lost acknowledged write.
        assert!(anomalies(&good_ops, &history[..2], &[])[0].contains("lost"));
        // A stale read: a2 was acknowledged before the read began.
        let mut stale = good_ops.clone();
        stale[2].outcome = Outcome::Read(Some((5, "a1".into())));
        assert!(anomalies(&stale, &history, &[])[0].contains("stale"));
        // A read of the future: it ended before the write began.
        let mut early = good_ops.clone();
        early.push(op(&c, "c", create("c1"), (200, 210), Outcome::Written(8)));
        early.push(op(
            &c,
            "c",
            Call::Get,
            (150, 160),
            Outcome::Read(Some((8, "c1".into()))),
        ));
        let mut h = history.clone();
        h.push(put(8, "c", "c1"));
        let a = anomalies(&early, &h, &[]);
        assert!(a[0].contains("early"), "{a:?}");
        // A read of a value nobody wrote.
        let mut invented = good_ops.clone();
        invented[2].outcome = Outcome::Read(Some((7, "a3".into())));
        assert!(anomalies(&invented, &history, &[])[0].contains("never written"));
        // A refused write that took effect, and a phantom.
        let mut refused = good_ops.clone();
        refused[3].outcome = Outcome::Failed;
        assert!(anomalies(&refused, &history, &[])[0].contains("refused"));
        let mut phantom = history.clone();
        phantom.push(put(9, "c", "nobody"));
        assert!(anomalies(&good_ops, &phantom, &[])[0].contains("no client made"));
        // A compare-and-set over the wrong revision.
        let mut cas = good_ops.clone();
        cas[1].call = Call::Update {
            value: "a2".into(),
            from: 4,
        };
        assert!(anomalies(&cas, &history, &[])[0].contains("applied over"));
        // Revisions against real time: a1 completed before a2 began, so a2
        // cannot have the lower revision.
        let mut order = good_ops.clone();
        order[0].outcome = Outcome::Written(7);
        order[1].outcome = Outcome::Written(5);
        order[1].call = create("a2");
        let backwards = vec![put(5, "a", "a2"), put(6, "b", "b1"), put(7, "a", "a1")];
        let a = anomalies(&order, &backwards, &[]);
        assert!(a.iter().any(|x| x.contains("completed before")), "{a:?}");
        // Watches: a gap, a repeat, a short watch.
        let gap = WatchLog {
            from: 5,
            changes: vec![history[2].clone()],
        };
        assert!(anomalies(&good_ops, &history, &[gap])[0].contains("gap"));
        let repeat = WatchLog {
            from: 5,
            changes: vec![history[1].clone(), history[1].clone(), history[2].clone()],
        };
        assert!(!anomalies(&good_ops, &history, &[repeat]).is_empty());
        let short = WatchLog {
            from: 5,
            changes: vec![history[1].clone()],
        };
        assert!(anomalies(&good_ops, &history, &[short])[0].contains("saw 1 of the 2"));
    }
}
