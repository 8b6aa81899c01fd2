//! The embedded store: one redb file, fsync'd before a write is
//! acknowledged.
//!
//! One writer thread owns every write. It drains all requests waiting at
//! that moment into a single redb transaction — each request still gets its
//! own revision and sees the ones before it — and commits once, so
//! concurrent writers share one fsync (group commit). Only after the commit
//! are the callers answered and the events broadcast to watchers.
//!
//! Tables: `kv` (key → record), `log` (revision → that revision's events,
//! for resuming watches; trimmed by compaction), `meta` (revision,
//! compacted revision, lease sequence), `leases` (id → TTL) and
//! `lease_keys` (id → keys). Lease deadlines live in memory and restart
//! with a full TTL when the store opens, as etcd does on a leader change.
//!
//! Disk faults. After an I/O error (a full disk, a read-only or failing
//! filesystem, a failed fsync) redb refuses every later read and write
//! until the file is reopened. So the writer reopens it at once — a failed
//! write fails only its own batch — and, while the file cannot be opened,
//! every [`RETRY`], refusing requests meanwhile with
//! [`StoreError::Unavailable`] and the reason. [`Store::fault`] reports the
//! last failure until a write commits again (when nothing else writes, the
//! writer tries a small one every [`RETRY`]). A write whose commit failed
//! is never acknowledged — its fsync may not have reached the disk (the
//! fsyncgate lesson) — but if the reopened file holds it, its events are
//! announced so that watches agree with reads.

#![expect(
    clippy::result_large_err,
    reason = "redb::Error is large, but it travels only on the failure path of a write"
)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::{
    Compare, Event, EventKind, KeyValue, LeaseId, ListPage, ListResult, Op, Result, Revision,
    Store, StoreError, Txn, TxnResult, WatchStream,
};

/// Keys as bytes: a `&str` key would be UTF-8-checked on every comparison.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

/// How many waiting requests one commit may take.
const MAX_BATCH: usize = 4096;

/// How long the snapshot a paged list reads stays after its last page
/// (etcd keeps history about as long before the API server compacts it).
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);

/// How many list snapshots are kept at once (the oldest go first).
const MAX_SNAPSHOTS: usize = 64;

/// How often a store that cannot write tries to reopen its file.
const RETRY: Duration = Duration::from_millis(500);

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

// ------------------------------------------------------------- encodings

fn encode_record(create: Revision, modified: Revision, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    if bytes.len() < 24 {
        return Err(backend(format!("corrupt record for key {key:?}")));
    }
    let int = |i: usize| i64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: int(0),
        mod_revision: int(8),
        lease: int(16),
        value: bytes[24..].to_vec(),
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&e.create_revision.to_le_bytes());
        put_bytes(&mut out, e.key.as_bytes());
        put_bytes(&mut out, &e.value);
        match &e.prev_value {
            Some(p) => {
                out.push(1);
                put_bytes(&mut out, p);
            }
            None => out.push(0),
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
}

fn decode_events(revision: Revision, bytes: &[u8]) -> Result<Vec<Event>> {
    let corrupt = || backend(format!("corrupt event log at revision {revision}"));
    let mut r = Reader { bytes, pos: 0 };
    let mut events = Vec::new();
    while r.pos < bytes.len() {
        let kind = match r.u8().ok_or_else(corrupt)? {
            0 => EventKind::Put,
            _ => EventKind::Delete,
        };
        let create_revision = r.i64().ok_or_else(corrupt)?;
        let key =
            String::from_utf8(r.bytes().ok_or_else(corrupt)?.to_vec()).map_err(|_| corrupt())?;
        let value = r.bytes().ok_or_else(corrupt)?.to_vec();
        let prev_value = match r.u8().ok_or_else(corrupt)? {
            1 => Some(r.bytes().ok_or_else(corrupt)?.to_vec()),
            _ => None,
        };
        events.push(Event {
            kind,
            key,
            value,
            prev_value,
            revision,
            create_revision,
        });
    }
    Ok(events)
}

// ---------------------------------------------------------------- writer

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResult>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
    LeaseGrant(i64, oneshot::Sender<Result<LeaseId>>),
    LeaseRevoke(LeaseId, oneshot::Sender<Result<()>>),
}

/// What the writer thread keeps between batches.
struct WriterState {
    revision: Revision,
    compacted: Revision,
    lease_seq: i64,
    /// The log holds no entry below this revision; entries from here up to
    /// `compacted` are compacted but not yet removed.
    pruned: Revision,
}

/// A reply that is sent only after the batch is durable.
enum Reply {
    Txn(oneshot::Sender<Result<TxnResult>>, Result<TxnResult>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Lease(oneshot::Sender<Result<LeaseId>>, Result<LeaseId>),
}

impl Reply {
    fn fail(self, e: impl Fn() -> StoreError) {
        match self {
            Reply::Txn(tx, _) => drop(tx.send(Err(e()))),
            Reply::Unit(tx, _) => drop(tx.send(Err(e()))),
            Reply::Lease(tx, _) => drop(tx.send(Err(e()))),
        }
    }
    fn send(self) {
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
            Reply::Lease(tx, r) => drop(tx.send(r)),
        }
    }
}

struct Shared {
    /// `None` while the file is closed after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    /// Lease id → (TTL, deadline).
    leases: Mutex<HashMap<LeaseId, (i64, Instant)>>,
    lease_changed: Arc<Notify>,
    compacted: AtomicI64,
    /// Why the store cannot serve, while it cannot.
    fault: Mutex<Option<Fault>>,
    /// I/O errors met since the store opened.
    errors: AtomicU64,
    /// Read snapshots of paged lists, by revision, with their last use:
    /// the next page of a list reads the same state as its first.
    snapshots: Mutex<HashMap<Revision, (Arc<redb::ReadTransaction>, Instant)>>,
    /// Times the file was found behind what had been acknowledged (a disk
    /// that lost synced writes): each ends every watch open before it.
    rewinds: AtomicU64,
}

struct Fault {
    reason: String,
    /// The disk was full: the fault lasts until it has room again.
    no_space: bool,
}

/// After a full disk, how much room must be free again before the store
/// calls itself healthy: an eighth of the filesystem, at most 64 MiB.
fn headroom(total: u64) -> u64 {
    (total / 8).min(64 << 20)
}

/// Free and total bytes of the filesystem holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>> {
        if let Some(db) = self.db.read().expect("database lock poisoned").as_ref() {
            return Ok(db.clone());
        }
        Err(StoreError::Unavailable(
            self.unavailable("nothing was read or stored"),
        ))
    }

    fn fault(&self) -> Option<String> {
        self.fault
            .lock()
            .expect("fault lock poisoned")
            .as_ref()
            .map(|f| f.reason.clone())
    }

    fn set_fault(&self, reason: String, no_space: bool) {
        let mut fault = self.fault.lock().expect("fault lock poisoned");
        if fault.is_none() {
            tracing::error!("store {}: {reason}", self.path.display());
        }
        *fault = Some(Fault { reason, no_space });
    }

    /// A write committed: what failed before works again — once a full
    /// disk has room again.
    fn healed(&self) {
        let mut fault = self.fault.lock().expect("fault lock poisoned");
        let Some(f) = fault.as_mut() else { return };
        if f.no_space {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if let Some((free, total)) = disk_space(dir)
                && free < headroom(total)
            {
                f.reason = format!(
                    "the disk is nearly full ({} KiB free, {} KiB needed) after a write failed: {}",
                    free >> 10,
                    headroom(total) >> 10,
                    f.reason.rsplit(": ").next().unwrap_or_default()
                );
                return;
            }
        }
        *fault = None;
        tracing::info!("store {}: writes work again", self.path.display());
    }

    fn unavailable(&self, what: &str) -> String {
        let reason = self
            .fault()
            .unwrap_or_else(|| "the file is being reopened".into());
        format!(
            "the store cannot use {}: {reason} (it retries by itself); {what}",
            self.path.display()
        )
    }

    /// Turns a redb error into a store error. An I/O error marks the store
    /// faulty, which has the writer reopen the file.
    fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if !matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            return backend(e);
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let no_space = matches!(&e, redb::Error::Io(io) if io.raw_os_error() == Some(28));
        self.set_fault(e.to_string(), no_space);
        StoreError::Unavailable(format!(
            "the store cannot use {}: {e} (it retries by itself)",
            self.path.display()
        ))
    }
}

fn apply_txn(
    tx: &redb::WriteTransaction,
    state: &mut WriterState,
    leases: &HashMap<LeaseId, (i64, Instant)>,
    txn: &Txn,
    events_out: &mut Vec<Event>,
) -> std::result::Result<Result<TxnResult>, redb::Error> {
    let mut kv = tx.open_table(KV)?;
    let mut current = Vec::with_capacity(txn.compares.len());
    let mut ok = true;
    for c in &txn.compares {
        let kv_now = match kv.get(c.key().as_bytes())? {
            Some(v) => Some(
                decode_record(c.key(), v.value())
                    .map_err(|e| redb::Error::Corrupted(e.to_string()))?,
            ),
            None => None,
        };
        ok &= match (c, &kv_now) {
            (Compare::Absent(_), None) => true,
            (Compare::ModRevision(_, rev), Some(k)) => k.mod_revision == *rev,
            _ => false,
        };
        current.push(kv_now);
    }
    if !ok || txn.ops.is_empty() {
        // A transaction without operations only compares (a dry run):
        // it writes nothing and leaves the revision as it is, as etcd's.
        return Ok(Ok(TxnResult {
            succeeded: ok,
            revision: state.revision,
            current,
        }));
    }
    let mut seen = BTreeSet::new();
    for op in &txn.ops {
        let key = match op {
            Op::Put { key, lease, .. } => {
                if *lease != 0 && !leases.contains_key(lease) {
                    return Ok(Err(StoreError::LeaseNotFound(*lease)));
                }
                key
            }
            Op::Delete { key } => key,
        };
        if !seen.insert(key.as_str()) {
            return Ok(Err(StoreError::InvalidTxn(format!(
                "duplicate key {key:?} in one transaction"
            ))));
        }
    }
    let revision = state.revision + 1;
    let mut lease_keys = tx.open_multimap_table(LEASE_KEYS)?;
    let mut events = Vec::new();
    for op in &txn.ops {
        match op {
            Op::Put { key, value, lease } => {
                let prev = match kv.get(key.as_bytes())? {
                    Some(v) => Some(
                        decode_record(key, v.value())
                            .map_err(|e| redb::Error::Corrupted(e.to_string()))?,
                    ),
                    None => None,
                };
                let create = prev.as_ref().map_or(revision, |p| p.create_revision);
                if let Some(p) = &prev
                    && p.lease != 0
                    && p.lease != *lease
                {
                    lease_keys.remove(p.lease, key.as_str())?;
                }
                if *lease != 0 {
                    lease_keys.insert(*lease, key.as_str())?;
                }
                kv.insert(
                    key.as_bytes(),
                    encode_record(create, revision, *lease, value).as_slice(),
                )?;
                events.push(Event {
                    kind: EventKind::Put,
                    key: key.clone(),
                    value: value.clone(),
                    prev_value: prev.map(|p| p.value),
                    revision,
                    create_revision: create,
                });
            }
            Op::Delete { key } => {
                let prev = match kv.remove(key.as_bytes())? {
                    Some(v) => Some(
                        decode_record(key, v.value())
                            .map_err(|e| redb::Error::Corrupted(e.to_string()))?,
                    ),
                    None => None,
                };
                if let Some(p) = prev {
                    if p.lease != 0 {
                        lease_keys.remove(p.lease, key.as_str())?;
                    }
                    events.push(Event {
                        kind: EventKind::Delete,
                        key: key.clone(),
                        value: Vec::new(),
                        prev_value: Some(p.value),
                        revision,
                        create_revision: p.create_revision,
                    });
                }
            }
        }
    }
    if !events.is_empty() {
        state.revision = revision;
        tx.open_table(LOG)?
            .insert(revision, encode_events(&events).as_slice())?;
        events_out.extend(events);
    }
    Ok(Ok(TxnResult {
        succeeded: true,
        revision: state.revision,
        current: Vec::new(),
    }))
}

fn revoke_in(
    tx: &redb::WriteTransaction,
    state: &mut WriterState,
    leases: &HashMap<LeaseId, (i64, Instant)>,
    id: LeaseId,
    events_out: &mut Vec<Event>,
) -> std::result::Result<Result<()>, redb::Error> {
    let keys: Vec<String> = {
        let table = tx.open_multimap_table(LEASE_KEYS)?;
        let mut keys = Vec::new();
        for k in table.get(id)? {
            keys.push(k?.value().to_string());
        }
        keys
    };
    let existed = tx.open_table(LEASES)?.remove(id)?.is_some();
    tx.open_multimap_table(LEASE_KEYS)?.remove_all(id)?;
    if !existed {
        return Ok(Err(StoreError::LeaseNotFound(id)));
    }
    if !keys.is_empty() {
        let txn = Txn {
            compares: Vec::new(),
            ops: keys.into_iter().map(|key| Op::Delete { key }).collect(),
        };
        if let Err(e) = apply_txn(tx, state, leases, &txn, events_out)? {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

impl Request {
    /// Answers without running: the store cannot write.
    fn refuse(self, e: impl Fn() -> StoreError) {
        match self {
            Request::Txn(_, tx) => drop(tx.send(Err(e()))),
            Request::Compact(_, tx) | Request::LeaseRevoke(_, tx) => drop(tx.send(Err(e()))),
            Request::LeaseGrant(_, tx) => drop(tx.send(Err(e()))),
        }
    }
}

fn run_batch(shared: &Shared, state: &mut WriterState, batch: Vec<Request>) {
    let saved = (state.revision, state.compacted, state.lease_seq);
    let mut replies = Vec::with_capacity(batch.len());
    let mut refused = Vec::new();
    let mut events = Vec::new();
    let mut granted = Vec::new();
    let mut revoked = Vec::new();
    let mut committing = false;
    let outcome: std::result::Result<(), redb::Error> = (|| {
        let db = shared.db().map_err(|_| redb::Error::PreviousIo)?;
        let tx = db.begin_write()?;
        {
            let leases = shared.leases.lock().expect("lease table poisoned").clone();
            let mut batch = batch.into_iter();
            // A failure below leaves the rest of the batch unrun: they are
            // refused with the same error, never dropped.
            // A request that fails comes back with the error, to be
            // refused like the rest: no reply sender is ever dropped.
            let mut run = |req: Request| -> std::result::Result<(), (redb::Error, Request)> {
                match req {
                    Request::Txn(txn, reply) => {
                        match apply_txn(&tx, state, &leases, &txn, &mut events) {
                            Ok(r) => replies.push(Reply::Txn(reply, r)),
                            Err(e) => return Err((e, Request::Txn(txn, reply))),
                        }
                    }
                    Request::Compact(rev, reply) => {
                        let r = if rev > state.revision {
                            Err(StoreError::FutureRevision(rev))
                        } else {
                            // Logical at once (reads below `rev` are refused
                            // from this commit on); the log entries go in
                            // bounded steps afterwards (`prune_step`).
                            state.compacted = state.compacted.max(rev);
                            Ok(())
                        };
                        replies.push(Reply::Unit(reply, r));
                    }
                    Request::LeaseGrant(ttl, reply) => {
                        let id = state.lease_seq + 1;
                        let stored = || -> std::result::Result<(), redb::Error> {
                            tx.open_table(LEASES)?.insert(id, ttl)?;
                            Ok(())
                        };
                        if let Err(e) = stored() {
                            return Err((e, Request::LeaseGrant(ttl, reply)));
                        }
                        state.lease_seq = id;
                        granted.push((id, ttl));
                        replies.push(Reply::Lease(reply, Ok(id)));
                    }
                    Request::LeaseRevoke(id, reply) => {
                        match revoke_in(&tx, state, &leases, id, &mut events) {
                            Ok(r) => {
                                if r.is_ok() {
                                    revoked.push(id);
                                }
                                replies.push(Reply::Unit(reply, r));
                            }
                            Err(e) => return Err((e, Request::LeaseRevoke(id, reply))),
                        }
                    }
                }
                Ok(())
            };
            while let Some(req) = batch.next() {
                if let Err((e, req)) = run(req) {
                    refused.push(req);
                    refused.extend(batch);
                    return Err(e);
                }
            }
            let mut meta = tx.open_table(META)?;
            meta.insert("revision", state.revision)?;
            meta.insert("compacted", state.compacted)?;
            meta.insert("lease_seq", state.lease_seq)?;
        }
        committing = true;
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            shared.healed();
            if state.compacted > saved.1 {
                // As etcd's: compaction ends the lists that read before it.
                let compacted = state.compacted;
                shared
                    .snapshots
                    .lock()
                    .expect("snapshots poisoned")
                    .retain(|r, _| *r >= compacted);
            }
            shared.compacted.store(state.compacted, Ordering::Release);
            {
                let mut leases = shared.leases.lock().expect("lease table poisoned");
                let now = Instant::now();
                for (id, ttl) in granted {
                    leases.insert(id, (ttl, now + Duration::from_secs(ttl as u64)));
                }
                for id in revoked {
                    leases.remove(&id);
                }
            }
            shared.lease_changed.notify_one();
            for r in replies {
                r.send();
            }
            if !events.is_empty() {
                // No receivers is fine: nobody watches.
                let _ = shared.events.send(Arc::new(events));
            }
        }
        Err(e) => {
            (state.revision, state.compacted, state.lease_seq) = saved;
            let io = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
            let err = shared.error(e);
            // Reopen at once, so the answer can say whether the batch is in
            // the file; it is never acknowledged either way.
            let landed = if io && reopen_logged(shared, state) {
                Some((state.revision, state.compacted, state.lease_seq) != saved)
            } else if !committing {
                Some(false)
            } else {
                None
            };
            let msg = match landed {
                Some(false) => format!("{err}; nothing was stored"),
                _ => format!("{err}; the write may have been stored: read it back before retrying"),
            };
            tracing::warn!(
                "a batch of {} writes failed: {msg}",
                replies.len() + refused.len()
            );
            let e = || {
                if io {
                    StoreError::Unavailable(msg.clone())
                } else {
                    backend(&msg)
                }
            };
            for r in replies {
                r.fail(e);
            }
            for r in refused {
                r.refuse(e);
            }
        }
    }
}

/// Closes the file and opens it again (redb refuses every request after an
/// I/O error until then), keeping the reason as the fault when that fails.
fn reopen_logged(shared: &Shared, state: &mut WriterState) -> bool {
    match reopen(shared, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("store {}: reopen: {e}", shared.path.display());
            let no_space = e.contains("os error 28");
            shared.set_fault(e, no_space);
            false
        }
    }
}

/// Log entries removed by one pruning commit: a compaction's working set
/// (its dirty and freed pages) stays small however long the history was.
const PRUNE_STEP: Revision = 2_000;

/// Removes the next bounded run of compacted log entries in a commit of its
/// own, between batches. Compaction itself is logical (`compacted` refuses
/// older reads), so a step that fails loses nothing: the fault is handled
/// as a failed batch's would be, and pruning resumes after the reopen.
fn prune_step(shared: &Shared, state: &mut WriterState) {
    if state.pruned >= state.compacted {
        return;
    }
    let step = || -> std::result::Result<Revision, redb::Error> {
        let db = shared.db().map_err(|_| redb::Error::PreviousIo)?;
        let tx = db.begin_write()?;
        let upto;
        {
            let mut log = tx.open_table(LOG)?;
            let first = log.first()?.map(|(k, _)| k.value());
            match first {
                Some(first) if first < state.compacted => {
                    upto = state.compacted.min(first.saturating_add(PRUNE_STEP));
                    log.retain_in(first..upto, |_, _| false)?;
                }
                _ => upto = state.compacted,
            }
        }
        tx.commit()?;
        Ok(upto)
    };
    match step() {
        Ok(upto) => state.pruned = upto,
        Err(e) => {
            let io = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
            let err = shared.error(e);
            tracing::warn!(
                "store {}: pruning the compacted log: {err}",
                shared.path.display()
            );
            if io {
                reopen_logged(shared, state);
            }
        }
    }
}

/// A small commit, to learn whether the disk takes writes again.
fn probe(shared: &Shared, state: &WriterState) {
    let attempt = || -> std::result::Result<(), redb::Error> {
        let db = shared.db().map_err(|_| redb::Error::PreviousIo)?;
        let tx = db.begin_write()?;
        tx.open_table(META)?.insert("revision", state.revision)?;
        tx.commit()?;
        Ok(())
    };
    match attempt() {
        Ok(()) => shared.healed(),
        Err(e) => {
            let _ = shared.error(e);
            drop(shared.db.write().expect("database lock poisoned").take());
        }
    }
}

/// redb's page cache, which would otherwise grow to 1 GiB with the file:
/// the watch cache above the store serves most reads, so the store's own
/// cache needs to hold little more than a write batch's pages.
const PAGE_CACHE: usize = 16 << 20;

fn open_db(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
    redb::Builder::new().set_cache_size(PAGE_CACHE).create(path)
}

fn reopen(shared: &Shared, state: &mut WriterState) -> std::result::Result<(), String> {
    drop(shared.db.write().expect("database lock poisoned").take());
    // Snapshots hold the old file open; their lists start over (410).
    shared.snapshots.lock().expect("snapshots poisoned").clear();
    // A reader may hold the old file for a moment longer.
    let deadline = Instant::now() + Duration::from_secs(2);
    let db = loop {
        match open_db(&shared.path) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let (mut loaded, on_disk) = Embedded::load(&db).map_err(|e| e.to_string())?;
    let lost = loaded.revision < state.revision;
    if lost {
        rewound(shared, &db, &mut loaded, state.revision).map_err(|e| e.to_string())?;
    }
    if loaded.revision > state.revision {
        let missed =
            log_range(&db, "", state.revision + 1, loaded.revision).map_err(|e| e.to_string())?;
        if !missed.is_empty() {
            let _ = shared.events.send(Arc::new(missed));
        }
    }
    {
        let mut leases = shared.leases.lock().expect("lease table poisoned");
        leases.retain(|id, _| on_disk.contains_key(id));
        for (id, entry) in on_disk {
            leases.entry(id).or_insert(entry);
        }
    }
    shared.lease_changed.notify_one();
    shared.compacted.store(loaded.compacted, Ordering::Release);
    *state = loaded;
    *shared.db.write().expect("database lock poisoned") = Some(Arc::new(db));
    if lost {
        // Ends every watch (they see the count change when woken), now
        // that the store serves what the disk holds, for them to relist.
        shared.rewinds.fetch_add(1, Ordering::AcqRel);
        let _ = shared.events.send(Arc::new(Vec::new()));
    }
    Ok(())
}

/// The file is behind what was acknowledged: the disk said writes were
/// synced and lost them (a kernel may report a successful fsync on a
/// filesystem an error is taking down). Nothing can bring them back, but
/// nothing may pretend either: revisions go on after the last one
/// announced (never reused for other content), the history before it is
/// compacted, and every open watch ends with `Compacted`, so caches and
/// clients relist what the disk really holds.
fn rewound(
    shared: &Shared,
    db: &Database,
    loaded: &mut WriterState,
    acknowledged: Revision,
) -> std::result::Result<(), redb::Error> {
    tracing::error!(
        "store {}: the disk lost acknowledged writes: it holds revision {}, {} was acknowledged; \
         continuing after {acknowledged} and ending every watch so clients relist",
        shared.path.display(),
        loaded.revision,
        acknowledged
    );
    let tx = db.begin_write()?;
    {
        tx.open_table(LOG)?
            .retain_in(..=acknowledged, |_, _| false)?;
        let mut meta = tx.open_table(META)?;
        meta.insert("revision", acknowledged)?;
        meta.insert("compacted", acknowledged)?;
    }
    tx.commit()?;
    loaded.revision = acknowledged;
    loaded.compacted = acknowledged;
    shared.compacted.store(acknowledged, Ordering::Release);
    shared.errors.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Events under `prefix` in revisions `from..=to`, from the log.
fn log_range(
    db: &Database,
    prefix: &str,
    from: Revision,
    to: Revision,
) -> std::result::Result<Vec<Event>, redb::Error> {
    let tx = db.begin_read()?;
    let log = tx.open_table(LOG)?;
    let mut out = Vec::new();
    for entry in log.range(from..=to)? {
        let (rev, bytes) = entry?;
        out.extend(
            decode_events(rev.value(), bytes.value())
                .map_err(|e| redb::Error::Corrupted(e.to_string()))?
                .into_iter()
                .filter(|e| e.key.starts_with(prefix)),
        );
    }
    Ok(out)
}

fn writer_loop(shared: Arc<Shared>, mut state: WriterState, rx: std_mpsc::Receiver<Request>) {
    let mut last_try = Instant::now();
    loop {
        let first = match rx.recv_timeout(RETRY) {
            Ok(r) => Some(r),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let closed = shared.db.read().expect("database lock poisoned").is_none();
        if closed && last_try.elapsed() >= RETRY {
            last_try = Instant::now();
            reopen_logged(&shared, &mut state);
        }
        let Some(first) = first else {
            if shared.fault().is_some() && !closed {
                probe(&shared, &state);
            } else if !closed {
                prune_step(&shared, &mut state);
            }
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if shared.db.read().expect("database lock poisoned").is_none() {
            let msg = shared.unavailable("nothing was stored");
            for r in batch {
                r.refuse(|| StoreError::Unavailable(msg.clone()));
            }
            continue;
        }
        run_batch(&shared, &mut state, batch);
        if shared.fault().is_none() {
            prune_step(&shared, &mut state);
        }
    }
}

// ----------------------------------------------------------------- store

/// The embedded, durable single-file store. Clones share one database;
/// when the last clone is dropped the writer finishes and the file closes.
#[derive(Clone)]
pub struct Embedded {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    writer: Option<std_mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop; joining it means the
        // file is closed (absent live watches) once the store is dropped.
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A read on a blocking thread may still hold the database for a
        // moment; give it that moment, so the file is closed when the last
        // handle is gone (a watch stream still open keeps it open).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.shared) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Embedded {
    /// Opens (or creates) `DIR/skiff.redb`.
    pub fn open(dir: &Path) -> Result<Embedded> {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("create data dir {}: {e}", dir.display())))?;
        let path = dir.join("skiff.redb");
        let db = open_db(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => backend(format!(
                "{} is already open in another process: stop the other server or use another --data-dir",
                path.display()
            )),
            e => backend(format!("open {}: {e}", path.display())),
        })?;
        let (state, leases) =
            Self::load(&db).map_err(|e| backend(format!("read {}: {e}", path.display())))?;
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            events,
            leases: Mutex::new(leases),
            lease_changed: Arc::new(Notify::new()),
            compacted: AtomicI64::new(state.compacted),
            fault: Mutex::new(None),
            errors: AtomicU64::new(0),
            snapshots: Mutex::new(HashMap::new()),
            rewinds: AtomicU64::new(0),
        });
        let (tx, rx) = std_mpsc::channel();
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_shared, state, rx))
            .map_err(backend)?;
        let store = Embedded {
            handle: Arc::new(Handle {
                shared,
                writer: Some(tx),
                thread: Some(thread),
            }),
        };
        store.spawn_lease_expiry();
        Ok(store)
    }

    #[expect(clippy::type_complexity, reason = "a private loader")]
    fn load(
        db: &Database,
    ) -> std::result::Result<(WriterState, HashMap<LeaseId, (i64, Instant)>), redb::Error> {
        let tx = db.begin_write()?;
        let state;
        let mut leases = HashMap::new();
        {
            // Create every table so readers never meet a missing one.
            tx.open_table(KV)?;
            tx.open_table(LOG)?;
            tx.open_multimap_table(LEASE_KEYS)?;
            let mut meta = tx.open_table(META)?;
            let get = |k: &str| -> std::result::Result<i64, redb::Error> {
                Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0))
            };
            state = WriterState {
                revision: get("revision")?,
                compacted: get("compacted")?,
                lease_seq: get("lease_seq")?,
                // Found by the first `prune_step`.
                pruned: 0,
            };
            // A write, so that opening proves the file takes writes.
            meta.insert("revision", state.revision)?;
            let table = tx.open_table(LEASES)?;
            let now = Instant::now();
            for entry in table.iter()? {
                let (id, ttl) = entry?;
                leases.insert(
                    id.value(),
                    (ttl.value(), now + Duration::from_secs(ttl.value() as u64)),
                );
            }
        }
        tx.commit()?;
        Ok((state, leases))
    }

    /// Revokes leases as their deadlines pass: sleeps until the nearest
    /// deadline or until the lease table changes.
    fn spawn_lease_expiry(&self) {
        let weak = Arc::downgrade(&self.handle);
        let changed = self.handle.shared.lease_changed.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                let notified = changed.notified();
                let next = {
                    let Some(handle) = weak.upgrade() else { return };
                    let now = Instant::now();
                    let (expired, next): (Vec<LeaseId>, Option<Instant>) = {
                        let leases = handle.shared.leases.lock().expect("lease table poisoned");
                        let expired = leases
                            .iter()
                            .filter(|(_, (_, d))| *d <= now)
                            .map(|(id, _)| *id)
                            .collect();
                        let next = leases.values().map(|(_, d)| *d).filter(|d| *d > now).min();
                        (expired, next)
                    };
                    let store = Embedded { handle };
                    for id in expired {
                        if let Err(e) = store.lease_revoke(id).await {
                            tracing::warn!("revoke expired lease {id}: {e}");
                        }
                    }
                    next
                };
                match next {
                    Some(d) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(d.into()) => {}
                            _ = notified => {}
                        }
                    }
                    None => notified.await,
                }
            }
        });
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let writer = self.handle.writer.as_ref().ok_or(StoreError::Closed)?;
        writer.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        Self::read_in(&self.handle.shared, f)
    }

    fn read_in<T>(
        shared: &Shared,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let tx = shared.db()?.begin_read().map_err(|e| shared.error(e))?;
        f(&tx).map_err(|e| shared.error(e))
    }

    fn read_revision(tx: &redb::ReadTransaction) -> std::result::Result<Revision, redb::Error> {
        Ok(tx
            .open_table(META)?
            .get("revision")?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Events under `prefix` in revisions `from..=to`, from the log.
    fn read_log(shared: &Shared, prefix: &str, from: Revision, to: Revision) -> Result<Vec<Event>> {
        let db = shared.db()?;
        let compacted = shared.compacted.load(Ordering::Acquire);
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        log_range(&db, prefix, from, to).map_err(|e| shared.error(e))
    }

    /// How many keys the store holds (for metrics and tests).
    pub fn len(&self) -> Result<u64> {
        self.read(|tx| Ok(tx.open_table(KV)?.len()?))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[async_trait::async_trait]
impl Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let raw = self.read(|tx| {
            Ok(tx
                .open_table(KV)?
                .get(key.as_bytes())?
                .map(|v| v.value().to_vec()))
        })?;
        raw.map(|r| decode_record(key, &r)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<ListResult> {
        let shared = self.handle.shared.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let corrupt = redb::Error::Corrupted;
            let (kvs, revision) = Self::read_in(&shared, |tx| {
                let revision = Self::read_revision(tx)?;
                let table = tx.open_table(KV)?;
                let mut kvs = Vec::new();
                for entry in table.range::<&[u8]>(prefix.as_bytes()..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(prefix.as_bytes()) {
                        break;
                    }
                    let key = std::str::from_utf8(k.value())
                        .map_err(|_| corrupt("a key that is not UTF-8".into()))?;
                    kvs.push(decode_record(key, v.value()).map_err(|e| corrupt(e.to_string()))?);
                }
                Ok((kvs, revision))
            })?;
            Ok(ListResult { kvs, revision })
        })
        .await
        .map_err(backend)?
    }

    async fn list_page(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<ListPage> {
        let shared = self.handle.shared.clone();
        let (prefix, start) = (prefix.to_string(), start.to_string());
        tokio::task::spawn_blocking(move || {
            let snapshot = if revision > 0 {
                let mut snaps = shared.snapshots.lock().expect("snapshots poisoned");
                match snaps.get_mut(&revision) {
                    Some((tx, used)) => {
                        *used = Instant::now();
                        Some(tx.clone())
                    }
                    None => None,
                }
            } else {
                None
            };
            let tx = match snapshot {
                Some(tx) => tx,
                None => {
                    let tx = shared.db()?.begin_read().map_err(|e| shared.error(e))?;
                    let now = Self::read_revision(&tx).map_err(|e| shared.error(e))?;
                    if revision > 0 && revision != now {
                        // That snapshot is gone: the list must start over.
                        return Err(StoreError::Compacted {
                            requested: revision,
                            compacted: now,
                        });
                    }
                    Arc::new(tx)
                }
            };
            let at = Self::read_revision(&tx).map_err(|e| shared.error(e))?;
            let from = if start.as_str() > prefix.as_str() {
                start
            } else {
                prefix.clone()
            };
            let corrupt = redb::Error::Corrupted;
            let (kvs, more) = (|| {
                let table = tx.open_table(KV)?;
                let mut kvs = Vec::new();
                let mut more = false;
                for entry in table.range::<&[u8]>(from.as_bytes()..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(prefix.as_bytes()) {
                        break;
                    }
                    if limit > 0 && kvs.len() == limit {
                        more = true;
                        break;
                    }
                    let key = std::str::from_utf8(k.value())
                        .map_err(|_| corrupt("a key that is not UTF-8".into()))?;
                    kvs.push(decode_record(key, v.value()).map_err(|e| corrupt(e.to_string()))?);
                }
                Ok::<_, redb::Error>((kvs, more))
            })()
            .map_err(|e| shared.error(e))?;
            if more {
                let mut snaps = shared.snapshots.lock().expect("snapshots poisoned");
                let now = Instant::now();
                snaps.retain(|_, (_, used)| now.duration_since(*used) < SNAPSHOT_TTL);
                if !snaps.contains_key(&at)
                    && snaps.len() >= MAX_SNAPSHOTS
                    && let Some(oldest) = snaps
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(r, _)| *r)
                {
                    snaps.remove(&oldest);
                }
                snaps.entry(at).or_insert((tx, now)).1 = now;
            }
            Ok(ListPage {
                kvs,
                revision: at,
                more,
                remaining: None,
            })
        })
        .await
        .map_err(backend)?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        self.request(|tx| Request::Txn(txn, tx)).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading the log so nothing committed in between
        // is missed; events already replayed are skipped by revision.
        let mut live = self.handle.shared.events.subscribe();
        let compacted = self.handle.shared.compacted.load(Ordering::Acquire);
        if after + 1 < compacted {
            return Err(StoreError::Compacted {
                requested: after + 1,
                compacted,
            });
        }
        let shared = self.handle.shared.clone();
        let prefix = prefix.to_string();
        let rewinds = shared.rewinds.load(Ordering::Acquire);
        Ok(Box::pin(async_stream::stream! {
            let mut last = after;
            loop {
                // Catch up from the log (at start, and after lagging behind).
                let current = match Self::read_in(&shared, Self::read_revision) {
                    Ok(r) => r,
                    Err(e) => { yield Err(e); return; }
                };
                if current > last {
                    let shared2 = shared.clone();
                    let prefix2 = prefix.clone();
                    let from = last + 1;
                    let backlog = tokio::task::spawn_blocking(move || Self::read_log(&shared2, &prefix2, from, current)).await;
                    match backlog {
                        Ok(Ok(events)) => for e in events { yield Ok(e); },
                        Ok(Err(e)) => { yield Err(e); return; }
                        Err(e) => { yield Err(backend(e)); return; }
                    }
                    last = current;
                }
                loop {
                    let got = live.recv().await;
                    if shared.rewinds.load(Ordering::Acquire) != rewinds {
                        // What this watch saw is gone from the disk.
                        yield Err(StoreError::Compacted {
                            requested: last + 1,
                            compacted: shared.compacted.load(Ordering::Acquire),
                        });
                        return;
                    }
                    match got {
                        Ok(batch) => {
                            for e in batch.iter() {
                                if e.revision > last && e.key.starts_with(&prefix) {
                                    yield Ok(e.clone());
                                }
                            }
                            if let Some(e) = batch.last() {
                                last = last.max(e.revision);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }))
    }

    async fn revision(&self) -> Result<Revision> {
        self.read(Self::read_revision)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.request(|tx| Request::Compact(revision, tx)).await
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidTxn(format!(
                "lease TTL must be positive, not {ttl_seconds}"
            )));
        }
        self.request(|tx| Request::LeaseGrant(ttl_seconds, tx))
            .await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        let mut leases = self
            .handle
            .shared
            .leases
            .lock()
            .expect("lease table poisoned");
        let entry = leases.get_mut(&id).ok_or(StoreError::LeaseNotFound(id))?;
        entry.1 = Instant::now() + Duration::from_secs(entry.0 as u64);
        Ok(entry.0)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.request(|tx| Request::LeaseRevoke(id, tx)).await
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.handle.shared.path.display())
    }

    fn fault(&self) -> Option<String> {
        self.handle
            .shared
            .fault()
            .map(|reason| format!("{}: {reason}", self.handle.shared.path.display()))
    }

    fn errors(&self) -> u64 {
        self.handle.shared.errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// The oldest revision the log still holds.
    fn first_logged(store: &Embedded) -> Option<Revision> {
        let db = store.handle.shared.db().unwrap();
        let tx = db.begin_read().unwrap();
        let log = tx.open_table(LOG).unwrap();
        log.first().unwrap().map(|(k, _)| k.value())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_is_logical_at_once_and_prunes_the_log_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path()).unwrap();
        let writers: Vec<_> = (0..50)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..(3 * PRUNE_STEP as usize / 50 + 20) {
                        store
                            .create(&format!("k/{w}/{i}"), vec![b'v'; 64], 0)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let last = store.revision().await.unwrap();
        assert!(last > 3 * PRUNE_STEP, "{last} revisions");
        assert_eq!(first_logged(&store), Some(1));
        let keep = last - 10;
        store.compact(keep).await.unwrap();
        // Refused from the compaction on, whatever the log still holds.
        let refused = match store.watch("k/", keep - 2).await {
            Err(e) => e,
            Ok(mut w) => tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .unwrap()
                .unwrap()
                .expect_err("compacted history must not be replayed"),
        };
        assert!(matches!(refused, StoreError::Compacted { .. }), "{refused}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while first_logged(&store) != Some(keep) {
            assert!(
                Instant::now() < deadline,
                "the log still starts at {:?}",
                first_logged(&store)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What is kept still replays: revisions keep..=last, one event each.
        let mut watch = store.watch("k/", keep - 1).await.unwrap();
        for rev in keep..=last {
            let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("the kept history replays")
                .unwrap()
                .unwrap();
            assert_eq!(e.revision, rev);
        }
    }
}
