//! `Idempotency-Key` on POST routes: replays, reuse with another body, concurrency.

use api_tests::{Reply, TestApp};
use reqwest::Method;
use serde_json::json;

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &serde_json::Value) -> Reply {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    api_tests::Reply::from_response(response).await
}

fn signup(email: &str) -> serde_json::Value {
    json!({"name": "Idem Potent", "email": email, "password": "StrongPass123!"})
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_identical_posts_create_one_user_and_answer_201_or_409() {
    let app = TestApp::spawn().await;
    let body = signup("once@example.com");
    let replies =
        futures_util::future::join_all((0..20).map(|_| post_with_key(&app, "/api/v1/users/", "signup-once", &body)))
            .await;
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    assert!(statuses.iter().all(|status| *status == 201 || *status == 409), "{statuses:?}");
    assert!(statuses.contains(&201));
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
    for conflict in replies.iter().filter(|reply| reply.status == 409) {
        assert_eq!(conflict.body["error"], "idempotency_in_flight", "{}", conflict.body);
    }

    let original = replies.iter().find(|reply| reply.status == 201 && reply.header("idempotent-replayed").is_none());
    let retry = post_with_key(&app, "/api/v1/users/", "signup-once", &body).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    if let Some(original) = original {
        assert_eq!(retry.body, original.body);
        assert_eq!(retry.header("location"), original.header("location"));
    }
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_replays_the_first_answer_byte_for_byte() {
    let app = TestApp::spawn().await;
    let body = signup("replay@example.com");
    let first = post_with_key(&app, "/api/v1/users", "k-1", &body).await;
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    // Change the user meanwhile: the replay is still the first answer.
    let id = first.body["data"]["id"].as_str().unwrap();
    app.send(Method::PATCH, &format!("/api/v1/users/{id}"), &json!({"name": "Renamed"})).await;

    let second = post_with_key(&app, "/api/v1/users", "k-1", &body).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("location"), first.header("location"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_another_body_is_422_and_creates_nothing() {
    let app = TestApp::spawn().await;
    assert_eq!(post_with_key(&app, "/api/v1/users", "k-2", &signup("first@example.com")).await.status, 201);
    let reused = post_with_key(&app, "/api/v1/users", "k-2", &signup("second@example.com")).await;
    assert_eq!(reused.status, 422);
    reused.assert_envelope();
    assert_eq!(reused.body["error"], "idempotency_key_reused");
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_failed_validation_leaves_no_record() {
    let app = TestApp::spawn().await;
    let invalid = post_with_key(&app, "/api/v1/users", "k-3", &signup("not-an-email")).await;
    assert_eq!(invalid.status, 422);
    let valid = post_with_key(&app, "/api/v1/users", "k-3", &signup("valid@example.com")).await;
    assert_eq!(valid.status, 201, "{}", valid.body);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM idempotency_records").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_keys_are_422() {
    let app = TestApp::spawn().await;
    for key in [String::new(), "k".repeat(256)] {
        let reply = post_with_key(&app, "/api/v1/users", &key, &signup("key@example.com")).await;
        assert_eq!(reply.status, 422, "{key:?}");
        assert_eq!(reply.body["details"][0]["field"], "Idempotency-Key");
    }
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_registration_retry_replays_201_not_200() {
    let app = TestApp::spawn().await;
    let user = app.register("device-idem@example.com").await;
    let path = format!("/api/v1/users/{user}/devices");
    let body = json!({"token": "idem-token", "platform": "ios"});
    let first = post_with_key(&app, &path, "dev-1", &body).await;
    assert_eq!(first.status, 201);
    let retry = post_with_key(&app, &path, "dev-1", &body).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (201, Some("true")));
    assert_eq!(retry.body, first.body);
    // Without a key, the same registration is an ordinary refresh.
    let refresh = app.send(Method::POST, &path, &body).await;
    assert_eq!(refresh.status, 200);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 1);
}
