//! Operating the service: metrics, three instances behind one database and Redis, and a
//! graceful stop on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{SERVICE_KEY, ServiceProcess, TestApp, service_binary};
use diesel_async::SimpleAsyncConnection;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_template_and_cache_operations() {
    let prefix = format!("user-service-test-{}", uuid::Uuid::new_v4().simple());
    let port = std::env::var("TEST_REDIS_PORT").unwrap_or_else(|_| "6379".into());
    let redis = format!("redis://127.0.0.1:{port}/0");
    let app = TestApp::spawn_with(&[("REDIS_URL", &redis), ("CACHE_KEY_PREFIX", &prefix)]).await;
    let user = app.register("metrics@example.com").await;
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/api/v1/users/{user}")).await.status, 200);
    }
    app.get(&format!("/api/v1/users/{}", uuid::Uuid::new_v4())).await;

    let scrape = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    assert_eq!(scrape.status().as_u16(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().contains("openmetrics-text"));
    let text = scrape.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    };
    let ok = r#"user_service_http_requests_total{route="/api/v1/users/{id}",method="GET",status="200"}"#;
    let missing = r#"user_service_http_requests_total{route="/api/v1/users/{id}",method="GET",status="404"}"#;
    assert_eq!(value(ok), 3.0);
    assert_eq!(value(missing), 1.0);
    assert!(!text.contains(&user), "raw paths must not become labels");
    assert_eq!(value(r#"user_service_cache_operations_total{result="hit"}"#), 2.0);
    assert!(value(r#"user_service_cache_operations_total{result="miss"}"#) >= 1.0);
    assert!(text.contains("user_service_http_request_duration_seconds_bucket"));
    assert!(value("user_service_db_pool_connections") >= 1.0);
    assert!(text.contains("user_service_password_hashes_running"));
}

/// Six instances started at once on a new database, each applying the migrations at start
/// (the default), as an autoscaler's first scale-up or `docker compose up --scale` does: all
/// become ready, and the migration table holds each migration once.
#[tokio::test(flavor = "multi_thread")]
async fn six_instances_started_at_once_on_an_empty_database_all_become_ready() {
    let database = TestDatabase::create_empty().await.expect("an empty database");
    let settings = [("MIGRATE_ON_STARTUP", "true")];
    let instances = ServiceProcess::start_together(&database, &settings, 6).await;
    let client = reqwest::Client::new();
    for instance in &instances {
        let ready = client.get(format!("{}/health/ready", instance.address)).send().await.expect("an answer");
        assert_eq!(ready.status().as_u16(), 200, "{}", instance.log_text());
    }
    // The repository's migrations: one directory each.
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let entries = std::fs::read_dir(folder).expect("the migrations folder");
    let embedded =
        entries.filter(|entry| entry.as_ref().is_ok_and(|entry| entry.path().join("up.sql").exists())).count() as i64;
    let applied = database.count("SELECT count(*) AS count FROM __diesel_schema_migrations").await.unwrap();
    let distinct = database.count("SELECT count(DISTINCT version) AS count FROM __diesel_schema_migrations").await;
    assert_eq!((applied, distinct.unwrap()), (embedded, embedded), "each migration once");
    let migrating: usize = instances
        .iter()
        .flat_map(ServiceProcess::log_lines)
        .filter(|line| {
            line["message"] == "database migrations up to date"
                && line["applied"].as_u64().is_some_and(|applied| applied > 0)
        })
        .count();
    assert_eq!(migrating, 1, "one instance applied the migrations, the others found none pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_on_one_database_and_redis_read_coherently() {
    let prefix = format!("user-service-test-{}", uuid::Uuid::new_v4().simple());
    let port = std::env::var("TEST_REDIS_PORT").unwrap_or_else(|_| "6379".into());
    let redis = format!("redis://127.0.0.1:{port}/0");
    let settings = [("REDIS_URL", redis.as_str()), ("CACHE_KEY_PREFIX", prefix.as_str())];
    let first = TestApp::spawn_with(&settings).await;
    let instances = [first.sibling(&settings).await, first.sibling(&settings).await];
    let instances = [&first, &instances[0], &instances[1]];
    let user = first.register("replicas@example.com").await;
    for round in 0..150 {
        let writer = instances[round % 3];
        let timezone = ["UTC", "Africa/Lagos", "Asia/Kolkata"][round % 3];
        let reply = writer
            .send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"timezone": timezone}))
            .await;
        assert_eq!(reply.status, 200);
        for reader in instances {
            let seen = reader.get(&format!("/api/v1/users/{user}")).await;
            assert_eq!(seen.body["data"]["preferences"]["timezone"], timezone, "round {round}");
        }
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_load_lets_every_in_flight_request_finish() {
    let app = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Running(
        Command::new(service_binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", app.db.url())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("MIGRATE_ON_STARTUP", "false")
            .env("SECRET_KEY", "test-secret-key-0123456789abcdef0123456789")
            .env("SERVICE_API_KEYS", SERVICE_KEY)
            // Registrations take a while (argon2), so some are in flight at the signal.
            .env("PASSWORD_HASH_CONCURRENCY", "1")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{address}/health/live")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "the service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let requests: Vec<_> = (0..12)
        .map(|index| {
            let client = client.clone();
            let url = format!("{address}/api/v1/users");
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("X-Service-Key", SERVICE_KEY)
                    .body(json!({"name": "Draining", "email": format!("drain{index}@example.com"), "password": "StrongPass123!"}).to_string())
                    .send()
                    .await
                    .map(|response| (response.status().as_u16(), Instant::now()))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signal = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(signal.success());
    let signalled_at = Instant::now();

    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    let finished: Vec<(u16, Instant)> = statuses.iter().filter_map(|status| status.as_ref().ok().copied()).collect();
    // Requests accepted before the signal finish with 201; none is cut off mid-way. A
    // request that had not reached the server yet may be refused at connect, never broken.
    assert!(finished.iter().all(|(status, _)| *status == 201), "{statuses:?}");
    let after_signal = finished.iter().filter(|(_, at)| *at > signalled_at).count();
    assert!(after_signal > 0, "no request was still in flight at the signal: {statuses:?}");
    let created = app.db.count("SELECT count(*) AS count FROM users").await.unwrap();
    assert_eq!(created, i64::try_from(finished.len()).unwrap(), "every answered registration is stored");

    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(12);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let exit = exit.expect("the service exits within the grace period");
    assert!(exit.success(), "the service exits cleanly: {exit:?}");
}

/// A write whose client hung up is still running when SIGTERM arrives (its statement waits
/// for a row lock): the instance waits for it to end before it exits, instead of exiting
/// and leaving a statement that commits later with nobody to invalidate the caches.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_a_write_whose_client_hung_up() {
    let app = TestApp::spawn().await;
    let user = app.register("hung-up@example.com").await;
    let mut service = ServiceProcess::start(&app.db, &[("SERVICE_API_KEYS", SERVICE_KEY)]).await;

    let mut locker = app.db.pool().get().await.unwrap();
    locker
        .batch_execute(&format!("BEGIN; SELECT 1 FROM notification_preferences WHERE user_id = '{user}' FOR UPDATE"))
        .await
        .unwrap();
    // The client sends the change and hangs up before any answer.
    let port = service.address.rsplit(':').next().unwrap().to_owned();
    let body = r#"{"email": false}"#;
    let request = format!(
        "PUT /api/v1/users/{user}/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Service-Key: {SERVICE_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Closed with a reset (SO_LINGER 0), which the server notices at once and answers by
    // dropping the handler: only a detached write goes on.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    #[expect(
        deprecated,
        reason = "a zero linger resets at once: the blocking on drop it warns of needs a positive one"
    )]
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    let mut client = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A keep-alive client connected before the signal.
    let keep_alive = reqwest::Client::new();
    let live = format!("{}/health/live", service.address);
    assert_eq!(keep_alive.get(&live).send().await.unwrap().status(), 200);

    service.terminate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!service.has_exited(), "the instance exited while a write was still running");
    // While it drains, a request on that connection is answered and told to close it.
    let during_drain = keep_alive.get(&live).send().await.expect("an open connection is still served");
    assert_eq!(during_drain.status(), 200);
    assert_eq!(during_drain.headers().get("connection").map(|value| value.to_str().unwrap()), Some("close"));
    locker.batch_execute("COMMIT").await.unwrap();

    let started = Instant::now();
    while !service.has_exited() {
        assert!(started.elapsed() < Duration::from_secs(15), "the instance did not exit after the write ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opted_out = app
        .db
        .count(&format!(
            "SELECT count(*) AS count FROM notification_preferences WHERE user_id = '{user}' AND NOT email_enabled"
        ))
        .await
        .unwrap();
    assert_eq!(opted_out, 1, "the write ran to its end before the instance exited");
}
