//! Devices: upsert by token, moves between users, activation by id or token, removal.

use api_tests::TestApp;
use reqwest::Method;
use serde_json::json;

const WEB_PUSH_ENDPOINT: &str = "https://fcm.googleapis.com/fcm/send/dXzK:APA91bH_x-y";

async fn register_device(app: &TestApp, user: &str, token: &str, platform: &str) -> api_tests::Reply {
    app.send(Method::POST, &format!("/api/v1/users/{user}/devices"), &json!({"token": token, "platform": platform}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_registered_by_another_user_moves_without_a_duplicate() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;

    let first = register_device(&app, &alice, "shared-device", "ios").await;
    assert_eq!(first.status, 201);
    let device_id = first.body["data"]["id"].clone();
    assert!(first.header("location").is_some_and(|location| location.ends_with(device_id.as_str().unwrap())));

    let moved = register_device(&app, &bob, "shared-device", "android").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["data"]["id"], device_id);
    assert_eq!(moved.body["data"]["platform"], "android");

    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 1);
    assert_eq!(app.get(&format!("/api/v1/users/{alice}")).await.body["data"]["devices"], json!([]));
    assert!(app.get(&format!("/api/v1/users/{alice}")).await.body["data"]["push_token"].is_null());
    assert_eq!(app.get(&format!("/api/v1/users/{bob}")).await.body["data"]["push_token"], "shared-device");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_of_one_token_leave_one_row_and_no_errors() {
    let app = TestApp::spawn().await;
    let users = [app.register("c1@example.com").await, app.register("c2@example.com").await];
    let requests = (0..20).map(|index| {
        let user = &users[index % 2];
        register_device(&app, user, "contended-token", "android")
    });
    let replies = futures_util::future::join_all(requests).await;
    let created = replies.iter().filter(|reply| reply.status == 201).count();
    assert!(replies.iter().all(|reply| reply.status == 200 || reply.status == 201), "{replies:?}");
    assert_eq!(created, 1);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_list_active_first_then_most_recently_seen() {
    let app = TestApp::spawn().await;
    let user = app.register("order@example.com").await;
    for token in ["old", "middle", "new"] {
        assert_eq!(register_device(&app, &user, token, "web").await.status, 201);
    }
    let deactivated = app.request(Method::PUT, &format!("/api/v1/users/{user}/devices/new/deactivate"), None).await;
    assert_eq!(deactivated.status, 200);

    let listed = app.get(&format!("/api/v1/users/{user}/devices")).await;
    assert_eq!(listed.status, 200);
    listed.assert_envelope();
    let tokens: Vec<&str> =
        listed.body["data"].as_array().unwrap().iter().map(|device| device["token"].as_str().unwrap()).collect();
    assert_eq!(tokens, vec!["middle", "old", "new"]);

    let profile = app.get(&format!("/api/v1/users/{user}")).await.body;
    assert_eq!(profile["data"]["push_token"], "middle");
    assert_eq!(profile["data"]["push_tokens"], json!(["middle", "old"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_is_found_by_id_token_encoded_token_raw_url_and_merged_slashes() {
    let app = TestApp::spawn().await;
    let user = app.register("finder@example.com").await;
    let registered = register_device(&app, &user, WEB_PUSH_ENDPOINT, "web").await;
    let device_id = registered.body["data"]["id"].as_str().unwrap().to_owned();
    let encoded: String = WEB_PUSH_ENDPOINT
        .bytes()
        .map(|byte| if byte.is_ascii_alphanumeric() { (byte as char).to_string() } else { format!("%{byte:02X}") })
        .collect();
    let merged = WEB_PUSH_ENDPOINT.replace("//", "/");

    for (action, selector) in [
        ("deactivate", device_id.clone()),
        ("activate", encoded.clone()),
        ("deactivate", WEB_PUSH_ENDPOINT.to_owned()),
        ("activate", merged.clone()),
    ] {
        let reply = app.request(Method::PUT, &format!("/api/v1/users/{user}/devices/{selector}/{action}"), None).await;
        assert_eq!(reply.status, 200, "{action} {selector}: {}", reply.body);
        assert_eq!(reply.body["data"]["id"], device_id.as_str());
        assert_eq!(reply.body["data"]["active"], action == "activate");
    }

    // The push sender's legacy path, with the raw endpoint and with `//` merged.
    for selector in [WEB_PUSH_ENDPOINT, merged.as_str()] {
        let reply = app.request(Method::PUT, &format!("/api/users/{user}/devices/{selector}/deactivate"), None).await;
        assert_eq!(reply.status, 200, "{selector}: {}", reply.body);
        assert_eq!(reply.body["data"]["active"], false);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn activation_is_idempotent_and_keeps_updated_at_when_nothing_changes() {
    let app = TestApp::spawn().await;
    let user = app.register("idem@example.com").await;
    register_device(&app, &user, "idem-token", "ios").await;
    let path = format!("/api/v1/users/{user}/devices/idem-token/deactivate");
    let first = app.request(Method::PUT, &path, None).await;
    let second = app.request(Method::PUT, &path, None).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body["data"]["updated_at"], second.body["data"]["updated_at"]);
    assert_eq!(second.body["data"]["active"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_device_cannot_be_changed_or_removed_through_my_id() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    register_device(&app, &owner, "owned-token", "android").await;

    for (method, path) in [
        (Method::PUT, format!("/api/v1/users/{other}/devices/owned-token/deactivate")),
        (Method::DELETE, format!("/api/v1/users/{other}/devices/owned-token")),
    ] {
        let reply = app.request(method, &path, None).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body["error"], "device_not_found");
    }
    let devices = app.get(&format!("/api/v1/users/{owner}/devices")).await;
    assert_eq!(devices.body["data"][0]["active"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_device_is_gone() {
    let app = TestApp::spawn().await;
    let user = app.register("remove@example.com").await;
    let device_id =
        register_device(&app, &user, "to-remove", "web").await.body["data"]["id"].as_str().unwrap().to_owned();
    let removed = app.request(Method::DELETE, &format!("/api/v1/users/{user}/devices/{device_id}"), None).await;
    assert_eq!(removed.status, 204);
    let again = app.request(Method::DELETE, &format!("/api/v1/users/{user}/devices/{device_id}"), None).await;
    assert_eq!(again.status, 404);
    assert_eq!(app.get(&format!("/api/v1/users/{user}/devices")).await.body["data"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4096_character_token_is_stored_and_a_longer_one_refused() {
    let app = TestApp::spawn().await;
    let user = app.register("long@example.com").await;
    assert_eq!(register_device(&app, &user, &"t".repeat(4096), "web").await.status, 201);
    assert_eq!(register_device(&app, &user, &"t".repeat(4096), "web").await.status, 200);
    let too_long = register_device(&app, &user, &"t".repeat(4097), "web").await;
    assert_eq!(too_long.status, 422);
    assert_eq!(too_long.body["details"][0]["field"], "token");
}
