//! Redis Cluster split brain: a master cut off from its cluster's bus goes on believing it is
//! master (for up to the node timeout) after its replica took over its slots. An instance
//! whose slot map is older than the takeover sends it invalidations, which it confirms; the
//! promoted replica never receives them, and another instance, which reads the promoted
//! replica, must still never serve a user older than an acknowledged change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{ClusterOptions, PrivateCluster, TestApp, redis_cli};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

/// The cache entry key of `user` (default prefix; the id is the hash tag).
fn entry_key(user: &str) -> String {
    format!("user-service:{}:user:{{{user}}}", http_actix::dto::CACHE_FORMAT_VERSION)
}

/// The generation key of `user` (default prefix), which every invalidation moves on.
fn generation_key(user: &str) -> String {
    format!("user-service:gen:{{{user}}}")
}

/// How long the service uses a slot map before reading it again when no call fails
/// (`REFRESH_MAX_AGE` in `adapters-redis/src/servers.rs`).
const MAP_MAX_AGE: Duration = Duration::from_secs(5);

/// Whether the node on `port` still believes it is a master whose cluster is whole.
fn believes_it_is_a_whole_master(port: u16) -> bool {
    redis_cli(port, &["INFO", "replication"]).contains("role:master")
        && redis_cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
}

/// Whether the node on `asked` names the node on `port` as a master that serves slots.
fn seen_serving_slots(asked: u16, port: u16) -> bool {
    let suffix = format!(":{port}@");
    redis_cli(asked, &["CLUSTER", "NODES"]).lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.get(1).is_some_and(|address| address.contains(&suffix))
            && fields.get(2).is_some_and(|flags| flags.split(',').any(|flag| flag == "master"))
            && fields.len() > 8
    })
}

/// Waits up to 30 s for `done`, with `what` in the panic.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "never had {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which replica takes the old master's slots over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promoted {
    /// Its replica from the start, which the writer saw follow it.
    ItsReplica,
    /// Another master's replica, moved to the old master after the writer last called it:
    /// the old master already has a replica, so its replication id does not change.
    ANewcomer,
    /// [`Self::ANewcomer`], while the old master's own replica is cut off with it: it does not
    /// hear of the takeover, keeps following the old master, and has every change.
    ANewcomerBesideAReplicaCutOffWithIt,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_master_that_missed_its_replicas_takeover_confirms_no_invalidation_the_new_master_lacks() {
    split_brain(Promoted::ItsReplica).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_master_that_missed_a_takeover_by_a_replica_it_took_unseen_confirms_no_invalidation_it_lacks() {
    split_brain(Promoted::ANewcomer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_master_with_a_replica_on_its_side_that_missed_a_takeover_by_one_it_took_unseen_confirms_nothing() {
    split_brain(Promoted::ANewcomerBesideAReplicaCutOffWithIt).await;
}

async fn split_brain(promoted: Promoted) {
    // A long node timeout: the master cut off sees its cluster fail only 15 s after the cut,
    // well after the scene below.
    let cluster = PrivateCluster::start_with(ClusterOptions {
        node_timeout_ms: 15_000,
        bus_proxies: true,
        replica_isolated_with_it: promoted == Promoted::ANewcomerBesideAReplicaCutOffWithIt,
        ..ClusterOptions::default()
    })
    .await;
    let old_master = cluster.isolated().unwrap();
    let its_replica = *cluster.ports.iter().find(|port| cluster.master_of(**port) == Some(old_master)).unwrap();
    let replica = match promoted {
        Promoted::ItsReplica => its_replica,
        Promoted::ANewcomer | Promoted::ANewcomerBesideAReplicaCutOffWithIt => *cluster
            .ports
            .iter()
            .find(|port| cluster.master_of(**port).is_some_and(|master| master != old_master))
            .unwrap(),
    };
    let other_masters: Vec<u16> = cluster
        .ports
        .iter()
        .copied()
        .filter(|port| *port != old_master && cluster.master_of(*port).is_none())
        .collect();
    assert_eq!(other_masters.len(), 2, "three masters");

    // The writer (B) knows every node; 30 users, cached through it.
    let db = Arc::new(TestDatabase::create().await.unwrap());
    let all_nodes = cluster.nodes_variable();
    let writer_settings = [("REDIS_URL", "redis://redis-cluster"), ("REDIS_CLUSTER_NODES", all_nodes.as_str())];
    let writer = TestApp::spawn_on(Arc::clone(&db), &writer_settings).await;
    let mut users = Vec::new();
    for index in 0..30 {
        users.push(writer.register(&format!("splitbrain{index}@example.com")).await);
    }
    for user in &users {
        assert_eq!(writer.email_of(user).await, Some(true));
    }
    let on_old_master: Vec<String> =
        users.iter().filter(|user| cluster.holds(old_master, &entry_key(user))).cloned().collect();
    assert!(!on_old_master.is_empty(), "no user is cached on the master to be cut off");

    // The writer reads its slot map again just before the cut (it is due after 5 s), and
    // keeps it, without a failed call, for the next 5 s; the read is its last call to the
    // old master before the changes.
    if promoted != Promoted::ItsReplica {
        // The newcomer's sync starts at once, not after 5 s of waiting for others to share it.
        redis_cli(old_master, &["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    }
    tokio::time::sleep(MAP_MAX_AGE + Duration::from_millis(100)).await;
    let map_read = Instant::now();
    assert_eq!(writer.email_of(&on_old_master[0]).await, Some(true));
    if promoted != Promoted::ItsReplica {
        let old_master_id = redis_cli(old_master, &["CLUSTER", "MYID"]);
        assert!(redis_cli(replica, &["CLUSTER", "REPLICATE", old_master_id.trim()]).contains("OK"));
        wait_for("the newcomer in sync with the old master", || cluster.master_of(replica) == Some(old_master)).await;
        assert_eq!(cluster.master_of(its_replica), Some(old_master), "the old master's own replica left it");
    }

    // The old master's bus is cut, and its replica takes its slots over without it.
    cluster.cut_isolated_bus();
    let cut_at = Instant::now();
    assert!(redis_cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]).contains("OK"), "TAKEOVER refused");
    wait_for("the other masters seeing the replica serve the old master's slots", || {
        other_masters
            .iter()
            .all(|master| seen_serving_slots(*master, replica) && !seen_serving_slots(*master, old_master))
    })
    .await;
    wait_for("the replica a master", || redis_cli(replica, &["INFO", "replication"]).contains("role:master")).await;
    let taken_over = cut_at.elapsed();
    assert!(believes_it_is_a_whole_master(old_master), "the old master learnt of the takeover");
    assert!(seen_serving_slots(old_master, old_master), "the old master gave its slots up");

    // The reader (A) starts now, from nodes on the majority's side: its map routes the old
    // master's slots to the promoted replica, where it caches the old master's users.
    let majority = cluster.nodes_variable_without(&[old_master, replica]);
    let reader_settings = [("REDIS_URL", "redis://redis-cluster"), ("REDIS_CLUSTER_NODES", majority.as_str())];
    let reader = writer.sibling(&reader_settings).await;
    let fills = reader.cache_operations("fill").await;
    for user in &on_old_master {
        assert_eq!(reader.email_of(user).await, Some(true));
    }
    let filled = reader.cache_operations("fill").await - fills;
    assert!(
        filled >= on_old_master.len() as f64,
        "the reader cached {filled} of {} users on the promoted replica",
        on_old_master.len()
    );

    // The writer changes them, on its map from before the takeover.
    let sent_after = map_read.elapsed();
    assert!(
        sent_after < MAP_MAX_AGE - Duration::from_millis(500),
        "too slow: the changes are sent {sent_after:?} after the writer's map was read (it is read again after 5 s)"
    );
    let generations_before: Vec<String> =
        on_old_master.iter().map(|user| redis_cli(old_master, &["GET", &generation_key(user)])).collect();
    let writer_ref = &writer;
    let replies = join_all(on_old_master.iter().map(|user| async move {
        writer_ref.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": false})).await
    }))
    .await;
    let changes_took = map_read.elapsed() - sent_after;
    let mut acknowledged = Vec::new();
    for (user, reply) in on_old_master.iter().zip(&replies) {
        assert!(matches!(reply.status, 200 | 503), "{user}: {} {}", reply.status, reply.body);
        if reply.status == 200 {
            acknowledged.push(user.clone());
        }
    }
    assert!(!acknowledged.is_empty(), "no change was acknowledged: {:?}", replies[0].body);
    assert!(
        believes_it_is_a_whole_master(old_master),
        "the old master no longer believed it was master with its cluster ok {:?} after the cut",
        cut_at.elapsed()
    );
    // The scene happened: acknowledged changes were sent to the old master (the writer's map
    // still named it), which applied them; later ones may have gone to the promoted replica
    // only, once the writer read its map again after a change fell short.
    let applied_by_old_master = on_old_master
        .iter()
        .zip(&generations_before)
        .filter(|(user, before)| {
            acknowledged.contains(user) && redis_cli(old_master, &["GET", &generation_key(user)]) != **before
        })
        .count();
    assert!(applied_by_old_master > 0, "the old master applied none of the {} changes", acknowledged.len());
    // The invalidations that the old master applied (its generation moved on) and the
    // promoted replica never received.
    let only_on_old_master = on_old_master
        .iter()
        .zip(&generations_before)
        .filter(|(user, before)| {
            let key = generation_key(user);
            let on_old = redis_cli(old_master, &["GET", &key]);
            on_old != **before && on_old != redis_cli(replica, &["GET", &key])
        })
        .count();

    // The reader, after the acknowledgements: never the value from before a change.
    let mut stale_reads = 0;
    let mut stale_users = std::collections::HashSet::new();
    let mut reads = 0;
    for round in 0..4 {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for user in &acknowledged {
            reads += 1;
            if reader.email_of(user).await != Some(false) {
                stale_reads += 1;
                stale_users.insert(user.clone());
            }
        }
    }
    eprintln!(
        "split brain ({promoted:?}): {} of 30 users on the old master; takeover seen {taken_over:?} after the cut; changes sent \
         {sent_after:?} after the writer's map read, {} acknowledged of {} in {changes_took:?}; {only_on_old_master} \
         invalidations applied by the old master only, {applied_by_old_master} by it at all; {stale_reads} stale of \
         {reads} reads ({} users) by the reader over 3 s",
        on_old_master.len(),
        acknowledged.len(),
        on_old_master.len(),
        stale_users.len(),
    );
    assert_eq!(
        stale_reads,
        0,
        "{stale_reads} stale reads ({} of {} users whose change was acknowledged, {only_on_old_master} invalidations \
         confirmed by the old master only): the reader served the promoted replica's entries from before the changes",
        stale_users.len(),
        acknowledged.len()
    );
}
