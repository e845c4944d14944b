//! Send eligibility and bulk lookups through the API.

use std::io::Read as _;

use api_tests::TestApp;
use reqwest::Method;
use serde_json::json;

async fn eligibility(app: &TestApp, user: &str, query: &str) -> api_tests::Reply {
    app.get(&format!("/api/v1/users/{user}/eligibility?{query}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_reason_is_reported_with_targets_and_the_end_of_quiet_hours() {
    let app = TestApp::spawn().await;
    let user = app.register("eligible@example.com").await;

    let email = eligibility(&app, &user, "channel=email&at=2026-06-01T12:00:00Z").await;
    assert_eq!(email.status, 200, "{}", email.body);
    email.assert_envelope();
    assert_eq!(
        email.body["data"],
        json!({"user_id": user, "channel": "email", "at": "2026-06-01T12:00:00Z", "allowed": true, "reason": "ok",
               "next_allowed_at": null, "targets": {"email": "eligible@example.com"}, "category": null,
               "as_recorded": false, "recorded_state_since": null})
    );

    let push = eligibility(&app, &user, "channel=push").await;
    assert_eq!(
        (push.body["data"]["allowed"].as_bool(), push.body["data"]["reason"].as_str()),
        (Some(false), Some("no_active_device"))
    );
    assert!(push.body["data"]["targets"].is_null());

    app.send(Method::POST, &format!("/api/v1/users/{user}/devices"), &json!({"token": "phone-1", "platform": "ios"}))
        .await;
    app.send(
        Method::PUT,
        &format!("/api/v1/users/{user}/preferences"),
        &json!({"quiet_hours_start": "22:00", "quiet_hours_end": "07:00", "timezone": "America/New_York"}),
    )
    .await;
    // 01:30 EST on the night clocks spring forward: quiet until 07:00 EDT = 11:00Z.
    let quiet = eligibility(&app, &user, "channel=push&at=2026-03-08T06:30:00Z").await;
    assert_eq!(quiet.body["data"]["reason"], "quiet_hours", "{}", quiet.body);
    assert_eq!(quiet.body["data"]["allowed"], false);
    assert_eq!(quiet.body["data"]["next_allowed_at"], "2026-03-08T11:00:00Z");
    assert_eq!(quiet.body["data"]["targets"], json!({"tokens": [{"token": "phone-1", "platform": "ios"}]}));
    let morning = eligibility(&app, &user, "channel=push&at=2026-03-08T11:00:00Z").await;
    assert_eq!(morning.body["data"]["reason"], "ok");

    app.send(Method::PUT, &format!("/api/v1/users/{user}/preferences"), &json!({"push": false})).await;
    let opted_out = eligibility(&app, &user, "channel=push&at=2026-03-08T06:30:00Z").await;
    assert_eq!(opted_out.body["data"]["reason"], "opted_out", "opt-out takes precedence over quiet hours");
    // Nowhere to send takes precedence over an opt-out.
    app.request(Method::DELETE, &format!("/api/v1/users/{user}/devices/phone-1"), None).await;
    let nowhere = eligibility(&app, &user, "channel=push&at=2026-03-08T06:30:00Z").await;
    assert_eq!(nowhere.body["data"]["reason"], "no_active_device");
    assert!(opted_out.body["data"]["targets"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_are_422_and_unknown_users_404() {
    let app = TestApp::spawn().await;
    let user = app.register("params@example.com").await;
    let reply = eligibility(&app, &user, "channel=sms&at=yesterday").await;
    assert_eq!(reply.status, 422);
    let fields: Vec<&str> =
        reply.body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["channel", "at"]);
    assert_eq!(eligibility(&app, &user, "at=2026-01-01T00:00:00Z").await.status, 400);
    let unknown = eligibility(&app, &uuid::Uuid::new_v4().to_string(), "channel=email").await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_request_of_1000_ids_answers_in_order_with_unknown_users_marked() {
    let prefix = format!("user-service-test-{}", uuid::Uuid::new_v4().simple());
    let port = std::env::var("TEST_REDIS_PORT").unwrap_or_else(|_| "6379".into());
    let redis = format!("redis://127.0.0.1:{port}/0");
    let app = TestApp::spawn_with(&[("REDIS_URL", &redis), ("CACHE_KEY_PREFIX", &prefix)]).await;
    let mut known = Vec::new();
    for index in 0..5 {
        known.push(app.register(&format!("bulk{index}@example.com")).await);
    }
    app.send(Method::PUT, &format!("/api/v1/users/{}/preferences", known[1]), &json!({"email": false})).await;
    // Warm the cache for some users, so the request mixes hits and misses.
    app.get(&format!("/api/v1/users/{}", known[0])).await;
    app.get(&format!("/api/v1/users/{}", known[1])).await;

    let mut ids: Vec<String> = (0..995).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (slot, user) in [(0, &known[0]), (10, &known[1]), (500, &known[2]), (994, &known[3]), (3, &known[4])] {
        ids.insert(slot, user.clone());
    }
    assert_eq!(ids.len(), 1000);
    let reply = app
        .send(
            Method::POST,
            "/api/v1/eligibility",
            &json!({"channel": "email", "at": "2026-06-01T12:00:00Z", "user_ids": ids}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let decisions = reply.body["data"].as_array().unwrap();
    assert_eq!(decisions.len(), 1000);
    for (decision, id) in decisions.iter().zip(&ids) {
        assert_eq!(decision["user_id"], id.as_str(), "order");
        let expected = if *id == known[1] {
            "opted_out"
        } else if known.contains(id) {
            "ok"
        } else {
            "user_not_found"
        };
        assert_eq!(decision["reason"], expected, "{id}");
    }
    // An answer this large (far over COMPRESS_MIN_BYTES) is compressed for a caller that
    // accepts gzip, and reads back as the same decisions.
    let request = json!({"channel": "email", "at": "2026-06-01T12:00:00Z", "user_ids": ids});
    let url = format!("{}/api/v1/eligibility", app.address);
    let response = app.client.post(url).header("accept-encoding", "gzip").json(&request).send().await.unwrap();
    assert_eq!(response.headers().get("content-encoding").unwrap(), "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&response.bytes().await.unwrap()[..]).read_to_string(&mut text).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["data"], reply.body["data"]);

    let too_many: Vec<String> = (0..1001).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let reply = app.send(Method::POST, "/api/v1/eligibility", &json!({"channel": "push", "user_ids": too_many})).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["details"][0]["field"], "user_ids", "{}", reply.body);
    let reply = app.send(Method::POST, "/api/v1/users/lookup", &json!({"ids": too_many})).await;
    assert_eq!((reply.status, &reply.body["details"][0]["field"]), (422, &json!("ids")), "{}", reply.body);
    let reply =
        app.send(Method::POST, "/api/v1/eligibility", &json!({"channel": "push", "user_ids": ["not-a-uuid"]})).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["details"][0]["field"], "user_ids[0]");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_returns_users_and_missing_ids_and_bulk_routes_are_for_services() {
    let app = TestApp::spawn().await;
    let first = app.register("lookup1@example.com").await;
    let second = app.register("lookup2@example.com").await;
    let absent = uuid::Uuid::new_v4().to_string();
    let reply = app.send(Method::POST, "/api/v1/users/lookup", &json!({"ids": [second, absent, first, second]})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let users: Vec<&str> =
        reply.body["data"]["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(users, vec![second.as_str(), first.as_str()]);
    assert_eq!(reply.body["data"]["missing"], json!([absent]));
    assert_eq!(reply.body["data"]["users"][0], app.get(&format!("/api/v1/users/{second}")).await.body["data"]);

    let token = app.login("lookup1@example.com", "StrongPass123!").await;
    let bearer = format!("Bearer {token}");
    for (path, body) in [
        ("/api/v1/users/lookup", json!({"ids": [first]})),
        ("/api/v1/eligibility", json!({"channel": "email", "user_ids": [first]})),
    ] {
        let reply = app
            .request_as(&app.anonymous, &[("Authorization", &bearer)], Method::POST, path, Some(&body.to_string()))
            .await;
        assert_eq!(reply.status, 403, "{path} is for services");
    }
    let own = app
        .request_as(
            &app.anonymous,
            &[("Authorization", &bearer)],
            Method::GET,
            &format!("/api/v1/users/{first}/eligibility?channel=email"),
            None,
        )
        .await;
    assert_eq!(own.status, 200, "a user may ask about itself");
}
