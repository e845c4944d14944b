//! Never stale across Redis faults: two instances on one database and one private Redis,
//! writers alternating a change on one instance and a read on the other, while Redis is
//! paused, killed and restarted empty, or restarted from a snapshot older than the writes.
//! A read that follows an acknowledged write must return what was written, and no request
//! may fail.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_tests::{PrivateRedis, TestApp};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

/// Users written concurrently, each by a writer of its own.
const WRITERS: usize = 4;

/// What the write-then-read pairs saw.
#[derive(Debug, Default)]
struct Pairs {
    completed: AtomicUsize,
    /// One line per read that returned a value older than the write before it.
    stale: Mutex<Vec<String>>,
    /// One line per request that did not answer 200.
    failed: Mutex<Vec<String>>,
}

impl Pairs {
    fn completed(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }

    fn record(list: &Mutex<Vec<String>>, line: String) {
        list.lock().unwrap().push(line);
    }

    /// Asserts that no read was stale and no request failed.
    fn assert_clean(&self, events: usize, what: &str) {
        let (stale, failed) = (self.stale.lock().unwrap(), self.failed.lock().unwrap());
        let completed = self.completed();
        println!(
            "{completed} pairs over {events} {what}: {} stale reads, {} failed requests",
            stale.len(),
            failed.len()
        );
        let head = |lines: &[String]| lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        assert!(
            stale.is_empty() && failed.is_empty(),
            "{} stale reads and {} failed requests in {completed} pairs over {events} {what}: stale [{}] failed [{}]",
            stale.len(),
            failed.len(),
            head(&stale),
            head(&failed),
        );
    }
}

/// A duration drawn uniformly from `millis` (v4 UUIDs are the randomness at hand).
fn random_millis(millis: std::ops::Range<u64>) -> Duration {
    let span = u128::from(millis.end - millis.start);
    let offset = u64::try_from(uuid::Uuid::new_v4().as_u128() % span).unwrap();
    Duration::from_millis(millis.start + offset)
}

/// Alternates, until `stop`, a preferences change through `writer` and a read of the user
/// through `reader`, as the gateway and an end-user app on different instances would,
/// recording every stale read and failed request.
async fn write_then_read(writer: &TestApp, reader: &TestApp, user: &str, pairs: &Pairs, stop: &AtomicBool) {
    let mut email = true;
    let mut round = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        email = !email;
        let written =
            writer.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": email})).await;
        if written.status != 200 {
            Pairs::record(&pairs.failed, format!("PUT {}: {}", written.status, written.body["error"]));
            continue;
        }
        let read = reader.get(&format!("/api/v1/users/{user}")).await;
        if read.status != 200 {
            Pairs::record(&pairs.failed, format!("GET {}: {}", read.status, read.body["error"]));
            continue;
        }
        let seen = read.body["data"]["preferences"]["email"].as_bool();
        if seen != Some(email) {
            Pairs::record(&pairs.stale, format!("wrote email={email}, read {seen:?} (round {round})"));
        }
        pairs.completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The users invalidated through `instances` whose invalidation Redis did not confirm in
/// time and that were recorded in the ledger instead (from `/metrics`).
async fn deferred_invalidations(instances: [&TestApp; 2]) -> u64 {
    let mut deferred = 0;
    for instance in instances {
        let metrics = instance.client.get(format!("{}/metrics", instance.address)).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        deferred += text
            .lines()
            .find(|line| line.starts_with("user_service_cache_operations_total{result=\"invalidate_deferred\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0);
    }
    deferred
}

/// Two instances on one database, caching in `redis`, and one registered user per writer.
async fn two_instances(redis: &PrivateRedis) -> (TestApp, TestApp, Vec<String>) {
    let url = redis.url();
    let settings = [("REDIS_URL", url.as_str())];
    let first = TestApp::spawn_with(&settings).await;
    let second = first.sibling(&settings).await;
    let mut users = Vec::new();
    for writer in 0..WRITERS {
        users.push(first.register(&format!("blip-{writer}@example.com")).await);
    }
    (first, second, users)
}

/// Runs the writers until `disturb` returns (it is handed the pair count so far), then
/// stops them; returns how many disturbances `disturb` reported.
async fn pairs_while(
    instances: [&TestApp; 2],
    users: &[String],
    pairs: &Pairs,
    disturb: impl AsyncFnOnce(&Pairs) -> usize,
) -> usize {
    let stop = AtomicBool::new(false);
    // Half the users are written on one instance and read on the other, half the other way.
    let writers = join_all(users.iter().enumerate().map(|(index, user)| {
        let [writer, reader] = if index % 2 == 0 { instances } else { [instances[1], instances[0]] };
        write_then_read(writer, reader, user, pairs, &stop)
    }));
    let disturbances = async {
        let events = disturb(pairs).await;
        stop.store(true, Ordering::Relaxed);
        events
    };
    let (events, _) = tokio::join!(disturbances, writers);
    events
}

/// Gives up on a fault test that has not reached its counts in this long.
const TIME_LIMIT: Duration = Duration::from_secs(150);
/// Pairs and disturbances each fault test reaches.
const PAIRS: usize = 4_000;
const EVENTS: usize = 40;

/// Repeats `event` (one disturbance) until there were [`EVENTS`] of them and [`PAIRS`] pairs,
/// within [`TIME_LIMIT`]; returns how many there were.
async fn repeat_until_counts(pairs: &Pairs, mut event: impl AsyncFnMut()) -> usize {
    let started = Instant::now();
    let mut events = 0;
    while (events < EVENTS || pairs.completed() < PAIRS) && started.elapsed() < TIME_LIMIT {
        event().await;
        events += 1;
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn no_stale_read_and_no_failure_while_redis_pauses_at_random() {
    let redis = PrivateRedis::start().await;
    let (first, second, users) = two_instances(&redis).await;
    let pairs = Pairs::default();
    let pauses = pairs_while([&first, &second], &users, &pairs, async |pairs: &Pairs| {
        repeat_until_counts(pairs, async || {
            tokio::time::sleep(random_millis(100..400)).await;
            redis.pause();
            tokio::time::sleep(random_millis(50..800)).await;
            redis.resume();
        })
        .await
    })
    .await;
    assert!(pauses >= EVENTS && pairs.completed() >= PAIRS, "{pauses} pauses, {} pairs", pairs.completed());
    pairs.assert_clean(pauses, "pauses");
    // Pauses longer than the confirmation wait (500 ms) exercised the ledger too.
    let deferred = deferred_invalidations([&first, &second]).await;
    println!("{deferred} changes were acknowledged through the invalidation ledger");
    assert!(deferred > 0, "no change waited longer than the confirmation wait");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_stale_read_and_no_failure_while_redis_is_killed_and_restarted_empty() {
    let mut redis = PrivateRedis::start().await;
    let (first, second, users) = two_instances(&redis).await;
    let pairs = Pairs::default();
    let restarts = pairs_while([&first, &second], &users, &pairs, async |pairs: &Pairs| {
        repeat_until_counts(pairs, async || {
            tokio::time::sleep(random_millis(100..400)).await;
            redis.kill();
            tokio::time::sleep(random_millis(20..400)).await;
            redis.restart().await;
        })
        .await
    })
    .await;
    assert!(restarts >= EVENTS && pairs.completed() >= PAIRS, "{restarts} restarts, {} pairs", pairs.completed());
    pairs.assert_clean(restarts, "restarts");
    let deferred = deferred_invalidations([&first, &second]).await;
    println!("{deferred} changes were acknowledged through the invalidation ledger");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restored_from_a_snapshot_older_than_the_writes_serves_nothing_stale() {
    let mut redis = PrivateRedis::start_with_snapshots().await;
    let (first, second, users) = two_instances(&redis).await;
    let pairs = Pairs::default();
    let restores = pairs_while([&first, &second], &users, &pairs, async |pairs: &Pairs| {
        repeat_until_counts(pairs, async || {
            // The snapshot holds entries the readers filled; the writes after it make them old.
            tokio::time::sleep(random_millis(100..300)).await;
            redis.snapshot();
            tokio::time::sleep(random_millis(50..300)).await;
            redis.kill();
            tokio::time::sleep(random_millis(20..200)).await;
            redis.restart().await;
        })
        .await
    })
    .await;
    assert!(restores >= EVENTS && pairs.completed() >= PAIRS, "{restores} restores, {} pairs", pairs.completed());
    pairs.assert_clean(restores, "restores from an old snapshot");
    let deferred = deferred_invalidations([&first, &second]).await;
    println!("{deferred} changes were acknowledged through the invalidation ledger");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_neither_redis_nor_the_ledger_confirms_is_saved_but_answered_503_and_a_retry_confirms_it() {
    let app = app_whose_changes_redis_never_confirms().await;
    let user = app.register("unconfirmed@example.com").await;
    let path = format!("/api/v1/users/{user}/preferences");
    let mut connection = app.db.pool().get().await.unwrap();
    refuse_the_ledger(&mut connection).await;

    let refused = app.send(Method::PUT, &path, &json!({"email": false})).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    refused.assert_envelope();
    assert_eq!(refused.body["error"], "change_not_confirmed");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Saved all the same: reads go to the store while the user's invalidation is pending.
    let read = app.get(&format!("/api/v1/users/{user}")).await;
    assert_eq!(read.body["data"]["preferences"]["email"], false);

    // With the ledger back, the same request is acknowledged: Redis still does not answer,
    // so it is recorded, and acknowledged one lease later.
    accept_the_ledger(&mut connection).await;
    let started = Instant::now();
    let retried = app.send(Method::PUT, &path, &json!({"email": false})).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert!(started.elapsed() >= Duration::from_millis(1_100), "acknowledged after {:?}", started.elapsed());
    let recorded = "SELECT count(*) AS count FROM cache_invalidation_ledger";
    assert_eq!(app.db.count(recorded).await.unwrap(), 1, "recorded until an instance reaches Redis");
}

/// How the client retries a change answered 503 `change_not_confirmed`.
#[derive(Debug, Clone, Copy)]
enum Retry {
    SameIdempotencyKey,
    Plain,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keyed_retry_of_a_refused_device_move_serves_the_previous_owner_fresh_everywhere() {
    a_refused_token_move_retried(Retry::SameIdempotencyKey, "devices").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plain_retry_of_a_refused_device_move_serves_the_previous_owner_fresh_everywhere() {
    a_refused_token_move_retried(Retry::Plain, "devices").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keyed_retry_of_a_refused_registration_taking_a_token_serves_its_previous_owner_fresh() {
    a_refused_token_move_retried(Retry::SameIdempotencyKey, "registration").await;
}

/// A token moves from its owner to another user on an instance that cannot reach Redis,
/// while the ledger refuses writes too: 503. The retry is acknowledged; from then on no
/// instance, the reader on Redis included, may serve the previous owner's old view (which
/// still lists the token: its pushes would reach the other user's phone).
async fn a_refused_token_move_retried(retry: Retry, by: &str) {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let reader = TestApp::spawn_with(&[("REDIS_URL", url.as_str()), ("CACHE_CONFIRM_WAIT_MS", "100")]).await;
    // Nothing listens on port 9: the writer is cut off from Redis.
    let writer = reader.sibling(&[("REDIS_URL", "redis://127.0.0.1:9/0"), ("CACHE_CONFIRM_WAIT_MS", "100")]).await;
    let owner = reader.register(&format!("owner-{by}@example.com")).await;
    let token = format!("phone-moved-by-{by}");
    let device = json!({"token": token, "platform": "ios"});
    assert_eq!(reader.send(Method::POST, &format!("/api/v1/users/{owner}/devices"), &device).await.status, 201);
    eventually_cached(&reader, &redis, &owner).await;

    let (path, body) = match by {
        "devices" => (format!("/api/v1/users/{}/devices", reader.register("taker@example.com").await), device),
        _ => (
            "/api/v1/users".to_owned(),
            json!({"name": "Taker", "email": "taker@example.com", "password": "StrongPass123!", "push_token": token}),
        ),
    };
    let body = body.to_string();
    let keyed = [("Idempotency-Key", "move-once")];
    let mut connection = writer.db.pool().get().await.unwrap();
    refuse_the_ledger(&mut connection).await;
    let refused = writer.request_as(&writer.client, &keyed, Method::POST, &path, Some(&body)).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (503, Some("change_not_confirmed")),
        "{}",
        refused.body
    );
    accept_the_ledger(&mut connection).await;

    let headers: &[(&str, &str)] = match retry {
        Retry::SameIdempotencyKey => &keyed,
        Retry::Plain => &[],
    };
    let retried = writer.request_as(&writer.client, headers, Method::POST, &path, Some(&body)).await;
    assert!(retried.status == 200 || retried.status == 201, "{}", retried.body);

    let acknowledged = Instant::now();
    let (mut reads, mut stale) = (0, 0);
    while acknowledged.elapsed() < Duration::from_secs(3) {
        for app in [&reader, &writer] {
            let view = app.get(&format!("/api/v1/users/{owner}")).await;
            assert_eq!(view.status, 200, "{}", view.body);
            reads += 1;
            stale += usize::from(view.body["data"]["push_token"] == token.as_str());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stale, 0, "{stale} of {reads} reads after the acknowledgement served the previous owner's old view");
}

/// Reads `user` on `app` until its entry is in Redis.
async fn eventually_cached(app: &TestApp, redis: &PrivateRedis, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["--scan", "--pattern", &format!("*:user:{user}")]).trim().is_empty() {
        assert!(Instant::now() < deadline, "{user} never cached");
        assert_eq!(app.get(&format!("/api/v1/users/{user}")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An instance whose Redis never answers (nothing listens on port 9), so that every change
/// goes through the ledger, quickly.
async fn app_whose_changes_redis_never_confirms() -> TestApp {
    TestApp::spawn_with(&[("REDIS_URL", "redis://127.0.0.1:9/0"), ("CACHE_CONFIRM_WAIT_MS", "100")]).await
}

/// Makes every write to the ledger fail, as a store failing right after a change would.
async fn refuse_the_ledger(connection: &mut AsyncPgConnection) {
    connection
        .batch_execute(
            "CREATE OR REPLACE FUNCTION refuse_ledger() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'the ledger is refused by the test'; END $$; \
             CREATE TRIGGER refuse_ledger BEFORE INSERT OR UPDATE ON cache_invalidation_ledger \
             FOR EACH ROW EXECUTE FUNCTION refuse_ledger();",
        )
        .await
        .unwrap();
}

async fn accept_the_ledger(connection: &mut AsyncPgConnection) {
    connection.batch_execute("DROP TRIGGER refuse_ledger ON cache_invalidation_ledger").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_caching_off_an_unreachable_redis_neither_refuses_nor_records_a_change() {
    // Redis only deletes the gateway's copies here: no reader of ours trusts it.
    let app = TestApp::spawn_with(&[
        ("REDIS_URL", "redis://127.0.0.1:9/0"),
        ("CACHE_ENABLED", "false"),
        ("CACHE_INVALIDATE_EXTRA_KEYS", "usercache:{id}"),
        ("CACHE_CONFIRM_WAIT_MS", "100"),
    ])
    .await;
    let user = app.register("uncached@example.com").await;
    let changed = app.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"push": false})).await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let recorded = "SELECT count(*) AS count FROM cache_invalidation_ledger";
    assert_eq!(app.db.count(recorded).await.unwrap(), 0);
}
