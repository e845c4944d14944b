//! A hostile caller against the real binary: what it broke once, and the class behind each
//! (locking owners out, unbounded labels, replayed keys, stolen devices, secrets in logs,
//! unlimited oracles, slow bodies, trust without limits, failing open, hidden text, open
//! metrics).

use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::ServiceProcess;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
const PASSWORD: &str = "StrongPass123!";

/// The binary on a database of its own, believing `X-Forwarded-For` from the test (so that
/// one test can speak from many client addresses), with an admin key and `extra` settings.
struct Hostile {
    service: ServiceProcess,
    database: TestDatabase,
}

impl Hostile {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let database = TestDatabase::create().await.unwrap();
        let keys = format!("admin:{ADMIN_KEY}:*");
        let mut settings = vec![("TRUSTED_PROXIES", "127.0.0.1"), ("SERVICE_API_KEYS", keys.as_str())];
        settings.extend_from_slice(extra);
        let service = ServiceProcess::start(&database, &settings).await;
        Self { service, database }
    }

    /// Sends a request from client address `from` with `headers` and an optional JSON body.
    async fn send(
        &self,
        from: &str,
        headers: &[(&str, &str)],
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.service.address))
            .header("X-Forwarded-For", from);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()?.parse().ok());
        Reply { status, retry_after, body: response.json().await.unwrap_or(Value::Null) }
    }

    /// Registers `email` anonymously from a set-up address and returns its id.
    async fn register(&self, email: &str) -> String {
        let body = json!({"name": "Owner", "email": email, "password": PASSWORD});
        let reply = self.send("192.0.2.1", &[], Method::POST, "/api/v1/users", Some(&body)).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["data"]["id"].as_str().unwrap().to_owned()
    }

    async fn login(&self, from: &str, email: &str, password: &str) -> Reply {
        let body = json!({"email": email, "password": password});
        self.send(from, &[], Method::POST, "/api/v1/auth/login", Some(&body)).await
    }

    async fn as_admin(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        self.send("192.0.2.1", &[("X-Service-Key", ADMIN_KEY)], method, path, body).await
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attacker_address_is_capped_while_the_owner_logs_in_from_elsewhere() {
    let hostile = Hostile::start(&[]).await;
    hostile.register("owner@example.com").await;
    let attacker = "198.51.100.1";
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(hostile.login(attacker, "owner@example.com", "wrong-password").await.status);
    }
    assert_eq!(statuses, [vec![401; 10], vec![429; 2]].concat());
    // Even the right password is refused from the capped address, with a time to wait.
    let capped = hostile.login(attacker, "owner@example.com", PASSWORD).await;
    assert_eq!(capped.status, 429);
    assert!(capped.retry_after.is_some_and(|seconds| (1..=900).contains(&seconds)), "{capped:?}");
    // Meanwhile the owner, from its own address, logs in.
    let owner = hostile.login("203.0.113.7", "owner@example.com", PASSWORD).await;
    assert_eq!(owner.status, 200, "{}", owner.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn guesses_sent_at_once_are_counted_before_any_is_checked() {
    let hostile = Hostile::start(&[]).await;
    hostile.register("burst@example.com").await;
    // 60 guesses at once from 20 addresses: only the account's budget of 20 (and the one
    // slowed attempt) may be checked, whatever the timing.
    let hostile = &hostile;
    let guesses = (0..60).map(|index| {
        let address = format!("198.51.100.{}", index % 20 + 1);
        async move { hostile.login(&address, "burst@example.com", "wrong-password").await.status }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|status| **status == 401).count();
    assert!(checked <= 21, "{checked} of 60 guesses sent at once were checked: {statuses:?}");
    assert!(statuses.iter().all(|status| [401, 429].contains(status)), "{statuses:?}");
    // One address alone bursting: its budget of 10.
    let burst = (0..30).map(|_| async { hostile.login("198.51.100.99", "other@example.com", "wrong").await.status });
    let checked = futures_util::future::join_all(burst).await.iter().filter(|status| **status == 401).count();
    assert!(checked <= 10, "{checked} of 30 guesses from one address were checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_charge_its_guesses_to_the_owners_address_with_its_own_forwarded_line() {
    let hostile = Hostile::start(&[]).await;
    hostile.register("framed@example.com").await;
    let owner = "203.0.113.7";
    assert_eq!(hostile.login(owner, "framed@example.com", PASSWORD).await.status, 200);
    // The client sends an X-Forwarded-For line naming the owner; the proxy adds its own line
    // with the client's real address, as HAProxy does.
    let body = json!({"email": "framed@example.com", "password": "wrong-password"});
    for _ in 0..12 {
        reqwest::Client::new()
            .post(format!("{}/api/v1/auth/login", hostile.service.address))
            .header("X-Forwarded-For", owner)
            .header("X-Forwarded-For", "198.51.100.66")
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(hostile.login(owner, "framed@example.com", PASSWORD).await.status, 200, "the owner was charged");
    assert_eq!(hostile.login("198.51.100.66", "framed@example.com", PASSWORD).await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_guesses_over_fifty_addresses_get_no_faster_than_the_documented_rate() {
    // Documented defaults: 20 wrong guesses per account per 15 minutes from all addresses,
    // then one attempt per 30 s shared by addresses that never logged in to the account.
    let hostile = Hostile::start(&[]).await;
    hostile.register("target@example.com").await;
    let owner_address = "203.0.113.7";
    assert_eq!(hostile.login(owner_address, "target@example.com", PASSWORD).await.status, 200);

    let started = Instant::now();
    let mut checked = 0;
    let mut right_guesses_let_in = 0;
    for guess in 0..200_usize {
        let address = format!("198.51.100.{}", guess % 50 + 1);
        // The right password is among the guesses, every 25th from the 30th on.
        let password = if guess >= 30 && guess % 25 == 4 { PASSWORD } else { "wrong-password" };
        let reply = hostile.login(&address, "target@example.com", password).await;
        match reply.status {
            429 => {}
            200 => right_guesses_let_in += 1,
            401 => checked += 1,
            other => panic!("guess {guess}: {other} {}", reply.body),
        }
    }
    let allowed = 20 + 1 + started.elapsed().as_secs() / 30;
    assert!(checked <= allowed, "{checked} guesses were checked, the documented rate allows {allowed}");
    assert_eq!(right_guesses_let_in, 0, "a right guess got through after the account's budget was spent");
    // The owner's address, which logged in before, is not slowed.
    assert_eq!(hostile.login(owner_address, "target@example.com", PASSWORD).await.status, 200);
    // A new address of the owner's is slowed like any other while the attack lasts.
    let elsewhere = hostile.login("203.0.113.99", "target@example.com", PASSWORD).await;
    assert_eq!(elsewhere.status, 429);
    assert!(elsewhere.retry_after.is_some_and(|seconds| seconds <= 30), "{elsewhere:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_token_cannot_guess_the_current_password_without_limit() {
    let hostile = Hostile::start(&[]).await;
    let id = hostile.register("victim@example.com").await;
    let token = hostile.login("203.0.113.7", "victim@example.com", PASSWORD).await.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let path = format!("/api/v1/users/{id}/password");
    let change = |current: &str| json!({"current_password": current, "new_password": "AnotherPass456!"});
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let reply = hostile
            .send("198.51.100.1", &[("Authorization", &bearer)], Method::PUT, &path, Some(&change("guess-123")))
            .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [vec![403; 10], vec![429; 2]].concat());
    let right =
        hostile.send("198.51.100.1", &[("Authorization", &bearer)], Method::PUT, &path, Some(&change(PASSWORD))).await;
    assert_eq!(right.status, 429, "the spent token is refused whatever it sends");
    // Respelling the header (the scheme's case, spaces) is still the same token's budget.
    for respelled in [format!("bearer {token}"), format!("BEARER  {token}"), format!("bEaReR \t{token} ")] {
        let reply = hostile
            .send("198.51.100.1", &[("Authorization", &respelled)], Method::PUT, &path, Some(&change(PASSWORD)))
            .await;
        assert_eq!(reply.status, 429, "{respelled:?} bought a new budget");
    }
    // The thief spent only that token's budget: the owner, with a token of its own, changes
    // the password (and so revokes the stolen token).
    let fresh = hostile.login("203.0.113.7", "victim@example.com", PASSWORD).await.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let fresh_bearer = format!("Bearer {fresh}");
    let changed = hostile
        .send("203.0.113.7", &[("Authorization", &fresh_bearer)], Method::PUT, &path, Some(&change(PASSWORD)))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let user = format!("/api/v1/users/{id}");
    let stolen = hostile.send("198.51.100.1", &[("Authorization", &bearer)], Method::GET, &user, None).await;
    assert_eq!(stolen.status, 401, "the password change revoked the stolen token");
}

#[tokio::test(flavor = "multi_thread")]
async fn password_changes_racing_each_other_never_answer_200_for_a_password_that_was_lost() {
    let hostile = Hostile::start(&[]).await;
    let id = hostile.register("racer@example.com").await;
    let token = hostile.login("203.0.113.7", "racer@example.com", PASSWORD).await.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let path = format!("/api/v1/users/{id}/password");
    let changes = (0..6).map(|index| {
        let (bearer, path) = (bearer.clone(), path.clone());
        let hostile = &hostile;
        async move {
            let body = json!({"current_password": PASSWORD, "new_password": format!("NewPassword-{index}")});
            (
                index,
                hostile
                    .send("203.0.113.7", &[("Authorization", &bearer)], Method::PUT, &path, Some(&body))
                    .await
                    .status,
            )
        }
    });
    let outcomes = futures_util::future::join_all(changes).await;
    let winners: Vec<usize> = outcomes.iter().filter(|(_, status)| *status == 200).map(|(index, _)| *index).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|(_, status)| [200, 403].contains(status)), "{outcomes:?}");
    let kept = format!("NewPassword-{}", winners[0]);
    assert_eq!(
        hostile.login("203.0.113.7", "racer@example.com", &kept).await.status,
        200,
        "the 200 answer's password works"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_and_paths_do_not_grow_the_metrics() {
    let hostile = Hostile::start(&[]).await;
    let scrape =
        async || reqwest::get(format!("{}/metrics", hostile.service.address)).await.unwrap().text().await.unwrap();
    // Every series a normal request creates exists before the hostile ones come.
    hostile.send("192.0.2.1", &[], Method::GET, "/no-such-route", None).await;
    let before = scrape().await.len();
    for index in 0..40 {
        let method = Method::from_bytes(format!("M{index}{}", "X".repeat(300)).as_bytes()).unwrap();
        let path = format!("/{}{index}", "p".repeat(300));
        let reply = hostile.send("192.0.2.1", &[], method, &path, None).await;
        assert!((400..500).contains(&reply.status), "{reply:?}");
    }
    let after = scrape().await;
    assert!(after.len() < before + 5_000, "/metrics grew from {before} to {} bytes", after.len());
    assert!(!after.contains("XXXXXXXX") && !after.contains("pppppppp"));
    assert!(after.contains(r#"method="other""#));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_idempotency_key_on_two_users_is_refused_never_replayed() {
    let hostile = Hostile::start(&[]).await;
    let (first, second) = (hostile.register("first@example.com").await, hostile.register("second@example.com").await);
    let device = json!({"token": "keyed-token", "platform": "android"});
    let key = [("X-Service-Key", ADMIN_KEY), ("Idempotency-Key", "one-key")];
    let post = async |user: &str| {
        hostile.send("192.0.2.1", &key, Method::POST, &format!("/api/v1/users/{user}/devices"), Some(&device)).await
    };
    assert_eq!(post(&first).await.status, 201);
    let reused = post(&second).await;
    assert_eq!((reused.status, reused.body["error"].as_str()), (422, Some("idempotency_key_reused")));
    let devices = hostile.as_admin(Method::GET, &format!("/api/v1/users/{second}/devices"), None).await;
    assert_eq!(devices.body["data"], json!([]), "nothing was written for the second user");
    let replay = post(&first).await;
    assert_eq!(replay.status, 201, "a retry on the same path still replays");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_registration_never_takes_a_device_from_its_owner() {
    let hostile = Hostile::start(&[]).await;
    let owner = hostile.register("device-owner@example.com").await;
    let device = json!({"token": "owners-phone-token", "platform": "ios"});
    assert_eq!(
        hostile.as_admin(Method::POST, &format!("/api/v1/users/{owner}/devices"), Some(&device)).await.status,
        201
    );

    let thief = json!({"name": "Thief", "email": "thief@example.com", "password": PASSWORD, "push_token": "owners-phone-token"});
    let registered = hostile.send("198.51.100.1", &[], Method::POST, "/api/v1/users", Some(&thief)).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(registered.body["data"]["devices"], json!([]));
    assert!(registered.body["message"].as_str().unwrap().contains("without its push_token"));
    let owners = hostile.as_admin(Method::GET, &format!("/api/v1/users/{owner}"), None).await;
    assert_eq!(owners.body["data"]["push_token"], "owners-phone-token", "the owner keeps the device");

    // A service trusted with devices may say that the device changed hands; it is logged.
    let handover =
        json!({"name": "Heir", "email": "heir@example.com", "password": PASSWORD, "push_token": "owners-phone-token"});
    let heir = hostile.as_admin(Method::POST, "/api/v1/users", Some(&handover)).await;
    assert_eq!(heir.body["data"]["push_token"], "owners-phone-token");
    let heir_id = heir.body["data"]["id"].as_str().unwrap().to_owned();
    let moved = hostile
        .service
        .wait_for_log(Duration::from_secs(5), |line| line["message"] == "a push token moved to another user")
        .await
        .expect("the move is logged");
    assert_eq!(
        (moved["from_user"].as_str(), moved["to_user"].as_str()),
        (Some(owner.as_str()), Some(heir_id.as_str()))
    );
    assert!(!moved.to_string().contains("owners-phone-token"), "the token itself is not logged");
}

/// The forms a secret could take in a log line: as text, and as the byte arrays that
/// `{:?}` of a `&[u8]` writes (with and without brackets).
fn leaked_forms(secret: &str) -> [String; 2] {
    let bytes: Vec<String> = secret.bytes().map(|byte| byte.to_string()).collect();
    [secret.to_owned(), bytes.join(", ")]
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line_at_debug_or_trace() {
    for level in ["debug", "trace"] {
        let redis = api_tests::PrivateRedis::start().await;
        let redis_url = redis.url();
        let hostile = Hostile::start(&[
            ("LOG_LEVEL", level),
            ("REDIS_URL", &redis_url),
            ("METRICS_TOKEN", "metrics-token-0123456789"),
        ])
        .await;
        let email = "secretive@example.com";
        let body =
            json!({"name": "Secretive", "email": email, "password": PASSWORD, "push_token": "push-token-one-0123"});
        let registered = hostile.send("198.51.100.1", &[], Method::POST, "/api/v1/users", Some(&body)).await;
        let id = registered.body["data"]["id"].as_str().unwrap().to_owned();
        let token = hostile.login("198.51.100.1", email, PASSWORD).await.body["data"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(hostile.login("198.51.100.1", email, "WrongPass999!").await.status, 401);
        let bearer = format!("Bearer {token}");
        assert_eq!(
            hostile
                .send("198.51.100.1", &[("Authorization", &bearer)], Method::GET, &format!("/api/v1/users/{id}"), None)
                .await
                .status,
            200
        );
        let change = json!({"current_password": PASSWORD, "new_password": "AnotherPass456!"});
        let changed = hostile
            .send(
                "198.51.100.1",
                &[("Authorization", &bearer)],
                Method::PUT,
                &format!("/api/v1/users/{id}/password"),
                Some(&change),
            )
            .await;
        let new_token = changed.body["data"]["access_token"].as_str().unwrap().to_owned();
        let device = json!({"token": "push-token-two-4567", "platform": "web"});
        let headers = [("X-Service-Key", ADMIN_KEY), ("Idempotency-Key", "secret-key-for-idempotency")];
        assert_eq!(
            hostile
                .send("192.0.2.1", &headers, Method::POST, &format!("/api/v1/users/{id}/devices"), Some(&device))
                .await
                .status,
            201
        );
        let metrics = hostile.send(
            "192.0.2.1",
            &[("Authorization", "Bearer metrics-token-0123456789")],
            Method::GET,
            "/metrics",
            None,
        );
        assert_eq!(metrics.await.status, 200);
        let hash = hostile.database.text("SELECT password_hash AS value FROM users").await.unwrap();

        let log = hostile.service.log_text();
        // The detailed lines of our own crates are there: the level took effect.
        assert!(log.contains("Redis cache configured"), "{level}: no debug line in the log");
        for secret in [
            PASSWORD,
            "AnotherPass456!",
            "WrongPass999!",
            hash.as_str(),
            token.as_str(),
            new_token.as_str(),
            ADMIN_KEY,
            "test-secret-key-0123456789abcdef0123456789",
            "metrics-token-0123456789",
            email,
            "push-token-one-0123",
            "push-token-two-4567",
        ] {
            for form in leaked_forms(secret) {
                assert!(!log.contains(&form), "{level}: a log line holds {form:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_the_network_vouches_for_is_counted_per_address_like_anyone() {
    let hostile = Hostile::start(&[("TRUST_INTERNAL_NETWORK", "true"), ("RATE_LIMIT_PER_ADDRESS", "3")]).await;
    let mut statuses = Vec::new();
    for index in 0..5 {
        let body = json!({"name": "N", "email": format!("net{index}@example.com"), "password": PASSWORD});
        statuses.push(hostile.send("198.51.100.1", &[], Method::POST, "/api/v1/users", Some(&body)).await.status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    // A key holder (the gateway acting for many clients) is not.
    let body = json!({"name": "K", "email": "keyed@example.com", "password": PASSWORD});
    assert_eq!(
        hostile
            .send("198.51.100.1", &[("X-Service-Key", ADMIN_KEY)], Method::POST, "/api/v1/users", Some(&body))
            .await
            .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_eligibility_that_cannot_be_computed_is_refused_never_allowed() {
    let hostile = Hostile::start(&[]).await;
    let id = hostile.register("far-future@example.com").await;
    let quiet = json!({"quiet_hours_start": "22:00", "quiet_hours_end": "07:00"});
    assert_eq!(
        hostile.as_admin(Method::PUT, &format!("/api/v1/users/{id}/preferences"), Some(&quiet)).await.status,
        200
    );
    let at = "9999-12-31T23:30:00Z";
    let single =
        hostile.as_admin(Method::GET, &format!("/api/v1/users/{id}/eligibility?channel=email&at={at}"), None).await;
    assert_eq!((single.status, &single.body["data"]["allowed"]), (200, &json!(false)), "{}", single.body);
    let bulk = json!({"channel": "email", "at": at, "user_ids": [id]});
    let bulk = hostile.as_admin(Method::POST, "/api/v1/eligibility", Some(&bulk)).await;
    assert_eq!(bulk.body["data"][0]["allowed"], false, "{}", bulk.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_addresses_that_hide_themselves_are_refused() {
    let hostile = Hostile::start(&[]).await;
    for (name, email, field) in [
        ("Alice\u{202E}ecilA", "bidi-name@example.com", "name"),
        ("\u{200B}\u{2060}", "invisible-name@example.com", "name"),
        ("\u{3164}", "filler-name@example.com", "name"),
        ("Mallory", "mallory\u{2066}@example.com", "email"),
        ("\u{FFF9}\u{FFFA}", "annotation-name@example.com", "name"),
        ("Bob", "bo\u{200D}b@example.com", "email"),
        ("Bob", "\"bob\"@example.com", "email"),
    ] {
        let body = json!({"name": name, "email": email, "password": PASSWORD});
        let reply = hostile.as_admin(Method::POST, "/api/v1/users", Some(&body)).await;
        assert_eq!(reply.status, 422, "{name:?} {email:?}: {}", reply.body);
        assert_eq!(reply.body["details"][0]["field"], field);
    }
    // Non-ASCII domains are stored in their ASCII form: both spellings are one address.
    let body = json!({"name": "Ada", "email": "Ada@Bücher.de", "password": PASSWORD});
    let unicode = hostile.as_admin(Method::POST, "/api/v1/users", Some(&body)).await;
    assert_eq!((unicode.status, unicode.body["data"]["email"].as_str()), (201, Some("ada@xn--bcher-kva.de")));
    let body = json!({"name": "Ada", "email": "ada@xn--bcher-kva.de", "password": PASSWORD});
    assert_eq!(hostile.as_admin(Method::POST, "/api/v1/users", Some(&body)).await.status, 409);
    // Local parts too: composed and decomposed accents, full-width letters.
    let body = json!({"name": "José", "email": "josé@example.com", "password": PASSWORD});
    assert_eq!(hostile.as_admin(Method::POST, "/api/v1/users", Some(&body)).await.status, 201);
    for twin in ["jose\u{301}@example.com", "ＪＯＳＥ\u{301}@example.com"] {
        let body = json!({"name": "José", "email": twin, "password": PASSWORD});
        assert_eq!(hostile.as_admin(Method::POST, "/api/v1/users", Some(&body)).await.status, 409, "{twin:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_require_a_token_and_errors_before_the_app_never_5xx() {
    let hostile = Hostile::start(&[("METRICS_TOKEN", "metrics-token-0123456789")]).await;
    let scrape =
        async |headers: &[(&str, &str)]| hostile.send("192.0.2.1", headers, Method::GET, "/metrics", None).await;
    let none = scrape(&[]).await;
    assert_eq!((none.status, none.body["error"].as_str()), (401, Some("authentication_required")));
    assert_eq!(scrape(&[("Authorization", "Bearer not-the-token-0123456789")]).await.status, 401);
    assert_eq!(scrape(&[("Authorization", "Bearer metrics-token-0123456789")]).await.status, 200);
    assert_eq!(scrape(&[("Authorization", "bearer metrics-token-0123456789")]).await.status, 200);
    let twice = [("Authorization", "Bearer metrics-token-0123456789"), ("Authorization", "Bearer wrong")];
    assert_eq!(scrape(&twice).await.status, 401);

    // Refused by actix's parser before any of our code: 431 and 400, never 5xx, and the
    // service stays healthy (their bodies are actix's own; see the README).
    let address = hostile.service.address.trim_start_matches("http://").to_owned();
    for raw in [
        format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(300 * 1024)),
        format!(
            "GET /health HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..120).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
        ),
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\u{1}b\r\n\r\n".to_owned(),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let _ = stream.write_all(raw.as_bytes()).await;
        let mut answer = vec![0; 512];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.unwrap().unwrap_or(0);
        let status_line = String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_owned();
        assert!(status_line.contains(" 431 ") || status_line.contains(" 400 "), "{status_line:?}");
    }
    assert_eq!(hostile.send("192.0.2.1", &[], Method::GET, "/health/live", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_trickled_a_byte_at_a_time_are_cut_off_and_their_connections_closed() {
    let hostile = Hostile::start(&[("REQUEST_BODY_TIMEOUT", "2")]).await;
    let id = hostile.register("slow@example.com").await;
    let address = hostile.service.address.trim_start_matches("http://").to_owned();
    let length = "Content-Length: 100\r\n";
    let chunked = "Transfer-Encoding: chunked\r\n";
    // (request line, body framing, first bytes of the body, the answer expected)
    let cases = [
        ("POST /api/v1/users".to_owned(), length, "{", "HTTP/1.1 408"),
        ("POST /api/v1/auth/login".to_owned(), chunked, "1\r\n{\r\n", "HTTP/1.1 408"),
        (format!("PUT /api/v1/users/{id}/devices/no-such-token/deactivate"), length, "{", "HTTP/1.1 404"),
        (format!("GET /api/v1/users/{id}"), chunked, "1\r\n{\r\n", "HTTP/1.1 200"),
    ];
    let started = Instant::now();
    let connections = (0..16).map(|index| {
        let (request, framing, first, expected) = cases[index % cases.len()].clone();
        let address = address.clone();
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            let head = format!(
                "{request} HTTP/1.1\r\nHost: x\r\nX-Service-Key: {ADMIN_KEY}\r\nContent-Type: application/json\r\n\
                 {framing}\r\n{first}"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let piece = if framing == chunked { "1\r\n \r\n" } else { " " };
            let mut answer = Vec::new();
            let mut buffer = [0; 1024];
            // Trickle a piece every 500 ms, and after the answer a whole request, while
            // reading whatever comes back, until the server closes the connection.
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return (expected, String::from_utf8_lossy(&answer).into_owned(), true),
                        Ok(count) => answer.extend_from_slice(&buffer[..count]),
                    },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {
                        let next = if answer.is_empty() { piece } else { "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n" };
                        if stream.write_all(next.as_bytes()).await.is_err() {
                            return (expected, String::from_utf8_lossy(&answer).into_owned(), true);
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return (expected, String::from_utf8_lossy(&answer).into_owned(), false);
                }
            }
        })
    });
    for outcome in futures_util::future::join_all(connections).await {
        let (expected, answer, closed) = outcome.unwrap();
        assert!(answer.starts_with(expected), "expected {expected}: {answer:?}");
        assert!(closed, "the connection was still open after 10 s: {answer:?}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "a request after the cut-off was served: {answer:?}");
    }
    assert_eq!(hostile.send("192.0.2.1", &[], Method::GET, "/health/live", None).await.status, 200);
}
