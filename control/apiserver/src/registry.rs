//! The registry: create, read, update, delete and watch for every kind,
//! generic over [`Resource`]. Server-set metadata, defaults, validation,
//! finalizers, graceful pod deletion, Service allocations and the
//! compare-and-swap on resourceVersion all happen here, once, for both the
//! REST and the gRPC front ends.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rand::Rng;
use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::v1::{Namespace, ObjectMeta, Pod};
use skiff_api::wire::Time;
use skiff_api::{Kind, Object, Resource, with_resource};
use skiff_store::{Compare, KeyValue, Op, Revision, Store, Txn};

use crate::alloc::{Allocators, IP_PREFIX, POD_CIDR_PREFIX, PORT_PREFIX};
use crate::codec::{decode, decode_at, encode};
use crate::error::{ApiError, ApiResult};
use crate::service_claims::{self, Claim};
use crate::watch_cache::{CachedEvent, EventObject, Filter, WatchCache, WatchType, decode_event};

/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

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

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Delete only at this resourceVersion.
    pub resource_version: Option<Revision>,
    /// For pods: how long the node gets to stop them; 0 deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// What happens to the objects it owns.
    pub propagation: Propagation,
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

pub type WatchItem = ApiResult<(WatchType, Arc<EventObject>)>;
pub type WatchEvents = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

pub struct Registry {
    pub store: Arc<dyn Store>,
    pub alloc: Allocators,
    pub cache: WatchCache,
    /// Namespace → (revision, terminating), following the watch cache: a
    /// create checks its namespace here and guards its transaction with a
    /// compare on that revision, so a stale entry costs a retry, never a
    /// wrong answer.
    namespaces: std::sync::RwLock<std::collections::HashMap<String, (Revision, bool)>>,
    /// Set when the server shuts down: every open watch ends.
    closing: tokio::sync::watch::Sender<bool>,
}

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
    pub fn new(store: Arc<dyn Store>, alloc: Allocators, cache: WatchCache) -> Registry {
        Registry {
            store,
            alloc,
            cache,
            namespaces: Default::default(),
            closing: tokio::sync::watch::channel(false).0,
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
        if !opts.fields.is_empty() {
            opts.fields
                .check_fields(&R::default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        let prefix = if R::KIND.namespaced() && !opts.namespace.is_empty() {
            format!("{}{}/", R::KIND.key_prefix(), opts.namespace)
        } else {
            R::KIND.key_prefix().to_string()
        };
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

    pub async fn create<R: Resource>(&self, mut obj: R) -> ApiResult<R> {
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
        let mut obj = match obj.into_object() {
            Object::Pod(mut p) => {
                p.status = Some(skiff_api::v1::PodStatus {
                    phase: "Pending".into(),
                    ..Default::default()
                });
                Object::Pod(p)
            }
            Object::Namespace(mut n) => {
                n.status = Some(skiff_api::v1::NamespaceStatus {
                    phase: "Active".into(),
                    ..Default::default()
                });
                Object::Namespace(n)
            }
            Object::Node(n) => Object::Node(n),
            other => {
                let mut o = R::from_object(other).expect("same kind");
                o.clear_status();
                o.into_object()
            }
        };
        crate::defaults::apply(&mut obj);
        let mut obj = R::from_object(obj).expect("same kind");
        let mut name = obj.name().to_string();
        let errors = obj.validate();
        if !errors.is_empty() {
            return Err(ApiError::invalid(kind, &name, errors));
        }
        let mut ns_rev = if kind.namespaced() {
            Some(
                self.namespace_revision(kind, &name, obj.namespace())
                    .await?,
            )
        } else {
            None
        };
        let mut key = obj.key();
        let (mut avoid_ips, mut avoid_ports) = (HashSet::new(), HashSet::new());
        for _ in 0..ATTEMPTS {
            let mut candidate = obj.clone();
            let claims = self.claims_for(&mut candidate, None, &avoid_ips, &avoid_ports)?;
            let mut txn = Txn::default().when(Compare::Absent(key.clone()));
            if let Some(rev) = ns_rev {
                txn = txn.when(Compare::ModRevision(
                    Kind::Namespace.key("", candidate.namespace()),
                    rev,
                ));
            }
            for c in &claims {
                txn = txn.when(Compare::Absent(c.key.clone()));
            }
            txn = put_with_claims(txn, &key, &candidate, &claims)?;
            let r = self.store.txn(txn).await?;
            if r.succeeded {
                candidate.meta_mut().resource_version = r.revision.to_string();
                for c in &claims {
                    self.alloc.observe(&c.key, true);
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
            self.claims_lost(
                kind,
                &name,
                &claims,
                claim_results,
                &mut avoid_ips,
                &mut avoid_ports,
            )?;
        }
        Err(ApiError::unavailable(format!(
            "could not create {kind} {name:?}: too many conflicting writers, try again"
        )))
    }

    /// The allocation claims of a write (Services and Nodes have some).
    /// For Nodes, `avoid_ips` holds podCIDR networks that lost a race.
    fn claims_for<R: Resource>(
        &self,
        obj: &mut R,
        old: Option<&R>,
        avoid_ips: &HashSet<Ipv4Addr>,
        avoid_ports: &HashSet<u16>,
    ) -> ApiResult<Vec<Claim>> {
        if R::KIND == Kind::Node {
            let Object::Node(mut node) = obj.clone().into_object() else {
                unreachable!()
            };
            let old_spec = old.and_then(|o| match o.clone().into_object() {
                Object::Node(n) => n.spec,
                _ => None,
            });
            let spec = node.spec.get_or_insert_with(Default::default);
            let claims =
                crate::node_claims::assign(spec, old_spec.as_ref(), &self.alloc, avoid_ips)
                    .map_err(|errors| ApiError::invalid(Kind::Node, &node.meta().name, errors))?;
            *obj = R::from_object(Object::Node(node)).expect("a node");
            return Ok(claims);
        }
        if R::KIND != Kind::Service {
            return Ok(Vec::new());
        }
        let Object::Service(mut svc) = obj.clone().into_object() else {
            unreachable!()
        };
        let old_spec = old.and_then(|o| match o.clone().into_object() {
            Object::Service(s) => s.spec,
            _ => None,
        });
        let spec = svc.spec.get_or_insert_with(Default::default);
        let claims =
            service_claims::assign(spec, old_spec.as_ref(), &self.alloc, avoid_ips, avoid_ports)
                .map_err(|errors| ApiError::invalid(Kind::Service, &svc.meta().name, errors))?;
        *obj = R::from_object(Object::Service(svc)).expect("a service");
        Ok(claims)
    }

    /// After a failed transaction: a claim the user asked for is their
    /// error; one we picked is avoided on the next attempt.
    fn claims_lost(
        &self,
        kind: Kind,
        name: &str,
        claims: &[Claim],
        current: &[Option<KeyValue>],
        avoid_ips: &mut HashSet<Ipv4Addr>,
        avoid_ports: &mut HashSet<u16>,
    ) -> ApiResult<()> {
        for (c, now) in claims.iter().zip(current) {
            if now.is_none() {
                continue;
            }
            self.alloc.observe(&c.key, true);
            if c.explicit {
                let what = if c.key.starts_with(IP_PREFIX) {
                    "IP"
                } else if c.key.starts_with(POD_CIDR_PREFIX) {
                    "podCIDR"
                } else {
                    "port"
                };
                return Err(ApiError::invalid(
                    kind,
                    name,
                    vec![skiff_api::validation::FieldError::invalid(
                        c.field.clone(),
                        &c.value,
                        format!("provided {what} is already allocated"),
                    )],
                ));
            }
            if let Some(ip) = c
                .key
                .strip_prefix(IP_PREFIX)
                .or_else(|| c.key.strip_prefix(POD_CIDR_PREFIX))
                .and_then(|s| s.parse().ok())
            {
                avoid_ips.insert(ip);
            }
            if let Some(p) = c.key.strip_prefix(PORT_PREFIX).and_then(|s| s.parse().ok()) {
                avoid_ports.insert(p);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ update

    /// Replaces an object (or only its status). A resourceVersion in `obj`
    /// must be the current one; without one the update is unconditional.
    pub async fn update<R: Resource>(&self, obj: R, status_only: bool) -> ApiResult<R> {
        let kind = R::KIND;
        let name = obj.name().to_string();
        let key = obj.key();
        let wanted_rv = parse_rv(kind, &name, &obj.meta().resource_version)?;
        let (mut avoid_ips, mut avoid_ports) = (HashSet::new(), HashSet::new());
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
            let mut as_obj = new.into_object();
            crate::defaults::apply(&mut as_obj);
            new = R::from_object(as_obj).expect("same kind");
            let claims = self.claims_for(&mut new, Some(&cur), &avoid_ips, &avoid_ports)?;
            let errors = new.validate();
            if !errors.is_empty() {
                return Err(ApiError::invalid(kind, &name, errors));
            }
            if new.spec_fingerprint() != cur.spec_fingerprint() {
                new.meta_mut().generation = cur.meta().generation + 1;
            }
            new.meta_mut().resource_version = cur.meta().resource_version.clone();
            if new == cur {
                return Ok(cur);
            }
            let finishing = finished(&new);
            let released: Vec<String> = if matches!(R::KIND, Kind::Service | Kind::Node) {
                let held_now = held_keys(&new);
                let held_before = held_keys(&cur);
                if finishing {
                    held_before.into_iter().collect()
                } else {
                    held_before.difference(&held_now).cloned().collect()
                }
            } else {
                Vec::new()
            };
            let mut txn = Txn::default().when(Compare::ModRevision(key.clone(), mod_revision));
            if finishing {
                txn = txn.then(Op::Delete { key: key.clone() });
            } else {
                for c in &claims {
                    txn = txn.when(Compare::Absent(c.key.clone()));
                }
                txn = put_with_claims(txn, &key, &new, &claims)?;
            }
            for k in &released {
                txn = txn.then(Op::Delete { key: k.clone() });
            }
            let r = self.store.txn(txn).await?;
            if r.succeeded {
                new.meta_mut().resource_version = r.revision.to_string();
                for k in &released {
                    self.alloc.observe(k, false);
                }
                for c in &claims {
                    self.alloc.observe(&c.key, true);
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
            self.claims_lost(
                kind,
                &name,
                &claims,
                &r.current[1..],
                &mut avoid_ips,
                &mut avoid_ports,
            )?;
        }
        Err(ApiError::conflict(kind, &name))
    }

    // ------------------------------------------------------------ delete

    /// Deletes an object, or starts its deletion: an object with finalizers
    /// (or a pod on a node, which gets its grace period) first gets a
    /// deletionTimestamp. Returns the object and whether it is gone.
    pub async fn delete<R: Resource>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(R, bool)> {
        let kind = R::KIND;
        let key = kind.key(namespace, name);
        if kind == Kind::Namespace && SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                kind,
                name,
                "this namespace may not be deleted",
            ));
        }
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
            let grace = self.grace_period(&cur, opts);
            // Kinds the garbage collector does not follow (nothing is
            // owned by them) go as in the background.
            let followed = !matches!(kind, Kind::Namespace | Kind::Node | Kind::Event);
            let finalizer = opts
                .propagation
                .finalizer()
                .filter(|_| followed)
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
                let mut as_obj = marked.into_object();
                if let Object::Namespace(ns) = &mut as_obj {
                    ns.status.get_or_insert_with(Default::default).phase = "Terminating".into();
                }
                let mut marked = R::from_object(as_obj).expect("same kind");
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
            let mut txn = Txn::default()
                .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                .then(Op::Delete { key: key.clone() });
            let released: Vec<String> = held_keys(&cur).into_iter().collect();
            for k in &released {
                txn = txn.then(Op::Delete { key: k.clone() });
            }
            let r = self.store.txn(txn).await?;
            if r.succeeded {
                for k in &released {
                    self.alloc.observe(k, false);
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

    /// Pods bound to a node get a grace period (the node stops them and
    /// then deletes them); a namespace with content gets one too, so its
    /// content can be removed first. Everything else goes at once.
    fn grace_period<R: Resource>(&self, obj: &R, opts: &DeleteOptions) -> i64 {
        match obj.clone().into_object() {
            Object::Pod(p) => pod_grace(&p, opts.grace_period_seconds),
            Object::Namespace(_) => 1,
            _ => 0,
        }
    }

    // ------------------------------------------------------------- watch

    /// Events for `filter` after `resource_version`; without one, the
    /// current state first (as ADDED events), then changes.
    pub async fn watch(
        self: &Arc<Self>,
        filter: Filter,
        resource_version: Option<Revision>,
    ) -> ApiResult<WatchEvents> {
        if !filter.fields.is_empty() {
            with_resource!(filter.kind, R => filter
                .fields
                .check_fields(&R::default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?);
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
                    let initial: Vec<WatchItem> = items
                        .into_iter()
                        .map(|o| Ok((WatchType::Added, EventObject::new(o.into_object()))))
                        .collect();
                    (initial, rev)
                })
            }
        };
        let initial = futures::stream::iter(initial);
        if let Some((backlog, mut rx)) = self.cache.subscribe_from(from) {
            let stream = async_stream::stream! {
                let mut last = from;
                for ev in backlog {
                    if let Some(t) = filter.view(&ev)
                        && let Some(obj) = ev.object()
                    {
                        yield Ok((t, obj.clone()));
                    }
                    last = ev.revision;
                }
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            if ev.revision <= last {
                                continue;
                            }
                            if let Some(t) = filter.view(&ev)
                        && let Some(obj) = ev.object()
                    {
                        yield Ok((t, obj.clone()));
                    }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            yield Err(ApiError::gone(format!(
                                "the watch fell behind after resourceVersion {last}: watch again from there"
                            )));
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            };
            return Ok(Box::pin(
                initial.chain(stream).take_until(self.until_closing()),
            ));
        }
        // Older than the cache's window: straight from the store's history.
        let mut events = self.store.watch(filter.kind.key_prefix(), from).await?;
        let stream = async_stream::stream! {
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        if let Some(ce) = decode_event(&ev)
                            && let Some(t) = filter.view(&ce)
                            && let Some(obj) = ce.object()
                        {
                            yield Ok((t, obj.clone()));
                        }
                    }
                    Err(e) => {
                        yield Err(ApiError::from(e));
                        return;
                    }
                }
            }
        };
        Ok(Box::pin(
            initial.chain(stream).take_until(self.until_closing()),
        ))
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
            match self.create(ns).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Loads the allocation hints from the store.
    pub async fn load_allocations(&self) -> ApiResult<()> {
        for prefix in [IP_PREFIX, PORT_PREFIX, POD_CIDR_PREFIX] {
            for kv in self.store.list(prefix).await?.kvs {
                self.alloc.observe(&kv.key, true);
            }
        }
        Ok(())
    }
}

/// Writes the object and the allocation keys it claims (each naming it).
fn put_with_claims<R: Resource>(
    mut txn: Txn,
    key: &str,
    obj: &R,
    claims: &[Claim],
) -> ApiResult<Txn> {
    txn = txn.then(Op::Put {
        key: key.to_string(),
        value: encode(obj)?,
        lease: 0,
    });
    for c in claims {
        txn = txn.then(Op::Put {
            key: c.key.clone(),
            value: obj.full_name().into_bytes(),
            lease: 0,
        });
    }
    Ok(txn)
}

/// A deleted object whose last finalizer went is removed by that update —
/// except a pod whose node has not confirmed it stopped (grace left).
fn finished<R: Resource>(obj: &R) -> bool {
    let meta = obj.meta();
    if meta.deletion_timestamp.is_none() || !meta.finalizers.is_empty() {
        return false;
    }
    match obj.clone().into_object() {
        Object::Pod(p) => {
            let bound = p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
            !bound || meta.deletion_grace_period_seconds.unwrap_or(0) == 0
        }
        _ => true,
    }
}

fn terminating(kind: Kind, name: &str, ns: &str) -> ApiError {
    ApiError::forbidden(
        kind,
        name,
        format!("unable to create new content in namespace {ns} because it is being terminated"),
    )
}

/// The allocation keys an object holds (a Service's ClusterIP and
/// NodePorts, a Node's podCIDR).
fn held_keys<R: Resource>(obj: &R) -> std::collections::BTreeSet<String> {
    match obj.clone().into_object() {
        Object::Service(s) => service_claims::held_keys(&s),
        Object::Node(n) => crate::node_claims::held_keys(&n),
        _ => Default::default(),
    }
}

fn pod_grace(pod: &Pod, requested: Option<i64>) -> i64 {
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    requested
        .unwrap_or(spec.termination_grace_period_seconds.unwrap_or(30))
        .max(0)
}
