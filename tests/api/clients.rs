//! The seed system's own clients, played as they were measured (`CONTRACT.md`, "Who calls
//! us"), against the real `user-service` binary with a PostgreSQL database and a Redis server
//! of the test's own: the API gateway (no credential, `usercache:{id as spelled}` filled
//! without a guard, `pushToken || devices[0].token`) and the push sender (raw endpoint URLs
//! on the legacy deactivation path). Each scenario broke in front of the real clients once.

use std::io::Read as _;
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{PrivateRedis, ServiceProcess};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// A key with every scope, for the test's own set-up and checks.
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
/// A key that may only read users.
const READER_KEY: &str = "reader-key-0123456789abcdef";

/// The service as the seed's docker-compose runs it behind the gateway: the gateway's Redis,
/// its cache named for deletion, its calls trusted by the network.
/// `extra` adds settings of the test's own.
async fn service_behind_the_gateway(
    database: &TestDatabase,
    redis: &PrivateRedis,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let redis_url = redis.url();
    let keys = format!("admin:{ADMIN_KEY}:*;reader:{READER_KEY}:users.read");
    let mut settings = vec![
        ("REDIS_URL", redis_url.as_str()),
        ("CACHE_INVALIDATE_EXTRA_KEYS", "usercache:{id}"),
        ("TRUST_INTERNAL_NETWORK", "true"),
        ("SERVICE_API_KEYS", &keys),
    ];
    settings.extend_from_slice(extra);
    ServiceProcess::start(database, &settings).await
}

/// One scenario's world: the service behind the gateway, on a database and a Redis of its
/// own (fields drop in order: the service stops before its servers go).
struct BehindTheGateway {
    service: ServiceProcess,
    gateway: Gateway,
    redis: PrivateRedis,
    database: TestDatabase,
}

impl BehindTheGateway {
    async fn start() -> Self {
        let (database, redis) = (TestDatabase::create().await.unwrap(), PrivateRedis::start().await);
        let service = service_behind_the_gateway(&database, &redis, &[]).await;
        let gateway = Gateway::new(&service, &redis).await;
        Self { service, gateway, redis, database }
    }
}

/// Calls the service with a key (the test's set-up), answering status and body.
async fn call(
    service: &ServiceProcess,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method, format!("{}{path}", service.address)).header("X-Service-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers a user (a public route) and returns its id.
async fn register(service: &ServiceProcess, email: &str) -> String {
    let body = json!({"name": "Gateway User", "email": email, "password": "StrongPass123!"});
    let (status, reply) = call(service, ADMIN_KEY, reqwest::Method::POST, "/api/v1/users", Some(body)).await;
    assert_eq!(status, 201, "{reply}");
    reply["data"]["id"].as_str().unwrap().to_owned()
}

/// What the gateway does with a notification for one user.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    /// The address it emails, unless the user opted out (only an exact `false` is one).
    email: Option<String>,
    /// The token it pushes to: `pushToken || devices[0].token`, unless opted out.
    push_token: Option<String>,
}

/// The headers axios 1.x sends on every call from Node, the gateway's `@nestjs/axios`.
const AXIOS_HEADERS: [(&str, &str); 3] = [
    ("accept", "application/json, text/plain, */*"),
    ("accept-encoding", "gzip, compress, deflate, br"),
    ("user-agent", "axios/1.7.9"),
];

/// The seed's API gateway (NestJS + axios + ioredis), as it calls us:
/// - `GET {USER_SERVICE_URL}/users/${userId}` from a template string: nothing is encoded and
///   the HTTP client resolves `.` and `..` segments (as `reqwest`'s URL parser does);
/// - no credential, and axios's own headers ([`AXIOS_HEADERS`]: it accepts gzip, deflate and
///   brotli, and undoes whichever the answer uses); three attempts, and any non-2xx or
///   failure means "user not found";
/// - the whole 2xx body cached as `usercache:{userId as given}` for 300 s, read before
///   calling us, filled without any guard.
struct Gateway {
    base: String,
    http: reqwest::Client,
    redis: redis::aio::MultiplexedConnection,
}

impl Gateway {
    async fn new(service: &ServiceProcess, redis: &PrivateRedis) -> Self {
        let client = redis::Client::open(redis.url()).unwrap();
        let redis = client.get_multiplexed_async_connection().await.unwrap();
        let headers = AXIOS_HEADERS
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), reqwest::header::HeaderValue::from_static(value)))
            .collect();
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        Self { base: service.address.clone(), http, redis }
    }

    /// One `GET /users/{user_id}` as axios sends it (on the client's kept-alive connection):
    /// the answer's status, headers and body, decompressed as axios would.
    async fn get(&self, user_id: &str) -> reqwest::Result<(u16, reqwest::header::HeaderMap, Option<Value>)> {
        let response = self.http.get(format!("{}/users/{user_id}", self.base)).send().await?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let bytes = response.bytes().await?;
        let encoding = headers.get("content-encoding").map(|value| value.to_str().unwrap().to_owned());
        let text = decompressed(encoding.as_deref(), &bytes);
        Ok((status, headers, text.and_then(|text| serde_json::from_str(&text).ok())))
    }

    fn cache_key(user_id: &str) -> String {
        format!("usercache:{user_id}")
    }

    /// The body of `GET /users/{user_id}` as the gateway gets it: three attempts, `None`
    /// when none answered 2xx.
    async fn fetch(&self, user_id: &str) -> Option<Value> {
        for _ in 0..3 {
            if let Ok((200..=299, _, Some(body))) = self.get(user_id).await {
                return Some(body);
            }
        }
        None
    }

    /// Stores a body in the gateway's cache, as its unguarded fill does.
    async fn fill(&self, user_id: &str, body: &Value) {
        let _: () = self.redis.clone().set_ex(Self::cache_key(user_id), body.to_string(), 300).await.unwrap();
    }

    /// The gateway's cached body for `user_id`, if any.
    async fn cached(&self, user_id: &str) -> Option<Value> {
        let cached: Option<String> = self.redis.clone().get(Self::cache_key(user_id)).await.unwrap();
        cached.map(|text| serde_json::from_str(&text).unwrap())
    }

    /// What the gateway decides for a notification to `user_id`: `None` is "user not found".
    async fn decide(&self, user_id: &str) -> Option<Decision> {
        let body = match self.cached(user_id).await {
            Some(body) => body,
            None => {
                let body = self.fetch(user_id).await?;
                self.fill(user_id, &body).await;
                body
            }
        };
        let user = body.get("data").filter(|data| data.is_object())?;
        let preferences = &user["preferences"];
        let email = (preferences["email"] != false).then(|| user["email"].as_str().unwrap_or_default().to_owned());
        let token = user["pushToken"].as_str().or_else(|| user["devices"][0]["token"].as_str());
        let push_token = (preferences["push"] != false).then(|| token.map(str::to_owned)).flatten();
        Some(Decision { email, push_token })
    }
}

/// An answer's body as a client that accepts gzip, deflate and brotli reads it.
fn decompressed(encoding: Option<&str>, bytes: &[u8]) -> Option<String> {
    let mut text = String::new();
    match encoding {
        None => return String::from_utf8(bytes.to_vec()).ok(),
        Some("gzip") => flate2::read::GzDecoder::new(bytes).read_to_string(&mut text).ok()?,
        Some("deflate") => flate2::read::ZlibDecoder::new(bytes).read_to_string(&mut text).ok()?,
        Some("br") => brotli_decompressor::Decompressor::new(bytes, 4096).read_to_string(&mut text).ok()?,
        Some(other) => panic!("an encoding the client did not offer: {other}"),
    };
    Some(text)
}

/// The seed's push sender (Python, httpx) reporting a dead web-push endpoint:
/// `PUT {USER_SERVICE_URL}/api/users/{user_id}/devices/{endpoint}/deactivate` from an
/// f-string (the endpoint unencoded, so a `?` in it starts the query string), no credential,
/// no body. It logs a 4xx and never retries it.
async fn report_dead_endpoint(service: &ServiceProcess, user_id: &str, endpoint: &str) -> u16 {
    let url = format!("{}/api/users/{user_id}/devices/{endpoint}/deactivate", service.address);
    reqwest::Client::new().put(url).send().await.unwrap().status().as_u16()
}

/// The requests that failed with a 5xx, from the service's own log lines.
fn server_errors(service: &ServiceProcess) -> Vec<u64> {
    service.logged_statuses().into_iter().filter(|status| *status >= 500).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_cannot_keep_a_user_under_another_spelling_of_its_id_past_an_opt_out() {
    let BehindTheGateway { service, gateway, .. } = &BehindTheGateway::start().await;
    let id = register(service, "spelling@example.com").await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();

    let spellings = [
        id.to_uppercase(),
        uuid.simple().to_string(),
        uuid.braced().to_string(),
        uuid.urn().to_string(),
        format!("%{:02X}{}", id.as_bytes()[0], &id[1..]),
    ];
    let anonymous = reqwest::Client::new();
    for spelling in &spellings {
        assert_eq!(gateway.decide(spelling).await, None, "{spelling} must not be served");
        assert!(gateway.cached(spelling).await.is_none(), "the gateway cached {spelling}");
        for prefix in ["/users/", "/api/v1/users/"] {
            let response = anonymous.get(format!("{}{prefix}{spelling}", service.address)).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 400, "{prefix}{spelling}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "invalid_id");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("lower-case") && message.contains("8-4-4-4-12"), "{message}");
        }
    }
    // A query string, even a bare `?`, would make another cache key for the same user, too.
    for with_query in [format!("{id}?notify=1"), format!("{id}?")] {
        assert_eq!(gateway.decide(&with_query).await, None, "{with_query}");
        let response = anonymous.get(format!("{}/users/{with_query}", service.address)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{with_query}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_query");
    }

    // The one spelling works, and an opt-out reaches the gateway at once.
    let email = Some("spelling@example.com".to_owned());
    assert_eq!(gateway.decide(&id).await.map(|decision| decision.email), Some(email));
    assert!(gateway.cached(&id).await.is_some());
    let opt_out = json!({"email": false});
    let path = format!("/api/v1/users/{id}/preferences");
    assert_eq!(call(service, ADMIN_KEY, reqwest::Method::PUT, &path, Some(opt_out)).await.0, 200);
    assert_eq!(gateway.decide(&id).await.map(|decision| decision.email), Some(None));

    // Unknown and malformed ids still answer as before.
    let unknown = uuid::Uuid::new_v4().to_string();
    let response = anonymous.get(format!("{}/users/{unknown}", service.address)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = anonymous.get(format!("{}/users/not-a-uuid", service.address)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(server_errors(service), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_calls_are_answered_whole_and_never_held_back_for_its_acknowledgement() {
    let BehindTheGateway { service, gateway, redis, database } = &BehindTheGateway::start().await;
    let user = register(service, "whole-answers@example.com").await;
    for (index, platform) in ["web", "ios", "android"].into_iter().enumerate() {
        let device = json!({"token": format!("https://push.example.com/endpoint/{index}"), "platform": platform});
        let path = format!("/api/v1/users/{user}/devices");
        assert_eq!(call(service, ADMIN_KEY, reqwest::Method::POST, &path, Some(device)).await.0, 201);
    }

    // A profile is far under COMPRESS_MIN_BYTES: it goes out as it is, with its length, in one
    // write, though axios accepts compression (brotli, which the service preferred, cost the
    // server many times the answer itself).
    let (status, headers, body) = gateway.get(&user).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-encoding"), None, "{headers:?}");
    assert!(headers.contains_key("content-length"), "{headers:?}");
    assert_eq!(body.unwrap()["data"]["id"], user.as_str());

    // With every answer compressed (COMPRESS_MIN_BYTES=1), as large ones are, a body of 1 KiB
    // or more (this profile, with its three devices) goes out in pieces: actix compresses it
    // on a blocking thread while the head is sent. No piece may wait until the gateway
    // acknowledges the one before: with Nagle's algorithm on, it waited for the caller's
    // delayed ACK, 40 ms or more on Linux. Whether a connection delays its ACKs is the
    // kernel's choice, so four connections of fifteen calls each.
    let compressing = service_behind_the_gateway(database, redis, &[("COMPRESS_MIN_BYTES", "1")]).await;
    let mut held_back = Vec::new();
    for _ in 0..4 {
        let gateway = Gateway::new(&compressing, redis).await;
        for _ in 0..15 {
            let started = Instant::now();
            let (status, headers, body) = gateway.get(&user).await.unwrap();
            let took = started.elapsed();
            assert_eq!(status, 200);
            assert!(headers.contains_key("content-encoding"), "{headers:?}");
            assert_eq!(body.unwrap()["data"]["id"], user.as_str());
            if took >= Duration::from_millis(40) {
                held_back.push(took);
            }
        }
    }
    // Without TCP_NODELAY, 32 and 34 of the 60 in two runs; the first call fills the cache, and a
    // loaded machine may hold back a few more.
    assert!(held_back.len() < 10, "{} of 60 answers took 40 ms or more: {held_back:?}", held_back.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_first_device_is_always_one_it_may_push_to() {
    let BehindTheGateway { service, gateway, .. } = &BehindTheGateway::start().await;
    let alice = register(service, "alice-devices@example.com").await;
    let devices = format!("/api/v1/users/{alice}/devices");
    let older = json!({"token": "fcm-older-phone", "platform": "android"});
    let endpoint = "https://fcm.googleapis.com/fcm/send/dead:APA91bH-abc_def";
    let newest = json!({"token": endpoint, "platform": "web"});
    for device in [older, newest] {
        assert_eq!(call(service, ADMIN_KEY, reqwest::Method::POST, &devices, Some(device)).await.0, 201);
    }
    let push_to = async |user: &str| gateway.decide(user).await.unwrap().push_token;
    assert_eq!(push_to(&alice).await.as_deref(), Some(endpoint), "the newest device comes first");

    // The push sender reports the endpoint dead: the gateway falls back to the live device.
    assert_eq!(report_dead_endpoint(service, &alice, endpoint).await, 200);
    assert_eq!(push_to(&alice).await.as_deref(), Some("fcm-older-phone"));
    // With no active device left, there is no token at all.
    let deactivate = format!("{devices}/fcm-older-phone/deactivate");
    assert_eq!(call(service, ADMIN_KEY, reqwest::Method::PUT, &deactivate, None).await.0, 200);
    assert_eq!(push_to(&alice).await, None);
    let (_, user) = call(service, ADMIN_KEY, reqwest::Method::GET, &format!("/api/v1/users/{alice}"), None).await;
    assert_eq!((&user["data"]["devices"], &user["data"]["push_token"]), (&json!([]), &Value::Null));

    // The device list keeps every device with its state, and filters by it.
    let listed = async |query: &str| {
        let (status, body) = call(service, ADMIN_KEY, reqwest::Method::GET, &format!("{devices}{query}"), None).await;
        (
            status,
            body["data"]
                .as_array()
                .map(|devices| devices.iter().map(|device| device["active"].clone()).collect::<Vec<_>>()),
        )
    };
    assert_eq!(listed("").await, (200, Some(vec![json!(false), json!(false)])));
    assert_eq!(listed("?active=false").await, (200, Some(vec![json!(false), json!(false)])));
    assert_eq!(listed("?active=true").await, (200, Some(vec![])));
    assert_eq!(listed("?active=maybe").await.0, 400);
    assert_eq!(listed("?state=on").await.0, 400);

    // A token that moves to another user leaves the previous owner's view.
    let bob = register(service, "bob-devices@example.com").await;
    let carol = register(service, "carol-devices@example.com").await;
    let shared = json!({"token": "shared-tablet", "platform": "ios"});
    for user in [&bob, &carol] {
        let path = format!("/api/v1/users/{user}/devices");
        call(service, ADMIN_KEY, reqwest::Method::POST, &path, Some(shared.clone())).await;
        assert_eq!(push_to(user).await.as_deref(), Some("shared-tablet"));
    }
    assert_eq!(push_to(&bob).await, None, "the moved token is no longer bob's");
    assert_eq!(push_to(&carol).await.as_deref(), Some("shared-tablet"));
    assert_eq!(server_errors(service), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_unguarded_gateway_fills_racing_opt_outs_leave_no_stale_copy() {
    const RACES: usize = 60;
    let world = BehindTheGateway::start().await;
    let (service, gateway) = (&world.service, std::sync::Arc::new(world.gateway));
    let mut users = Vec::new();
    for index in 0..RACES {
        let id = register(service, &format!("race{index}@example.com")).await;
        assert!(gateway.decide(&id).await.unwrap().email.is_some());
        users.push(id);
    }

    let admin = reqwest::Client::new();
    let races = users.iter().enumerate().map(|(index, id)| {
        let (gateway, admin, id) = (std::sync::Arc::clone(&gateway), admin.clone(), id.clone());
        let url = format!("{}/api/v1/users/{id}/preferences", service.address);
        // Spread over the first 40 ms: some reads start before the write, some after, and the
        // gateway's own work after its read takes 100-400 ms. Every other race is the bug's
        // exact order, whatever the machine's load: the write starts once the gateway has read
        // the old body, and the gateway fills only after the write was acknowledged.
        let gateway_start = Duration::from_millis((index as u64 * 7) % 40);
        let gateway_work = Duration::from_millis(100 + (index as u64 * 37) % 300);
        let in_the_bugs_order = index % 2 == 0;
        let (fetched, fetch_done) = tokio::sync::oneshot::channel::<()>();
        let (acknowledged, write_done) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let fill = async {
                tokio::time::sleep(gateway_start).await;
                let body = gateway.fetch(&id).await.expect("the gateway reads the user");
                let _ = fetched.send(());
                tokio::time::sleep(gateway_work).await;
                if in_the_bugs_order {
                    let _ = write_done.await;
                }
                gateway.fill(&id, &body).await;
                (body["data"]["preferences"]["email"] == true, Instant::now())
            };
            let opt_out = async {
                if in_the_bugs_order {
                    let _ = fetch_done.await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let response =
                    admin.put(&url).header("X-Service-Key", ADMIN_KEY).json(&json!({"email": false})).send().await;
                assert_eq!(response.unwrap().status().as_u16(), 200);
                let _ = acknowledged.send(());
                Instant::now()
            };
            let ((filled_old_body, filled_at), acknowledged_at) = tokio::join!(fill, opt_out);
            tokio::time::sleep_until((acknowledged_at + Duration::from_millis(2_500)).into()).await;
            let stale = gateway.cached(&id).await.is_some_and(|body| body["data"]["preferences"]["email"] != false);
            // Whether this race put an old body back after the write: what the follow-ups undo.
            (stale, filled_old_body && filled_at > acknowledged_at)
        })
    });
    let outcomes = futures_util::future::join_all(races).await;
    let stale = outcomes.iter().filter(|outcome| outcome.as_ref().unwrap().0).count();
    let refilled_after_the_write = outcomes.iter().filter(|outcome| outcome.as_ref().unwrap().1).count();
    assert_eq!(stale, 0, "stale gateway copies 2.5 s after the opt-out");
    assert!(refilled_after_the_write >= RACES / 2, "only {refilled_after_the_write} races put an old body back");
    assert_eq!(server_errors(service), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_the_network_vouches_for_gets_only_what_the_gateway_and_push_sender_need() {
    let BehindTheGateway { service, gateway, .. } = &BehindTheGateway::start().await;
    let id = register(service, "least@example.com").await;
    register(service, "other@example.com").await;
    let devices = format!("/api/v1/users/{id}/devices");
    call(service, ADMIN_KEY, reqwest::Method::POST, &devices, Some(json!({"token": "least-token", "platform": "ios"})))
        .await;

    // The gateway resolves `..`: `userId=../api/v1/users` reaches the list, which it may not read.
    assert_eq!(gateway.decide("../api/v1/users").await, None);
    assert!(gateway.cached("../api/v1/users").await.is_none());

    let anonymous = reqwest::Client::new();
    let send = async |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = anonymous.request(method, format!("{}{path}", service.address));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };
    use reqwest::Method;
    let allowed = [
        (Method::GET, format!("/users/{id}"), None),
        (Method::GET, format!("/api/v1/users/{id}"), None),
        (Method::GET, format!("/api/v1/users/{id}/eligibility?channel=push"), None),
        (Method::POST, "/api/v1/eligibility".to_owned(), Some(json!({"channel": "email", "user_ids": [id]}))),
        (Method::PUT, format!("{devices}/least-token/deactivate"), None),
        (Method::PUT, format!("/api/users/{id}/devices/least-token/deactivate"), None),
    ];
    for (method, path, body) in allowed {
        let (status, reply) = send(method.clone(), &path, body).await;
        assert_eq!(status, 200, "{method} {path}: {reply}");
    }
    let refused = [
        (Method::GET, "/api/v1/users".to_owned(), None, "users.list"),
        (Method::POST, "/api/v1/users/lookup".to_owned(), Some(json!({"ids": [id]})), "users.lookup"),
        (Method::PATCH, format!("/api/v1/users/{id}"), Some(json!({"name": "Mallory"})), "users.write"),
        (Method::DELETE, format!("/api/v1/users/{id}"), None, "users.delete"),
        (Method::PUT, format!("/api/v1/users/{id}/preferences"), Some(json!({"email": true})), "preferences.write"),
        (Method::POST, devices.clone(), Some(json!({"token": "planted", "platform": "web"})), "devices.write"),
        (Method::PUT, format!("{devices}/least-token/activate"), None, "devices.write"),
        (Method::DELETE, format!("{devices}/least-token"), None, "devices.write"),
    ];
    for (method, path, body, scope) in refused {
        let (status, reply) = send(method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {reply}");
        assert_eq!(reply["error"], "forbidden");
        assert!(reply["message"].as_str().unwrap().contains(scope), "{method} {path}: {reply}");
        assert!(!reply.to_string().contains("@example.com"), "{method} {path} leaked a user: {reply}");
    }

    // A named key reaches what its scopes cover, and is logged by name, never by key.
    let user_path = format!("/api/v1/users/{id}");
    assert_eq!(call(service, READER_KEY, Method::GET, &user_path, None).await.0, 200);
    let (status, reply) = call(service, READER_KEY, Method::PATCH, &user_path, Some(json!({"name": "R"}))).await;
    assert_eq!((status, reply["message"].as_str()), (403, Some("this caller lacks the scope users.write")));
    let lines = service.log_lines();
    let callers: std::collections::HashSet<&str> = lines
        .iter()
        .filter(|line| line["message"] == "request completed")
        .filter_map(|line| line["caller"].as_str())
        .collect();
    for caller in ["service:internal-network", "service:reader", "service:admin"] {
        assert!(callers.contains(caller), "no request logged as {caller}: {callers:?}");
    }
    let log = service.log_text();
    assert!(!log.contains(ADMIN_KEY) && !log.contains(READER_KEY), "a key reached the log");
    assert_eq!(server_errors(service), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_push_sender_deactivates_windows_fcm_mozilla_and_apple_endpoints_on_the_legacy_path() {
    let BehindTheGateway { service, .. } = &BehindTheGateway::start().await;
    let id = register(service, "endpoints@example.com").await;
    let endpoints = [
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAABrQ5%2bVuPwz6Hn%2fNg%3d%3d",
        "https://db5p.notify.windows.com/w/?token=AwYAAAD/deactivate",
        "https://fcm.googleapis.com/fcm/send/cXyZ:APA91bH-abc_def",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk-Qz_x1",
        "https://web.push.apple.com/QGuQyavXutnMH5nWQ7V_2wdf",
        // Percent-encodings in the path are part of the endpoint, sent as they are.
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA%2Fx%3D%3D",
    ];
    let devices = format!("/api/v1/users/{id}/devices");
    for endpoint in endpoints {
        let device = json!({"token": endpoint, "platform": "web"});
        assert_eq!(call(service, ADMIN_KEY, reqwest::Method::POST, &devices, Some(device)).await.0, 201);
    }
    for endpoint in endpoints {
        assert_eq!(report_dead_endpoint(service, &id, endpoint).await, 200, "{endpoint}");
    }
    let (_, listed) = call(service, ADMIN_KEY, reqwest::Method::GET, &format!("{devices}?active=true"), None).await;
    assert_eq!(listed["data"], json!([]), "every reported endpoint is inactive");

    // Through a proxy that merges `//`, and a report twice: still 200.
    let merged = "https:/fcm.googleapis.com/fcm/send/cXyZ:APA91bH-abc_def";
    assert_eq!(report_dead_endpoint(service, &id, merged).await, 200);
    // An endpoint the user never registered is 404, which the sender logs and drops.
    assert_eq!(report_dead_endpoint(service, &id, "https://wns2.notify.windows.com/w/?token=unknown").await, 404);
    let not_a_deactivation = format!("{}/api/users/{id}/devices/https://h/w/?token=x", service.address);
    assert_eq!(reqwest::Client::new().put(not_a_deactivation).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(server_errors(service), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_why_a_client_was_refused_and_where_downstream_copies_are_deleted() {
    let (database, redis) = (TestDatabase::create().await.unwrap(), PrivateRedis::start().await);
    let redis_url = format!("redis://127.0.0.1:{}/3", redis.port);
    let keys = format!("admin:{ADMIN_KEY}:*");
    let service = ServiceProcess::start(
        &database,
        &[("REDIS_URL", &redis_url), ("CACHE_INVALIDATE_EXTRA_KEYS", "usercache:{id}"), ("SERVICE_API_KEYS", &keys)],
    )
    .await;
    let started = service
        .wait_for_log(Duration::from_secs(5), |line| {
            line["message"].as_str().is_some_and(|m| m.contains("downstream copies"))
        })
        .await
        .expect("the extra keys are logged at start");
    assert_eq!(started["redis_database"], 3, "{started}");
    assert!(started["templates"].as_str().unwrap().contains("usercache:{id}"), "{started}");

    // The gateway without TRUST_INTERNAL_NETWORK: every call is 401, with one warning a minute.
    let id = register(&service, "seam@example.com").await;
    let gateway = Gateway::new(&service, &redis).await;
    for _ in 0..3 {
        assert_eq!(gateway.fetch(&id).await, None);
    }
    for _ in 0..3 {
        let response = reqwest::Client::new()
            .get(format!("{}/users/{id}", service.address))
            .header("X-Service-Key", "a-wrong-key-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    let warnings = |reason: &str| {
        service
            .log_lines()
            .into_iter()
            .filter(|line| line["level"] == "WARN" && line["reason"] == reason)
            .collect::<Vec<_>>()
    };
    let missing = warnings("missing_credential");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0]["hint"].as_str().unwrap().contains("TRUST_INTERNAL_NETWORK"), "{}", missing[0]);
    assert_eq!(missing[0]["client"], "127.0.0.1");
    let wrong = warnings("unknown_service_key");
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(wrong[0]["hint"].as_str().unwrap().contains("SERVICE_API_KEYS"));
    assert!(!service.log_text().contains("a-wrong-key-0123456789"));

    // The legacy user route points at its successor.
    let response = reqwest::Client::new()
        .get(format!("{}/users/{id}", service.address))
        .header("X-Service-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["deprecation"], "true");
    assert_eq!(
        response.headers()["link"].to_str().unwrap(),
        format!("</api/v1/users/{id}>; rel=\"successor-version\"")
    );
    let current = reqwest::Client::new()
        .get(format!("{}/api/v1/users/{id}", service.address))
        .header("X-Service-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(current.headers().get("deprecation").is_none());

    // What the cache still owes Redis is exported.
    let metrics = reqwest::get(format!("{}/metrics", service.address)).await.unwrap().text().await.unwrap();
    for series in ["user_service_cache_pending_invalidations 0", "user_service_cache_scheduled_follow_ups "] {
        assert!(metrics.lines().any(|line| line.starts_with(series)), "no {series} in /metrics");
    }

    // Extra keys without Redis are not silently ignored.
    let embedded = ServiceProcess::start(&database, &[("CACHE_INVALIDATE_EXTRA_KEYS", "usercache:{id}")]).await;
    let warned = embedded
        .wait_for_log(Duration::from_secs(5), |line| {
            line["level"] == "WARN" && line["message"].as_str().is_some_and(|m| m.contains("without REDIS_URL"))
        })
        .await;
    assert!(warned.is_some(), "{}", embedded.log_text());
}
