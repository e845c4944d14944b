//! Redis Cluster (`REDIS_CLUSTER_NODES`): a master dies, the cluster promotes its replica,
//! and the service follows the new slot map by itself; reads keep being answered, and none
//! is older than a change it acknowledged, although the promoted replica still holds what
//! the dead master had deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{ClusterOptions, PrivateCluster, TestApp};
use reqwest::Method;
use serde_json::json;

/// The cache entry key of `user` (default prefix; the id is the hash tag).
fn entry_key(user: &str) -> String {
    format!("user-service:{}:user:{{{user}}}", http_actix::dto::CACHE_FORMAT_VERSION)
}

/// A cluster of the test's own and two instances on it; 30 users cached through the reader,
/// then changed through the writer (email off) while one replica's link to its master is
/// cut, so that it keeps the users' entries and generations from before the changes.
struct Scene {
    cluster: PrivateCluster,
    writer: TestApp,
    reader: TestApp,
    users: Vec<String>,
    replica: u16,
    master: u16,
    /// The users whose entries the master holds (and the cut replica, from before).
    on_master: Vec<String>,
}

impl Scene {
    async fn start(name: &str) -> Self {
        let cluster = PrivateCluster::start().await;
        let db = Arc::new(TestDatabase::create().await.unwrap());
        let nodes = cluster.nodes_variable();
        // REDIS_URL gives the credentials (none here); its host is not used.
        let settings = [("REDIS_URL", "redis://redis-cluster"), ("REDIS_CLUSTER_NODES", nodes.as_str())];
        let writer = TestApp::spawn_on(Arc::clone(&db), &settings).await;
        let reader = writer.sibling(&settings).await;
        let mut users = Vec::new();
        for index in 0..30 {
            users.push(writer.register(&format!("{name}{index}@example.com")).await);
        }
        for user in &users {
            assert_eq!(reader.email_of(user).await, Some(true));
        }
        assert!(reader.cache_operations("fill").await >= 30.0, "the reader did not cache in the cluster");
        let Some((replica, master)) = cluster.ports.iter().find_map(|port| Some((*port, cluster.master_of(*port)?)))
        else {
            panic!("no replica in the cluster");
        };
        let on_master: Vec<String> =
            users.iter().filter(|user| cluster.holds(master, &entry_key(user))).cloned().collect();
        assert!(!on_master.is_empty(), "no user is cached on the master");

        // The replica's link breaks and cannot be made again (it now logs in as a user the
        // master does not know): it keeps the entries and generations it has.
        for (name, value) in [("masteruser", "not-a-user-of-the-master"), ("masterauth", "not-its-password")] {
            api_tests::redis_cli(replica, &["CONFIG", "SET", name, value]);
        }
        api_tests::redis_cli(master, &["CLIENT", "KILL", "TYPE", "replica"]);
        let started = Instant::now();
        while !api_tests::redis_cli(replica, &["INFO", "replication"]).contains("master_link_status:down") {
            assert!(started.elapsed() < Duration::from_secs(10), "the replica's link stayed up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Acknowledged changes, invalidated on the masters only. Where the replica is cut off,
        // the master's invalidation does not count while the cluster names the replica (it has
        // not failed, and does not have it): those changes are acknowledged once the ledger has
        // them, a lease later (hence at once).
        let writer_ref = &writer;
        let changes = users.iter().map(|user| async move {
            writer_ref.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": false})).await
        });
        for reply in futures_util::future::join_all(changes).await {
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        Self { cluster, writer, reader, users, replica, master, on_master }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_follows_a_cluster_failover_and_serves_nothing_the_dead_master_had_deleted() {
    let Scene { mut cluster, writer, reader, users, replica, master, on_master } = Scene::start("cluster").await;
    // Then the master dies.
    cluster.kill(master);
    let killed_at = Instant::now();

    // Through the failover and after it: every read answered, never with the value before
    // the changes. Followed once a pass over the dead master's users is served from the
    // cache whole (on the promoted replica: the users' slots have no other master).
    let mut stale = Vec::new();
    let mut followed = None;
    while followed.is_none() {
        assert!(killed_at.elapsed() < Duration::from_secs(30), "the service did not follow the failover");
        let hits_before = reader.cache_operations("hit").await;
        for user in &on_master {
            let email = reader.email_of(user).await;
            if email != Some(false) {
                stale.push(format!("{user}: {email:?} at {:?}", killed_at.elapsed()));
            }
        }
        let all_cached = reader.cache_operations("hit").await - hits_before >= on_master.len() as f64;
        for user in &users {
            let email = writer.email_of(user).await;
            if email != Some(false) {
                stale.push(format!("{user} (writer): {email:?} at {:?}", killed_at.elapsed()));
            }
        }
        if all_cached && api_tests::redis_cli(replica, &["INFO", "replication"]).contains("role:master") {
            followed = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale.is_empty(), "{} stale reads: {:?}", stale.len(), &stale[..stale.len().min(10)]);
    eprintln!(
        "the replica was promoted and the reader served the dead master's users from it {followed:?} after the \
         kill ({} of 30 users were on that master)",
        on_master.len()
    );

    // The promoted replica keeps the service's entries and changes now.
    let user = &on_master[0];
    let reply = writer.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": true})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reader.email_of(user).await, Some(true));
    let health = reader.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["cache"]["status"], "ok", "{}", health.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_failed_back_to_with_data_from_a_replica_that_missed_deletions_serves_none_of_it() {
    // The replica misses the invalidations of acknowledged changes (its link is cut)...
    let Scene { cluster, writer, reader, users, replica, master, on_master } = Scene::start("failback").await;
    // ... takes over, and the old master, alive all along, takes its data back from it (the
    // entries it had stamped itself, from before the changes) while no one reads them ...
    api_tests::redis_cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    let mut stale = Vec::new();
    let mut check = async |what: &str| {
        for user in &users {
            for app in [&reader, &writer] {
                let email = app.email_of(user).await;
                if email != Some(false) {
                    stale.push(format!("{user}: {email:?} {what}"));
                }
            }
        }
    };
    let started = Instant::now();
    while cluster.master_of(master) != Some(replica) {
        assert!(started.elapsed() < Duration::from_secs(30), "the old master did not follow the takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and becomes master again, with the same run_id.
    api_tests::redis_cli(master, &["CLUSTER", "FAILOVER"]);
    let started = Instant::now();
    while !api_tests::redis_cli(master, &["INFO", "replication"]).contains("role:master") {
        assert!(started.elapsed() < Duration::from_secs(30), "the old master was not failed back to");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read until the dead master's users are served from the cache again, on the old master.
    // Past the 60 s an unseen replica is counted for: with 30 s this failed in 3 of 8 runs on
    // 12-03 (never with a stale read), as it would if the failback's syncs were read as an
    // unseen replica (the price the README names under "Redis Cluster"); not confirmed yet.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(80), "the service did not cache on the old master again");
        let hits_before = reader.cache_operations("hit").await;
        check("after the failback").await;
        if reader.cache_operations("hit").await - hits_before >= on_master.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale.is_empty(), "{} stale reads: {:?}", stale.len(), &stale[..stale.len().min(10)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_cut_off_in_a_minority_is_not_read_even_where_it_answers_reads() {
    let cluster = PrivateCluster::start().await;
    let db = Arc::new(TestDatabase::create().await.unwrap());
    let nodes = cluster.nodes_variable();
    let settings = [("REDIS_URL", "redis://redis-cluster"), ("REDIS_CLUSTER_NODES", nodes.as_str())];
    let app = TestApp::spawn_on(db, &settings).await;
    let mut users = Vec::new();
    for index in 0..20 {
        users.push(app.register(&format!("minority{index}@example.com")).await);
    }
    for user in &users {
        assert_eq!(app.email_of(user).await, Some(true));
    }
    let masters: Vec<u16> = cluster.ports.iter().copied().filter(|port| cluster.master_of(*port).is_none()).collect();
    assert_eq!(masters.len(), 3);
    let kept = masters[0];
    let on_kept: Vec<&String> = users.iter().filter(|user| cluster.holds(kept, &entry_key(user))).collect();
    assert!(!on_kept.is_empty(), "no user is cached on the master kept");
    let hits = app.cache_operations("hit").await;
    for user in &on_kept {
        assert_eq!(app.email_of(user).await, Some(true));
    }
    assert!(app.cache_operations("hit").await >= hits + on_kept.len() as f64, "not served from the cluster");

    // The other masters freeze: no majority, no failover, and the master kept sees its
    // cluster fail, yet answers reads (as a master cut off in a minority would, while its
    // replica elsewhere takes the changes).
    api_tests::redis_cli(kept, &["CONFIG", "SET", "cluster-allow-reads-when-down", "yes"]);
    for master in &masters[1..] {
        cluster.signal(*master, "-STOP");
    }
    let started = Instant::now();
    while !api_tests::redis_cli(kept, &["CLUSTER", "INFO"]).contains("cluster_state:fail") {
        assert!(started.elapsed() < Duration::from_secs(20), "the master kept never saw its cluster fail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.holds(kept, &entry_key(on_kept[0])), "it answers reads");
    let hits = app.cache_operations("hit").await;
    for user in &on_kept {
        assert_eq!(app.email_of(user).await, Some(true), "answered from the store");
    }
    assert_eq!(app.cache_operations("hit").await, hits, "a node whose cluster is down was read from");

    // Whole again: cached reads resume.
    for master in &masters[1..] {
        cluster.signal(*master, "-CONT");
    }
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "cached reads did not resume");
        let hits = app.cache_operations("hit").await;
        for user in &on_kept {
            assert_eq!(app.email_of(user).await, Some(true));
        }
        if app.cache_operations("hit").await >= hits + on_kept.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many replicas the node on `port` lists in its `CLUSTER SLOTS` answer, over all ranges.
fn replicas_in_slots(port: u16) -> usize {
    let answer = api_tests::redis_cli(port, &["--json", "CLUSTER", "SLOTS"]);
    let ranges: Vec<Vec<serde_json::Value>> = serde_json::from_str(&answer)
        .unwrap_or_else(|error| panic!("CLUSTER SLOTS of {port} is not JSON ({error}): {answer}"));
    ranges.iter().map(|range| range.len().saturating_sub(3)).sum()
}

/// A replica that the cluster has not heard of as synced is left out of `CLUSTER SLOTS`: the
/// other nodes know its replication offset only from the replica, over the cluster bus, and
/// it is 0 until its first sync is done and its master has written to it, and for as long
/// as the news takes to spread. It can be promoted all the same (`CLUSTER FAILOVER
/// TAKEOVER`, or an election with `cluster-replica-validity-factor 0`), so a change counts
/// only once it has it too. Here no master has written anything yet, and the replica of the
/// user's master is frozen: the change must not count on the master alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_waits_for_a_replica_the_cluster_has_not_heard_of_as_synced() {
    let options = ClusterOptions { node_timeout_ms: 15_000, quiet_replication: true, ..ClusterOptions::default() };
    let cluster = PrivateCluster::start_with(options).await;
    let db = Arc::new(TestDatabase::create().await.unwrap());
    // Registered without the cache, so that nothing is written to the cluster before the change.
    let user = TestApp::spawn_on(Arc::clone(&db), &[]).await.register("unheard@example.com").await;
    let master = cluster.owner_of(&entry_key(&user));
    let replicas: Vec<u16> = cluster.ports.iter().copied().filter(|port| cluster.master_of(*port).is_some()).collect();
    let replica = *replicas.iter().find(|port| cluster.master_of(**port) == Some(master)).expect("a replica");
    for port in &cluster.ports {
        assert_eq!(replicas_in_slots(*port), 0, "the node on {port} lists a replica in CLUSTER SLOTS already");
    }
    // Frozen, the replica tells no node its offset, and acknowledges nothing.
    cluster.signal(replica, "-STOP");

    let masters = cluster.nodes_variable_without(&replicas);
    let settings = [("REDIS_URL", "redis://redis-cluster"), ("REDIS_CLUSTER_NODES", masters.as_str())];
    let app = TestApp::spawn_on(db, &settings).await;
    let deferred = app.cache_operations("invalidate_deferred").await;
    let reply = app.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": false})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(replicas_in_slots(master), 0, "the replica was heard of meanwhile: the scene did not happen");
    assert_eq!(
        app.cache_operations("invalidate_deferred").await,
        deferred + 1.0,
        "the change counted without the frozen replica of its master"
    );
    cluster.signal(replica, "-CONT");
}
