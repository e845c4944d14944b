//! The embedded default: no DATABASE_URL, no REDIS_URL, no SECRET_KEY — SQLite under
//! DATA_DIR and an in-process cache, and the data survives a restart.

use std::collections::HashMap;

use api_tests::SERVICE_KEY;
use http_actix::config::Settings;
use http_actix::startup::Application;
use serde_json::json;

const REGISTER: &str = r#"{
  "name": "John Doe",
  "email": "john@example.com",
  "password": "StrongPass123!",
  "preferences": {"email": true, "push": false}
}"#;

/// A running instance: its address, a handle that stops it, and the task that ends once it
/// has stopped (its store closed: the data directory is free for the next one).
async fn start(
    data_dir: &std::path::Path,
) -> (String, actix_web::dev::ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>) {
    let settings = Settings::from_map(HashMap::from([
        ("HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PORT".to_owned(), "0".to_owned()),
        ("WORKERS".to_owned(), "2".to_owned()),
        ("DATA_DIR".to_owned(), data_dir.display().to_string()),
        ("SERVICE_API_KEYS".to_owned(), SERVICE_KEY.to_owned()),
    ]))
    .unwrap();
    assert!(settings.database.url.is_none() && settings.cache.is_none() && settings.auth.secret_key_generated);
    let application = Application::build(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", application.port());
    let handle = application.handle();
    let running = tokio::spawn(application.run_until_stopped());
    (address, handle, running)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_serves_the_seed_samples_and_keeps_data_across_a_restart() {
    let data_dir = std::env::temp_dir().join(format!("user-service-embedded-{}", uuid::Uuid::new_v4().simple()));
    let (address, handle, running) = start(&data_dir).await;
    let client = reqwest::Client::new();
    let json_post = |path: &str, body: &str| {
        client.post(format!("{address}{path}")).header("Content-Type", "application/json").body(body.to_owned())
    };

    let registered = json_post("/api/v1/users/", REGISTER).send().await.unwrap();
    assert_eq!(registered.status().as_u16(), 201);
    let user: serde_json::Value = registered.json().await.unwrap();
    let id = user["data"]["id"].as_str().unwrap().to_owned();
    let login = json_post("/api/v1/auth/login", r#"{"email": "john@example.com", "password": "StrongPass123!"}"#)
        .send()
        .await
        .unwrap();
    let token: serde_json::Value = login.json().await.unwrap();
    let bearer = format!("Bearer {}", token["data"]["access_token"].as_str().unwrap());
    let preferences = client
        .put(format!("{address}/api/v1/users/{id}/preferences"))
        .header("Authorization", &bearer)
        .header("Content-Type", "application/json")
        .body(r#"{"email": false, "push": true, "quiet_hours_start": "22:00", "quiet_hours_end": "07:00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(preferences.status().as_u16(), 200);
    let device = client
        .post(format!("{address}/api/v1/users/{id}/devices"))
        .header("Authorization", &bearer)
        .header("Content-Type", "application/json")
        .body(r#"{"token": "fcm_device_token_123", "platform": "android", "active": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(device.status().as_u16(), 201);
    let before: serde_json::Value = client
        .get(format!("{address}/api/v1/users/{id}"))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["data"]["push_token"], "fcm_device_token_123");
    let health: serde_json::Value = client.get(format!("{address}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["data"]["status"], "ok");
    handle.stop(true).await;
    running.await.unwrap().unwrap();

    // A new process on the same data directory: a new generated SECRET_KEY (old tokens
    // are void), the same data.
    let (address, handle, running) = start(&data_dir).await;
    let after =
        client.get(format!("{address}/api/v1/users/{id}")).header("X-Service-Key", SERVICE_KEY).send().await.unwrap();
    assert_eq!(after.status().as_u16(), 200);
    let after: serde_json::Value = after.json().await.unwrap();
    assert_eq!(after["data"], before["data"]);
    let old_token =
        client.get(format!("{address}/api/v1/users/{id}")).header("Authorization", &bearer).send().await.unwrap();
    assert_eq!(old_token.status().as_u16(), 401);
    let duplicate = client
        .post(format!("{address}/api/v1/users"))
        .header("Content-Type", "application/json")
        .body(json!({"name": "J", "email": "JOHN@example.com", "password": "StrongPass123!"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status().as_u16(), 409);
    handle.stop(true).await;
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_records_every_change_as_an_event_in_the_feed() {
    let data_dir = std::env::temp_dir().join(format!("user-service-embedded-{}", uuid::Uuid::new_v4().simple()));
    let (address, handle, running) = start(&data_dir).await;
    let client = reqwest::Client::new();
    let registered = client
        .post(format!("{address}/api/v1/users"))
        .header("x-service-key", SERVICE_KEY)
        .json(&serde_json::from_str::<serde_json::Value>(REGISTER).unwrap())
        .send()
        .await
        .unwrap();
    let user: serde_json::Value = registered.json().await.unwrap();
    let id = user["data"]["id"].as_str().unwrap().to_owned();
    let changed = client
        .put(format!("{address}/api/v1/users/{id}/preferences"))
        .header("x-service-key", SERVICE_KEY)
        .json(&json!({"push": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status().as_u16(), 200);
    // The relay gives events their feed position within a poll (100 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let events = loop {
        let page: serde_json::Value = client
            .get(format!("{address}/api/v1/events"))
            .header("x-service-key", SERVICE_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["data"]["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= 2 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let summary: Vec<(&str, &str)> =
        events.iter().map(|event| (event["type"].as_str().unwrap(), event["sequence"].as_str().unwrap())).collect();
    assert_eq!(
        summary,
        [("user.created", "00000000000000000001"), ("user.preferences.changed", "00000000000000000002")]
    );
    assert_eq!(events[1]["data"]["push"], true);
    assert!(events.iter().all(|event| event["subject"] == id.as_str()));
    handle.stop(true).await;
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}
