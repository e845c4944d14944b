//! Redis behind Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`): the master dies, the
//! Sentinels promote its replica, and the service follows the new master by itself, never
//! serving a user older than a change it acknowledged, even though the promoted replica
//! still holds what the dead master had deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{PrivateSentinels, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_service_follows_a_sentinel_failover_and_serves_nothing_the_dead_master_had_deleted() {
    let mut set = PrivateSentinels::start().await;
    let [old_master, replica] = set.redis_ports;
    let db = Arc::new(TestDatabase::create().await.unwrap());
    let sentinels = set.sentinels_variable();
    // REDIS_URL gives the database (and credentials, none here); its host is not used.
    let settings = [
        ("REDIS_URL", "redis://redis-via-sentinel/0"),
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", set.master_name),
    ];
    let writer = TestApp::spawn_on(Arc::clone(&db), &settings).await;
    let reader = writer.sibling(&settings).await;
    let mut users = Vec::new();
    for index in 0..10 {
        users.push(writer.register(&format!("sentinel{index}@example.com")).await);
    }
    for user in &users {
        assert_eq!(reader.email_of(user).await, Some(true));
    }
    assert!(reader.cache_operations("fill").await >= 10.0, "the reader did not cache through the master");

    // The replica's link to the master breaks and cannot be made again (it now logs in as a
    // user the master does not know): it keeps the entries and generations it has.
    let replica_client = redis::Client::open(format!("redis://127.0.0.1:{replica}/0")).unwrap();
    let mut replica_connection = replica_client.get_multiplexed_async_connection().await.unwrap();
    for (name, value) in [("masteruser", "not-a-user-of-the-master"), ("masterauth", "not-its-password")] {
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(&mut replica_connection).await.unwrap();
    }
    set.cli(old_master, &["CLIENT", "KILL", "TYPE", "replica"]);
    let started = Instant::now();
    while !set.cli(replica, &["INFO", "replication"]).contains("master_link_status:down") {
        assert!(started.elapsed() < Duration::from_secs(10), "the replica's link stayed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = set.cli(replica, &["DBSIZE"]);
    assert!(keys.trim().parse::<u32>().unwrap_or(0) >= 10, "the entries replicated: {keys}");

    // Acknowledged changes, invalidated on the master only; then the master dies.
    for user in &users {
        let reply =
            writer.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": false})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // The first Sentinel listed hangs (it is asked first by every connection that starts
    // with it), then the master dies.
    set.freeze_first_sentinel();
    set.kill(old_master);
    let killed_at = Instant::now();

    // Through the failover and after it: never the value before the changes.
    let mut stale = Vec::new();
    let mut followed = None;
    let hits_before = reader.cache_operations("hit").await;
    while followed.is_none() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the service did not follow the failover: master {:?}",
            set.master_port_from_a_thawed_sentinel()
        );
        for (user, app) in users.iter().flat_map(|user| [(user, &reader), (user, &writer)]) {
            let email = app.email_of(user).await;
            if email != Some(false) {
                stale.push(format!("{user}: {email:?} at {:?}", killed_at.elapsed()));
            }
        }
        if set.master_port_from_a_thawed_sentinel() == Some(replica)
            && reader.cache_operations("hit").await > hits_before
        {
            followed = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale.is_empty(), "{} stale reads: {:?}", stale.len(), &stale[..stale.len().min(10)]);
    eprintln!("the replica was promoted and the reader served cached users again {:?} after the kill", followed);

    // The new master keeps the service's entries and changes now.
    let reply =
        writer.send(Method::PUT, &format!("/api/v1/users/{}/preferences", users[0]), &json!({"email": true})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reader.email_of(&users[0]).await, Some(true));
    let health = reader.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["cache"]["status"], "ok", "{}", health.body);
}
