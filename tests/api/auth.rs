//! Authentication and authorization: who may call which route, forged tokens, login,
//! password changes, abuse limits, and secrets kept out of responses and logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_tests::{OTHER_SERVICE_KEY, Reply, SERVICE_KEY, TestApp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_actix::auth::TokenKeys;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;

const PASSWORD: &str = "StrongPass123!";
const TEST_SECRET: &str = "test-secret-key-0123456789abcdef0123456789";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A request to a protected route, built for a given victim.
struct Route {
    method: Method,
    path: String,
    body: Option<String>,
    /// Who besides the owner may call it.
    service_allowed: bool,
    owner_allowed: bool,
}

fn route(method: Method, path: String, body: Option<serde_json::Value>) -> Route {
    Route { method, path, body: body.map(|body| body.to_string()), service_allowed: true, owner_allowed: true }
}

fn protected_routes(victim: &str) -> Vec<Route> {
    let mut routes = vec![
        route(Method::GET, format!("/api/v1/users/{victim}"), None),
        route(Method::PATCH, format!("/api/v1/users/{victim}"), Some(json!({"phone": "+2348012345678"}))),
        route(Method::GET, format!("/api/v1/users/{victim}/preferences"), None),
        route(Method::PUT, format!("/api/v1/users/{victim}/preferences"), Some(json!({"push": false}))),
        route(
            Method::POST,
            format!("/api/v1/users/{victim}/devices"),
            Some(json!({"token": "auth-token", "platform": "ios"})),
        ),
        route(Method::GET, format!("/api/v1/users/{victim}/devices"), None),
        route(Method::PUT, format!("/api/v1/users/{victim}/devices/auth-token/deactivate"), None),
        route(Method::PUT, format!("/api/v1/users/{victim}/devices/auth-token/activate"), None),
        route(Method::GET, format!("/users/{victim}"), None),
        route(Method::PUT, format!("/api/users/{victim}/devices/auth-token/deactivate"), None),
    ];
    routes.push(Route { owner_allowed: false, ..route(Method::GET, "/api/v1/users?limit=5".into(), None) });
    routes
}

async fn call(app: &TestApp, headers: &[(&str, &str)], route: &Route) -> Reply {
    app.request_as(&app.anonymous, headers, route.method.clone(), &route.path, route.body.as_deref()).await
}

/// What the database holds for a user, to prove a refused caller changed nothing.
async fn snapshot(app: &TestApp, user: &str) -> (serde_json::Value, i64) {
    let profile = app.get(&format!("/api/v1/users/{user}")).await.body["data"].clone();
    let devices =
        app.db.count(&format!("SELECT count(*) AS count FROM devices WHERE user_id = '{user}'")).await.unwrap();
    (profile, devices)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_missing_wrong_and_foreign_credentials_and_serves_the_owner_and_services() {
    let app = TestApp::spawn().await;
    let victim = app.register("victim@example.com").await;
    let intruder = app.register("intruder@example.com").await;
    let victim_token = app.login("victim@example.com", PASSWORD).await;
    let intruder_token = app.login("intruder@example.com", PASSWORD).await;
    assert_ne!(victim, intruder);
    let before = snapshot(&app, &victim).await;

    for route in protected_routes(&victim) {
        let label = format!("{} {}", route.method, route.path);
        let none = call(&app, &[], &route).await;
        assert_eq!(none.status, 401, "{label} without credentials: {}", none.body);
        none.assert_envelope();
        assert_eq!(none.body["error"], "authentication_required", "{label}");
        let wrong_key = call(&app, &[("X-Service-Key", "not-a-configured-key-0123")], &route).await;
        assert_eq!(wrong_key.status, 401, "{label} with a wrong service key");
        assert_eq!(wrong_key.body["error"], "invalid_credentials");
        let foreign = call(&app, &[("Authorization", &bearer(&intruder_token))], &route).await;
        assert_eq!(foreign.status, 403, "{label} with another user's token: {}", foreign.body);
        assert_eq!(foreign.body["error"], "forbidden");
    }
    assert_eq!(snapshot(&app, &victim).await, before, "a refused caller changed the victim");

    for route in protected_routes(&victim) {
        let label = format!("{} {}", route.method, route.path);
        let owner = call(&app, &[("Authorization", &bearer(&victim_token))], &route).await;
        if route.owner_allowed {
            assert!((200..300).contains(&owner.status), "{label} as the owner: {} {}", owner.status, owner.body);
        } else {
            assert_eq!(owner.status, 403, "{label} is for services only");
        }
        let service = call(&app, &[("X-Service-Key", OTHER_SERVICE_KEY)], &route).await;
        assert!(
            route.service_allowed && (200..300).contains(&service.status),
            "{label} as a service: {}",
            service.body
        );
    }

    // Removing: another user cannot, the owner can, a service can.
    let delete_device = format!("/api/v1/users/{victim}/devices/auth-token");
    let foreign = app
        .request_as(
            &app.anonymous,
            &[("Authorization", &bearer(&intruder_token))],
            Method::DELETE,
            &delete_device,
            None,
        )
        .await;
    assert_eq!(foreign.status, 403);
    let owner = app
        .request_as(&app.anonymous, &[("Authorization", &bearer(&victim_token))], Method::DELETE, &delete_device, None)
        .await;
    assert_eq!(owner.status, 204);
    let delete_user = format!("/api/v1/users/{victim}");
    let foreign = app
        .request_as(&app.anonymous, &[("Authorization", &bearer(&intruder_token))], Method::DELETE, &delete_user, None)
        .await;
    assert_eq!(foreign.status, 403);
    assert_eq!(app.get(&delete_user).await.status, 200);
    let none = app.request_as(&app.anonymous, &[], Method::DELETE, &delete_user, None).await;
    assert_eq!(none.status, 401);
    let service =
        app.request_as(&app.anonymous, &[("X-Service-Key", SERVICE_KEY)], Method::DELETE, &delete_user, None).await;
    assert_eq!(service.status, 204);
    // The deleted user's token no longer works.
    let gone = app
        .request_as(&app.anonymous, &[("Authorization", &bearer(&victim_token))], Method::GET, &delete_user, None)
        .await;
    assert_eq!(gone.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_routes_need_no_credentials() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/health/live", "/health/ready", "/openapi.json", "/docs"] {
        let reply = app.request_as(&app.anonymous, &[], Method::GET, path, None).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let body = json!({"name": "Public", "email": "public@example.com", "password": PASSWORD}).to_string();
    let reply = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/users/", Some(&body)).await;
    assert_eq!(reply.status, 201);
    app.login("public@example.com", PASSWORD).await;
}

fn forged(header: &serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    format!("{}.{}.{signature}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_and_oversized_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.register("target@example.com").await;
    let user_id: uuid::Uuid = user.parse().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let keys = |secret: &str, audience: &str| {
        TokenKeys::new(SecretString::from(secret), "user-service".into(), audience.into(), Duration::from_secs(3600))
    };
    let claims =
        json!({"sub": user, "iat": now, "exp": now + 3600, "iss": "user-service", "aud": "user-service", "ver": 0});
    let genuine = keys(TEST_SECRET, "user-service").issue(user_id, 0, now);
    let path = format!("/api/v1/users/{user}");
    let accepted =
        app.request_as(&app.anonymous, &[("Authorization", &bearer(&genuine))], Method::GET, &path, None).await;
    assert_eq!(accepted.status, 200, "the genuine token works");

    let forgeries = [
        ("alg none", forged(&json!({"alg": "none", "typ": "JWT"}), &claims, "")),
        ("alg None", forged(&json!({"alg": "None"}), &claims, "")),
        ("another key", keys("another-secret-another-secret-0123456789", "user-service").issue(user_id, 0, now)),
        ("expired", keys(TEST_SECRET, "user-service").issue(user_id, 0, now - 7200)),
        ("wrong audience", keys(TEST_SECRET, "another-service").issue(user_id, 0, now)),
        ("stale token version", keys(TEST_SECRET, "user-service").issue(user_id, 5, now)),
        ("garbage", "garbage".to_owned()),
        ("20 kB", "a".repeat(20_000)),
        ("tampered subject", {
            let other = forged(&json!({"alg": "HS256", "typ": "JWT"}), &claims, "");
            let signature = genuine.rsplit('.').next().unwrap();
            format!("{other}{signature}")
        }),
    ];
    for (name, token) in forgeries {
        let reply =
            app.request_as(&app.anonymous, &[("Authorization", &bearer(&token))], Method::GET, &path, None).await;
        assert_eq!(reply.status, 401, "{name} was accepted");
        assert_eq!(reply.body["error"], "invalid_credentials", "{name}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    for malformed in ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"] {
        let reply = app.request_as(&app.anonymous, &[("Authorization", malformed)], Method::GET, &path, None).await;
        assert_eq!(reply.status, 401, "{malformed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_email_and_a_wrong_password_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.register("known@example.com").await;
    let attempt = async |email: &str, password: &str| {
        let body = json!({"email": email, "password": password}).to_string();
        app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&body)).await
    };
    let unknown = attempt("nobody@example.com", PASSWORD).await;
    let wrong = attempt("known@example.com", "WrongPass123!").await;
    assert_eq!(unknown.status, 401);
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body));
    assert_eq!(unknown.body["error"], "invalid_credentials");

    let ok = attempt("KNOWN@example.com", PASSWORD).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["data"]["token_type"], "Bearer");
    assert_eq!(ok.body["data"]["expires_in"], 3600);
    let malformed = attempt("not-an-email", "x").await;
    assert_eq!(malformed.status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifteen_wrong_passwords_on_one_account_meet_a_429() {
    let app = TestApp::spawn().await;
    app.register("locked@example.com").await;
    let body = json!({"email": "locked@example.com", "password": "WrongPass123!"}).to_string();
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let reply = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&body)).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert!(reply.header("retry-after").is_some_and(|seconds| seconds.parse::<u64>().unwrap() >= 1));
            assert_eq!(reply.body["error"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert!(statuses[10..].iter().all(|status| *status == 429), "{statuses:?}");
    // Locked: even the right password waits for the window to end.
    let right = json!({"email": "locked@example.com", "password": PASSWORD}).to_string();
    let reply = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&right)).await;
    assert_eq!(reply.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_limits_apply_to_anonymous_clients_but_not_to_services() {
    let app = TestApp::spawn_with(&[("RATE_LIMIT_PER_ADDRESS", "5")]).await;
    let mut anonymous = Vec::new();
    for index in 0..7 {
        let body = json!({"name": "A", "email": format!("anon{index}@example.com"), "password": PASSWORD}).to_string();
        anonymous.push(app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/users", Some(&body)).await.status);
    }
    assert_eq!(anonymous, vec![201, 201, 201, 201, 201, 429, 429]);
    for index in 0..7 {
        let body = json!({"name": "S", "email": format!("svc{index}@example.com"), "password": PASSWORD}).to_string();
        let reply = app.request(Method::POST, "/api/v1/users", Some(&body)).await;
        assert_eq!(reply.status, 201, "service callers are exempt");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_change_needs_the_current_password_and_revokes_earlier_tokens() {
    let app = TestApp::spawn().await;
    let user = app.register("changer@example.com").await;
    let old_token = app.login("changer@example.com", PASSWORD).await;
    let path = format!("/api/v1/users/{user}/password");
    let change = |current: &str| json!({"current_password": current, "new_password": "EvenStronger456!"}).to_string();

    let as_service = app.request(Method::PUT, &path, Some(&change(PASSWORD))).await;
    assert_eq!(as_service.status, 403, "only the user changes its password");
    let wrong = app
        .request_as(
            &app.anonymous,
            &[("Authorization", &bearer(&old_token))],
            Method::PUT,
            &path,
            Some(&change("Wrong1234!")),
        )
        .await;
    assert_eq!((wrong.status, wrong.body["error"].as_str()), (403, Some("invalid_current_password")));

    let changed = app
        .request_as(
            &app.anonymous,
            &[("Authorization", &bearer(&old_token))],
            Method::PUT,
            &path,
            Some(&change(PASSWORD)),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let fresh_token = changed.body["data"]["access_token"].as_str().unwrap().to_owned();

    let profile = format!("/api/v1/users/{user}");
    let old =
        app.request_as(&app.anonymous, &[("Authorization", &bearer(&old_token))], Method::GET, &profile, None).await;
    assert_eq!(old.status, 401, "a token issued before the change still works");
    let fresh =
        app.request_as(&app.anonymous, &[("Authorization", &bearer(&fresh_token))], Method::GET, &profile, None).await;
    assert_eq!(fresh.status, 200);
    app.login("changer@example.com", "EvenStronger456!").await;
    let old_password = json!({"email": "changer@example.com", "password": PASSWORD}).to_string();
    let reply = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&old_password)).await;
    assert_eq!(reply.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weaker_stored_hash_is_upgraded_at_the_next_successful_login() {
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let app = TestApp::spawn().await;
    let user = app.register("legacy-hash@example.com").await;
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(4096, 1, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
    .unwrap()
    .to_string();
    let strong_hashes =
        "SELECT count(*) AS count FROM users WHERE password_hash LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'";
    let mut connection = app.db.pool().get().await.unwrap();
    use diesel_async::SimpleAsyncConnection;
    connection.batch_execute(&format!("UPDATE users SET password_hash = '{weak}' WHERE id = '{user}'")).await.unwrap();
    assert_eq!(app.db.count(strong_hashes).await.unwrap(), 0);
    app.login("legacy-hash@example.com", PASSWORD).await;
    assert_eq!(app.db.count(strong_hashes).await.unwrap(), 1);
    // The upgrade keeps tokens valid and the password unchanged.
    app.login("legacy-hash@example.com", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_credentials_in_one_request_are_refused_rather_than_one_picked() {
    let app = TestApp::spawn().await;
    let user = app.register("ambiguous@example.com").await;
    let token = app.login("ambiguous@example.com", PASSWORD).await;
    let path = format!("/api/v1/users/{user}");
    let bearer = bearer(&token);
    for headers in [
        vec![("X-Service-Key", SERVICE_KEY), ("Authorization", bearer.as_str())],
        vec![("X-Service-Key", SERVICE_KEY), ("Authorization", "Bearer garbage")],
        vec![("X-Service-Key", SERVICE_KEY), ("X-Service-Key", "wrong-key-0123456789")],
        vec![("Authorization", "Bearer garbage"), ("Authorization", bearer.as_str())],
    ] {
        let reply = app.request_as(&app.anonymous, &headers, Method::GET, &path, None).await;
        assert_eq!((reply.status, reply.body["error"].as_str()), (401, Some("invalid_credentials")), "{headers:?}");
    }
    let alone = app.request_as(&app.anonymous, &[("X-Service-Key", SERVICE_KEY)], Method::GET, &path, None).await;
    assert_eq!(alone.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_internal_network_reads_but_cannot_list_or_change_and_stays_under_per_address_limits() {
    let app = TestApp::spawn_with(&[("TRUST_INTERNAL_NETWORK", "true"), ("RATE_LIMIT_PER_ADDRESS", "3")]).await;
    let user = app.register("internal@example.com").await;
    let anonymous = async |method: Method, path: &str, body: Option<&str>| {
        app.request_as(&app.anonymous, &[], method, path, body).await
    };
    assert_eq!(anonymous(Method::GET, &format!("/users/{user}"), None).await.status, 200);
    let wrong = app.request_as(
        &app.anonymous,
        &[("X-Service-Key", "wrong-key-0123456789")],
        Method::GET,
        "/api/v1/users",
        None,
    );
    assert_eq!(wrong.await.status, 401, "a wrong credential is refused, not ignored");
    let list = anonymous(Method::GET, "/api/v1/users", None).await;
    assert_eq!((list.status, list.body["message"].as_str()), (403, Some("this caller lacks the scope users.list")));
    let patch = anonymous(Method::PATCH, &format!("/api/v1/users/{user}"), Some(r#"{"name": "M"}"#)).await;
    assert_eq!(patch.status, 403);
    // A caller the network vouches for is counted per address like any anonymous client.
    let mut statuses = Vec::new();
    for index in 0..5 {
        let body = json!({"name": "I", "email": format!("net{index}@example.com"), "password": PASSWORD}).to_string();
        statuses.push(anonymous(Method::POST, "/api/v1/users", Some(&body)).await.status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
}

/// The scopes, as the contract names them in `SERVICE_API_KEYS`.
const SCOPES: [&str; 9] = [
    "users.read",
    "users.list",
    "users.lookup",
    "users.write",
    "users.delete",
    "preferences.write",
    "devices.write",
    "devices.deactivate",
    "eligibility.read",
];

/// Every protected route with the scope a service key needs for it, in an order where each
/// route's target still exists when it runs (removals last).
fn routes_with_their_scope(victim: &str) -> Vec<(Method, String, Option<serde_json::Value>, &'static str)> {
    let devices = format!("/api/v1/users/{victim}/devices");
    vec![
        (Method::GET, format!("/api/v1/users/{victim}"), None, "users.read"),
        (Method::GET, format!("/users/{victim}"), None, "users.read"),
        (Method::GET, format!("/api/v1/users/{victim}/preferences"), None, "users.read"),
        (Method::GET, devices.clone(), None, "users.read"),
        (Method::GET, "/api/v1/users?limit=2".to_owned(), None, "users.list"),
        (Method::POST, "/api/v1/users/lookup".to_owned(), Some(json!({"ids": [victim]})), "users.lookup"),
        (Method::PATCH, format!("/api/v1/users/{victim}"), Some(json!({"name": "Renamed"})), "users.write"),
        (Method::PUT, format!("/api/v1/users/{victim}/preferences"), Some(json!({"push": false})), "preferences.write"),
        (Method::POST, devices.clone(), Some(json!({"token": "scoped-token", "platform": "ios"})), "devices.write"),
        (Method::PUT, format!("{devices}/scoped-token/activate"), None, "devices.write"),
        (Method::PUT, format!("{devices}/scoped-token/deactivate"), None, "devices.deactivate"),
        (Method::PUT, format!("/api/users/{victim}/devices/scoped-token/deactivate"), None, "devices.deactivate"),
        (Method::GET, format!("/api/v1/users/{victim}/eligibility?channel=email"), None, "eligibility.read"),
        (
            Method::POST,
            "/api/v1/eligibility".to_owned(),
            Some(json!({"channel": "push", "user_ids": [victim]})),
            "eligibility.read",
        ),
        (Method::DELETE, format!("{devices}/scoped-token"), None, "devices.write"),
        (Method::DELETE, format!("/api/v1/users/{victim}"), None, "users.delete"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_key_reaches_exactly_the_routes_its_scopes_name() {
    // One key per scope: `s0:scope-key-0-...:users.read;s1:...`.
    let key = |index: usize| format!("scope-key-{index}-0123456789");
    let entries: Vec<String> =
        SCOPES.iter().enumerate().map(|(index, scope)| format!("s{index}:{}:{scope}", key(index))).collect();
    let app = TestApp::spawn_with(&[("SERVICE_API_KEYS", &entries.join(";"))]).await;
    let registration = json!({"name": "Scoped", "email": "scoped@example.com", "password": PASSWORD}).to_string();
    let registered = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/users", Some(&registration)).await;
    let victim = registered.body["data"]["id"].as_str().unwrap().to_owned();
    for (method, path, body, needed) in routes_with_their_scope(&victim) {
        let body = body.map(|body| body.to_string());
        let label = format!("{method} {path}");
        // Every other key first: a refused call changes nothing, so the route's target is
        // still there for the key that may call it.
        for (index, scope) in SCOPES.iter().enumerate().filter(|(_, scope)| **scope != needed) {
            let headers = [("X-Service-Key", key(index))];
            let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            let refused = app.request_as(&app.anonymous, &headers, method.clone(), &path, body.as_deref()).await;
            assert_eq!(refused.status, 403, "{label} with only {scope}: {}", refused.body);
            let message = refused.body["message"].as_str().unwrap_or_default();
            assert_eq!(message, format!("this caller lacks the scope {needed}"), "{label}");
        }
        let index = SCOPES.iter().position(|scope| *scope == needed).unwrap();
        let allowed = key(index);
        let reply = app
            .request_as(&app.anonymous, &[("X-Service-Key", &allowed)], method.clone(), &path, body.as_deref())
            .await;
        assert!((200..300).contains(&reply.status), "{label} with {needed}: {} {}", reply.status, reply.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_privilege_fields_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.register("plain@example.com").await;
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/users".to_owned(),
            json!({"name": "R", "email": "r@example.com", "password": PASSWORD, "role": "admin"}),
        ),
        (Method::PATCH, format!("/api/v1/users/{user}"), json!({"is_admin": true})),
        (Method::PUT, format!("/api/v1/users/{user}/preferences"), json!({"role": "admin"})),
        (
            Method::POST,
            "/api/v1/auth/login".to_owned(),
            json!({"email": "plain@example.com", "password": PASSWORD, "is_admin": true}),
        ),
    ] {
        let reply = app.send(method.clone(), &path, &body).await;
        assert_eq!(reply.status, 422, "{method} {path}: {}", reply.body);
    }
}

/// Collects everything the service logs in this test process.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_hash_or_token_appears_in_any_response_or_log_line() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt().json().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).init();

    let app = TestApp::spawn().await;
    let mut bodies = Vec::new();
    let first_password = "Secret-Password-One-111";
    let second_password = "Secret-Password-Two-222";
    let register = json!({"name": "Quiet", "email": "quiet@example.com", "password": first_password}).to_string();
    let registered = app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/users", Some(&register)).await;
    let user = registered.body["data"]["id"].as_str().unwrap().to_owned();
    bodies.push(registered.body.to_string());
    let wrong = json!({"email": "quiet@example.com", "password": "Wrong-Password-333"}).to_string();
    bodies.push(
        app.request_as(&app.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&wrong)).await.body.to_string(),
    );
    let token = app.login("quiet@example.com", first_password).await;
    let auth = [("Authorization", bearer(&token))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(name, value)| (*name, value.as_str())).collect();
    for path in [
        format!("/api/v1/users/{user}"),
        format!("/api/v1/users/{user}/preferences"),
        format!("/api/v1/users/{user}/devices"),
    ] {
        bodies.push(app.request_as(&app.anonymous, &auth, Method::GET, &path, None).await.body.to_string());
    }
    let change = json!({"current_password": first_password, "new_password": second_password}).to_string();
    let changed = app
        .request_as(&app.anonymous, &auth, Method::PUT, &format!("/api/v1/users/{user}/password"), Some(&change))
        .await;
    let second_token = changed.body["data"]["access_token"].as_str().unwrap().to_owned();
    bodies.push(
        app.request_as(&app.anonymous, &auth, Method::GET, &format!("/api/v1/users/{user}"), None)
            .await
            .body
            .to_string(),
    );
    bodies.push(app.get("/api/v1/users").await.body.to_string());

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("request completed"), "nothing was logged");
    for secret in [
        first_password,
        second_password,
        "Wrong-Password-333",
        &token,
        &second_token,
        "$argon2",
        SERVICE_KEY,
        TEST_SECRET,
    ] {
        assert!(!logged.contains(secret), "the logs contain {secret:.12}…");
        for body in &bodies {
            assert!(!body.contains(secret), "a response contains {secret:.12}…: {body}");
        }
    }
}
