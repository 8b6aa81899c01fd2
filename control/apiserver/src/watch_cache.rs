//! The watch cache: the API server follows the store with one watch and
//! fans decoded events out to any number of watchers, keeping a window of
//! recent events so a watcher can resume from a recent resourceVersion
//! without touching the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::{Kind, Object};
use skiff_store::Revision;
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

impl WatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchType::Added => "ADDED",
            WatchType::Modified => "MODIFIED",
            WatchType::Deleted => "DELETED",
        }
    }
}

/// An object as watchers receive it: decoded once, and encoded (protobuf
/// for gRPC, JSON for REST) at most once however many watchers send it.
#[derive(Debug)]
pub struct EventObject {
    pub object: Object,
    proto: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl EventObject {
    pub fn new(object: Object) -> Arc<EventObject> {
        Arc::new(EventObject {
            object,
            proto: OnceLock::new(),
            json: OnceLock::new(),
        })
    }

    pub fn proto(&self) -> Bytes {
        self.proto
            .get_or_init(|| Bytes::from(self.object.encode()))
            .clone()
    }

    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(self.object.to_json().to_string()))
            .clone()
    }
}

/// One change to one object. It is decoded lazily, once, the first time a
/// watcher of its kind looks: writes of kinds nobody watches cost nothing
/// here. For a delete, the object is the last state, with the deletion's
/// resourceVersion.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: Revision,
    pub kind: Kind,
    pub event_type: WatchType,
    key: String,
    raw: Arc<[u8]>,
    prev_raw: Option<Vec<u8>>,
    object: OnceLock<Option<Arc<EventObject>>>,
    prev: OnceLock<Option<Object>>,
}

impl CachedEvent {
    /// `raw` is the stored object (for a delete, what was deleted);
    /// `prev_raw` what a modification replaced.
    pub fn new(
        revision: Revision,
        kind: Kind,
        event_type: WatchType,
        key: String,
        raw: Vec<u8>,
        prev_raw: Option<Vec<u8>>,
    ) -> CachedEvent {
        CachedEvent {
            revision,
            kind,
            event_type,
            key,
            raw: raw.into(),
            prev_raw,
            object: OnceLock::new(),
            prev: OnceLock::new(),
        }
    }

    /// What the event costs the window: its stored bytes, with room for
    /// the decoded object and its encodings that serving it adds (decoded,
    /// an object of many small labels takes about 12 times its protobuf).
    fn cost(&self) -> usize {
        16 * self.raw.len() + self.prev_raw.as_ref().map_or(0, Vec::len) + 512
    }

    /// The object, or `None` if its bytes do not decode.
    pub fn object(&self) -> Option<&Arc<EventObject>> {
        self.object
            .get_or_init(|| {
                crate::codec::decode_object(self.kind, &self.raw, self.revision, &self.key)
                    .map(EventObject::new)
            })
            .as_ref()
    }

    /// The object without keeping it decoded (a follower that reads every
    /// event must not make the window hold them all decoded): the decoded
    /// one if a watcher already made it, else a fresh decode.
    pub fn peek(&self) -> Option<std::borrow::Cow<'_, Object>> {
        if let Some(done) = self.object.get() {
            return done.as_ref().map(|o| std::borrow::Cow::Borrowed(&o.object));
        }
        crate::codec::decode_object(self.kind, &self.raw, self.revision, &self.key)
            .map(std::borrow::Cow::Owned)
    }

    pub fn prev(&self) -> Option<&Object> {
        self.prev
            .get_or_init(|| {
                let raw = self.prev_raw.as_deref()?;
                crate::codec::decode_object(self.kind, raw, self.revision, &self.key)
            })
            .as_ref()
    }
}

/// What one watcher wants to see.
#[derive(Clone, Debug)]
pub struct Filter {
    pub kind: Kind,
    /// Empty: every namespace.
    pub namespace: String,
    pub labels: Selector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Object) -> bool {
        (self.namespace.is_empty() || obj.meta().namespace == self.namespace)
            && self.labels.matches(&obj.meta().labels)
            && self.fields.matches_with(|f| obj.field(f))
    }

    /// What this watcher sees of an event: an object entering the
    /// selection is ADDED, one leaving it is DELETED, as Kubernetes does.
    pub fn view(&self, ev: &CachedEvent) -> Option<WatchType> {
        if ev.kind != self.kind {
            return None;
        }
        let now = self.matches(&ev.object()?.object);
        match ev.event_type {
            WatchType::Added | WatchType::Deleted => now.then_some(ev.event_type),
            WatchType::Modified => {
                let before = ev.prev().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(WatchType::Modified),
                    (false, true) => Some(WatchType::Added),
                    (true, false) => Some(WatchType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }
}

struct Window {
    events: VecDeque<Arc<CachedEvent>>,
    /// What the events in the window cost, as [`CachedEvent::cost`] counts.
    bytes: usize,
    /// The window holds every event with a revision above this.
    start: Revision,
    tx: broadcast::Sender<Arc<CachedEvent>>,
}

/// Events as they happen, after a backlog.
pub type Live = broadcast::Receiver<Arc<CachedEvent>>;

/// Events the live channel holds for a watcher that is behind (which keeps
/// them alive too: a watcher further behind catches up from the window).
const LIVE: usize = 1024;

pub struct WatchCache {
    window: Mutex<Window>,
    /// The window holds at most this many events and this many bytes of
    /// them: a few huge objects take as much room as many small ones.
    capacity: usize,
    budget: usize,
    /// Each object's newest stored bytes the feed has seen, by store key
    /// (sharing the event's allocation): what a compare-and-set update
    /// starts from when its resourceVersion is this revision, with no read
    /// of the store first (as kube-apiserver's cacher does). Deleted keys
    /// leave; a reset empties it.
    current: Mutex<HashMap<String, Stored>>,
    /// Every event up to this revision has been pushed: the feed says so
    /// when the store's watch has nothing more ready, so a whole revision
    /// (several events of one transaction) is in before it counts.
    complete: tokio::sync::watch::Sender<Revision>,
}

/// An object's stored bytes and the revision that wrote them.
type Stored = (Revision, Arc<[u8]>);

impl WatchCache {
    pub fn new(start: Revision, capacity: usize, budget: usize) -> WatchCache {
        let (tx, _) = broadcast::channel(LIVE);
        WatchCache {
            window: Mutex::new(Window {
                events: VecDeque::new(),
                bytes: 0,
                start,
                tx,
            }),
            capacity,
            budget,
            current: Mutex::new(HashMap::new()),
            complete: tokio::sync::watch::Sender::new(start),
        }
    }

    /// Every event up to `rev` has been pushed (never goes back).
    pub fn complete_to(&self, rev: Revision) {
        self.complete.send_if_modified(|r| {
            let newer = rev > *r;
            if newer {
                *r = rev;
            }
            newer
        });
    }

    /// The revision up to which every event has been pushed.
    pub fn complete(&self) -> Revision {
        *self.complete.borrow()
    }

    /// Waits up to `wait` for the cache to reach `rev`; false if it did not.
    pub async fn wait_for(&self, rev: Revision, wait: std::time::Duration) -> bool {
        let mut rx = self.complete.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|r| *r >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The stored bytes of `key` at revision `rev`, if the feed has seen
    /// that revision as the key's newest.
    pub fn current_at(&self, key: &str, rev: Revision) -> Option<Arc<[u8]>> {
        let cur = self.current.lock().expect("watch cache poisoned");
        cur.get(key)
            .filter(|(r, _)| *r == rev)
            .map(|(_, raw)| raw.clone())
    }

    /// A write this server just made (at `rev`, with these stored bytes),
    /// known before the store's watch brings it back.
    pub fn wrote(&self, key: &str, rev: Revision, raw: Arc<[u8]>) {
        let mut cur = self.current.lock().expect("watch cache poisoned");
        match cur.get_mut(key) {
            Some(slot) if slot.0 >= rev => {}
            Some(slot) => *slot = (rev, raw),
            None => {
                cur.insert(key.to_string(), (rev, raw));
            }
        }
    }

    pub fn push(&self, ev: CachedEvent) {
        {
            let mut cur = self.current.lock().expect("watch cache poisoned");
            // Never back: an own write may already be newer than the event.
            let newer = cur.get(&ev.key).is_none_or(|(r, _)| *r <= ev.revision);
            match ev.event_type {
                WatchType::Deleted if newer => {
                    cur.remove(&ev.key);
                }
                WatchType::Deleted => {}
                _ if newer => {
                    cur.insert(ev.key.clone(), (ev.revision, ev.raw.clone()));
                }
                _ => {}
            }
        }
        let ev = Arc::new(ev);
        let mut w = self.window.lock().expect("watch cache poisoned");
        w.bytes += ev.cost();
        while (w.events.len() >= self.capacity || w.bytes > self.budget)
            && let Some(old) = w.events.pop_front()
        {
            // Keep whole revisions: everything above `start` is present.
            w.start = old.revision;
            w.bytes -= old.cost();
            while w.events.front().is_some_and(|e| e.revision == old.revision) {
                let e = w.events.pop_front().expect("front");
                w.bytes -= e.cost();
            }
        }
        w.events.push_back(ev.clone());
        let _ = w.tx.send(ev);
    }

    /// The events after `after` and a receiver for what follows, or `None`
    /// when the window no longer reaches back that far.
    pub fn subscribe_from(&self, after: Revision) -> Option<(Vec<Arc<CachedEvent>>, Live)> {
        let w = self.window.lock().expect("watch cache poisoned");
        if after < w.start {
            return None;
        }
        let rx = w.tx.subscribe();
        let backlog = w
            .events
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Some((backlog, rx))
    }

    /// After a gap in the store's history: forget the window and end every
    /// current watch, so their clients re-watch (and relist if needed).
    pub fn reset(&self, start: Revision) {
        self.current.lock().expect("watch cache poisoned").clear();
        let mut w = self.window.lock().expect("watch cache poisoned");
        w.events.clear();
        w.bytes = 0;
        w.start = start;
        self.complete_to(start);
        let (tx, _) = broadcast::channel(LIVE);
        w.tx = tx;
    }

    pub fn watchers(&self) -> usize {
        self.window
            .lock()
            .expect("watch cache poisoned")
            .tx
            .receiver_count()
    }
}

/// Turns a store event into a watch event (decoded when first needed).
pub fn decode_event(ev: &skiff_store::Event) -> Option<CachedEvent> {
    let kind = crate::codec::kind_of_key(&ev.key)?;
    let (event_type, raw, prev_raw) = match ev.kind {
        skiff_store::EventKind::Put => (
            // A key created in this very revision is new to watchers.
            if ev.create_revision == ev.revision {
                WatchType::Added
            } else {
                WatchType::Modified
            },
            ev.value.clone(),
            ev.prev_value.clone(),
        ),
        skiff_store::EventKind::Delete => (WatchType::Deleted, ev.prev_value.clone()?, None),
    };
    Some(CachedEvent::new(
        ev.revision,
        kind,
        event_type,
        ev.key.clone(),
        raw,
        prev_raw,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: Revision, t: WatchType, raw: &[u8]) -> CachedEvent {
        CachedEvent::new(rev, Kind::ConfigMap, t, "k".into(), raw.to_vec(), None)
    }

    #[test]
    fn own_writes_are_current_until_the_feed_passes_them() {
        let c = WatchCache::new(0, 16, usize::MAX);
        c.push(ev(5, WatchType::Added, b"five"));
        c.wrote("k", 7, Arc::from(&b"seven"[..]));
        assert_eq!(c.current_at("k", 7).as_deref(), Some(&b"seven"[..]));
        // The feed catching up with an older revision does not go back.
        c.push(ev(6, WatchType::Modified, b"six"));
        assert_eq!(c.current_at("k", 6), None);
        assert_eq!(c.current_at("k", 7).as_deref(), Some(&b"seven"[..]));
        // An own write older than what the feed has is ignored.
        c.push(ev(8, WatchType::Modified, b"eight"));
        c.wrote("k", 7, Arc::from(&b"stale"[..]));
        assert_eq!(c.current_at("k", 8).as_deref(), Some(&b"eight"[..]));
        c.push(ev(9, WatchType::Deleted, b"eight"));
        assert_eq!(c.current_at("k", 8), None);
    }

    #[test]
    fn the_window_keeps_to_its_count_and_its_bytes() {
        // Room for 100 events, or 3 of 1,000 stored bytes.
        let budget = 3 * (16 * 1000 + 512);
        let c = WatchCache::new(0, 100, budget);
        for rev in 1..=10 {
            c.push(ev(rev, WatchType::Added, &[b'x'; 1000]));
        }
        let (backlog, _) = c.subscribe_from(7).expect("the last three are kept");
        assert_eq!(backlog.len(), 3);
        assert!(c.subscribe_from(6).is_none(), "older ones are gone");
        // Small events: the count bounds the window.
        let c = WatchCache::new(0, 4, budget);
        for rev in 1..=10 {
            c.push(ev(rev, WatchType::Added, b"s"));
        }
        assert_eq!(c.subscribe_from(6).unwrap().0.len(), 4);
        assert!(c.subscribe_from(5).is_none());
    }

    #[test]
    fn a_receiver_behind_the_live_feed_catches_up_from_the_window() {
        let c = WatchCache::new(0, 10_000, usize::MAX);
        let (_, mut rx) = c.subscribe_from(0).unwrap();
        let n = 3 * LIVE as i64;
        for rev in 1..=n {
            c.push(ev(rev, WatchType::Added, b"v"));
        }
        let lagged = rx.try_recv();
        assert!(
            matches!(lagged, Err(broadcast::error::TryRecvError::Lagged(_))),
            "{lagged:?}"
        );
        // What the registry's watch does then: everything after the last
        // event it gave, from the window, and live events after that.
        let (backlog, mut rx) = c.subscribe_from(0).expect("the window reaches back");
        assert_eq!(backlog.len() as i64, n);
        assert!(
            backlog
                .windows(2)
                .all(|w| w[0].revision + 1 == w[1].revision)
        );
        c.push(ev(n + 1, WatchType::Added, b"v"));
        assert_eq!(rx.try_recv().unwrap().revision, n + 1);
    }
}
