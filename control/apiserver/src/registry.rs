//! The registry: create, read, update, delete and watch for every kind,
//! generic over [`Strategy`] (which says what differs between kinds).
//! Server-set metadata, validation, finalizers, graceful deletion,
//! allocations, dry runs and the compare-and-swap on resourceVersion all
//! happen here, once, for both the REST and the gRPC front ends.

use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use futures::{Stream, StreamExt};
use rand::Rng;
use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::v1::{Namespace, ObjectMeta};
use skiff_api::wire::Time;
use skiff_api::{Kind, Resource, with_resource};
use skiff_store::{Compare, KeyValue, Op, Revision, Store, StoreError, Txn};

use crate::alloc::{Allocation, Allocators, Avoid, Claim};
use crate::authz::admission::Op as AdmitOp;
use crate::codec::{decode, decode_at, encode};
use crate::error::{ApiError, ApiResult};
pub use crate::strategy::SYSTEM_NAMESPACES;
use crate::strategy::Strategy;
use crate::watch_cache::{CachedEvent, EventObject, Filter, WatchCache, WatchType, decode_event};

const ATTEMPTS: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub namespace: String,
    pub labels: Selector,
    pub fields: FieldSelector,
}

/// Label and field selectors from their text form; one parser for both
/// front ends.
pub fn parse_selectors(labels: &str, fields: &str) -> ApiResult<(Selector, FieldSelector)> {
    let l = Selector::parse(labels)
        .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
    let f = FieldSelector::parse(fields)
        .map_err(|e| ApiError::bad_request(format!("fieldSelector: {e}")))?;
    Ok((l, f))
}

/// What a create or update may do besides what it says.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Kubernetes' `dryRun=All`: everything runs (defaults, validation,
    /// allocation and conflict checks) and nothing is written or
    /// allocated; the answer is what would have been stored.
    pub dry_run: bool,
    /// Who writes: the write's fields are recorded as this manager's in
    /// `metadata.managedFields` (unless the object brings managedFields
    /// of its own). Components writing over gRPC name none and are not
    /// recorded.
    pub field_manager: Option<String>,
    /// Who writes: admission (NodeRestriction, RBAC's escalation check)
    /// judges them. `None` for the server's own writes.
    pub user: Option<Arc<crate::authn::UserInfo>>,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Delete only at this resourceVersion.
    pub resource_version: Option<Revision>,
    /// For pods: how long the node gets to stop them; 0 deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// What happens to the objects it owns.
    pub propagation: Propagation,
    /// Check everything, delete nothing.
    pub dry_run: bool,
    /// Who deletes (see [`WriteOptions::user`]).
    pub user: Option<Arc<crate::authn::UserInfo>>,
}

/// Kubernetes' propagationPolicy: `Background` deletes the object now and
/// the garbage collector its dependents after; `Foreground` marks it with
/// the `foregroundDeletion` finalizer until its dependents are gone;
/// `Orphan` marks it with the `orphan` finalizer until the collector has
/// removed the references to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    pub fn parse(s: &str) -> Result<Propagation, ApiError> {
        match s {
            "" | "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""
            ))),
        }
    }

    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// What a watch sends: a change, or a bookmark — every change up to this
/// resourceVersion has been sent, resume from here.
#[derive(Clone, Debug)]
pub enum Watched {
    Event(WatchType, Arc<EventObject>),
    Bookmark(Revision),
}

pub type WatchItem = ApiResult<Watched>;
pub type WatchEvents = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

/// How long a watch from a resourceVersion the server has not reached
/// waits for it before answering `ResourceVersionTooLarge` (kube-apiserver
/// waits 3 s too).
pub const FUTURE_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a watch that allows bookmarks gets one (kube-apiserver: about
/// a minute).
pub const BOOKMARK_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest a watch may last before the server ends it.
pub const MAX_WATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A watch's `timeoutSeconds`: not negative; beyond an hour, an hour.
/// Absent or 0: the server's own, spread between 30 and 60 minutes so that
/// clients do not all come back at once (kube-apiserver's
/// `--min-request-timeout` does the same).
pub fn watch_timeout(seconds: Option<i64>) -> ApiResult<std::time::Duration> {
    use std::hash::{BuildHasher, Hasher};
    match seconds {
        Some(s) if s < 0 => Err(ApiError::bad_request(format!(
            "timeoutSeconds: Invalid value: {s}: must be greater than or equal to 0"
        ))),
        Some(s) if s > 0 => Ok(std::time::Duration::from_secs(s as u64).min(MAX_WATCH_TIMEOUT)),
        _ => {
            let spread = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                % 1800;
            Ok(std::time::Duration::from_secs(1800 + spread))
        }
    }
}

/// How a watch runs, beyond what it selects.
#[derive(Clone, Copy, Debug)]
pub struct WatchParams {
    /// Send bookmarks: every [`BOOKMARK_PERIOD`], and when the watch ends
    /// at its timeout.
    pub bookmarks: bool,
    /// When the server ends the watch (clients watch again from the last
    /// resourceVersion they saw).
    pub timeout: std::time::Duration,
}

impl Default for WatchParams {
    fn default() -> WatchParams {
        WatchParams {
            bookmarks: false,
            timeout: std::time::Duration::MAX,
        }
    }
}

/// Changes in revision order, from the cache or the store.
struct WatchSource {
    events: Pin<Box<dyn Stream<Item = ApiResult<Arc<CachedEvent>>> + Send>>,
    from_cache: bool,
}

/// A deadline that never comes (a watch without a timeout).
const FOREVER: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// A list, or one chunk of it: the objects as stored, each decoded only
/// when it is encoded into the response, so a list holds one decoded
/// object at a time (decoded, an object takes several times its stored
/// bytes).
pub struct ListChunk<R> {
    pub kvs: Vec<skiff_store::KeyValue>,
    pub revision: Revision,
    /// Where the next chunk starts; `None` on the last.
    pub token: Option<String>,
    /// How many objects follow (without selectors, when the store knows).
    pub remaining: Option<u64>,
    pub kind: std::marker::PhantomData<R>,
}

impl<R: Resource> ListChunk<R> {
    /// The objects, decoded one by one.
    pub fn items(&self) -> impl Iterator<Item = ApiResult<R>> + '_ {
        self.kvs.iter().map(decode)
    }
}

/// The store prefix a list reads, once its field selector is known to
/// name fields of the kind.
fn list_prefix<R: Resource>(opts: &ListOptions) -> ApiResult<String> {
    if !opts.fields.is_empty() {
        opts.fields
            .check_fields(&R::default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(if R::KIND.namespaced() && !opts.namespace.is_empty() {
        format!("{}{}/", R::KIND.key_prefix(), opts.namespace)
    } else {
        R::KIND.key_prefix().to_string()
    })
}

/// Whether a stored object is one a list selects (decoded only to check
/// selectors).
fn selected<R: Resource>(opts: &ListOptions, kv: &skiff_store::KeyValue) -> ApiResult<bool> {
    if opts.labels.is_empty() && opts.fields.is_empty() {
        return Ok(true);
    }
    let obj: R = decode(kv)?;
    Ok(opts.labels.matches(&obj.meta().labels) && opts.fields.matches(&obj))
}

/// About how much of a chunked list one response carries (fewer objects
/// than the limit, with a continue token, when they are large): well
/// within the gRPC message limit.
pub const CHUNK_BYTES: usize = 32 << 20;

/// Keys read per store page for a chunk without a limit.
const CHUNK_FETCH: usize = 500;
const MAX_CHUNK_FETCH: usize = 10_000;

/// kube-apiserver's words for a continue token whose snapshot is gone.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

/// A `continue` token: the revision every chunk reads and the key the next
/// one starts from (as kube-apiserver's, base64 of JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

impl ContinueToken {
    fn new(rv: Revision, start: &str) -> ContinueToken {
        ContinueToken {
            v: "meta.k8s.io/v1".into(),
            rv,
            start: start.to_string(),
        }
    }

    fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("a token serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str) -> ApiResult<ContinueToken> {
        use base64::Engine;
        let bad = || {
            ApiError::bad_request("continue: Invalid value: the token is not one this server gave")
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad())?;
        let t: ContinueToken = serde_json::from_slice(&json).map_err(|_| bad())?;
        if t.v != "meta.k8s.io/v1" || t.rv <= 0 {
            return Err(bad());
        }
        Ok(t)
    }
}

pub struct Registry {
    pub store: Arc<dyn Store>,
    pub alloc: Allocators,
    pub cache: Arc<WatchCache>,
    /// Namespace → (revision, terminating), following the watch cache: a
    /// create checks its namespace here and guards its transaction with a
    /// compare on that revision, so a stale entry costs a retry, never a
    /// wrong answer.
    namespaces: std::sync::RwLock<std::collections::HashMap<String, (Revision, bool)>>,
    /// Set when the server shuts down: every open watch ends.
    closing: tokio::sync::watch::Sender<bool>,
    /// The store lease that objects with a TTL written now are attached
    /// to, and when it was granted: one lease a minute for all of them,
    /// as kube-apiserver's lease manager shares them.
    ttl_lease: tokio::sync::Mutex<Option<(skiff_store::LeaseId, std::time::Instant)>>,
    /// How long objects of kinds that expire (Events) live.
    pub ttl: std::time::Duration,
    /// The authorization policy, following the same feed as the cache.
    pub authz: Arc<crate::authz::Authorizer>,
}

/// How long one TTL lease is handed out to new writes.
const TTL_LEASE_REUSE: std::time::Duration = std::time::Duration::from_secs(60);

fn parse_rv(kind: Kind, name: &str, rv: &str) -> ApiResult<Option<Revision>> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<Revision>().map(Some).map_err(|_| {
        ApiError::invalid(
            kind,
            name,
            vec![skiff_api::validation::FieldError::invalid(
                "metadata.resourceVersion",
                rv,
                "must be a number",
            )],
        )
    })
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Keeps what clients may not change on update.
fn keep_server_metadata(new: &mut ObjectMeta, cur: &ObjectMeta) {
    new.uid = cur.uid.clone();
    new.creation_timestamp = cur.creation_timestamp;
    new.deletion_timestamp = cur.deletion_timestamp;
    new.deletion_grace_period_seconds = cur.deletion_grace_period_seconds;
    new.generation = cur.generation;
    new.generate_name = cur.generate_name.clone();
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, alloc: Allocators, cache: Arc<WatchCache>) -> Registry {
        Registry {
            store,
            alloc,
            cache,
            namespaces: Default::default(),
            closing: tokio::sync::watch::channel(false).0,
            ttl_lease: tokio::sync::Mutex::new(None),
            ttl: std::time::Duration::from_secs(3600),
            authz: Arc::new(crate::authz::Authorizer::new()),
        }
    }

    /// Admission of one write by its writer, if the request has one.
    fn admit<R: Strategy>(
        &self,
        obj: &R,
        old: Option<&R>,
        op: AdmitOp,
        user: Option<&Arc<crate::authn::UserInfo>>,
    ) -> ApiResult<()> {
        let Some(user) = user else { return Ok(()) };
        obj.admit(
            old,
            op,
            &crate::authz::admission::Admission {
                user,
                authz: &self.authz,
            },
        )
    }

    /// The lease a write of `R` attaches its object to (0: none): it
    /// expires no sooner than the kind's TTL from now.
    async fn lease_for<R: Strategy>(&self) -> ApiResult<skiff_store::LeaseId> {
        if !R::EXPIRES {
            return Ok(0);
        }
        let ttl = self.ttl;
        let mut current = self.ttl_lease.lock().await;
        // Shared for a minute at most (less with a short TTL), so each
        // object lives at least the TTL and at most a minute more.
        let reuse = TTL_LEASE_REUSE.min(ttl / 2);
        if let Some((id, granted)) = *current
            && granted.elapsed() < reuse
        {
            return Ok(id);
        }
        let seconds = (ttl + reuse).as_secs().max(1) as i64;
        let id = self.store.lease_grant(seconds).await?;
        *current = Some((id, std::time::Instant::now()));
        Ok(id)
    }

    /// A write's transaction; when the lease it attaches to is gone from
    /// the store (the store lost it), the next write takes a new one.
    async fn txn_with_lease(&self, txn: Txn) -> ApiResult<skiff_store::TxnResult> {
        match self.store.txn(txn).await {
            Err(StoreError::LeaseNotFound(id)) => {
                let mut current = self.ttl_lease.lock().await;
                if current.is_some_and(|(held, _)| held == id) {
                    *current = None;
                }
                Err(StoreError::LeaseNotFound(id).into())
            }
            r => Ok(r?),
        }
    }

    /// Ends every open watch (the server is going away).
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    fn until_closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Follows namespace changes (called for every event the cache takes).
    pub fn observe(&self, ev: &CachedEvent) {
        self.authz.observe(ev);
        if ev.kind != Kind::Namespace {
            return;
        }
        let Some(obj) = ev.object() else { return };
        let meta = obj.object.meta();
        let mut map = self.namespaces.write().expect("namespace map poisoned");
        match ev.event_type {
            WatchType::Deleted => map.remove(&meta.name),
            _ => map.insert(
                meta.name.clone(),
                (ev.revision, meta.deletion_timestamp.is_some()),
            ),
        };
    }

    /// Loads the namespace map from the store.
    pub async fn load_namespaces(&self) -> ApiResult<()> {
        let list = self.store.list(Kind::Namespace.key_prefix()).await?;
        let mut map = self.namespaces.write().expect("namespace map poisoned");
        for kv in &list.kvs {
            let ns: Namespace = decode(kv)?;
            map.insert(
                ns.meta().name.clone(),
                (kv.mod_revision, ns.meta().deletion_timestamp.is_some()),
            );
        }
        Ok(())
    }

    /// The namespace's revision from the map, or from the store when the
    /// map does not know it (yet).
    async fn namespace_revision(&self, kind: Kind, name: &str, ns: &str) -> ApiResult<Revision> {
        let known = self
            .namespaces
            .read()
            .expect("namespace map poisoned")
            .get(ns)
            .copied();
        match known {
            Some((_, true)) => Err(terminating(kind, name, ns)),
            Some((rev, false)) => Ok(rev),
            None => self.live_namespace(kind, name, ns).await,
        }
    }

    // ------------------------------------------------------------- reads

    pub async fn get<R: Resource>(&self, namespace: &str, name: &str) -> ApiResult<R> {
        let key = R::KIND.key(namespace, name);
        match self.store.get(&key).await? {
            Some(kv) => decode(&kv),
            None => Err(ApiError::not_found(R::KIND, name)),
        }
    }

    pub async fn list<R: Resource>(&self, opts: &ListOptions) -> ApiResult<(Vec<R>, Revision)> {
        let prefix = list_prefix::<R>(opts)?;
        let list = self.store.list(&prefix).await?;
        let mut items = Vec::with_capacity(list.kvs.len());
        for kv in &list.kvs {
            let obj: R = decode(kv)?;
            if opts.labels.matches(&obj.meta().labels) && opts.fields.matches(&obj) {
                items.push(obj);
            }
        }
        Ok((items, list.revision))
    }

    /// A whole list as stored, for a response to encode object by object
    /// (see [`ListChunk`]).
    pub async fn list_stored<R: Resource>(&self, opts: &ListOptions) -> ApiResult<ListChunk<R>> {
        let prefix = list_prefix::<R>(opts)?;
        let list = self.store.list(&prefix).await?;
        let mut kvs = Vec::with_capacity(list.kvs.len());
        for kv in list.kvs {
            if selected::<R>(opts, &kv)? {
                kvs.push(kv);
            }
        }
        Ok(ListChunk {
            kvs,
            revision: list.revision,
            token: None,
            remaining: None,
            kind: std::marker::PhantomData,
        })
    }

    /// One chunk of a list (`limit` and `continue`, as Kubernetes pages):
    /// at most `limit` objects (0: no limit) and at most about `max_bytes`
    /// of them, every chunk of one list read at the first chunk's
    /// revision. The token continues the list; it expires (410) once the
    /// store compacts that revision away.
    pub async fn list_chunk<R: Resource>(
        &self,
        opts: &ListOptions,
        limit: usize,
        token: &str,
        max_bytes: usize,
    ) -> ApiResult<ListChunk<R>> {
        let prefix = list_prefix::<R>(opts)?;
        let (mut start, mut revision) = if token.is_empty() {
            (String::new(), 0)
        } else {
            let t = ContinueToken::decode(token)?;
            if !t.start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue: Invalid value: the token belongs to another list",
                ));
            }
            (t.start, t.rv)
        };
        let selective = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut bytes = 0usize;
        // With selectors a page may hold few matches: read on, in growing
        // pages, as kube-apiserver does.
        let mut fetch = if limit > 0 { limit } else { CHUNK_FETCH };
        loop {
            let page = self
                .store
                .list_page(&prefix, &start, fetch, revision)
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } => ApiError::gone(CONTINUE_EXPIRED),
                    e => e.into(),
                })?;
            revision = page.revision;
            let n = page.kvs.len();
            for (i, kv) in page.kvs.into_iter().enumerate() {
                start = skiff_store::key_after(&kv.key);
                if selected::<R>(opts, &kv)? {
                    bytes += kv.value.len();
                    items.push(kv);
                }
                let full = (limit > 0 && items.len() >= limit) || bytes >= max_bytes;
                if full {
                    let more = i + 1 < n || page.more;
                    return Ok(ListChunk {
                        kvs: items,
                        revision,
                        token: more.then(|| ContinueToken::new(revision, &start).encode()),
                        remaining: page
                            .remaining
                            .filter(|_| more && !selective)
                            .map(|r| r + (n - i - 1) as u64),
                        kind: std::marker::PhantomData,
                    });
                }
            }
            if !page.more {
                return Ok(ListChunk {
                    kvs: items,
                    revision,
                    token: None,
                    remaining: None,
                    kind: std::marker::PhantomData,
                });
            }
            fetch = (fetch * 2).min(MAX_CHUNK_FETCH);
        }
    }

    // ------------------------------------------------------------ create

    /// The namespace's revision, refusing a missing or terminating one.
    async fn live_namespace(&self, kind: Kind, name: &str, ns: &str) -> ApiResult<Revision> {
        let Some(kv) = self.store.get(&Kind::Namespace.key("", ns)).await? else {
            return Err(ApiError::namespace_not_found(ns));
        };
        let namespace: Namespace = decode(&kv)?;
        if namespace.meta().deletion_timestamp.is_some() {
            return Err(ApiError::forbidden(
                kind,
                name,
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(kv.mod_revision)
    }

    pub async fn create<R: Strategy>(&self, mut obj: R, opts: WriteOptions) -> ApiResult<R> {
        let kind = R::KIND;
        let generated = obj.meta().name.is_empty() && !obj.meta().generate_name.is_empty();
        {
            let meta = obj.meta_mut();
            if generated {
                meta.name = format!("{}{}", meta.generate_name, random_suffix());
            }
            if !kind.namespaced() {
                meta.namespace.clear();
            }
            meta.uid = uuid::Uuid::new_v4().to_string();
            meta.resource_version.clear();
            meta.creation_timestamp = Some(Time::now_seconds());
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            meta.generation = 1;
        }
        obj.set_type_meta();
        obj.initial_status();
        obj.defaults();
        if let Some(m) = &opts.field_manager
            && obj.meta().managed_fields.is_empty()
        {
            crate::managed::track(None, &mut obj, m);
        }
        let mut name = obj.name().to_string();
        let errors = obj.validate();
        if !errors.is_empty() {
            return Err(ApiError::invalid(kind, &name, errors));
        }
        self.admit(&obj, None, AdmitOp::Create, opts.user.as_ref())?;
        let mut ns_rev = if kind.namespaced() {
            Some(
                self.namespace_revision(kind, &name, obj.namespace())
                    .await?,
            )
        } else {
            None
        };
        let mut key = obj.key();
        let mut avoid = Avoid::new();
        for _ in 0..ATTEMPTS {
            let mut candidate = obj.clone();
            let claims = candidate
                .claims(None, &self.alloc, &avoid)
                .map_err(|errors| ApiError::invalid(kind, &name, errors))?;
            let mut txn = Txn::default().when(Compare::Absent(key.clone()));
            if let Some(rev) = ns_rev {
                txn = txn.when(Compare::ModRevision(
                    Kind::Namespace.key("", candidate.namespace()),
                    rev,
                ));
            }
            for c in &claims {
                txn = txn.when(Compare::Absent(c.allocation.key()));
            }
            let mut raw = None;
            if !opts.dry_run {
                let bytes: Arc<[u8]> = encode(&candidate)?.into();
                let lease = self.lease_for::<R>().await?;
                txn = put_with_claims(txn, &key, &bytes, &candidate, &claims, lease);
                raw = Some(bytes);
            }
            // A dry run's transaction only compares: it writes nothing.
            let r = self.txn_with_lease(txn).await?;
            if r.succeeded {
                let Some(raw) = raw else {
                    return Ok(candidate);
                };
                self.cache.wrote(&key, r.revision, raw);
                candidate.meta_mut().resource_version = r.revision.to_string();
                for c in &claims {
                    self.alloc.observe(c.allocation, true);
                }
                return Ok(candidate);
            }
            if r.current[0].is_some() {
                if !generated {
                    return Err(ApiError::already_exists(kind, &name));
                }
                // A generated name that is taken: another suffix (five
                // characters collide among thousands of pods of one owner).
                let meta = obj.meta_mut();
                meta.name = format!("{}{}", meta.generate_name, random_suffix());
                name = meta.name.clone();
                key = obj.key();
                continue;
            }
            let claim_results = if let Some(rev) = ns_rev {
                match &r.current[1] {
                    None => return Err(ApiError::namespace_not_found(candidate.namespace())),
                    Some(ns) if ns.mod_revision != rev => {
                        // The namespace changed since we looked: look again.
                        ns_rev = Some(
                            self.live_namespace(kind, &name, candidate.namespace())
                                .await?,
                        );
                        continue;
                    }
                    Some(_) => {}
                }
                &r.current[2..]
            } else {
                &r.current[1..]
            };
            self.claims_lost(kind, &name, &claims, claim_results, &mut avoid)?;
        }
        Err(ApiError::unavailable(format!(
            "could not create {kind} {name:?}: too many conflicting writers, try again"
        )))
    }

    /// After a failed transaction: a claim the user asked for is their
    /// error; one we picked is avoided on the next attempt.
    fn claims_lost(
        &self,
        kind: Kind,
        name: &str,
        claims: &[Claim],
        current: &[Option<KeyValue>],
        avoid: &mut Avoid,
    ) -> ApiResult<()> {
        for (c, now) in claims.iter().zip(current) {
            if now.is_none() {
                continue;
            }
            self.alloc.observe(c.allocation, true);
            if c.explicit {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    vec![skiff_api::validation::FieldError::invalid(
                        c.field.clone(),
                        &c.value,
                        format!("provided {} is already allocated", c.allocation.noun()),
                    )],
                ));
            }
            avoid.insert(c.allocation);
        }
        Ok(())
    }

    // ------------------------------------------------------------ update

    /// Replaces an object (or only its status). A resourceVersion in `obj`
    /// must be the current one; without one the update is unconditional.
    pub async fn update<R: Strategy>(
        &self,
        obj: R,
        status_only: bool,
        opts: WriteOptions,
    ) -> ApiResult<R> {
        let kind = R::KIND;
        let name = obj.name().to_string();
        let key = obj.key();
        let wanted_rv = parse_rv(kind, &name, &obj.meta().resource_version)?;
        let mut avoid = Avoid::new();
        for attempt in 0..ATTEMPTS {
            // A compare-and-set on the revision the watch cache holds as
            // the object's newest starts from the cache's bytes, with no
            // read (the transaction's compare guards it). Otherwise the
            // first read may lag (guarded the same way); after a lost race,
            // and before calling a conflict, read fresh.
            let cached = match wanted_rv {
                Some(rv) if attempt == 0 => self.cache.current_at(&key, rv).map(|raw| (rv, raw)),
                _ => None,
            };
            let (mod_revision, cur): (Revision, R) = match cached {
                Some((rv, raw)) => (rv, decode_at(&raw, rv, &key)?),
                None => {
                    let mut read = if attempt == 0 {
                        self.store.get_relaxed(&key).await?
                    } else {
                        self.store.get(&key).await?
                    };
                    if attempt == 0
                        && read
                            .as_ref()
                            .map(|kv| Some(kv.mod_revision) != wanted_rv && wanted_rv.is_some())
                            .unwrap_or(true)
                    {
                        read = self.store.get(&key).await?;
                    }
                    let Some(kv) = read else {
                        return Err(ApiError::not_found(kind, &name));
                    };
                    if wanted_rv.is_some_and(|rv| rv != kv.mod_revision) {
                        return Err(ApiError::conflict(kind, &name));
                    }
                    (kv.mod_revision, decode(&kv)?)
                }
            };
            let mut new = if status_only {
                let mut n = cur.clone();
                n.copy_status_from(&obj);
                n
            } else {
                let mut n = obj.clone();
                if kind.has_status() {
                    n.copy_status_from(&cur);
                }
                keep_server_metadata(n.meta_mut(), cur.meta());
                n
            };
            new.set_type_meta();
            new.defaults();
            if !status_only {
                // Brought unchanged (or not at all), managedFields follow
                // the write; changed, they are the client's to set.
                if new.meta().managed_fields.is_empty() {
                    new.meta_mut().managed_fields = cur.meta().managed_fields.clone();
                }
                if let Some(m) = &opts.field_manager
                    && new.meta().managed_fields == cur.meta().managed_fields
                {
                    crate::managed::track(Some(&cur), &mut new, m);
                }
            }
            let claims = new
                .claims(Some(&cur), &self.alloc, &avoid)
                .map_err(|errors| ApiError::invalid(kind, &name, errors))?;
            let mut errors = new.validate();
            errors.extend(new.validate_update(&cur));
            if !errors.is_empty() {
                return Err(ApiError::invalid(kind, &name, errors));
            }
            let op = if status_only {
                AdmitOp::UpdateStatus
            } else {
                AdmitOp::Update
            };
            self.admit(&new, Some(&cur), op, opts.user.as_ref())?;
            if new.spec_fingerprint() != cur.spec_fingerprint() {
                new.meta_mut().generation = cur.meta().generation + 1;
            }
            new.meta_mut().resource_version = cur.meta().resource_version.clone();
            if new == cur {
                return Ok(cur);
            }
            let finishing = new.finished();
            let held_before = cur.held();
            let released: Vec<Allocation> = if finishing {
                held_before.into_iter().collect()
            } else {
                held_before.difference(&new.held()).copied().collect()
            };
            let mut txn = Txn::default().when(Compare::ModRevision(key.clone(), mod_revision));
            if !finishing {
                for c in &claims {
                    txn = txn.when(Compare::Absent(c.allocation.key()));
                }
            }
            let mut raw = None;
            if !opts.dry_run {
                if finishing {
                    txn = txn.then(Op::Delete { key: key.clone() });
                } else {
                    let bytes: Arc<[u8]> = encode(&new)?.into();
                    let lease = self.lease_for::<R>().await?;
                    txn = put_with_claims(txn, &key, &bytes, &new, &claims, lease);
                    raw = Some(bytes);
                }
                for a in &released {
                    txn = txn.then(Op::Delete { key: a.key() });
                }
            }
            let r = self.txn_with_lease(txn).await?;
            if r.succeeded {
                if opts.dry_run {
                    return Ok(new);
                }
                // The next compare-and-set at this revision (often the
                // writer's own, at once) starts from these bytes, before
                // the store's watch has brought them.
                if let Some(raw) = raw {
                    self.cache.wrote(&key, r.revision, raw);
                }
                new.meta_mut().resource_version = r.revision.to_string();
                for a in &released {
                    self.alloc.observe(*a, false);
                }
                for c in &claims {
                    self.alloc.observe(c.allocation, true);
                }
                return Ok(new);
            }
            if r.current[0].as_ref().map(|k| k.mod_revision) != Some(mod_revision) {
                if wanted_rv.is_some() {
                    // Gone meanwhile (the cache's copy was the last one).
                    if r.current[0].is_none() {
                        return Err(ApiError::not_found(kind, &name));
                    }
                    return Err(ApiError::conflict(kind, &name));
                }
                // Unconditional update: read again and retry.
                continue;
            }
            self.claims_lost(kind, &name, &claims, &r.current[1..], &mut avoid)?;
        }
        Err(ApiError::conflict(kind, &name))
    }

    // ------------------------------------------------------------ delete

    /// Deletes an object, or starts its deletion: an object with finalizers
    /// (or a pod on a node, which gets its grace period) first gets a
    /// deletionTimestamp. Returns the object and whether it is gone.
    pub async fn delete<R: Strategy>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(R, bool)> {
        let kind = R::KIND;
        let key = kind.key(namespace, name);
        for _ in 0..ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ApiError::not_found(kind, name));
            };
            if opts
                .resource_version
                .is_some_and(|rv| rv != kv.mod_revision)
            {
                return Err(ApiError::conflict(kind, name));
            }
            let cur: R = decode(&kv)?;
            cur.check_delete()
                .map_err(|why| ApiError::forbidden(kind, name, why))?;
            self.admit(&cur, None, AdmitOp::Delete, opts.user.as_ref())?;
            let grace = cur.delete_grace(opts.grace_period_seconds);
            // Kinds the garbage collector does not follow (nothing is
            // owned by them) go as in the background.
            let finalizer = opts
                .propagation
                .finalizer()
                .filter(|_| R::OWNS_DEPENDENTS)
                .filter(|f| !cur.meta().finalizers.iter().any(|x| x == f));
            let graceful = !cur.meta().finalizers.is_empty() || grace > 0 || finalizer.is_some();
            if graceful {
                let mut marked = cur.clone();
                let meta = marked.meta_mut();
                let shorter = meta
                    .deletion_grace_period_seconds
                    .is_some_and(|g| g > grace);
                if meta.deletion_timestamp.is_some() && !shorter && finalizer.is_none() {
                    return Ok((cur, false));
                }
                if let Some(f) = finalizer {
                    meta.finalizers.push(f.to_string());
                }
                if meta.deletion_timestamp.is_none() || shorter {
                    meta.deletion_timestamp = Some(Time::now_seconds());
                    meta.deletion_grace_period_seconds = Some(grace);
                }
                marked.mark_terminating();
                if opts.dry_run {
                    return Ok((marked, false));
                }
                match self
                    .store
                    .update(&key, encode(&marked)?, kv.mod_revision)
                    .await?
                {
                    Ok(rev) => {
                        marked.meta_mut().resource_version = rev.to_string();
                        return Ok((marked, false));
                    }
                    Err(_) if opts.resource_version.is_some() => {
                        return Err(ApiError::conflict(kind, name));
                    }
                    Err(_) => continue,
                }
            }
            if opts.dry_run {
                return Ok((cur, true));
            }
            let mut txn = Txn::default()
                .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                .then(Op::Delete { key: key.clone() });
            let released = cur.held();
            for a in &released {
                txn = txn.then(Op::Delete { key: a.key() });
            }
            let r = self.store.txn(txn).await?;
            if r.succeeded {
                for a in &released {
                    self.alloc.observe(*a, false);
                }
                let mut gone = cur;
                gone.meta_mut().resource_version = r.revision.to_string();
                return Ok((gone, true));
            }
            if opts.resource_version.is_some() {
                return Err(ApiError::conflict(kind, name));
            }
        }
        Err(ApiError::conflict(kind, name))
    }

    // ------------------------------------------------------------- watch

    /// Events for `filter` after `resource_version`; without one, the
    /// current state first (as ADDED events), then changes. A revision the
    /// server has not reached is waited for [`FUTURE_REVISION_WAIT`], then
    /// refused as too large.
    pub async fn watch(
        self: &Arc<Self>,
        filter: Filter,
        resource_version: Option<Revision>,
        params: WatchParams,
    ) -> ApiResult<WatchEvents> {
        if !filter.fields.is_empty() {
            with_resource!(filter.kind, R => filter
                .fields
                .check_fields(&R::default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?);
        }
        let deadline = tokio::time::Instant::now()
            .checked_add(params.timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + FOREVER);
        if let Some(rv) = resource_version.filter(|rv| *rv > 0)
            && rv > self.cache.complete()
            && !self.cache.wait_for(rv, FUTURE_REVISION_WAIT).await
        {
            let current = self.store.revision().await.unwrap_or(self.cache.complete());
            return Err(ApiError::too_large_resource_version(rv, current));
        }
        let (initial, from) = match resource_version {
            Some(rv) if rv > 0 => (Vec::new(), rv),
            _ => {
                let opts = ListOptions {
                    namespace: filter.namespace.clone(),
                    labels: filter.labels.clone(),
                    fields: filter.fields.clone(),
                };
                with_resource!(filter.kind, R => {
                    let (items, rev) = self.list::<R>(&opts).await?;
                    let initial: Vec<Arc<EventObject>> = items
                        .into_iter()
                        .map(|o| EventObject::new(o.into_object()))
                        .collect();
                    (initial, rev)
                })
            }
        };
        let source = self.watch_source(&filter, from).await?;
        let registry = self.clone();
        let stream = async_stream::stream! {
            for obj in initial {
                yield Ok(Watched::Event(WatchType::Added, obj));
            }
            let mut source = source;
            // The newest revision this watch has sent everything up to.
            let mut reached = from;
            let mut last = from;
            let mut bookmark_at = tokio::time::Instant::now() + BOOKMARK_PERIOD;
            let mut ending = false;
            loop {
                // When a bookmark is due: read what the cache has complete
                // first, then make sure no event is ready; whatever was
                // complete before that check has all been sent.
                let due = ending || (params.bookmarks && tokio::time::Instant::now() >= bookmark_at);
                let next = if due {
                    let complete = if source.from_cache { registry.cache.complete() } else { 0 };
                    match source.events.next().now_or_never() {
                        Some(next) => next,
                        None => {
                            // Store history hands over whole revisions.
                            reached = reached.max(complete).max(if source.from_cache { 0 } else { last });
                            if params.bookmarks {
                                yield Ok(Watched::Bookmark(reached));
                            }
                            if ending {
                                return;
                            }
                            bookmark_at = tokio::time::Instant::now() + BOOKMARK_PERIOD;
                            continue;
                        }
                    }
                } else {
                    let wake = if params.bookmarks { bookmark_at.min(deadline) } else { deadline };
                    tokio::select! {
                        biased;
                        next = source.events.next() => next,
                        _ = tokio::time::sleep_until(wake) => {
                            ending = tokio::time::Instant::now() >= deadline;
                            continue;
                        }
                    }
                };
                match next {
                    Some(Ok(ev)) => {
                        last = last.max(ev.revision);
                        if let Some(t) = filter.view(&ev)
                            && let Some(obj) = ev.object()
                        {
                            yield Ok(Watched::Event(t, obj.clone()));
                        }
                    }
                    Some(Err(e)) => {
                        yield Err(e);
                        return;
                    }
                    None => return,
                }
            }
        };
        Ok(Box::pin(stream.take_until(self.until_closing())))
    }

    /// The changes after `from`: from the watch cache while its window
    /// reaches back that far, else from the store's history.
    async fn watch_source(&self, filter: &Filter, from: Revision) -> ApiResult<WatchSource> {
        if let Some((backlog, mut rx)) = self.cache.subscribe_from(from) {
            let cache = self.cache.clone();
            let events = async_stream::stream! {
                let mut last = from;
                for ev in backlog {
                    last = ev.revision;
                    yield Ok(ev);
                }
                loop {
                    match rx.recv().await {
                        Ok(ev) if ev.revision <= last => {}
                        Ok(ev) => {
                            last = ev.revision;
                            yield Ok(ev);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            // Behind the live channel: catch up from the
                            // window while it reaches back that far.
                            let Some((backlog, again)) = cache.subscribe_from(last) else {
                                yield Err(ApiError::gone(format!(
                                    "the watch fell behind after resourceVersion {last}: watch again from there"
                                )));
                                return;
                            };
                            rx = again;
                            for ev in backlog {
                                last = ev.revision;
                                yield Ok(ev);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            };
            return Ok(WatchSource {
                events: Box::pin(events),
                from_cache: true,
            });
        }
        // Older than the cache's window: straight from the store's history.
        let mut store_events = self.store.watch(filter.kind.key_prefix(), from).await?;
        let events = async_stream::stream! {
            while let Some(ev) = store_events.next().await {
                match ev {
                    Ok(ev) => {
                        if let Some(ce) = decode_event(&ev) {
                            yield Ok(Arc::new(ce));
                        }
                    }
                    Err(e) => {
                        yield Err(ApiError::from(e));
                        return;
                    }
                }
            }
        };
        Ok(WatchSource {
            events: Box::pin(events),
            from_cache: false,
        })
    }

    // ------------------------------------------------------- bootstrapping

    /// Creates the system namespaces if they are missing.
    pub async fn ensure_system_namespaces(&self) -> ApiResult<()> {
        for name in SYSTEM_NAMESPACES {
            let ns = Namespace {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match self.create(ns, WriteOptions::default()).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Loads the allocation hints from the store.
    pub async fn load_allocations(&self) -> ApiResult<()> {
        for prefix in Allocation::PREFIXES {
            for kv in self.store.list(prefix).await?.kvs {
                if let Some(a) = Allocation::from_key(&kv.key) {
                    self.alloc.observe(a, true);
                }
            }
        }
        Ok(())
    }
}

/// Writes the object (attached to `lease`, 0 for none) and the
/// allocation keys it claims (each naming it).
fn put_with_claims<R: Resource>(
    mut txn: Txn,
    key: &str,
    raw: &[u8],
    obj: &R,
    claims: &[Claim],
    lease: skiff_store::LeaseId,
) -> Txn {
    txn = txn.then(Op::Put {
        key: key.to_string(),
        value: raw.to_vec(),
        lease,
    });
    for c in claims {
        txn = txn.then(Op::Put {
            key: c.allocation.key(),
            value: obj.full_name().into_bytes(),
            lease: 0,
        });
    }
    txn
}

fn terminating(kind: Kind, name: &str, ns: &str) -> ApiError {
    ApiError::forbidden(
        kind,
        name,
        format!("unable to create new content in namespace {ns} because it is being terminated"),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn watch_timeouts_are_validated_capped_and_spread() {
        assert_eq!(watch_timeout(Some(5)).unwrap(), Duration::from_secs(5));
        assert_eq!(watch_timeout(Some(i64::MAX)).unwrap(), MAX_WATCH_TIMEOUT);
        let e = watch_timeout(Some(-1)).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.starts_with("timeoutSeconds: Invalid value: -1"));
        let defaults: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| watch_timeout(None).unwrap())
            .chain([watch_timeout(Some(0)).unwrap()])
            .collect();
        assert!(defaults.iter().all(|d| (1800..3600).contains(&d.as_secs())));
        assert!(defaults.len() > 10, "spread: {defaults:?}");
    }
}
