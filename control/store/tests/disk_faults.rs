//! The embedded store on a disk that fills up (a real tmpfs, so real
//! ENOSPC from the kernel): a write that fails is refused with the reason
//! and never acknowledged, the store says it is faulty, and it serves again
//! by itself once space is back, with every acknowledged write intact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff_store::{Embedded, EventKind, Store, StoreError};
use skiff_testkit::disk::SmallDisk;

/// Writes `key` with a value of `len` bytes; the outcome says whether it
/// was acknowledged, refused, or may have been stored.
async fn put(store: &Embedded, key: &str, len: usize) -> Result<i64, StoreError> {
    let value = vec![b'x'; len];
    match store.get(key).await? {
        Some(kv) => store
            .update(key, value, kv.mod_revision)
            .await?
            .map_err(|_| StoreError::Backend("lost a race nobody runs".into())),
        None => store
            .create(key, value, 0)
            .await?
            .ok_or_else(|| StoreError::Backend("exists".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_until_space_is_back() {
    let disk = SmallDisk::mount(8);
    let store = Embedded::open(disk.path()).unwrap();
    let mut watch = store.watch("k/", 0).await.unwrap();
    // Acknowledged writes: key → length of the value.
    let mut acked: BTreeMap<String, usize> = BTreeMap::new();
    let mut maybe: Vec<String> = Vec::new();
    for i in 0..20 {
        let key = format!("k/{i}");
        put(&store, &key, 1000).await.unwrap();
        acked.insert(key, 1000);
    }
    assert_eq!(store.fault(), None);
    let filler = disk.fill();

    // Writes of growing values until the disk refuses one.
    let mut refused = None;
    for i in 0..400 {
        let key = format!("k/big-{i}");
        match put(&store, &key, 64 * 1024).await {
            Ok(_) => {
                acked.insert(key, 64 * 1024);
            }
            Err(e) => {
                refused = Some(e);
                maybe.push(key);
                break;
            }
        }
    }
    let refused = refused.expect("a write refused on a full disk");
    let StoreError::Unavailable(msg) = &refused else {
        panic!("a full disk is Unavailable, not {refused:?}");
    };
    assert!(
        msg.contains("No space left on device") || msg.contains("os error 28"),
        "the reason is the full disk: {msg}"
    );
    assert!(store.errors() >= 1, "the error is counted");
    let fault = store.fault().expect("the store says it is faulty");
    assert!(fault.contains("skiff.redb"), "{fault}");

    // While the disk stays full, each write is acknowledged or refused
    // clearly and quickly: none hangs or hears "shutting down".
    for i in 0..5 {
        let key = format!("k/while-full-{i}");
        let started = Instant::now();
        match put(&store, &key, 64 * 1024).await {
            Ok(_) => {
                acked.insert(key, 64 * 1024);
            }
            Err(StoreError::Unavailable(_)) => maybe.push(key),
            Err(e) => panic!("while full: {e:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(store.fault().is_some(), "faulty while the disk is full");
    // Reads go on.
    assert_eq!(store.get("k/0").await.unwrap().unwrap().value.len(), 1000);

    // Space comes back: the store serves again by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match put(&store, "k/after", 64 * 1024).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery within 20 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    acked.insert("k/after".into(), 64 * 1024);
    assert_eq!(store.fault(), None, "healthy again");

    // Every acknowledged write is there; a refused one is there whole or
    // not at all.
    let check = |kvs: &BTreeMap<String, usize>, label: &str| {
        for (k, len) in &acked {
            assert_eq!(kvs.get(k), Some(len), "{label}: acknowledged {k}");
        }
        for (k, len) in kvs {
            assert!(
                acked.contains_key(k) || maybe.contains(k),
                "{label}: {k} ({len} bytes) was never written"
            );
        }
    };
    let listed = store.list("k/").await.unwrap();
    let kvs: BTreeMap<String, usize> = listed
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.len()))
        .collect();
    check(&kvs, "after recovery");

    // The watch that was open throughout saw each revision once, in order,
    // and ends where the store is.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = 0;
    while last < listed.revision {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch catches up within 10 s")
            .expect("the watch stays open")
            .expect("no error on the watch");
        assert!(ev.revision > last, "revisions in order, without repeats");
        last = ev.revision;
        assert_eq!(ev.kind, EventKind::Put);
        seen.insert(ev.key.clone(), ev.value.len());
    }
    assert_eq!(seen, kvs, "the watch agrees with the list");

    // And after a restart.
    drop(watch);
    drop(store);
    let store = Embedded::open(disk.path()).unwrap();
    let kvs: BTreeMap<String, usize> = store
        .list("k/")
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.len()))
        .collect();
    check(&kvs, "after a restart");
}
