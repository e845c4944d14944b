//! Hostile input: every case answers a 4xx with the envelope, nothing reaches the database
//! that should not, and the service stays healthy.

use std::io::Write as _;

use api_tests::{Reply, TestApp};
use reqwest::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One hostile request: what it is, how it is sent, and the status it must get.
struct Case {
    name: &'static str,
    method: Method,
    /// `{id}` is replaced by an existing user's id.
    path: String,
    body: Option<String>,
    content_type: Option<&'static str>,
    status: u16,
}

fn case(name: &'static str, method: Method, path: &str, body: Option<String>, status: u16) -> Case {
    Case { name, method, path: path.to_owned(), body, content_type: Some("application/json"), status }
}

fn register_with(field: &str, value: &str) -> Option<String> {
    let mut body = serde_json::json!({"name": "Mallory", "email": "mallory@example.com", "password": "StrongPass123!"});
    body[field] = serde_json::from_str(value).unwrap_or(serde_json::Value::String(value.to_owned()));
    Some(body.to_string())
}

fn cases() -> Vec<Case> {
    let users = "/api/v1/users";
    let preferences = "/api/v1/users/{id}/preferences";
    let devices = "/api/v1/users/{id}/devices";
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!(r#"{{"name": {}1{}}}"#, r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    vec![
        case("malformed JSON", Method::POST, users, Some(r#"{"name": "x""#.into()), 400),
        case("not JSON at all", Method::POST, users, Some("name=x&email=y".into()), 400),
        case("empty body", Method::POST, users, Some(String::new()), 400),
        case("trailing garbage", Method::POST, users, Some(r#"{"name":"a"} {"#.into()), 400),
        case("deeply nested array", Method::POST, users, Some(deep_array), 422),
        case("deeply nested object", Method::POST, users, Some(deep_object), 422),
        case("JSON array instead of object", Method::POST, users, Some("[]".into()), 422),
        case("JSON null", Method::POST, users, Some("null".into()), 422),
        case("missing fields", Method::POST, users, Some("{}".into()), 422),
        case(
            "unknown field id",
            Method::POST,
            users,
            register_with("id", r#""00000000-0000-0000-0000-000000000000""#),
            422,
        ),
        case(
            "unknown field password_hash",
            Method::POST,
            users,
            register_with("password_hash", r#""$argon2id$x""#),
            422,
        ),
        case(
            "unknown field created_at",
            Method::POST,
            users,
            register_with("created_at", r#""2020-01-01T00:00:00Z""#),
            422,
        ),
        case("NUL in name", Method::POST, users, register_with("name", r#""Mal\u0000lory""#), 422),
        case("NUL in email", Method::POST, users, register_with("email", r#""mal\u0000@example.com""#), 422),
        case("control character in name", Method::POST, users, register_with("name", r#""Mal\u0007lory""#), 422),
        case("oversized name", Method::POST, users, register_with("name", &format!("\"{}\"", "n".repeat(101))), 422),
        case(
            "oversized email",
            Method::POST,
            users,
            register_with("email", &format!("\"{}@example.com\"", "e".repeat(250))),
            422,
        ),
        case("invalid email", Method::POST, users, register_with("email", r#""not-an-email""#), 422),
        case("short password", Method::POST, users, register_with("password", r#""short""#), 422),
        case(
            "oversized password",
            Method::POST,
            users,
            register_with("password", &format!("\"{}\"", "p".repeat(129))),
            422,
        ),
        case("phone not E.164", Method::POST, users, register_with("phone", r#""0801 234 5678""#), 422),
        case("name of wrong type", Method::POST, users, register_with("name", "12345"), 422),
        case(
            "body over the size limit",
            Method::POST,
            users,
            register_with("name", &format!("\"{}\"", "x".repeat(70_000))),
            413,
        ),
        case(
            "quiet hours 24:00",
            Method::PUT,
            preferences,
            Some(r#"{"quiet_hours_start": "24:00", "quiet_hours_end": "07:00"}"#.into()),
            422,
        ),
        case(
            "quiet hours 7:5",
            Method::PUT,
            preferences,
            Some(r#"{"quiet_hours_start": "7:5", "quiet_hours_end": "07:00"}"#.into()),
            422,
        ),
        case("lone quiet-hours bound", Method::PUT, preferences, Some(r#"{"quiet_hours_start": "22:00"}"#.into()), 422),
        case(
            "quiet hours start = end",
            Method::PUT,
            preferences,
            Some(r#"{"quiet_hours_start": "22:00", "quiet_hours_end": "22:00"}"#.into()),
            422,
        ),
        case("unknown timezone", Method::PUT, preferences, Some(r#"{"timezone": "Mars/Olympus"}"#.into()), 422),
        case(
            "timezone path traversal",
            Method::PUT,
            preferences,
            Some(r#"{"timezone": "../../etc/passwd"}"#.into()),
            422,
        ),
        case("opt-in as a string", Method::PUT, preferences, Some(r#"{"email": "false"}"#.into()), 422),
        case("unknown preferences field", Method::PUT, preferences, Some(r#"{"sms": true}"#.into()), 422),
        case(
            "5 kB token",
            Method::POST,
            devices,
            Some(format!(r#"{{"token": "{}", "platform": "web"}}"#, "t".repeat(5_000))),
            422,
        ),
        case(
            "token with whitespace",
            Method::POST,
            devices,
            Some(r#"{"token": "a b", "platform": "web"}"#.into()),
            422,
        ),
        case("empty token", Method::POST, devices, Some(r#"{"token": "", "platform": "web"}"#.into()), 422),
        case("NUL in token", Method::POST, devices, Some(r#"{"token": "a\u0000b", "platform": "web"}"#.into()), 422),
        case(
            "unknown platform",
            Method::POST,
            devices,
            Some(r#"{"token": "t", "platform": "blackberry"}"#.into()),
            422,
        ),
        case(
            "platform unknown is not registrable",
            Method::POST,
            devices,
            Some(r#"{"token": "t", "platform": "unknown"}"#.into()),
            422,
        ),
        case(
            "unknown device field user_id",
            Method::POST,
            devices,
            Some(r#"{"token": "t", "platform": "ios", "user_id": "x"}"#.into()),
            422,
        ),
        case("bad UUID in path", Method::GET, "/api/v1/users/not-a-uuid", None, 400),
        case("UUID with SQL in path", Method::GET, "/api/v1/users/1'%20OR%20'1'='1", None, 400),
        case("bad UUID in device path", Method::PUT, "/api/v1/users/123/devices/t/activate", None, 400),
        case("bad UUID in legacy path", Method::GET, "/users/not-a-uuid", None, 400),
        case("negative page", Method::GET, "/api/v1/users?page=-1", None, 400),
        case("page zero", Method::GET, "/api/v1/users?page=0", None, 422),
        case("limit over 100", Method::GET, "/api/v1/users?limit=1000", None, 422),
        case("unknown query parameter", Method::GET, "/api/v1/users?admin=true", None, 400),
        case("unknown route", Method::GET, "/api/v1/secrets", None, 404),
        case("method not allowed", Method::PATCH, "/health", None, 405),
        case("device selector with NUL", Method::PUT, "/api/v1/users/{id}/devices/a%00b/activate", None, 404),
        Case {
            name: "wrong content type",
            method: Method::POST,
            path: users.to_owned(),
            body: register_with("name", r#""x""#),
            content_type: Some("text/plain"),
            status: 415,
        },
        Case {
            name: "no content type",
            method: Method::POST,
            path: users.to_owned(),
            body: Some("{}".into()),
            content_type: None,
            status: 415,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_input_gets_a_4xx_envelope_and_the_service_stays_healthy() {
    let app = TestApp::spawn().await;
    let id = app.register("victim@example.com").await;
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        let url = format!("{}{}", app.address, case.path.replace("{id}", &id));
        let mut request = app.client.request(case.method.clone(), url);
        if let Some(content_type) = case.content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(body) = &case.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let has_request_id = response.headers().contains_key("x-request-id");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let envelope_ok = body["success"] == false && body["error"].is_string() && body["message"].is_string();
        if status != case.status || !envelope_ok || !has_request_id {
            failures.push(format!("{}: expected {}, got {status} {body}", case.name, case.status));
        }
    }
    assert!(failures.is_empty(), "hostile inputs answered wrongly:\n{}", failures.join("\n"));

    assert_eq!(app.db.count("SELECT count(*) AS count FROM users").await.unwrap(), 1);
    assert_eq!(app.db.count("SELECT count(*) AS count FROM devices").await.unwrap(), 0);
    let preferences = app.get(&format!("/api/v1/users/{id}/preferences")).await;
    assert_eq!(preferences.body["data"]["timezone"], "UTC");
    assert!(preferences.body["data"]["quiet_hours_start"].is_null());
    let health = app.get("/health").await;
    assert_eq!((health.status, health.body["data"]["status"].as_str()), (200, Some("ok")));
}

/// A body with a content coding is refused unread, on every route, with the envelope and the
/// one coding accepted: actix expanded such a body in memory before it checked the size, so a
/// few kilobytes of brotli sent to the public login expanded to gigabytes and killed the
/// process. A body without a coding, or marked `identity`, is read as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_request_body_is_refused_unread() {
    let app = TestApp::spawn().await;
    let login = serde_json::json!({"email": "nobody@example.com", "password": "StrongPass123!"}).to_string();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(login.as_bytes()).unwrap();
    let gzipped = gzip.finish().unwrap();
    for coding in ["gzip", "GZIP", "br", "zstd", "deflate", "x-unknown", "identity, gzip"] {
        for path in ["/api/v1/auth/login", "/api/v1/users", "/api/v1/eligibility"] {
            let request = app.anonymous.post(format!("{}{path}", app.address));
            let request = request.header("content-type", "application/json").header("content-encoding", coding);
            let reply = Reply::from_response(request.body(gzipped.clone()).send().await.unwrap()).await;
            assert_eq!(reply.status, 415, "{coding} on {path}: {}", reply.body);
            reply.assert_envelope();
            assert_eq!(reply.header("accept-encoding"), Some("identity"), "{coding} on {path}");
        }
    }
    // With `Upgrade`, actix reads a body until the connection closes: no length declares it.
    let mut connection = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-encoding: gzip\r\nupgrade: websocket\r\n\r\n";
    connection.write_all(&[head.as_bytes(), &gzipped].concat()).await.unwrap();
    connection.shutdown().await.unwrap();
    let mut answer = Vec::new();
    connection.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    for coding in [None, Some("identity")] {
        let mut request = app.anonymous.post(format!("{}/api/v1/auth/login", app.address));
        request = request.header("content-type", "application/json");
        if let Some(coding) = coding {
            request = request.header("content-encoding", coding);
        }
        let reply = Reply::from_response(request.body(login.clone()).send().await.unwrap()).await;
        assert_eq!(reply.status, 401, "{coding:?}: {}", reply.body);
    }
}

/// A small answer goes out uncompressed (`COMPRESS_MIN_BYTES`) unless the caller refuses
/// that: then it is compressed as it asks.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_refuses_uncompressed_answers_gets_them_compressed() {
    let app = TestApp::spawn().await;
    let user = app.register("refuses-identity@example.com").await;
    let path = format!("/api/v1/users/{user}");
    for (accepted, coding) in [
        ("gzip", None),
        ("gzip, identity;q=0", Some("gzip")),
        ("gzip;q=1, *;q=0", Some("gzip")),
        ("gzip, IDENTITY;Q=0", Some("gzip")),
        ("gzip, identity;q=0.5", None),
    ] {
        let reply = app.request_as(&app.client, &[("accept-encoding", accepted)], Method::GET, &path, None).await;
        assert_eq!(reply.status, 200, "{accepted}");
        assert_eq!(reply.header("content-encoding"), coding, "{accepted}");
    }
}
