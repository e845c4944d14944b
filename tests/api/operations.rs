//! Health, the OpenAPI document, and behaviour when the database is unreachable.

use std::time::{Duration, Instant};

use api_tests::{PrivatePostgres, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn liveness_and_readiness_answer_with_the_envelope() {
    let app = TestApp::spawn().await;
    let live = app.get("/health/live").await;
    assert_eq!(live.status, 200);
    live.assert_envelope();
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["data"]["status"], "ok");
    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["version"], env!("CARGO_PKG_VERSION"));
    // Without REDIS_URL the cache is in process: always up.
    assert_eq!(health.body["data"]["checks"]["cache"]["status"], "ok");
    assert!(health.body["data"]["checks"]["database"]["latency_ms"].is_number());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_503_with_retry_after_never_500() {
    // Port 9 (discard) has no PostgreSQL: connections are refused at once.
    let app = TestApp::spawn_with(&[("DATABASE_URL", "postgres://postgres@127.0.0.1:9/none")]).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, 503);
    health.assert_envelope();
    assert_eq!(health.body["data"]["status"], "down");
    assert_eq!(health.body["data"]["checks"]["database"]["status"], "down");
    assert_eq!(health.header("retry-after"), Some("1"));
    assert_eq!(app.get("/health/ready").await.status, 503);
    assert_eq!(app.get("/health/live").await.status, 200);

    let user = app.get(&format!("/api/v1/users/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(user.status, 503, "{}", user.body);
    assert_eq!(user.body["error"], "service_unavailable");
    assert_eq!(user.header("retry-after"), Some("1"));
    assert!(!user.body.to_string().contains("127.0.0.1"), "the cause must not leak: {}", user.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_stays_200_while_every_pooled_connection_is_busy() {
    let app = TestApp::spawn_with(&[
        ("DATABASE_POOL_SIZE", "2"),
        ("DATABASE_POOL_TIMEOUT_MS", "3000"),
        ("CACHE_ENABLED", "false"),
    ])
    .await;
    let user = app.register("busy@example.com").await;
    // A lock held outside the service makes every read of users wait, holding its pooled
    // connection; more readers than connections queue for the pool.
    let mut locker = app.db.pool().get().await.unwrap();
    use diesel_async::SimpleAsyncConnection;
    locker.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}/api/v1/users/{user}", app.address));
            tokio::spawn(async move { client.get(url).send().await.map(|response| response.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let ready = app.get("/health/ready").await;
        assert_eq!(ready.status, 200, "a busy pool is not a database that does not answer: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    locker.batch_execute("COMMIT").await.unwrap();
    for reader in readers {
        let status = reader.await.unwrap().unwrap();
        assert!([200, 503].contains(&status), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_turns_503_within_the_probe_timeout_when_postgresql_stops() {
    let postgres = PrivatePostgres::start();
    let url = postgres.url();
    let app = TestApp::spawn_with(&[("DATABASE_URL", url.as_str()), ("MIGRATE_ON_STARTUP", "true")]).await;
    assert_eq!(app.get("/health/ready").await.status, 200);
    postgres.stop();
    let started = Instant::now();
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["data"]["status"], "down");
    assert!(started.elapsed() < Duration::from_millis(1_500), "readiness took {:?}", started.elapsed());
}

/// Runs headless Chromium on `url` (`mode`: `--dump-dom` or `--screenshot=<file>`) with a
/// fresh profile and no network beyond loopback: anything else goes through a proxy on a
/// closed port, so a page that needs a CDN stays blank.
fn headless_chromium(url: &str, mode: &str) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!("user-service-chromium-{}", uuid::Uuid::new_v4().simple()));
    let output = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--proxy-server=127.0.0.1:9", "--virtual-time-budget=15000", "--window-size=1280,2400"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .output()
        .unwrap_or_else(|error| panic!("chromium does not run ({error}); tests/with-services.sh installs it"));
    let _ = std::fs::remove_dir_all(profile);
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_renders_every_operation_in_a_real_browser_with_no_network_beyond_loopback() {
    let app = TestApp::spawn().await;
    let page = app.anonymous.get(format!("{}/docs", app.address)).send().await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'self'") && policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe") && !policy.contains("http"), "only our own origin: {policy}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("//cdn") && !html.contains("https://"), "{html}");
    let operations: usize = app.get("/openapi.json").await.body["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|path| path.as_object().unwrap().keys().filter(|key| *key != "parameters").count())
        .sum();

    let url = format!("{}/docs", app.address);
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || headless_chromium(&url, "--dump-dom")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let rendered = dom.matches("class=\"opblock opblock-").count();
    assert_eq!(rendered, operations, "rendered operations (of {operations}) in:\n{}", &dom[..dom.len().min(2000)]);
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results/docs.png");
    let _ = std::fs::create_dir_all(screenshot.parent().unwrap());
    let _ = std::fs::remove_file(&screenshot);
    let mode = format!("--screenshot={}", screenshot.display());
    tokio::task::spawn_blocking(move || headless_chromium(&url, &mode)).await.unwrap();
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_every_route_with_schemas_and_error_responses() {
    let app = TestApp::spawn().await;
    let document = app.get("/openapi.json").await.body;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/api/v1/users", "post"),
        ("/api/v1/users", "get"),
        ("/api/v1/users/", "post"),
        ("/api/v1/users/{id}", "get"),
        ("/api/v1/users/{id}", "patch"),
        ("/api/v1/users/{id}", "delete"),
        ("/api/v1/users/{id}/preferences", "get"),
        ("/api/v1/users/{id}/preferences", "put"),
        ("/api/v1/users/{id}/devices", "post"),
        ("/api/v1/users/{id}/devices", "get"),
        ("/api/v1/users/{id}/devices/{device}/activate", "put"),
        ("/api/v1/users/{id}/devices/{device}/deactivate", "put"),
        ("/api/v1/users/{id}/devices/{device}", "delete"),
        ("/health", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/users/{id}", "get"),
        ("/api/users/{user_id}/devices/{token}/deactivate", "put"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/users/{id}/password", "put"),
        ("/api/v1/users/{id}/eligibility", "get"),
        ("/api/v1/eligibility", "post"),
        ("/api/v1/users/lookup", "post"),
    ];
    for (path, method) in expected {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(operation["summary"].is_string(), "{method} {path} has no summary");
        let responses = operation["responses"].as_object().unwrap();
        assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path} has no success response");
        if !path.starts_with("/health") {
            let error = &responses.get("404").or_else(|| responses.get("400")).or_else(|| responses.get("422"));
            let schema = &error.unwrap_or_else(|| panic!("{method} {path} has no error response"))["content"]["application/json"]
                ["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ErrorEnvelope", "{method} {path}");
        }
    }
    for (path, method) in [("/users/{id}", "get"), ("/api/users/{user_id}/devices/{token}/deactivate", "put")] {
        assert_eq!(document["paths"][path][method]["deprecated"], true, "{method} {path} should be deprecated");
    }
    // Every reference resolves: one that does not makes contract tools skip what uses it.
    let text = document.to_string();
    let references: std::collections::BTreeSet<&str> =
        text.split("\"$ref\":\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert!(!references.is_empty());
    for reference in references {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("an external reference: {reference}"));
        assert!(document.pointer(pointer).is_some(), "{reference} does not resolve");
    }
    // What /metrics declares is what it answers.
    let metrics = &document["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(metrics.get("application/openmetrics-text").is_some(), "{metrics}");
    // Both security schemes are declared; public routes need none, bulk routes a service key.
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["ServiceKey"]["in"], "header");
    assert_eq!(schemes["ServiceKey"]["name"], "X-Service-Key");
    assert_eq!(schemes["BearerAuth"]["scheme"], "bearer");
    for (path, method) in [("/api/v1/auth/login", "post"), ("/health", "get"), ("/api/v1/users", "post")] {
        assert_eq!(document["paths"][path][method]["security"], serde_json::json!([]), "{method} {path} is public");
    }
    let list_security = document["paths"]["/api/v1/users"]["get"]["security"].to_string();
    assert!(list_security.contains("ServiceKey") && !list_security.contains("BearerAuth"), "{list_security}");

    let register = &document["paths"]["/api/v1/users"]["post"];
    assert_eq!(
        register["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RegisterUserRequest"
    );
    assert_eq!(document["components"]["schemas"]["RegisterUserRequest"]["additionalProperties"], false);
    assert!(document["components"]["schemas"]["UserView"]["properties"]["push_token"].is_object());

    let docs = app.client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().to_lowercase().contains("swagger"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_healthcheck_command_exits_0_for_a_live_instance_and_1_otherwise() {
    let app = TestApp::spawn().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let binary = api_tests::service_binary();
    let healthcheck = |host: &str, port: &str| {
        // The image's environment: nothing but HOST and PORT is needed.
        std::process::Command::new(&binary)
            .arg("healthcheck")
            .env_clear()
            .env("HOST", host)
            .env("PORT", port)
            .output()
            .unwrap()
    };
    let live = healthcheck("0.0.0.0", &port);
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let dead = healthcheck("0.0.0.0", &closed.to_string());
    assert_eq!(dead.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&dead.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let invalid = healthcheck("0.0.0.0", "not-a-port");
    assert_eq!(invalid.status.code(), Some(1));
}

/// `BACKGROUND_THREADS` sizes the runtime of the background tasks (the near-cache's freshness
/// checks, the event relay), apart from the HTTP workers: the listening line says what the
/// runtime has, not what was asked. Unset, a quarter of the CPUs, at least one.
#[tokio::test(flavor = "multi_thread")]
async fn background_threads_sizes_the_runtime_of_the_background_tasks_apart_from_the_workers() {
    let database = adapters_postgres::testing::TestDatabase::create().await.unwrap();
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    for (asked, expected) in [(Some("3"), 3), (Some("1"), 1), (None, (cpus / 4).max(1))] {
        let settings: Vec<(&str, &str)> = asked.map(|threads| ("BACKGROUND_THREADS", threads)).into_iter().collect();
        let service = api_tests::ServiceProcess::start(&database, &settings).await;
        let listening = service
            .wait_for_log(Duration::from_secs(5), |line| line["message"] == "user-service listening")
            .await
            .expect("the listening line");
        assert_eq!(listening["background_threads"], expected, "BACKGROUND_THREADS={asked:?}: {listening}");
        assert_eq!(listening["workers"], 2, "{listening}");
        let live = reqwest::get(format!("{}/health/live", service.address)).await.unwrap();
        assert_eq!(live.status(), 200);
    }
}
