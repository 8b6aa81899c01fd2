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

/// How a disk breaks under the store.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    /// A filesystem error: the kernel makes it read-only (EROFS).
    ReadOnly,
    /// A shutdown: from then on writes and fsyncs fail with EIO and what
    /// they wrote is not on the disk (the fsyncgate case).
    Shutdown,
}

/// Writers keep creating keys while the disk under the store breaks; the
/// store must refuse writes with the reason, say it is faulty, let go of
/// the broken file so the operator can unmount it, and serve again by
/// itself once the filesystem is mounted again — and every write it
/// acknowledged must be on the disk: an acknowledgement means synced.
async fn survives(breakage: Breakage) {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let disk = skiff_testkit::disk::LoopDisk::mount(64);
    let dir = disk.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let store = Embedded::open(&dir).unwrap();
    let value = |key: &str| key.repeat(2048 / key.len() + 1).into_bytes();

    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let maybe = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The disk breaks between writes: while one is in flight a kernel may
    // report its fsync done though it never reached the disk (seen with
    // ext4's shutdown and error paths on Linux 6.18), which no program can
    // tell — the store's answer to that is `a_disk_that_lost_acknowledged_writes`.
    let held = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, acked, maybe, refused, stop, held, in_flight) = (
            store.clone(),
            acked.clone(),
            maybe.clone(),
            refused.clone(),
            stop.clone(),
            held.clone(),
            in_flight.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                in_flight.fetch_add(1, Ordering::SeqCst);
                if held.load(Ordering::SeqCst) {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let key = format!("w/{w}/{n}");
                n += 1;
                let outcome = store.create(&key, value(&key), 0).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match outcome {
                    Ok(Some(_)) => {
                        acked.lock().unwrap().insert(key);
                    }
                    Ok(None) => panic!("{key} existed"),
                    Err(StoreError::Unavailable(_)) => {
                        maybe.lock().unwrap().insert(key);
                        refused.fetch_add(1, Ordering::Relaxed);
                        // Not a busy loop against a broken disk.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("{key}: {e:?} (a broken disk is Unavailable)"),
                }
            }
        }));
    }
    wait_for("200 writes", 60, || acked.lock().unwrap().len() >= 200).await;

    held.store(true, Ordering::SeqCst);
    wait_for("writes in flight", 10, || {
        in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    let acked_before = acked.lock().unwrap().len();
    match breakage {
        Breakage::ReadOnly => disk.fail_read_only(),
        Breakage::Shutdown => disk.shut_down(),
    }
    held.store(false, Ordering::SeqCst);
    wait_for("the store says it is faulty", 10, || {
        store.fault().is_some()
    })
    .await;
    let fault = store.fault().unwrap();
    // An ext4 error aborts its journal: writes under way get EIO, later
    // ones EROFS.
    let expect: &[&str] = match breakage {
        Breakage::ReadOnly => &["Read-only file system", "Input/output error"],
        Breakage::Shutdown => &["Input/output error"],
    };
    assert!(
        expect.iter().any(|e| fault.contains(e)),
        "{breakage:?}: {fault}"
    );
    let before = refused.load(Ordering::Relaxed);
    wait_for("20 more refusals", 20, || {
        refused.load(Ordering::Relaxed) >= before + 20
    })
    .await;
    assert!(store.fault().is_some(), "faulty while the disk is broken");
    assert!(store.errors() >= 1, "the errors are counted");
    let acked_while_broken = acked.lock().unwrap().len();
    assert_eq!(
        acked_while_broken, acked_before,
        "{breakage:?}: writes acknowledged on a broken disk"
    );

    // The repair: the store must have let go of the broken file (or the
    // unmount would stay busy), then it picks up the mended disk itself.
    disk.remount(Duration::from_secs(10));
    wait_for("the writers' recovery", 30, || {
        acked.lock().unwrap().len() >= acked_while_broken + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.fault(), None, "{breakage:?}: healthy again");

    let acked = acked.lock().unwrap().clone();
    let maybe = maybe.lock().unwrap().clone();
    let check = |kvs: Vec<skiff_store::KeyValue>, label: &str| {
        let mut present = BTreeSet::new();
        for kv in kvs {
            assert_eq!(kv.value, value(&kv.key), "{label}: {} whole", kv.key);
            assert!(
                acked.contains(&kv.key) || maybe.contains(&kv.key),
                "{label}: {} was never written",
                kv.key
            );
            present.insert(kv.key);
        }
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "{breakage:?}, {label}: {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        present.len()
    };
    let n = check(store.list("w/").await.unwrap().kvs, "after recovery");
    println!(
        "{breakage:?}: {} writes acknowledged, {} refused, {n} present after the repair",
        acked.len(),
        maybe.len()
    );
    drop(store);
    let store = Embedded::open(&dir).unwrap();
    check(store.list("w/").await.unwrap().kvs, "after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_gone_read_only_fails_writes_until_it_is_mounted_again() {
    survives(Breakage::ReadOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_failed_fsyncs_nothing_acknowledged_is_lost() {
    survives(Breakage::Shutdown).await;
}

/// Waits for `done`, checking every 20 ms, failing after `secs`.
async fn wait_for(what: &str, secs: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The disk comes back without writes the store had acknowledged (here an
/// older copy of the filesystem is put back, as a disk that lied about
/// its fsyncs would leave it): the store cannot bring them back, but it
/// counts the error, never hands out an acknowledged revision again for
/// other content, and ends the watches that saw the lost writes with
/// `Compacted` so that their clients relist what the disk holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_lost_acknowledged_writes() {
    let disk = skiff_testkit::disk::LoopDisk::mount(32);
    let dir = disk.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let store = Embedded::open(&dir).unwrap();
    for i in 0..10 {
        store
            .create(&format!("k/old-{i}"), b"old".to_vec(), 0)
            .await
            .unwrap()
            .unwrap();
    }
    let kept = store.revision().await.unwrap();

    // The disk breaks; while it is out, its image is copied.
    break_and_unmount(&store, &disk).await;
    let old = disk.image().with_extension("old");
    std::fs::copy(disk.image(), &old).unwrap();
    disk.fsck();
    disk.mount_again();

    // Writes go on, acknowledged, and a watch sees them.
    let mut acked = kept;
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..10 {
        loop {
            match store
                .create(&format!("k/new-{i}"), b"new".to_vec(), 0)
                .await
            {
                Ok(Some(rev)) => {
                    acked = rev;
                    break;
                }
                Ok(None) => panic!("k/new-{i} existed"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "no recovery within 20 s: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let mut watch = store.watch("k/", kept).await.unwrap();
    for _ in 0..10 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch sees the new writes")
            .unwrap()
            .unwrap();
        assert!(ev.key.starts_with("k/new-"));
    }
    let errors = store.errors();

    // The disk breaks again and comes back as it was before those writes.
    break_and_unmount(&store, &disk).await;
    std::fs::rename(&old, disk.image()).unwrap();
    disk.mount_again();

    // The watch that saw the lost writes ends, to relist.
    let ended = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch ends once the store reopens the file");
    assert!(
        matches!(ended, Some(Err(StoreError::Compacted { .. }))),
        "{ended:?}"
    );
    assert!(store.errors() > errors, "the loss is counted");
    // The store serves again, with what the disk holds.
    let listed = store.list("k/").await.unwrap();
    let keys: Vec<&str> = listed.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("k/old-")), "{keys:?}");
    assert!(listed.revision >= acked, "revisions never go back");
    // A new write takes a revision never acknowledged before.
    let rev = store
        .create("k/after", b"after".to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        rev > acked,
        "revision {rev} reused (acknowledged up to {acked})"
    );
    assert_eq!(store.fault(), None);
    // Watching from a lost revision is refused: that history is gone.
    match store.watch("k/", kept).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a watch from a lost revision was accepted"),
    }
    // And all of it holds after a restart.
    drop(watch);
    drop(store);
    let store = Embedded::open(&dir).unwrap();
    assert!(store.revision().await.unwrap() >= rev);
    assert_eq!(store.list("k/").await.unwrap().kvs.len(), 11);
}

/// Turns the disk read-only under the store, sees a write refused, and
/// unmounts it once the store has let go.
async fn break_and_unmount(store: &Embedded, disk: &skiff_testkit::disk::LoopDisk) {
    disk.fail_read_only();
    let refused = store.create("k/refused", b"x".to_vec(), 0).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    disk.unmount(Duration::from_secs(10));
}
