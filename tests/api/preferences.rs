//! Preferences: partial updates, quiet hours set and cleared together, time zones.

use api_tests::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn an_omitted_field_keeps_its_value() {
    let app = TestApp::spawn().await;
    let id = app.register("prefs@example.com").await;
    let path = format!("/api/v1/users/{id}/preferences");

    let reply = app
        .send(
            Method::PUT,
            &path,
            &json!({"quiet_hours_start": "22:00", "quiet_hours_end": "07:00", "timezone": "America/New_York"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = app.send(Method::PUT, &path, &json!({"push": false})).await;
    assert_eq!(
        api_tests::without_updated_at(&reply.body["data"]),
        json!({"email": true, "push": false, "quiet_hours_start": "22:00", "quiet_hours_end": "07:00", "timezone": "America/New_York"})
    );

    let fetched = app.get(&path).await;
    assert_eq!(fetched.status, 200);
    fetched.assert_envelope();
    // With no category in the catalogue, `categories` is empty; the rest is what PUT answered.
    let mut fetched_data = fetched.body["data"].clone();
    assert_eq!(fetched_data.as_object_mut().unwrap().remove("categories"), Some(json!({})));
    assert_eq!(fetched_data, reply.body["data"]);
    // The user representation agrees.
    assert_eq!(app.get(&format!("/api/v1/users/{id}")).await.body["data"]["preferences"], reply.body["data"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_hours_are_cleared_together_and_an_empty_body_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.register("quiet@example.com").await;
    let path = format!("/api/v1/users/{id}/preferences");
    app.send(Method::PUT, &path, &json!({"quiet_hours_start": "12:00", "quiet_hours_end": "13:30"})).await;

    let unchanged = app.send(Method::PUT, &path, &json!({})).await;
    assert_eq!(unchanged.status, 200);
    assert_eq!(unchanged.body["data"]["quiet_hours_start"], "12:00");

    let cleared = app.send(Method::PUT, &path, &json!({"quiet_hours_start": null, "quiet_hours_end": null})).await;
    assert_eq!(cleared.status, 200);
    assert!(cleared.body["data"]["quiet_hours_start"].is_null());
    assert!(cleared.body["data"]["quiet_hours_end"].is_null());

    let half_cleared =
        app.send(Method::PUT, &path, &json!({"quiet_hours_start": null, "quiet_hours_end": "07:00"})).await;
    assert_eq!(half_cleared.status, 422);
    assert_eq!(half_cleared.body["details"][0]["field"], "quiet_hours");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_values_name_every_bad_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app.register("invalid@example.com").await;
    let path = format!("/api/v1/users/{id}/preferences");
    let reply = app
        .send(
            Method::PUT,
            &path,
            &json!({"quiet_hours_start": "7:5", "quiet_hours_end": "24:00", "timezone": "Mars/Olympus"}),
        )
        .await;
    assert_eq!(reply.status, 422);
    reply.assert_envelope();
    let fields: Vec<&str> =
        reply.body["details"].as_array().unwrap().iter().map(|detail| detail["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["quiet_hours_start", "quiet_hours_end", "timezone"]);
    assert_eq!(app.get(&path).await.body["data"]["timezone"], "UTC");
}
