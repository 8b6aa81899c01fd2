//! Reads through an etcd member that fell behind are never stale: a member
//! of a real 3-member etcd is paused (SIGSTOP) while writes go on through
//! the others, then resumed, and read at once through a store connected to
//! it alone. A serializable read answers from the member's own state (the
//! old value, until it catches up); the store's reads are quorum reads,
//! which wait until the member has what the leader had committed.

use std::time::Duration;

use skiff_store::{Etcd, Store};
use skiff_testkit::etcd_cluster::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_a_lagging_member_are_linearizable() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let writer = Etcd::connect(&endpoints[..2], "/skiff/").await.unwrap();
    let lagging = Etcd::connect(&endpoints[2..], "/skiff/").await.unwrap();
    writer.create("k", b"0".to_vec(), 0).await.unwrap().unwrap();
    let mut stale_relaxed = 0;
    let rounds = 10;
    for round in 1..=rounds {
        cluster.pause(2, true);
        // Writes the paused member misses (a new leader is elected if it
        // led: the writes wait for it, acknowledged by the other two).
        let mut rev = 0;
        for i in 0..20 {
            let value = format!("{round}-{i}").into_bytes();
            // Until acknowledged; an election on the way fails a few.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                assert!(std::time::Instant::now() < deadline, "no write within 30 s");
                let Ok(Ok(Some(cur))) =
                    tokio::time::timeout(Duration::from_secs(5), writer.get("k")).await
                else {
                    continue;
                };
                let written = tokio::time::timeout(
                    Duration::from_secs(5),
                    writer.update("k", value.clone(), cur.mod_revision),
                )
                .await;
                if let Ok(Ok(Ok(r))) = written {
                    rev = r;
                    break;
                }
            }
        }
        cluster.pause(2, false);
        // Both reads at once, through the member that is behind: the
        // relaxed one may be stale (that is what it is for); the quorum one
        // never.
        let (relaxed, quorum) = tokio::join!(lagging.get_relaxed("k"), lagging.get("k"));
        if relaxed.unwrap().is_none_or(|kv| kv.mod_revision < rev) {
            stale_relaxed += 1;
        }
        let kv = quorum.unwrap().expect("k exists");
        assert_eq!(
            kv.mod_revision, rev,
            "round {round}: a read through the lagging member returned revision {} after {rev} was acknowledged",
            kv.mod_revision
        );
        assert_eq!(kv.value, format!("{round}-19").into_bytes());
        let listed = lagging.list("k").await.unwrap();
        assert!(listed.revision >= rev, "round {round}: a stale list");
    }
    println!(
        "{rounds} rounds: quorum reads never stale; serializable reads stale in {stale_relaxed}"
    );
}
