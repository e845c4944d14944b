//! The Redis cache: coherent across instances, never stale, never a reason to fail.

use std::time::{Duration, Instant};

use adapters_amqp::testing::FaultProxy;
use api_tests::{PrivateRedis, TestApp, redis_cli};
use reqwest::Method;
use serde_json::json;

/// The shared Redis of the test run (`tests/with-services.sh` sets `TEST_REDIS_PORT`).
fn shared_redis_port() -> u16 {
    std::env::var("TEST_REDIS_PORT").ok().and_then(|port| port.parse().ok()).unwrap_or(6379)
}

/// Settings for an instance caching in the shared Redis under a prefix of the test's own.
fn shared_redis(prefix: &str) -> Vec<(&'static str, String)> {
    vec![("REDIS_URL", format!("redis://127.0.0.1:{}/0", shared_redis_port())), ("CACHE_KEY_PREFIX", prefix.to_owned())]
}

fn as_pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(key, value)| (*key, value.as_str())).collect()
}

fn unique_prefix() -> String {
    format!("user-service-test-{}", uuid::Uuid::new_v4().simple())
}

/// Sets the email opt-in through `writer`.
async fn set_email_opt_in(writer: &TestApp, user: &str, value: bool) -> u16 {
    writer.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"email": value})).await.status
}

/// Reads the email opt-in through `reader`; `None` when the read failed.
async fn email_opt_in(reader: &TestApp, user: &str) -> Option<bool> {
    let reply = reader.get(&format!("/api/v1/users/{user}")).await;
    if reply.status != 200 {
        return None;
    }
    reply.body["data"]["preferences"]["email"].as_bool()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_a_database_and_redis_never_read_stale_over_1000_pairs() {
    let prefix = unique_prefix();
    let settings = shared_redis(&prefix);
    let first = TestApp::spawn_with(&as_pairs(&settings)).await;
    let second = first.sibling(&as_pairs(&settings)).await;
    let user = first.register("coherent@example.com").await;

    let mut stale_reads = 0;
    for round in 0..1000 {
        let (writer, reader) = if round % 2 == 0 { (&first, &second) } else { (&second, &first) };
        let value = round % 3 != 0;
        assert_eq!(set_email_opt_in(writer, &user, value).await, 200);
        if email_opt_in(reader, &user).await != Some(value) {
            stale_reads += 1;
        }
    }
    assert_eq!(stale_reads, 0);

    // The reads were served through Redis: the entry exists under the test's prefix.
    let keys = redis_cli(shared_redis_port(), &["--scan", "--pattern", &format!("{prefix}:*user:{user}")]);
    assert!(!keys.trim().is_empty(), "no cache entry under {prefix}");
    let health = first.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["cache"]["status"], "ok");
    redis_cli(shared_redis_port(), &["--scan", "--pattern", &format!("{prefix}:*")])
        .lines()
        .for_each(|key| drop(redis_cli(shared_redis_port(), &["DEL", key])));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_or_killed_redis_fails_no_request_and_serves_nothing_stale_after_it_returns() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let settings = [("REDIS_URL", url.as_str())];
    let writer = TestApp::spawn_with(&settings).await;
    let reader = writer.sibling(&settings).await;
    let user = writer.register("outage@example.com").await;
    // Warm the reader's view in Redis with the current value.
    assert_eq!(email_opt_in(&reader, &user).await, Some(true));

    let mut failed = 0;
    let mut stale = 0;
    let mut expected = true;
    let mut exercise = async |duration: Duration, failed: &mut u32, stale: &mut u32| {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            expected = !expected;
            if set_email_opt_in(&writer, &user, expected).await != 200 {
                *failed += 1;
            }
            match email_opt_in(&writer, &user).await {
                None => *failed += 1,
                Some(value) if value != expected => *stale += 1,
                Some(_) => {}
            }
        }
        expected
    };

    redis.pause();
    let last_written = exercise(Duration::from_millis(1500), &mut failed, &mut stale).await;
    let health = writer.get("/health").await;
    assert_eq!((health.status, health.body["data"]["status"].as_str()), (200, Some("degraded")));
    assert_eq!(health.body["data"]["checks"]["cache"]["status"], "down");
    redis.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The reader never saw the writes; its cached entry must have been invalidated by now.
    assert_eq!(email_opt_in(&reader, &user).await, Some(last_written), "stale read 2 s after Redis came back");

    redis.kill();
    let last_written = exercise(Duration::from_millis(1000), &mut failed, &mut stale).await;
    assert_eq!(writer.get("/health").await.body["data"]["status"], "degraded");
    redis.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(email_opt_in(&reader, &user).await, Some(last_written));
    assert_eq!(email_opt_in(&writer, &user).await, Some(last_written));

    assert_eq!(failed, 0, "requests failed while Redis was down");
    assert_eq!(stale, 0, "stale reads while Redis was down");
    assert_eq!(writer.get("/health").await.body["data"]["status"], "ok");
    // The cache fills again.
    assert!(!redis.cli(&["--scan", "--pattern", &format!("*user:{user}")]).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_starts_and_serves_while_redis_is_down() {
    let app = TestApp::spawn_with(&[("REDIS_URL", "redis://127.0.0.1:9/0")]).await;
    let user = app.register("no-redis@example.com").await;
    assert_eq!(email_opt_in(&app, &user).await, Some(true));
    assert_eq!(set_email_opt_in(&app, &user, false).await, 200);
    assert_eq!(email_opt_in(&app, &user).await, Some(false));
    let health = app.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["data"]["status"], "degraded");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_deletes_the_downstream_copies_named_by_templates() {
    let prefix = unique_prefix();
    let template = format!("{prefix}-gateway:usercache:{{id}}");
    let mut settings = shared_redis(&prefix);
    settings.push(("CACHE_INVALIDATE_EXTRA_KEYS", template.clone()));
    let app = TestApp::spawn_with(&as_pairs(&settings)).await;
    let user = app.register("downstream@example.com").await;
    let gateway_key = template.replace("{id}", &user);

    for change in [json!({"push": false}), json!({"quiet_hours_start": "22:00", "quiet_hours_end": "06:00"})] {
        redis_cli(shared_redis_port(), &["SET", &gateway_key, "cached-by-the-gateway"]);
        let reply = app.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &change).await;
        assert_eq!(reply.status, 200);
        assert_eq!(redis_cli(shared_redis_port(), &["EXISTS", &gateway_key]).trim(), "0", "{change}");
    }
    redis_cli(shared_redis_port(), &["SET", &gateway_key, "cached-by-the-gateway"]);
    let device = json!({"token": "downstream-token", "platform": "ios"});
    assert_eq!(app.send(Method::POST, &format!("/api/v1/users/{user}/devices"), &device).await.status, 201);
    assert_eq!(redis_cli(shared_redis_port(), &["EXISTS", &gateway_key]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_caching_off_downstream_copies_are_still_deleted_on_every_change() {
    let prefix = unique_prefix();
    let template = format!("{prefix}-gateway:usercache:{{id}}");
    let mut settings = shared_redis(&prefix);
    settings.push(("CACHE_INVALIDATE_EXTRA_KEYS", template.clone()));
    settings.push(("CACHE_ENABLED", "false".to_owned()));
    let app = TestApp::spawn_with(&as_pairs(&settings)).await;
    let user = app.register("uncached-downstream@example.com").await;
    let gateway_key = template.replace("{id}", &user);

    assert_eq!(email_opt_in(&app, &user).await, Some(true));
    redis_cli(shared_redis_port(), &["SET", &gateway_key, "cached-by-the-gateway"]);
    assert_eq!(set_email_opt_in(&app, &user, false).await, 200);
    assert_eq!(redis_cli(shared_redis_port(), &["EXISTS", &gateway_key]).trim(), "0");
    assert_eq!(email_opt_in(&app, &user).await, Some(false));
    // Nothing of ours was cached.
    let ours = redis_cli(shared_redis_port(), &["--scan", "--pattern", &format!("{prefix}:*:user:*")]);
    assert!(ours.trim().is_empty(), "cached with CACHE_ENABLED=false: {ours}");
    redis_cli(shared_redis_port(), &["--scan", "--pattern", &format!("{prefix}*")])
        .lines()
        .for_each(|key| drop(redis_cli(shared_redis_port(), &["DEL", key])));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_redis_lost_its_data_still_replays_the_original_201() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(&[("REDIS_URL", url.as_str())]).await;
    let body = json!({"name": "Lost Data", "email": "lost@example.com", "password": "StrongPass123!"}).to_string();
    let post = async || {
        let response = app
            .client
            .post(format!("{}/api/v1/users", app.address))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "survives-redis")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        api_tests::Reply::from_response(response).await
    };
    let first = post().await;
    assert_eq!(first.status, 201);
    redis.restart().await;
    let retry = post().await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (201, Some("true")));
    assert_eq!(retry.body, first.body);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_device_disappears_from_the_previous_owners_cached_view() {
    let prefix = unique_prefix();
    let settings = shared_redis(&prefix);
    let app = TestApp::spawn_with(&as_pairs(&settings)).await;
    let alice = app.register("alice-cache@example.com").await;
    let bob = app.register("bob-cache@example.com").await;
    let device = json!({"token": "moving-token", "platform": "android"});
    app.send(Method::POST, &format!("/api/v1/users/{alice}/devices"), &device).await;
    // Cache Alice's view with the token.
    assert_eq!(app.get(&format!("/api/v1/users/{alice}")).await.body["data"]["push_token"], "moving-token");
    app.send(Method::POST, &format!("/api/v1/users/{bob}/devices"), &device).await;
    assert!(app.get(&format!("/api/v1/users/{alice}")).await.body["data"]["push_token"].is_null());
}

/// How many times a private Redis ran `command` since its statistics were last reset.
fn command_calls(redis: &PrivateRedis, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_user_is_served_from_process_memory_without_a_redis_read_per_request() {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(&[("REDIS_URL", url.as_str())]).await;
    let user = app.register("hot@example.com").await;
    let path = format!("/api/v1/users/{user}");
    // The first read fills Redis; the next find the entry there and keep it in process once
    // the connection's pushes were seen to arrive (a probe the first read started, which a
    // loaded machine may take a while to finish).
    let started = Instant::now();
    loop {
        assert_eq!(app.get(&path).await.status, 200);
        if app.metric("user_service_cache_near_entries").await >= 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the hot user was never kept in process");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]).trim(), "OK");

    let mut served = 0;
    for _ in 0..20 {
        let replies = futures_util::future::join_all((0..32).map(|_| app.get(&path))).await;
        served += replies.iter().filter(|reply| reply.status == 200 && reply.body["data"]["id"] == user).count();
    }
    assert_eq!(served, 640);
    let (reads, pings) = (command_calls(&redis, "mget"), command_calls(&redis, "ping"));
    assert_eq!(reads, 0, "a hot user was read from Redis {reads} times in 640 requests");
    // Each in-process hit waits for a PING sent after it arrived (see the README's
    // "Near-cache"), shared by every request waiting at the time.
    assert!(pings <= 320, "{pings} PINGs for 640 reads: the freshness check is not shared");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_cut_off_from_redis_never_serves_its_in_process_copy_of_a_changed_user() {
    let redis = PrivateRedis::start().await;
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await.unwrap();
    let direct = redis.url();
    let proxied = proxy.url_for("redis://{addr}/0");
    let writer = TestApp::spawn_with(&[("REDIS_URL", direct.as_str())]).await;
    let reader = writer.sibling(&[("REDIS_URL", proxied.as_str())]).await;
    let user = writer.register("cut-off@example.com").await;

    let mut current = true;
    for fault in ["blackhole", "cut", "blackhole", "cut"] {
        // Warm the reader's in-process copy (a Redis fill, then a Redis hit).
        for _ in 0..3 {
            assert_eq!(email_opt_in(&reader, &user).await, Some(current));
        }
        // The reader no longer hears from Redis: a silent network loss, or reset connections.
        if fault == "blackhole" {
            proxy.blackhole()
        } else {
            proxy.cut()
        }
        current = !current;
        assert_eq!(set_email_opt_in(&writer, &user, current).await, 200);
        assert_eq!(email_opt_in(&reader, &user).await, Some(current), "stale read from the in-process copy ({fault})");
        proxy.pass();
        assert_eq!(email_opt_in(&reader, &user).await, Some(current), "stale read once Redis was back ({fault})");
    }
}
