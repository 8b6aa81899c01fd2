//! One conformance suite, run against both backends: the embedded store on
//! a temp dir, and a real etcd started on loopback for each test.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff_store::{Compare, Embedded, Etcd, EventKind, Op, Store, StoreError, Txn, WatchStream};
use skiff_testkit::EtcdServer;

/// Keeps whatever backs a store alive for the test's duration.
#[expect(dead_code, reason = "held only for its Drop")]
enum Backing {
    Dir(tempfile::TempDir),
    Etcd(EtcdServer),
}

async fn embedded() -> Option<(Arc<dyn Store>, Backing)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    Some((Arc::new(store), Backing::Dir(dir)))
}

async fn etcd() -> Option<(Arc<dyn Store>, Backing)> {
    let server = EtcdServer::start()?;
    let store = Etcd::connect(&[format!("http://{}", server.endpoint)], "/skiff/")
        .await
        .unwrap();
    Some((Arc::new(store), Backing::Etcd(server)))
}

async fn next(w: &mut WatchStream) -> skiff_store::Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch event within 10 s")
        .expect("stream open")
        .expect("no error")
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _backing) = super::embedded().await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((store, _backing)) = super::etcd().await else { return };
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    create_get_list,
    compare_and_swap,
    transactions_are_atomic,
    a_compare_only_transaction_writes_nothing,
    watch_resumes_from_a_revision,
    watch_after_compaction_says_relist,
    leases_delete_their_keys,
    concurrent_cas_loses_no_update,
    pages_read_one_snapshot,
    large_lists,
);

async fn create_get_list(s: Arc<dyn Store>) {
    let r1 = s
        .create("core/pods/a/x", b"1".to_vec(), 0)
        .await
        .unwrap()
        .expect("created");
    assert_eq!(
        s.create("core/pods/a/x", b"2".to_vec(), 0).await.unwrap(),
        None,
        "create-if-absent"
    );
    let r2 = s
        .create("core/pods/a/y", b"2".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    s.create("core/pods/ab/z", b"3".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    assert!(r2 > r1);
    let kv = s.get("core/pods/a/x").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"1"[..], r1, r1)
    );
    assert_eq!(s.get("core/pods/a/missing").await.unwrap(), None);
    let list = s.list("core/pods/a/").await.unwrap();
    let keys: Vec<_> = list.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(
        keys,
        ["core/pods/a/x", "core/pods/a/y"],
        "prefix is exact and sorted"
    );
    assert!(list.revision >= r2);
    assert_eq!(s.list("core/pods/").await.unwrap().kvs.len(), 3);
    assert_eq!(s.revision().await.unwrap(), list.revision);
}

async fn compare_and_swap(s: Arc<dyn Store>) {
    let r1 = s.create("k", b"v1".to_vec(), 0).await.unwrap().unwrap();
    let r2 = s
        .update("k", b"v2".to_vec(), r1)
        .await
        .unwrap()
        .expect("fresh revision wins");
    let stale = s
        .update("k", b"v3".to_vec(), r1)
        .await
        .unwrap()
        .expect_err("stale revision loses");
    let current = stale.expect("key exists");
    assert_eq!(
        (
            current.value.as_slice(),
            current.mod_revision,
            current.create_revision
        ),
        (&b"v2"[..], r2, r1)
    );
    assert_eq!(
        s.delete("k", r1).await.unwrap(),
        Err(Some(current.clone())),
        "stale delete loses"
    );
    s.delete("k", r2)
        .await
        .unwrap()
        .expect("delete at the right revision");
    assert_eq!(s.get("k").await.unwrap(), None);
    assert_eq!(
        s.update("k", b"v4".to_vec(), r2).await.unwrap(),
        Err(None),
        "update of a gone key"
    );
    let r3 = s.create("k", b"again".to_vec(), 0).await.unwrap().unwrap();
    assert_eq!(
        s.get("k").await.unwrap().unwrap().create_revision,
        r3,
        "recreated key starts over"
    );
}

async fn transactions_are_atomic(s: Arc<dyn Store>) {
    s.create("alloc/10.96.0.1", b"svc-a".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    // One compare fails: neither write happens.
    let failed = s
        .txn(
            Txn::default()
                .when(Compare::Absent("alloc/10.96.0.1".into()))
                .when(Compare::Absent("svc/b".into()))
                .then(Op::Put {
                    key: "alloc/10.96.0.1".into(),
                    value: b"svc-b".to_vec(),
                    lease: 0,
                })
                .then(Op::Put {
                    key: "svc/b".into(),
                    value: b"b".to_vec(),
                    lease: 0,
                }),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.current.len(), 2);
    assert_eq!(failed.current[0].as_ref().unwrap().value, b"svc-a");
    assert_eq!(failed.current[1], None);
    assert_eq!(s.get("svc/b").await.unwrap(), None);
    // Both compares hold: both writes land at one revision.
    let ok = s
        .txn(
            Txn::default()
                .when(Compare::Absent("alloc/10.96.0.2".into()))
                .then(Op::Put {
                    key: "alloc/10.96.0.2".into(),
                    value: b"svc-b".to_vec(),
                    lease: 0,
                })
                .then(Op::Put {
                    key: "svc/b".into(),
                    value: b"b".to_vec(),
                    lease: 0,
                }),
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    let a = s.get("alloc/10.96.0.2").await.unwrap().unwrap();
    let b = s.get("svc/b").await.unwrap().unwrap();
    assert_eq!((a.mod_revision, b.mod_revision), (ok.revision, ok.revision));
    // The same key twice in one transaction is refused.
    let dup = s
        .txn(
            Txn::default()
                .then(Op::Put {
                    key: "d".into(),
                    value: vec![],
                    lease: 0,
                })
                .then(Op::Delete { key: "d".into() }),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::InvalidTxn(_))), "{dup:?}");
}

/// What a dry run relies on: the same compares, no operations, no write.
async fn a_compare_only_transaction_writes_nothing(s: Arc<dyn Store>) {
    let rev = s.create("cmp/a", b"a".to_vec(), 0).await.unwrap().unwrap();
    let mut w = s.watch("cmp/", rev).await.unwrap();
    let holds = s
        .txn(
            Txn::default()
                .when(Compare::ModRevision("cmp/a".into(), rev))
                .when(Compare::Absent("cmp/b".into())),
        )
        .await
        .unwrap();
    assert!(holds.succeeded);
    assert_eq!(holds.revision, rev, "no new revision");
    let fails = s
        .txn(Txn::default().when(Compare::Absent("cmp/a".into())))
        .await
        .unwrap();
    assert!(!fails.succeeded);
    assert_eq!(fails.current[0].as_ref().unwrap().value, b"a");
    assert_eq!(s.revision().await.unwrap(), rev);
    // The next real write is the next revision and the first event.
    let written = s.create("cmp/b", b"b".to_vec(), 0).await.unwrap().unwrap();
    assert_eq!(written, rev + 1);
    assert_eq!(next(&mut w).await.key, "cmp/b");
}

async fn watch_resumes_from_a_revision(s: Arc<dyn Store>) {
    let ra = s.create("w/a", b"a".to_vec(), 0).await.unwrap().unwrap();
    let rb = s.create("w/b", b"b".to_vec(), 0).await.unwrap().unwrap();
    s.create("other/x", b"x".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    let rb2 = s.update("w/b", b"b2".to_vec(), rb).await.unwrap().unwrap();
    let mut w = s.watch("w/", ra).await.unwrap();
    // History after ra...
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.key.as_str(), e.value.as_slice(), e.revision),
        (EventKind::Put, "w/b", &b"b"[..], rb)
    );
    let e = next(&mut w).await;
    assert_eq!(
        (e.key.as_str(), e.value.as_slice(), e.prev_value.as_deref()),
        ("w/b", &b"b2"[..], Some(&b"b"[..]))
    );
    assert_eq!(e.revision, rb2);
    // ...then live changes, prefix-filtered.
    s.create("other/y", b"y".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    let rd = s.delete("w/a", ra).await.unwrap().unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.key.as_str(), e.revision),
        (EventKind::Delete, "w/a", rd)
    );
    assert_eq!(e.prev_value.as_deref(), Some(&b"a"[..]));
    // A second watcher from the start sees the same history.
    let mut w2 = s.watch("w/", 0).await.unwrap();
    let revs: Vec<_> = [
        next(&mut w2).await,
        next(&mut w2).await,
        next(&mut w2).await,
        next(&mut w2).await,
    ]
    .iter()
    .map(|e| e.revision)
    .collect();
    assert_eq!(revs, vec![ra, rb, rb2, rd]);
}

async fn watch_after_compaction_says_relist(s: Arc<dyn Store>) {
    let r1 = s.create("c/a", b"1".to_vec(), 0).await.unwrap().unwrap();
    let r2 = s.update("c/a", b"2".to_vec(), r1).await.unwrap().unwrap();
    let r3 = s.update("c/a", b"3".to_vec(), r2).await.unwrap().unwrap();
    s.compact(r3).await.unwrap();
    let err = match s.watch("c/", r1).await {
        Err(e) => e,
        Ok(mut w) => tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .expect_err("compacted history must not be replayed"),
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    assert!(err.to_string().contains("relist"));
    // From the compaction point on, watching works.
    let mut w = s.watch("c/", r3 - 1).await.unwrap();
    assert_eq!(next(&mut w).await.revision, r3);
    assert!(matches!(
        s.compact(r3 + 100).await,
        Err(StoreError::FutureRevision(_))
    ));
}

async fn leases_delete_their_keys(s: Arc<dyn Store>) {
    // Revoke.
    let lease = s.lease_grant(30).await.unwrap();
    s.create("l/revoked", b"x".to_vec(), lease)
        .await
        .unwrap()
        .unwrap();
    let after = s.revision().await.unwrap();
    let mut w = s.watch("l/", after).await.unwrap();
    s.lease_revoke(lease).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.key.as_str()), (EventKind::Delete, "l/revoked"));
    assert!(matches!(
        s.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    let r = s.create("l/bad", b"x".to_vec(), lease).await;
    assert!(matches!(r, Err(StoreError::LeaseNotFound(_))), "{r:?}");

    // Kept alive past its TTL, then left to expire.
    let lease = s.lease_grant(2).await.unwrap();
    s.create("l/kept", b"x".to_vec(), lease)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.lease_keep_alive(lease).await.unwrap(), 2);
    }
    assert!(
        s.get("l/kept").await.unwrap().is_some(),
        "kept alive for 3 s with a 2 s TTL"
    );
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.key.as_str()), (EventKind::Put, "l/kept"));
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.key.as_str()),
        (EventKind::Delete, "l/kept"),
        "expired without keep-alives"
    );
    assert_eq!(s.get("l/kept").await.unwrap(), None);
}

async fn concurrent_cas_loses_no_update(s: Arc<dyn Store>) {
    s.create("counter", b"0".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let kv = s.get("counter").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    if s.update("counter", (n + 1).to_string().into_bytes(), kv.mod_revision)
                        .await
                        .unwrap()
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = s.get("counter").await.unwrap().unwrap();
    assert_eq!(kv.value, b"160");
}

/// A list read in pages sees one snapshot, whatever is written between
/// pages; compaction past that snapshot ends it.
async fn pages_read_one_snapshot(s: Arc<dyn Store>) {
    for i in 0..10 {
        s.create(&format!("p/{i}"), format!("v{i}").into_bytes(), 0)
            .await
            .unwrap();
    }
    s.create("q/outside", b"x".to_vec(), 0).await.unwrap();
    let first = s.list_page("p/", "", 3, 0).await.unwrap();
    assert_eq!(first.kvs.len(), 3);
    assert!(first.more);
    if let Some(rem) = first.remaining {
        assert_eq!(rem, 7);
    }
    // Changes after the first page.
    let k0 = s.get("p/4").await.unwrap().unwrap();
    s.update("p/4", b"changed".to_vec(), k0.mod_revision)
        .await
        .unwrap()
        .unwrap();
    let k5 = s.get("p/5").await.unwrap().unwrap();
    s.delete("p/5", k5.mod_revision).await.unwrap().unwrap();
    s.create("p/99", b"new".to_vec(), 0).await.unwrap();

    let mut seen: Vec<(String, Vec<u8>)> = first
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let mut start = skiff_store::key_after(&first.kvs.last().unwrap().key);
    loop {
        let page = s.list_page("p/", &start, 3, first.revision).await.unwrap();
        assert_eq!(page.revision, first.revision);
        seen.extend(page.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
        if !page.more {
            break;
        }
        start = skiff_store::key_after(&page.kvs.last().unwrap().key);
    }
    let expected: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("p/{i}"), format!("v{i}").into_bytes()))
        .collect();
    assert_eq!(seen, expected, "the snapshot of the first page");

    // Now, without a revision: the changes.
    let now = s.list_page("p/", "", 0, 0).await.unwrap();
    assert!(!now.more);
    assert_eq!(now.kvs.len(), 10);
    assert!(now.kvs.iter().any(|kv| kv.key == "p/99"));

    // Compaction past the snapshot ends the paged list.
    let current = s.revision().await.unwrap();
    s.compact(current).await.unwrap();
    let err = s
        .list_page("p/", &start, 3, first.revision)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { .. }),
        "after compaction: {err:?}"
    );
}

/// A prefix holding far more than one response's worth (etcd's default
/// message limit is 4 MiB): a whole list still works.
async fn large_lists(s: Arc<dyn Store>) {
    let value = vec![b'v'; 4096];
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    s.create(&format!("big/{w}-{i:04}"), value.clone(), 0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 2,000 keys of 4 KiB: 8 MiB.
    let all = s.list("big/").await.unwrap();
    assert_eq!(all.kvs.len(), 2000);
    assert!(all.kvs.windows(2).all(|w| w[0].key < w[1].key), "key order");
}
