//! The cluster state store: one [`Store`] trait with etcd's semantics, and
//! two backends with identical behaviour — [`Embedded`] (a durable
//! single-file store on redb, the default) and [`Etcd`] (etcd-client, for
//! HA). Only the API server uses this crate.
//!
//! Semantics, shared by both backends:
//! - every successful transaction gets the next revision of one global
//!   counter; a key remembers the revision that created and last modified it;
//! - transactions are atomic: all compares hold and all ops apply, or
//!   nothing changes;
//! - a watch yields every change under a prefix after a revision, in
//!   revision order, and fails with [`StoreError::Compacted`] when that
//!   history has been compacted away (the client must relist);
//! - keys attached to a lease are deleted when it expires or is revoked.

mod embedded;
mod etcd;

use std::pin::Pin;

use futures::Stream;
use thiserror::Error;

pub use embedded::Embedded;
pub use etcd::Etcd;

pub type Revision = i64;
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: LeaseId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `value` is empty and `prev_value` holds what
/// was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    pub value: Vec<u8>,
    pub prev_value: Option<Vec<u8>>,
    /// The revision of the transaction that made the change.
    pub revision: Revision,
    pub create_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last modified at this revision.
    ModRevision(String, Revision),
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::Absent(k) | Compare::ModRevision(k, _) => k,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes the key; `lease` 0 means no lease.
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction (the transaction's own
    /// revision when it succeeded and changed something).
    pub revision: Revision,
    /// When the transaction failed: the current value of each compared
    /// key, in the order of the compares, so the caller can tell "not
    /// found" from "conflict".
    pub current: Vec<Option<KeyValue>>,
}

impl TxnResult {
    /// For a one-compare transaction: the new revision, or the compared
    /// key's current value (`None` inside when it is gone).
    pub fn outcome(self) -> Result<Revision, Option<KeyValue>> {
        if self.succeeded {
            Ok(self.revision)
        } else {
            Err(self.current.into_iter().next().flatten())
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// The revision the list was read at: watch from here to follow it.
    pub revision: Revision,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub kvs: Vec<KeyValue>,
    /// The revision the page was read at: every page of one list reads
    /// the same snapshot.
    pub revision: Revision,
    /// Whether keys under the prefix follow this page.
    pub more: bool,
    /// How many keys follow, when the backend knows without counting.
    pub remaining: Option<u64>,
}

/// The first key after `key` (to start the next page from).
pub fn key_after(key: &str) -> String {
    format!("{key}\u{0}")
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "revision {requested} has been compacted (oldest kept is {compacted}): relist and watch again"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {0} is in the future")]
    FutureRevision(Revision),
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("{0}")]
    InvalidTxn(String),
    #[error("store backend: {0}")]
    Backend(String),
    /// The store cannot serve now (a full or failing disk, a lost
    /// quorum); it says why, and whether a write may have been stored.
    #[error("{0}")]
    Unavailable(String),
    #[error("the store is shutting down")]
    Closed,
    /// A stored value is not what was written (it does not decrypt): no
    /// retry helps.
    #[error("{0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// A read that may lag the newest writes a little (etcd: serializable,
    /// no quorum round trip). Whoever uses it must guard the write that
    /// follows with a compare on the revision it read.
    async fn get_relaxed(&self, key: &str) -> Result<Option<KeyValue>> {
        self.get(key).await
    }

    /// Every key under the prefix, in key order, at one revision.
    async fn list(&self, prefix: &str) -> Result<ListResult>;

    /// Keys under `prefix` from `start` on (inclusive; empty: from the
    /// first), at most `limit` of them (0: no limit), read at `revision`
    /// (0: now; otherwise the revision a previous page reported, whose
    /// snapshot the backend keeps for a while — [`StoreError::Compacted`]
    /// once it is gone).
    async fn list_page(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<ListPage>;

    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// Changes under `prefix` with a revision greater than `after`, then
    /// live changes, until the stream is dropped.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision>;

    /// Forgets the history before `revision`: watches from earlier fail
    /// with [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId>;

    /// Renews the lease for another TTL; returns the TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64>;

    /// Ends the lease now, deleting its keys.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Short description for logs and metrics (`embedded:/var/lib/...`).
    fn describe(&self) -> String;

    /// Why the store cannot serve writes right now, or `None` when it can
    /// (as far as it knows without a round trip): for `/readyz`.
    fn fault(&self) -> Option<String> {
        None
    }

    /// Failures of the storage underneath (I/O errors, a full disk) since
    /// the store opened: for `/metrics`.
    fn errors(&self) -> u64 {
        0
    }

    // ---- conveniences over txn

    /// Creates the key if it is absent; `Ok(None)` if it exists.
    async fn create(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<Option<Revision>> {
        let r = self
            .txn(
                Txn::default()
                    .when(Compare::Absent(key.into()))
                    .then(Op::Put {
                        key: key.into(),
                        value,
                        lease,
                    }),
            )
            .await?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Writes the key if it is still at `revision`; on a mismatch returns
    /// the current value (`None` inside when the key is gone).
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: Revision,
    ) -> Result<Result<Revision, Option<KeyValue>>> {
        let r = self
            .txn(
                Txn::default()
                    .when(Compare::ModRevision(key.into(), revision))
                    .then(Op::Put {
                        key: key.into(),
                        value,
                        lease: 0,
                    }),
            )
            .await?;
        Ok(r.outcome())
    }

    /// Deletes the key if it is still at `revision`.
    async fn delete(
        &self,
        key: &str,
        revision: Revision,
    ) -> Result<Result<Revision, Option<KeyValue>>> {
        let r = self
            .txn(
                Txn::default()
                    .when(Compare::ModRevision(key.into(), revision))
                    .then(Op::Delete { key: key.into() }),
            )
            .await?;
        Ok(r.outcome())
    }
}

/// Opens a store from its URL: `etcd://h1:2379,h2:2379` or a data
/// directory for the embedded store.
pub async fn open(
    store_url: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>> {
    match store_url {
        Some(url) if url.starts_with("etcd://") => {
            let endpoints: Vec<String> = url
                .trim_start_matches("etcd://")
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| format!("http://{e}"))
                .collect();
            Ok(std::sync::Arc::new(
                Etcd::connect(&endpoints, "/skiff/").await?,
            ))
        }
        Some(url) => Err(StoreError::Backend(format!(
            "unsupported store {url:?}: use etcd://host:2379[,host:2379...] or leave --store out for the embedded store"
        ))),
        None => Ok(std::sync::Arc::new(Embedded::open(data_dir)?)),
    }
}
