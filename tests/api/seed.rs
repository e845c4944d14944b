//! The sample requests of the user's original description, with their bodies exactly as
//! written, and what the gateway reads from the answers.

use api_tests::TestApp;
use reqwest::Method;

const REGISTER: &str = r#"{
  "name": "John Doe",
  "email": "john@example.com",
  "password": "StrongPass123!",
  "preferences": {"email": true, "push": false}
}"#;

const UPDATE_PREFERENCES: &str = r#"{
  "email": false,
  "push": true,
  "quiet_hours_start": "22:00",
  "quiet_hours_end": "07:00"
}"#;

const REGISTER_DEVICE: &str = r#"{
  "token": "fcm_device_token_123",
  "platform": "android",
  "active": true
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_sample_request_works_as_written() {
    let app = TestApp::spawn().await;

    let registered = app.request(Method::POST, "/api/v1/users/", Some(REGISTER)).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    registered.assert_envelope();
    let user = &registered.body["data"];
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(registered.header("location"), Some(format!("/api/v1/users/{id}").as_str()));
    assert_eq!(user["name"], "John Doe");
    assert_eq!(user["email"], "john@example.com");
    assert_eq!(user["preferences"]["email"], true);
    assert_eq!(user["preferences"]["push"], false);
    assert_eq!(user["preferences"]["timezone"], "UTC");
    assert!(user["preferences"]["quiet_hours_start"].is_null());
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    assert!(!registered.body.to_string().contains("argon2"));

    let fetched = app.get(&format!("/api/v1/users/{id}")).await;
    assert_eq!(fetched.status, 200);
    fetched.assert_envelope();
    assert_eq!(fetched.body["data"]["email"], "john@example.com");

    let preferences =
        app.request(Method::PUT, &format!("/api/v1/users/{id}/preferences"), Some(UPDATE_PREFERENCES)).await;
    assert_eq!(preferences.status, 200, "{}", preferences.body);
    preferences.assert_envelope();
    assert_eq!(
        api_tests::without_updated_at(&preferences.body["data"]),
        serde_json::json!({"email": false, "push": true, "quiet_hours_start": "22:00", "quiet_hours_end": "07:00", "timezone": "UTC"})
    );

    let device = app.request(Method::POST, &format!("/api/v1/users/{id}/devices"), Some(REGISTER_DEVICE)).await;
    assert_eq!(device.status, 201, "{}", device.body);
    device.assert_envelope();
    assert_eq!(device.body["data"]["token"], "fcm_device_token_123");
    assert_eq!(device.body["data"]["platform"], "android");
    assert_eq!(device.body["data"]["active"], true);

    let health = app.get("/health").await;
    assert_eq!(health.status, 200);
    health.assert_envelope();
    assert_eq!(health.body["data"]["status"], "ok");
    assert_eq!(health.body["data"]["checks"]["database"]["status"], "ok");

    // What the gateway reads: email, the two opt-ins as booleans, the push token.
    let gateway_view = app.get(&format!("/api/v1/users/{id}")).await.body;
    let data = &gateway_view["data"];
    assert_eq!(data["email"], "john@example.com");
    assert_eq!(data["preferences"]["email"], false);
    assert_eq!(data["preferences"]["push"], true);
    assert_eq!(data["push_token"], "fcm_device_token_123");
    assert_eq!(data["push_tokens"], serde_json::json!(["fcm_device_token_123"]));
    assert_eq!(data["devices"][0]["token"], "fcm_device_token_123");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_register_sample_also_works_without_the_trailing_slash_and_repeating_the_device_is_200() {
    let app = TestApp::spawn().await;
    let registered = app.request(Method::POST, "/api/v1/users", Some(REGISTER)).await;
    assert_eq!(registered.status, 201);
    let id = registered.body["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/users/{id}/devices");
    assert_eq!(app.request(Method::POST, &path, Some(REGISTER_DEVICE)).await.status, 201);
    let again = app.request(Method::POST, &path, Some(REGISTER_DEVICE)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 1);
}
