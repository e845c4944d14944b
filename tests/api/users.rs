//! Registration, profile, contact details, erasure and listing.

use api_tests::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn registration_normalizes_the_email_and_stores_only_a_hash() {
    let app = TestApp::spawn().await;
    let reply = app
        .send(
            Method::POST,
            "/api/v1/users",
            &json!({"name": "  Ada Lovelace ", "email": "  Ada@Example.COM ", "password": "StrongPass123!", "phone": "+2348012345678"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["data"]["name"], "Ada Lovelace");
    assert_eq!(reply.body["data"]["email"], "ada@example.com");
    assert_eq!(reply.body["data"]["phone"], "+2348012345678");
    assert_eq!(
        api_tests::without_updated_at(&reply.body["data"]["preferences"]),
        json!({"email": true, "push": true, "quiet_hours_start": null, "quiet_hours_end": null, "timezone": "UTC"})
    );
    let argon2id_hashes = app
        .db
        .count("SELECT count(*) AS count FROM users WHERE password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'")
        .await
        .unwrap();
    assert_eq!(argon2id_hashes, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_email_in_any_case_is_409_and_creates_nothing() {
    let app = TestApp::spawn().await;
    app.register("john@example.com").await;
    let reply = app
        .send(
            Method::POST,
            "/api/v1/users/",
            &json!({"name": "Other", "email": "JOHN@example.com", "password": "StrongPass123!"}),
        )
        .await;
    assert_eq!(reply.status, 409);
    reply.assert_envelope();
    assert_eq!(reply.body["error"], "email_taken");
    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM notification_preferences").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_with_a_push_token_registers_an_unknown_platform_device() {
    let app = TestApp::spawn().await;
    let reply = app
        .send(
            Method::POST,
            "/api/v1/users",
            &json!({"name": "P", "email": "p@example.com", "password": "StrongPass123!", "push_token": "tok-1",
                    "preferences": {"quiet_hours_start": "23:30", "quiet_hours_end": "06:15", "timezone": "Africa/Lagos"}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let data = &reply.body["data"];
    assert_eq!(data["push_token"], "tok-1");
    assert_eq!(data["devices"][0]["platform"], "unknown");
    assert_eq!(data["preferences"]["quiet_hours_start"], "23:30");
    assert_eq!(data["preferences"]["timezone"], "Africa/Lagos");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_is_404_on_every_route() {
    let app = TestApp::spawn().await;
    let unknown = uuid::Uuid::new_v4();
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/users/{unknown}"), None),
        (Method::GET, format!("/users/{unknown}"), None),
        (Method::PATCH, format!("/api/v1/users/{unknown}"), Some(r#"{"name": "X"}"#)),
        (Method::PATCH, format!("/api/v1/users/{unknown}"), Some("{}")),
        (Method::DELETE, format!("/api/v1/users/{unknown}"), None),
        (Method::GET, format!("/api/v1/users/{unknown}/preferences"), None),
        (Method::PUT, format!("/api/v1/users/{unknown}/preferences"), Some(r#"{"push": false}"#)),
        (Method::POST, format!("/api/v1/users/{unknown}/devices"), Some(r#"{"token": "t", "platform": "ios"}"#)),
        (Method::GET, format!("/api/v1/users/{unknown}/devices"), None),
        (Method::PUT, format!("/api/v1/users/{unknown}/devices/t/activate"), None),
        (Method::PUT, format!("/api/v1/users/{unknown}/devices/t/deactivate"), None),
        (Method::DELETE, format!("/api/v1/users/{unknown}/devices/t"), None),
        (Method::PUT, format!("/api/users/{unknown}/devices/t/deactivate"), None),
    ] {
        let reply = app.request(method.clone(), &path, body).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
        reply.assert_envelope();
        assert_eq!(reply.body["error"], "user_not_found", "{method} {path}");
    }
    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn contact_details_change_field_by_field_and_phone_null_clears() {
    let app = TestApp::spawn().await;
    let id = app.register("first@example.com").await;
    app.register("taken@example.com").await;
    let path = format!("/api/v1/users/{id}");

    let reply = app.send(Method::PATCH, &path, &json!({"phone": "+14155550100"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["data"]["phone"], "+14155550100");
    assert_eq!(reply.body["data"]["name"], "Test User");

    let reply = app.send(Method::PATCH, &path, &json!({"name": "Renamed", "email": "NEW@example.com"})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"]["email"], "new@example.com");
    assert_eq!(reply.body["data"]["phone"], "+14155550100");

    let reply = app.send(Method::PATCH, &path, &json!({"phone": null})).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["data"]["phone"].is_null());

    let reply = app.send(Method::PATCH, &path, &json!({"email": "Taken@Example.com"})).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.body["error"], "email_taken");
    assert_eq!(app.get(&path).await.body["data"]["email"], "new@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_erases_preferences_and_devices() {
    let app = TestApp::spawn().await;
    let id = app.register("gone@example.com").await;
    let reply = app
        .send(Method::POST, &format!("/api/v1/users/{id}/devices"), &json!({"token": "tok", "platform": "ios"}))
        .await;
    assert_eq!(reply.status, 201);

    let deleted = app.request(Method::DELETE, &format!("/api/v1/users/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(app.get(&format!("/api/v1/users/{id}")).await.status, 404);
    for table in ["users", "notification_preferences", "devices"] {
        let count = app.db.count(&format!("SELECT count(*) AS count FROM {table}")).await.unwrap();
        assert_eq!(count, 0, "{table} still has rows");
    }
    // The email is free again.
    app.register("gone@example.com").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_is_paginated_in_registration_order_with_meta() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(app.register(&format!("user{index}@example.com")).await);
    }
    let page = app.get("/api/v1/users?page=2&limit=2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.assert_envelope();
    let listed: Vec<&str> =
        page.body["data"].as_array().unwrap().iter().map(|user| user["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[3].as_str()]);
    assert_eq!(
        page.body["meta"],
        json!({"total": 5, "limit": 2, "page": 2, "total_pages": 3, "has_next": true, "has_previous": true})
    );

    let beyond = app.get("/api/v1/users/?page=9&limit=2").await;
    assert_eq!(beyond.status, 200);
    assert_eq!(beyond.body["data"], json!([]));
    assert_eq!(beyond.body["meta"]["total"], 5);

    let default_page = app.get("/api/v1/users").await;
    assert_eq!(default_page.body["meta"]["limit"], 20);
    assert_eq!(default_page.body["data"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_legacy_user_path_answers_like_v1() {
    let app = TestApp::spawn().await;
    let id = app.register("legacy@example.com").await;
    let v1 = app.get(&format!("/api/v1/users/{id}")).await;
    let legacy = app.get(&format!("/users/{id}")).await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.body, v1.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let app = TestApp::spawn().await;
    let generated = app.get("/health").await;
    assert!(generated.header("x-request-id").is_some_and(|id| id.len() >= 16));
    let not_found = app.get("/nowhere").await;
    assert!(not_found.header("x-request-id").is_some());

    let echoed = app
        .client
        .get(format!("{}/api/v1/users/not-a-uuid", app.address))
        .header("X-Request-ID", "caller-chosen-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "caller-chosen-id-42");
}
