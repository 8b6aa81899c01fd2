//! The etcd backend: the same semantics on an etcd cluster, every key under
//! a prefix (`/skiff/`).

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, EventType, GetOptions, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::{
    Compare, Event, EventKind, KeyValue, LeaseId, ListPage, ListResult, Op, Result, Revision,
    Store, StoreError, Txn, TxnResult, WatchStream,
};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// The largest response the store takes from etcd. A list is read in pages
/// (see [`LIST_PAGE`]) so it never needs more than this, however many keys
/// there are; etcd's own default is 4 MiB, less than one page of large
/// objects (each may be 1.5 MiB).
const MAX_RESPONSE: usize = 256 << 20;

/// Keys per page when the store reads a whole prefix; a page that is still
/// too large for [`MAX_RESPONSE`] is read again in smaller pages.
const LIST_PAGE: usize = 1000;

/// The error etcd answers for a revision compaction removed.
fn read_error(e: etcd_client::Error, revision: Revision) -> StoreError {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        StoreError::Compacted {
            requested: revision,
            compacted: 0,
        }
    } else if text.contains("required revision is a future revision") {
        StoreError::FutureRevision(revision)
    } else {
        backend(text)
    }
}

/// The end of the key range of a prefix (etcd's `range_end`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Connections for key-value requests: one HTTP/2 connection carrying
/// every request of a busy API server is a bottleneck of its own.
const KV_CONNECTIONS: usize = 4;

#[derive(Clone)]
pub struct Etcd {
    /// Watches, leases, compaction.
    client: Client,
    kv: std::sync::Arc<Vec<etcd_client::KvClient>>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    prefix: String,
    endpoints: Vec<String>,
}

impl Etcd {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Etcd> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            // Until the response starts: a watch's stream is not cut.
            .with_timeout(std::time::Duration::from_secs(30));
        let connect = || async {
            Client::connect(endpoints, Some(opts.clone()))
                .await
                .map_err(|e| backend(format!("connect to {}: {e}", endpoints.join(","))))
        };
        let client = connect().await?;
        let mut kv = Vec::with_capacity(KV_CONNECTIONS);
        for _ in 0..KV_CONNECTIONS {
            kv.push(
                connect()
                    .await?
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE),
            );
        }
        let store = Etcd {
            client,
            kv: std::sync::Arc::new(kv),
            next: Default::default(),
            prefix: prefix.to_string(),
            endpoints: endpoints.to_vec(),
        };
        // Fail at start, not at the first request, when etcd is unreachable.
        store.revision().await?;
        Ok(store)
    }

    fn kv_client(&self) -> etcd_client::KvClient {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.kv[i % self.kv.len()].clone()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, key: &[u8]) -> Result<String> {
        let key = std::str::from_utf8(key).map_err(backend)?;
        Ok(key.strip_prefix(&self.prefix).unwrap_or(key).to_string())
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

#[async_trait::async_trait]
impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(backend)?;
        resp.kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    async fn get_relaxed(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .kv_client()
            .get(self.full(key), Some(GetOptions::new().with_serializable()))
            .await
            .map_err(backend)?;
        resp.kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<ListResult> {
        // In pages at one revision: a single response of every key would
        // outgrow any message limit.
        let mut page_size = LIST_PAGE;
        let mut kvs = Vec::new();
        let mut start = String::new();
        let mut revision = 0;
        loop {
            let page = match self.list_page(prefix, &start, page_size, revision).await {
                Ok(p) => p,
                Err(StoreError::Backend(m))
                    if m.contains("message length too large") && page_size > 1 =>
                {
                    page_size = (page_size / 4).max(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            revision = page.revision;
            if let Some(last) = page.kvs.last() {
                start = crate::key_after(&last.key);
            }
            kvs.extend(page.kvs);
            if !page.more {
                return Ok(ListResult { kvs, revision });
            }
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<ListPage> {
        let from = if start > prefix { start } else { prefix };
        let mut opts = GetOptions::new().with_range(prefix_end(&self.full(prefix)));
        if limit > 0 {
            opts = opts.with_limit(limit as i64);
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self
            .kv_client()
            .get(self.full(from), Some(opts))
            .await
            .map_err(|e| read_error(e, revision))?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.kv(kv))
            .collect::<Result<Vec<_>>>()?;
        let count = u64::try_from(resp.count()).unwrap_or(0);
        Ok(ListPage {
            remaining: Some(count.saturating_sub(kvs.len() as u64)),
            more: resp.more(),
            kvs,
            revision: if revision > 0 {
                revision
            } else {
                header_revision(resp.header())
            },
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => EtcdCompare::version(self.full(k), CompareOp::Equal, 0),
                Compare::ModRevision(k, r) => {
                    EtcdCompare::mod_revision(self.full(k), CompareOp::Equal, *r)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                    TxnOp::put(self.full(key), value.clone(), opts)
                }
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let failure: Vec<TxnOp> = txn
            .compares
            .iter()
            .map(|c| TxnOp::get(self.full(c.key()), None))
            .collect();
        let resp = self
            .kv_client()
            .txn(
                etcd_client::Txn::new()
                    .when(compares)
                    .and_then(ops)
                    .or_else(failure),
            )
            .await
            .map_err(|e| match e {
                etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found") => {
                    StoreError::LeaseNotFound(
                        txn.ops
                            .iter()
                            .find_map(|o| match o {
                                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                                _ => None,
                            })
                            .unwrap_or(0),
                    )
                }
                etcd_client::Error::GRpcStatus(s) if s.message().contains("duplicate key") => {
                    StoreError::InvalidTxn(s.message().to_string())
                }
                e => backend(e),
            })?;
        let revision = header_revision(resp.header());
        if resp.succeeded() {
            return Ok(TxnResult {
                succeeded: true,
                revision,
                current: Vec::new(),
            });
        }
        let mut current = Vec::new();
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                current.push(g.kvs().first().map(|kv| self.kv(kv)).transpose()?);
            }
        }
        Ok(TxnResult {
            succeeded: false,
            revision,
            current,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let mut stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE)
            .watch(self.full(prefix), Some(opts))
            .await
            .map_err(backend)?;
        let this = self.clone();
        Ok(Box::pin(async_stream::stream! {
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => { yield Err(backend("watch stream ended")); return; }
                    Err(e) => { yield Err(backend(e)); return; }
                };
                if msg.compact_revision() > 0 {
                    yield Err(StoreError::Compacted { requested: after + 1, compacted: msg.compact_revision() });
                    return;
                }
                if msg.canceled() {
                    yield Err(backend(format!("watch canceled: {}", msg.cancel_reason())));
                    return;
                }
                for ev in msg.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = match this.strip(kv.key()) { Ok(k) => k, Err(e) => { yield Err(e); return; } };
                    let prev_value = ev.prev_kv().map(|p| p.value().to_vec());
                    yield Ok(match ev.event_type() {
                        EventType::Put => Event {
                            kind: EventKind::Put,
                            key,
                            value: kv.value().to_vec(),
                            prev_value,
                            revision: kv.mod_revision(),
                            create_revision: kv.create_revision(),
                        },
                        EventType::Delete => Event {
                            kind: EventKind::Delete,
                            key,
                            value: Vec::new(),
                            prev_value,
                            revision: kv.mod_revision(),
                            create_revision: ev.prev_kv().map_or(0, |p| p.create_revision()),
                        },
                    });
                }
            }
        }))
    }

    async fn revision(&self) -> Result<Revision> {
        // A get of one missing key is the cheapest way to read the header.
        let resp = self
            .kv_client()
            .get(
                self.full("\u{0}revision-probe"),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(header_revision(resp.header()))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.client.clone().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("future rev") => {
                Err(StoreError::FutureRevision(revision))
            }
            Err(e) => Err(backend(e)),
        }
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidTxn(format!(
                "lease TTL must be positive, not {ttl_seconds}"
            )));
        }
        let resp = self
            .client
            .clone()
            .lease_grant(ttl_seconds, None)
            .await
            .map_err(backend)?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(id)
            .await
            .map_err(backend)?;
        keeper.keep_alive().await.map_err(backend)?;
        match stream.message().await.map_err(backend)? {
            Some(r) if r.ttl() > 0 => Ok(r.ttl()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(id).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Err(StoreError::LeaseNotFound(id))
            }
            Err(e) => Err(backend(e)),
        }
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.endpoints.join(","))
    }
}
