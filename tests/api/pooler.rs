//! The API through a real PgBouncer in `pool_mode=transaction` (`DATABASE_POOLER=transaction`):
//! a client's statements share a server connection only within a transaction, so anything
//! that spans two round trips outside one (a statement prepared, then executed; a session
//! `SET`; a session lock) meets another server connection. Two server connections for every
//! client, so that they keep changing hands.

use std::sync::Arc;

use adapters_postgres::testing::TestDatabase;
use api_tests::{PrivatePgBouncer, Reply, TestApp};
use reqwest::Method;
use serde_json::{Value, json};

/// An instance on a database of its own, through a PgBouncer of its own.
async fn app_behind_pgbouncer() -> (TestApp, PrivatePgBouncer) {
    app_behind(2, "").await
}

/// An instance on a database of its own, through a PgBouncer of its own with
/// `server_connections` and `settings`.
async fn app_behind(server_connections: u32, settings: &str) -> (TestApp, PrivatePgBouncer) {
    let db = Arc::new(TestDatabase::create().await.unwrap());
    let bouncer = PrivatePgBouncer::start_with(db.url(), server_connections, settings).await;
    let url = bouncer.in_front_of(db.url());
    let app = TestApp::spawn_on(db, &[("DATABASE_URL", &url), ("DATABASE_POOLER", "transaction")]).await;
    (app, bouncer)
}

/// No answer was a server error.
fn assert_no_server_error(replies: &[Reply]) {
    let failures: Vec<(u16, &Value)> =
        replies.iter().filter(|reply| reply.status >= 500).map(|reply| (reply.status, &reply.body)).collect();
    assert!(failures.is_empty(), "server errors: {failures:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_through_a_transaction_pooling_pgbouncer() {
    let (app, _bouncer) = app_behind_pgbouncer().await;
    let mut replies = Vec::new();
    let mut call = async |method: Method, path: String, body: Option<Value>, expected: u16| {
        let body = body.map(|body| body.to_string());
        let reply = app.request(method.clone(), &path, body.as_deref()).await;
        assert_eq!(reply.status, expected, "{method} {path}: {}", reply.body);
        let data = reply.body["data"].clone();
        replies.push(reply);
        data
    };
    let signup = json!({"name": "Pooled", "email": "pooled@example.com", "password": "StrongPass123!"});
    let user = call(Method::POST, "/api/v1/users/".into(), Some(signup), 201).await;
    let id = user["id"].as_str().unwrap().to_owned();
    let users = format!("/api/v1/users/{id}");
    call(Method::GET, users.clone(), None, 200).await;
    call(Method::PATCH, users.clone(), Some(json!({"name": "Pooled Again"})), 200).await;
    call(Method::GET, "/api/v1/users?limit=5".into(), None, 200).await;
    call(Method::PUT, format!("{users}/preferences"), Some(json!({"email": false})), 200).await;
    call(Method::GET, format!("{users}/preferences"), None, 200).await;
    let category = json!({"key": "pooled", "name": "Pooled", "default": {"email": true, "push": false}});
    call(Method::POST, "/api/v1/categories".into(), Some(category), 201).await;
    call(Method::GET, "/api/v1/categories".into(), None, 200).await;
    call(Method::PATCH, "/api/v1/categories/pooled".into(), Some(json!({"name": "Pooled news"})), 200).await;
    call(Method::GET, "/api/v1/categories/pooled".into(), None, 200).await;
    call(Method::PUT, format!("{users}/preferences/categories/pooled"), Some(json!({"push": true})), 200).await;
    call(Method::DELETE, format!("{users}/preferences/categories/pooled"), None, 200).await;
    let device = json!({"token": "pooled-token", "platform": "android"});
    call(Method::POST, format!("{users}/devices"), Some(device), 201).await;
    call(Method::GET, format!("{users}/devices"), None, 200).await;
    call(Method::PUT, format!("{users}/devices/pooled-token/deactivate"), None, 200).await;
    call(Method::PUT, format!("{users}/devices/pooled-token/activate"), None, 200).await;
    call(Method::GET, format!("{users}/eligibility?channel=push"), None, 200).await;
    let bulk = json!({"channel": "push", "category": "pooled", "user_ids": [id]});
    call(Method::POST, "/api/v1/eligibility".into(), Some(bulk), 200).await;
    call(Method::POST, "/api/v1/users/lookup".into(), Some(json!({"ids": [id]})), 200).await;
    call(Method::GET, format!("{users}/consent-history"), None, 200).await;
    call(Method::GET, "/api/v1/events?limit=5".into(), None, 200).await;
    let login = json!({"email": "pooled@example.com", "password": "StrongPass123!"});
    let token = call(Method::POST, "/api/v1/auth/login".into(), Some(login), 200).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let change = json!({"current_password": "StrongPass123!", "new_password": "StrongerPass456!"});
    let bearer = reqwest::Client::new();
    let changed = app
        .request_as(
            &bearer,
            &[("Authorization", &format!("Bearer {token}"))],
            Method::PUT,
            &format!("{users}/password"),
            Some(&change.to_string()),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    call(Method::DELETE, format!("{users}/devices/pooled-token"), None, 204).await;
    call(Method::DELETE, "/api/v1/categories/pooled?force=true".into(), None, 204).await;
    call(Method::DELETE, users.clone(), None, 204).await;
    call(Method::GET, users, None, 404).await;
    call(Method::GET, "/health/ready".into(), None, 200).await;
    let health = call(Method::GET, "/health".into(), None, 200).await;
    assert_eq!(health["checks"]["database"]["status"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_device_moves_through_pgbouncer_never_fail_and_leave_one_owner() {
    let (app, _bouncer) = app_behind_pgbouncer().await;
    let mut users = Vec::new();
    for index in 0..8 {
        users.push(app.register(&format!("mover{index}@example.com")).await);
    }
    for round in 0..5 {
        let token = format!("shared-device-{round}");
        let app = &app;
        let moves = users.iter().map(|user| {
            let body = json!({"token": token, "platform": "ios"}).to_string();
            let path = format!("/api/v1/users/{user}/devices");
            async move { app.request(Method::POST, &path, Some(&body)).await }
        });
        let replies = futures_util::future::join_all(moves).await;
        assert_no_server_error(&replies);
        assert!(replies.iter().all(|reply| reply.status == 200 || reply.status == 201), "{replies:?}");
        let owners = app
            .db
            .count(&format!("SELECT count(*) AS count FROM devices WHERE token = 'shared-device-{round}'"))
            .await
            .unwrap();
        assert_eq!(owners, 1, "one row per token");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_idempotent_retries_through_pgbouncer_create_one_user_without_a_server_error() {
    let (app, _bouncer) = app_behind_pgbouncer().await;
    let body = json!({"name": "Retried", "email": "retried@example.com", "password": "StrongPass123!"}).to_string();
    for round in 0..3 {
        let key = format!("pooled-retry-{round}");
        let retries = (0..10).map(|_| {
            let request = app
                .client
                .post(format!("{}/api/v1/users", app.address))
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &key)
                .body(body.clone());
            async move { Reply::from_response(request.send().await.unwrap()).await }
        });
        let replies = futures_util::future::join_all(retries).await;
        assert_no_server_error(&replies);
        let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
        // The first round creates; later rounds reuse the email under new keys: 409.
        let allowed: &[u16] = if round == 0 { &[201, 409] } else { &[409] };
        assert!(statuses.iter().all(|status| allowed.contains(status)), "round {round}: {statuses:?}");
    }
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_pgbouncer_cannot_serve_in_time_is_503_with_retry_after_not_500() {
    // One server connection, and PgBouncer gives up on a client queued for it after 1 s (as
    // the README asks: its query_wait_timeout near DATABASE_POOL_TIMEOUT_MS).
    let (app, bouncer) = app_behind(1, "query_wait_timeout = 1").await;
    let user = app.register("queued@example.com").await;
    // Another client of the same PgBouncer holds its only server connection for 4 s.
    let url = bouncer.in_front_of(app.db.url());
    let mut holder = std::process::Command::new("psql")
        .args([url.as_str(), "-qAtc", "BEGIN; SELECT pg_sleep(4); COMMIT"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    let body = json!({"name": "Queued Again"}).to_string();
    let reply = app.request(Method::PATCH, &format!("/api/v1/users/{user}"), Some(&body)).await;
    let waited = started.elapsed();
    let _ = holder.wait();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
    assert!(waited < std::time::Duration::from_secs(3), "answered after {waited:?}");
}
