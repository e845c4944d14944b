//! A streaming read replica (`DATABASE_READ_URL`) kept deliberately behind
//! (`recovery_min_apply_delay`): cache misses may be loaded there, yet a read that follows an
//! acknowledged write, on any instance, never returns older data than that write, and nothing
//! stale enters the shared cache. Primary and replica are clusters of the test's own
//! (`initdb`, `pg_basebackup -R`), so that the replica can be stopped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{PrivatePgBouncer, PrivatePostgres, PrivateRedis, TestApp};
use diesel_async::AsyncConnection;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

/// How far behind the primary the replica applies changes.
const APPLY_DELAY: &str = "recovery_min_apply_delay = '500ms'";

/// A primary, its lagging replica, a database on the primary (streamed to the replica), and
/// the database's URL on the replica.
struct Replicated {
    db: Arc<TestDatabase>,
    replica_url: String,
    replica: PrivatePostgres,
    _primary: PrivatePostgres,
}

async fn replicated() -> Replicated {
    replicated_with(&[APPLY_DELAY]).await
}

/// [`replicated`], the replica started with `settings`.
async fn replicated_with(settings: &[&str]) -> Replicated {
    let primary = PrivatePostgres::start();
    let replica = primary.start_replica(settings);
    let db = Arc::new(TestDatabase::create_on(primary.url()).await.unwrap());
    let replica_url = replica.in_place_of(db.url());
    // The database exists on the replica once its creation was applied there.
    let started = Instant::now();
    while diesel_async::AsyncPgConnection::establish(&replica_url).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "the database never reached the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Replicated { db, replica_url, replica, _primary: primary }
}

/// An instance on the replicated database, caching in `redis`, reading misses on the replica.
async fn instance(replicated: &Replicated, redis: &PrivateRedis) -> TestApp {
    let redis = redis.url();
    let settings = [("REDIS_URL", redis.as_str()), ("DATABASE_READ_URL", replicated.replica_url.as_str())];
    TestApp::spawn_on(Arc::clone(&replicated.db), &settings).await
}

/// A replicated database, a Redis, an instance on both, and `count` users it registered,
/// on the replica by now.
async fn one_instance_with_users(name: &str, count: usize) -> (Replicated, PrivateRedis, TestApp, Vec<String>) {
    let replicated = replicated().await;
    let redis = PrivateRedis::start().await;
    let app = instance(&replicated, &redis).await;
    let users = register_many(&app, name, count).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (replicated, redis, app, users)
}

/// Registers `count` users on `app`, four at a time, and returns their ids.
async fn register_many(app: &TestApp, name: &str, count: usize) -> Vec<String> {
    futures_util::stream::iter(0..count)
        .map(async |index| app.register(&format!("{name}{index}@example.com")).await)
        .buffered(4)
        .collect()
        .await
}

const SERVED: &str = r#"user_service_replica_reads_total{outcome="served"}"#;
const BEHIND: &str = r#"user_service_replica_reads_total{outcome="behind"}"#;
const UNAVAILABLE: &str = r#"user_service_replica_reads_total{outcome="unavailable"}"#;

/// Whether `reader` says `user` receives email, by one of three paths (all read through the
/// cache, a miss loaded from the replica when it has applied enough): the representation, the
/// user's eligibility, a bulk eligibility of `user` among `others`.
async fn reads_email_as(reader: &TestApp, user: &str, others: &[String], path: usize) -> Option<bool> {
    match path % 3 {
        0 => {
            let reply = reader.get(&format!("/api/v1/users/{user}")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["data"]["preferences"]["email"].as_bool()
        }
        1 => {
            let reply = reader.get(&format!("/api/v1/users/{user}/eligibility?channel=email")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["data"]["reason"].as_str().map(|reason| reason != "opted_out")
        }
        _ => {
            let mut ids = vec![user.to_owned()];
            ids.extend(others.iter().cloned());
            let reply =
                reader.send(Method::POST, "/api/v1/eligibility", &json!({"channel": "email", "user_ids": ids})).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["data"][0]["reason"].as_str().map(|reason| reason != "opted_out")
        }
    }
}

/// Sets `user`'s email preference on `writer`; the write is acknowledged when this returns.
async fn write_email(writer: &TestApp, user: &str, email: bool) {
    let reply = writer.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": email})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// 2,000 write-then-read pairs across two instances sharing a Redis cache, while the replica
/// applies changes 500 ms late. Half read at once after the write (the replica is behind the
/// write: the read must go to the primary), half 600 ms or more later (the replica has
/// applied the write: it may serve the read). No read is older than its write, and the
/// replica served reads.
#[tokio::test(flavor = "multi_thread")]
async fn reads_on_another_instance_never_return_data_older_than_an_acknowledged_write() {
    let replicated = replicated().await;
    let redis = PrivateRedis::start().await;
    let writer = instance(&replicated, &redis).await;
    let reader = instance(&replicated, &redis).await;

    // Registered on one instance, found on the other at once (the replica does not have
    // the user yet).
    let emails: Vec<String> = (0..128).map(|index| format!("replica{index}@example.com")).collect();
    let users: Vec<String> = futures_util::stream::iter(&emails)
        .map(async |email| {
            let id = writer.register(email).await;
            let found = reader.get(&format!("/api/v1/users/{id}")).await;
            assert_eq!(found.status, 200, "a user registered on another instance: {}", found.body);
            id
        })
        .buffered(8)
        .collect()
        .await;
    let (hot, lagged) = users.split_at(8);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut stale = Vec::new();
    let mut due: VecDeque<(String, bool, Instant, usize)> = VecDeque::new();
    let mut pairs = 0;
    for round in 0..1_000_usize {
        let email = round % 2 == 0;
        let user = &hot[round % hot.len()];
        write_email(&writer, user, email).await;
        let read = reads_email_as(&reader, user, &lagged[..10], round).await;
        pairs += 1;
        if read != Some(email) {
            stale.push(format!("at once, round {round}: wrote {email}, read {read:?}"));
        }

        let user = &lagged[round % lagged.len()];
        let email = (round / lagged.len()) % 2 == 1;
        write_email(&writer, user, email).await;
        due.push_back((user.clone(), email, Instant::now() + Duration::from_millis(600), round));
        while let Some((user, email, at, written_in)) = due.front().cloned() {
            let last_round = round == 999;
            if at > Instant::now() && !last_round {
                break;
            }
            tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
            due.pop_front();
            let read = reads_email_as(&reader, &user, &hot[..4], written_in + 1).await;
            pairs += 1;
            if read != Some(email) {
                stale.push(format!("600 ms later, round {written_in}: wrote {email}, read {read:?}"));
            }
        }
    }
    assert_eq!(pairs, 2_000);
    assert!(stale.is_empty(), "{} stale reads of 2000: {:?}", stale.len(), &stale[..stale.len().min(10)]);

    let (served, behind) = (reader.metric(SERVED).await, reader.metric(BEHIND).await);
    eprintln!("replica reads on the reading instance: {served} served, {behind} behind (sent to the primary)");
    assert!(served >= 500.0, "the replica served {served} reads");
    assert!(behind >= 500.0, "the replica was behind only {behind} times: the test did not make it lag");
}

/// With the replica stopped, every read is answered from the primary (none fails), `/health`
/// says `degraded` and names the replica; once it is back, it serves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_is_down_sends_reads_to_the_primary_and_health_says_degraded() {
    let replicated = replicated().await;
    let redis = PrivateRedis::start().await;
    let app = instance(&replicated, &redis).await;
    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["replica"]["status"], "ok", "{}", health.body);

    let users: Vec<String> = register_many(&app, "down", 20).await;
    replicated.replica.stop();
    let started = Instant::now();
    for (index, user) in users.iter().enumerate() {
        write_email(&app, user, false).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reads_email_as(&app, user, &users[..3], index).await, Some(false), "{user}");
    }
    assert!(app.metric(UNAVAILABLE).await >= 1.0, "the replica's outage was not noticed");
    eprintln!("20 reads with the replica down took {:?}", started.elapsed());
    let health = app.get("/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["data"]["status"], "degraded", "{}", health.body);
    assert_eq!(health.body["data"]["checks"]["replica"]["status"], "down", "{}", health.body);
    assert_eq!(app.get("/health/ready").await.status, 200, "a replica down is no reason to leave the load balancer");

    replicated.replica.start_again();
    let served_before = app.metric(SERVED).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    while app.metric(SERVED).await <= served_before {
        assert!(Instant::now() < deadline, "the replica never served again");
        write_email(&app, &users[index % users.len()], index % 2 == 0).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let read = reads_email_as(&app, &users[index % users.len()], &[], 0).await;
        assert_eq!(read, Some(index % 2 == 0));
        index += 1;
    }
    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["replica"]["status"], "ok", "{}", health.body);
}

/// How the cache's Redis loses every recorded floor while writes go on.
#[derive(Debug, Clone, Copy)]
enum FloorsLost {
    /// Redis restarted empty (a new process).
    Restart,
    /// `FLUSHALL`: the same process, emptied.
    Flush,
}

/// A user changed just before its floor is lost reads as never changed. Its readers' floor
/// is then the position the primary had when their instance first saw the new Redis process
/// or the new epoch of its generations, after the change: the lagging replica is not read
/// until it has applied that, and no read is stale.
async fn losing_the_recorded_floors_never_lets_the_lagging_replica_serve_older_data(loss: FloorsLost) {
    let replicated = replicated().await;
    let mut redis = PrivateRedis::start().await;
    let writer = instance(&replicated, &redis).await;
    let reader = instance(&replicated, &redis).await;
    let users: Vec<String> = register_many(&writer, "lost", 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stale = Vec::new();
    for (round, user) in users.iter().cycle().take(20).enumerate() {
        let email = round < 10;
        write_email(&writer, user, !email).await;
        // Read once, so that the replica serves the user while it is not behind.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reads_email_as(&reader, user, &[], round).await, Some(!email));
        write_email(&writer, user, email).await;
        match loss {
            FloorsLost::Restart => redis.restart().await,
            FloorsLost::Flush => assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK"),
        }
        let started = Instant::now();
        while reader.get("/health").await.body["data"]["checks"]["cache"]["status"] != "ok" {
            assert!(started.elapsed() < Duration::from_secs(10), "the reader never reached the new Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let read = reads_email_as(&reader, user, &users[..3], round).await;
        if read != Some(email) {
            stale.push(format!("round {round}: wrote {email}, read {read:?}"));
        }
    }
    assert!(stale.is_empty(), "stale after {loss:?}: {stale:?}");
    assert!(reader.metric(BEHIND).await >= 10.0, "the replica was never asked while behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_that_loses_the_recorded_floors_never_lets_the_lagging_replica_serve_older_data() {
    losing_the_recorded_floors_never_lets_the_lagging_replica_serve_older_data(FloorsLost::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flushall_that_loses_the_recorded_floors_never_lets_the_lagging_replica_serve_older_data() {
    losing_the_recorded_floors_never_lets_the_lagging_replica_serve_older_data(FloorsLost::Flush).await;
}

/// A replica promoted to a primary of its own (a failover elsewhere, an operator's mistake)
/// follows the primary no more: its data is never served, however recent its last replay
/// position, and `/health` says it is down.
#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_replica_is_never_read_from() {
    let (replicated, _redis, app, users) = one_instance_with_users("promoted", 5).await;
    replicated.replica.promote();
    let mut diverged = diesel_async::AsyncPgConnection::establish(&replicated.replica_url).await.unwrap();
    diesel_async::SimpleAsyncConnection::batch_execute(&mut diverged, "UPDATE users SET name = 'Diverged'")
        .await
        .unwrap();
    for user in &users {
        let reply = app.get(&format!("/api/v1/users/{user}")).await;
        assert_eq!((reply.status, reply.body["data"]["name"].as_str()), (200, Some("Test User")), "{user}");
    }
    assert_eq!(app.metric(SERVED).await, 0.0, "a promoted replica served reads");
    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["replica"]["status"], "down", "{}", health.body);
}

/// A frozen replica (SIGSTOP: connections open, no answer) costs a read at most its bound
/// (1 s), after which the replica rests and reads go to the primary at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_replica_delays_reads_by_its_bound_at_most() {
    let (replicated, _redis, app, users) = one_instance_with_users("frozen", 10).await;
    // Every pooled connection to the replica is open before it freezes.
    assert_eq!(reads_email_as(&app, &users[0], &users[1..], 2).await, Some(true));
    replicated.replica.signal_all("-STOP");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (index, user) in users.iter().enumerate() {
        write_email(&app, user, false).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let read_started = Instant::now();
        let read = reads_email_as(&app, user, &[], index).await;
        slowest = slowest.max(read_started.elapsed());
        assert_eq!(read, Some(false), "{user}");
    }
    replicated.replica.signal_all("-CONT");
    eprintln!("the slowest of 10 reads with the replica frozen took {slowest:?} ({:?} in all)", started.elapsed());
    assert!(slowest < Duration::from_secs(3), "a read waited {slowest:?} for a frozen replica");
    assert!(app.metric(UNAVAILABLE).await >= 1.0, "the frozen replica was not noticed");
}

/// Behind PgBouncer in transaction mode (one in front of the primary, one in front of the
/// replica, whose server defaults to `REPEATABLE READ`), the replica still serves and no read
/// is older than its write: writes on one instance, each read on another at once or 600 ms
/// later. (The race that the service's `READ COMMITTED` closes, a snapshot taken just before
/// the replay position is read, is too narrow for this test to show: it passes without it.)
#[tokio::test(flavor = "multi_thread")]
async fn through_transaction_pooling_pgbouncers_no_read_is_older_than_its_write() {
    let replicated = replicated_with(&[APPLY_DELAY, "default_transaction_isolation = 'repeatable read'"]).await;
    let redis = PrivateRedis::start().await;
    let primary_bouncer = PrivatePgBouncer::start(replicated.db.url(), 4).await;
    let replica_bouncer = PrivatePgBouncer::start(&replicated.replica_url, 4).await;
    let (primary_url, redis_url) = (primary_bouncer.in_front_of(replicated.db.url()), redis.url());
    let replica_url = replica_bouncer.in_front_of(&replicated.replica_url);
    let settings = [
        ("DATABASE_URL", primary_url.as_str()),
        ("DATABASE_READ_URL", replica_url.as_str()),
        ("DATABASE_POOLER", "transaction"),
        ("REDIS_URL", redis_url.as_str()),
    ];
    let writer = TestApp::spawn_on(Arc::clone(&replicated.db), &settings).await;
    let reader = writer.sibling(&settings).await;
    let users = register_many(&writer, "pooled", 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stale = Vec::new();
    for round in 0..100_usize {
        let (user, email) = (&users[round % users.len()], (round / users.len()) % 2 == 1);
        write_email(&writer, user, email).await;
        // Half read at once (the replica is behind), half once it has applied the write.
        let delay = if round % 2 == 0 { 0 } else { 600 };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let read = reads_email_as(&reader, user, &[], round).await;
        if read != Some(email) {
            stale.push(format!("round {round}, {delay} ms after: wrote {email}, read {read:?}"));
        }
    }
    assert!(stale.is_empty(), "{} stale reads of 100: {stale:?}", stale.len());
    let (served, unavailable) = (reader.metric(SERVED).await, reader.metric(UNAVAILABLE).await);
    assert!(
        served >= 30.0 && unavailable == 0.0,
        "through PgBouncer the replica served {served}, failed {unavailable}"
    );
}
