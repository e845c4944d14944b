//! Helpers for the black-box API tests: a running service on a database of its own.
#![expect(clippy::expect_used, reason = "test helpers fail the test on setup errors")]

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use http_actix::config::Settings;
use http_actix::startup::Application;
use reqwest::{Method, Response};
use serde_json::Value;

/// A service instance on a free port with a fresh database (or sharing another instance's).
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The database the instance uses, for direct checks.
    pub db: Arc<TestDatabase>,
    /// A client that authenticates as a service caller ([`SERVICE_KEY`]).
    pub client: reqwest::Client,
    /// A client without credentials.
    pub anonymous: reqwest::Client,
}

/// The service key every test instance accepts.
pub const SERVICE_KEY: &str = "test-service-key-0123456789";
/// Another service key it accepts.
pub const OTHER_SERVICE_KEY: &str = "test-sender-key-0123456789";

/// A response's status, headers and parsed body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
}

impl Reply {
    /// Reads a response.
    pub async fn from_response(response: Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self { status, headers, body }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts the envelope's shape: `success` matches the status, `message` is text, and
    /// an error carries its code.
    pub fn assert_envelope(&self) -> &Self {
        let body = &self.body;
        assert!(body.is_object(), "body is not an envelope: {body}");
        let success = self.status < 400;
        assert_eq!(body["success"], Value::Bool(success), "success flag for {}: {body}", self.status);
        assert!(body["message"].is_string(), "message missing: {body}");
        assert!(body.get("data").is_some() && body.get("meta").is_some(), "data/meta missing: {body}");
        if success {
            assert!(body["error"].is_null(), "error on success: {body}");
        } else {
            assert!(body["error"].is_string(), "error code missing: {body}");
        }
        self
    }
}

impl TestApp {
    /// Starts an instance with extra settings on top of the test defaults.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let db = Arc::new(TestDatabase::create().await.expect("test database"));
        Self::start(db, extra).await
    }

    /// Starts another instance on this instance's database, as a second replica would run.
    pub async fn sibling(&self, extra: &[(&str, &str)]) -> Self {
        Self::start(Arc::clone(&self.db), extra).await
    }

    /// Starts an instance on `db` with extra settings on top of the test defaults.
    pub async fn spawn_on(db: Arc<TestDatabase>, extra: &[(&str, &str)]) -> Self {
        Self::start(db, extra).await
    }

    async fn start(db: Arc<TestDatabase>, extra: &[(&str, &str)]) -> Self {
        let mut variables: HashMap<String, String> = [
            ("DATABASE_URL", db.url()),
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("WORKERS", "2"),
            // The template is migrated already; start-up migration is tested on its own.
            ("MIGRATE_ON_STARTUP", "false"),
            ("SECRET_KEY", "test-secret-key-0123456789abcdef0123456789"),
            ("SERVICE_API_KEYS", "test-service-key-0123456789,test-sender-key-0123456789"),
            ("LOG_LEVEL", "warn"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        variables.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        let settings = Settings::from_map(variables).expect("settings");
        let application = Application::build(settings).await.expect("application");
        let address = format!("http://127.0.0.1:{}", application.port());
        tokio::spawn(application.run_until_stopped());
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-service-key", reqwest::header::HeaderValue::from_static(SERVICE_KEY));
        let client = reqwest::Client::builder().default_headers(headers).build().expect("client");
        Self { address, db, client, anonymous: reqwest::Client::new() }
    }

    /// Starts an instance with the test defaults.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// The value of a series of `/metrics`, named with its labels (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let response = self.client.get(format!("{}/metrics", self.address)).send().await.expect("GET /metrics");
        let text = response.text().await.expect("the metrics' text");
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    /// The cache operations with this `result` (`hit`, `fill`, …), from `/metrics`.
    pub async fn cache_operations(&self, result: &str) -> f64 {
        self.metric(&format!(r#"user_service_cache_operations_total{{result="{result}"}}"#)).await
    }

    /// Whether this instance says `user` receives email (asserting a 200).
    pub async fn email_of(&self, user: &str) -> Option<bool> {
        let reply = self.get(&format!("/api/v1/users/{user}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["data"]["preferences"]["email"].as_bool()
    }

    /// Sends a request as a service caller with an optional raw JSON body.
    pub async fn request(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        self.request_as(&self.client, &[], method, path, body).await
    }

    /// Sends a request with `client`, extra headers and an optional raw JSON body.
    pub async fn request_as(
        &self,
        client: &reqwest::Client,
        headers: &[(&str, &str)],
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let mut request = client.request(method, format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_owned());
        }
        Reply::from_response(request.send().await.expect("request sent")).await
    }

    /// Sends a request with a JSON value as body.
    pub async fn send(&self, method: Method, path: &str, body: &Value) -> Reply {
        self.request(method, path, Some(&body.to_string())).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None).await
    }

    /// Logs a user in and returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let body = serde_json::json!({"email": email, "password": password}).to_string();
        let reply = self.request_as(&self.anonymous, &[], Method::POST, "/api/v1/auth/login", Some(&body)).await;
        assert_eq!(reply.status, 200, "login failed: {}", reply.body);
        reply.body["data"]["access_token"].as_str().expect("token").to_owned()
    }

    /// Registers a user with the given email and returns its id.
    pub async fn register(&self, email: &str) -> String {
        let reply = self
            .send(
                Method::POST,
                "/api/v1/users",
                &serde_json::json!({"name": "Test User", "email": email, "password": "StrongPass123!"}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body["data"]["id"].as_str().expect("id").to_owned()
    }
}

/// The `user-service` binary of this build (`target/debug/user-service`), built if the test
/// run has not built it yet.
pub fn service_binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "http-actix", "--bin", "user-service"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building user-service failed");
    target.join("debug/user-service")
}

/// The real `user-service` binary, run as production runs it: its own process, configured by
/// environment variables only (from an empty working directory, so no `.env` is read), with
/// JSON logs captured line by line for the test to read. Killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _workdir: TempDir,
}

/// A directory removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    /// A new path under the system's temporary directory, `user-service-{kind}-{random}`
    /// (not created).
    fn new(kind: &str) -> Self {
        Self(std::env::temp_dir().join(format!("user-service-{kind}-{}", uuid::Uuid::new_v4().simple())))
    }
}

/// A TCP port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ServiceProcess {
    /// Starts the binary on `database` with the test defaults (a free port, JSON logs at
    /// `info`, the test secret, no service keys) and `extra` variables, and waits until it
    /// listens.
    pub async fn start(database: &TestDatabase, extra: &[(&str, &str)]) -> Self {
        Self::spawn(&service_binary(), database, extra).listening().await
    }

    /// Starts `count` instances as [`Self::start`] does, all processes at once (as an
    /// autoscaler does), then waits until each listens.
    pub async fn start_together(database: &TestDatabase, extra: &[(&str, &str)], count: usize) -> Vec<Self> {
        let binary = service_binary();
        let spawned: Vec<_> = (0..count).map(|_| Self::spawn(&binary, database, extra)).collect();
        let mut instances = Vec::with_capacity(count);
        for process in spawned {
            instances.push(process.listening().await);
        }
        instances
    }

    /// Starts the process, without waiting for it.
    fn spawn(binary: &std::path::Path, database: &TestDatabase, extra: &[(&str, &str)]) -> Self {
        let workdir = std::env::temp_dir().join(format!("user-service-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&workdir).expect("a working directory");
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database.url())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("WORKERS", "2")
            .env("MIGRATE_ON_STARTUP", "false")
            .env("SECRET_KEY", "test-secret-key-0123456789abcdef0123456789")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info");
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command
            .current_dir(&workdir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("user-service starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        capture_lines(child.stdout.take().expect("stdout is piped"), &logs);
        capture_lines(child.stderr.take().expect("stderr is piped"), &logs);
        Self { address: String::new(), child, logs, _workdir: TempDir(workdir) }
    }

    /// Waits until the process listens, and notes its address.
    async fn listening(mut self) -> Self {
        let listening = self
            .wait_for_log(Duration::from_secs(30), |line| line["message"] == "user-service listening")
            .await
            .unwrap_or_else(|| panic!("user-service did not start:\n{}", self.log_text()));
        let port = listening["port"].as_u64().expect("the listening line names the port");
        self.address = format!("http://127.0.0.1:{port}");
        self
    }

    /// Sends SIGTERM, as an orchestrator stopping the instance does.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "SIGTERM was not delivered");
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("the process can be polled").is_some()
    }

    /// Every log line so far, parsed (lines that are not JSON are left out).
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Every log line so far, as written.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).join("\n")
    }

    /// The first log line matching `predicate`, waiting up to `timeout` for it.
    pub async fn wait_for_log(&self, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|line| predicate(line)) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The statuses of every request logged so far (one `request completed` line each).
    pub fn logged_statuses(&self) -> Vec<u64> {
        self.log_lines()
            .iter()
            .filter(|line| line["message"] == "request completed")
            .filter_map(|line| line["status"].as_u64())
            .collect()
    }
}

/// Appends every line of `stream` to `lines`, on a thread of its own, until it ends.
fn capture_lines(stream: impl std::io::Read + Send + 'static, lines: &Arc<Mutex<Vec<String>>>) {
    let lines = Arc::clone(lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
        }
    });
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of the test's own on a free port, so that the test may pause, kill and
/// restart it without touching the shared server. Killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    /// The port it listens on.
    pub port: u16,
    child: Option<std::process::Child>,
    /// Where [`Self::snapshot`] writes and a restart loads from; `None`: no persistence.
    snapshots: Option<TempDir>,
}

impl PrivateRedis {
    /// Starts a server with no persistence and waits until it answers.
    pub async fn start() -> Self {
        Self::start_in(None).await
    }

    /// Starts a server that saves only when told ([`Self::snapshot`]) and loads its last
    /// snapshot when restarted, as a server restored from an old RDB file would.
    pub async fn start_with_snapshots() -> Self {
        let directory = std::env::temp_dir().join(format!("user-service-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).expect("a directory for the snapshot");
        Self::start_in(Some(TempDir(directory))).await
    }

    async fn start_in(snapshots: Option<TempDir>) -> Self {
        let port = free_port();
        let mut redis = Self { port, child: None, snapshots };
        redis.launch().await;
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn launch(&mut self) {
        let mut command = std::process::Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(directory) = &self.snapshots {
            command.arg("--dir").arg(&directory.0).args(["--dbfilename", "dump.rdb"]);
        }
        let child =
            command.stdout(std::process::Stdio::null()).spawn().expect("redis-server starts (is Redis installed?)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the private redis-server did not answer");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
            assert!(status.is_ok_and(|status| status.success()), "kill {signal} failed");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it on the same port again: empty, or from its last
    /// snapshot when it was started with snapshots.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Saves the data set now (`SAVE`); a restart loads it, whatever was written since.
    pub fn snapshot(&self) {
        assert!(self.snapshots.is_some(), "started without snapshots");
        assert_eq!(self.cli(&["SAVE"]).trim(), "OK", "SAVE failed");
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A PostgreSQL cluster of the test's own (initdb + pg_ctl on a free port, trust auth), so
/// that the test may stop it without touching the shared server. Stopped and removed when
/// dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// The port it listens on.
    pub port: u16,
    bin: PathBuf,
    data: TempDir,
}

impl PrivatePostgres {
    /// Creates and starts a cluster (a second or two).
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|version| version.path().join("bin")).max())
            .filter(|bin| bin.join("initdb").exists())
            .expect("PostgreSQL's initdb under /usr/lib/postgresql/<version>/bin");
        let port = free_port();
        let data = TempDir::new("pg");
        // initdb refuses to run as root: run it (and the server) as the postgres user then.
        let initdb = Self::as_cluster_owner(&bin.join("initdb"))
            .args(["-D", &data.0.to_string_lossy(), "-U", "postgres", "-A", "trust", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(initdb.success(), "initdb failed");
        let cluster = Self { port, bin, data };
        cluster.pg_ctl(&["start", "-w", "-o", &format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1")]);
        cluster
    }

    /// A command run as the owner of the cluster's files (`postgres` when the test is root).
    fn as_cluster_owner(program: &std::path::Path) -> Command {
        let root = Command::new("id").arg("-u").output().is_ok_and(|id| id.stdout.trim_ascii() == b"0");
        if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = Self::as_cluster_owner(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data.0.to_string_lossy(), "-l", &self.data.0.join("log").to_string_lossy()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Starts a streaming replica of this cluster (`pg_basebackup -R` on a free port) with
    /// `settings` added to its configuration (e.g. `recovery_min_apply_delay = '500ms'`), and
    /// waits until it accepts connections.
    pub fn start_replica(&self, settings: &[&str]) -> Self {
        let port = free_port();
        let data = TempDir::new("pg");
        let backup = Self::as_cluster_owner(&self.bin.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-D"])
            .arg(&data.0)
            .args(["-R", "-X", "stream", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_basebackup runs");
        assert!(backup.success(), "pg_basebackup failed");
        let configuration = data.0.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&configuration).expect("the replica's postgresql.auto.conf");
        for setting in settings {
            text.push_str(setting);
            text.push('\n');
        }
        std::fs::write(&configuration, text).expect("the replica's settings");
        let replica = Self { port, bin: self.bin.clone(), data };
        replica.pg_ctl(&["start", "-w", "-o", &format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1")]);
        replica
    }

    /// Promotes a replica to a primary of its own (`pg_ctl promote`): it follows no primary
    /// from then on.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w"]);
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server and every process it started:
    /// connections stay open, nothing answers, as in a network partition.
    pub fn signal_all(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data.0.join("postmaster.pid")).expect("postmaster.pid");
        let postmaster = pid.lines().next().expect("the postmaster's pid").trim().to_owned();
        let children = Command::new("pgrep").args(["-P", &postmaster]).output().expect("pgrep runs");
        let mut pids = vec![postmaster];
        pids.extend(String::from_utf8_lossy(&children.stdout).lines().map(str::to_owned));
        let status = Command::new("kill").arg(signal).args(&pids).status().expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the server again after [`Self::stop`].
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-o", &format!("-p {} -k /tmp -c listen_addresses=127.0.0.1", self.port)]);
    }

    /// `url` (of another server of this machine) with this server's port instead.
    pub fn in_place_of(&self, url: &str) -> String {
        let (scheme_and_user, rest) = url.split_once('@').expect("a URL with a user");
        let path = rest.split_once('/').map_or("", |(_, path)| path);
        format!("{scheme_and_user}@127.0.0.1:{}/{path}", self.port)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`-m immediate`), as a crash would.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Self::as_cluster_owner(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data.0.to_string_lossy(), "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A PgBouncer of the test's own on a free port, in `pool_mode=transaction` in front of the
/// PostgreSQL at `127.0.0.1:<port>` with few server connections, so that clients keep
/// changing server connections between transactions, as under load in production. Trust
/// authentication, every database of the server. Killed and removed when dropped.
#[derive(Debug)]
pub struct PrivatePgBouncer {
    /// The port it listens on.
    pub port: u16,
    child: Option<Child>,
    directory: TempDir,
}

impl PrivatePgBouncer {
    /// Starts `pgbouncer` (installed by `tests/with-services.sh` when missing) in front of
    /// the server of `postgres_url` (on 127.0.0.1) with at most `server_connections` per
    /// database, and waits until it accepts connections. Server connections are lent in
    /// turn (`server_round_robin`), not the last one used again: a client's consecutive
    /// round trips outside a transaction meet different server connections whenever
    /// several are open, as under load in production.
    pub async fn start(postgres_url: &str, server_connections: u32) -> Self {
        Self::start_with(postgres_url, server_connections, "").await
    }

    /// [`Self::start`] with more `[pgbouncer]` settings (lines of the ini file).
    pub async fn start_with(postgres_url: &str, server_connections: u32, settings: &str) -> Self {
        let postgres_port: u16 = postgres_url
            .split_once('@')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|host| host.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or(5432);
        let port = free_port();
        let directory = TempDir::new("pgbouncer");
        std::fs::create_dir_all(&directory.0).expect("a directory for PgBouncer");
        // Trust authentication still asks that the user be listed.
        let user = postgres_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map_or("postgres", |(user, _)| user.split(':').next().unwrap_or("postgres"));
        let users = directory.0.join("users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).expect("the users file");
        let ini = directory.0.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={postgres_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {server_connections}\nmax_client_conn = 500\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {log}\n\
                 server_round_robin = 1\n{settings}\n",
                users = users.display(),
                log = directory.0.join("pgbouncer.log").display(),
            ),
        )
        .expect("the configuration");
        let program =
            if std::path::Path::new("/usr/sbin/pgbouncer").exists() { "/usr/sbin/pgbouncer" } else { "pgbouncer" };
        // PgBouncer refuses to run as root: as the postgres user then (setpriv execs it, so
        // that killing the child kills PgBouncer itself).
        let root = Command::new("id").arg("-u").output().is_ok_and(|id| id.stdout.trim_ascii() == b"0");
        let mut command = if root {
            let _ = Command::new("chown").args(["-R", "postgres"]).arg(&directory.0).status();
            let mut command = Command::new("setpriv");
            command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", program]);
            command
        } else {
            Command::new(program)
        };
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer starts (is PgBouncer installed? apt-get install pgbouncer)");
        let mut bouncer = Self { port, child: Some(child), directory };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited =
                bouncer.child.as_mut().is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_some()));
            let log = || std::fs::read_to_string(bouncer.directory.0.join("pgbouncer.log")).unwrap_or_default();
            assert!(!exited, "pgbouncer exited: {}", log());
            assert!(started.elapsed() < Duration::from_secs(10), "pgbouncer did not listen within 10 s: {}", log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bouncer
    }

    /// `url`, a URL of the PostgreSQL behind, with this PgBouncer's port instead.
    pub fn in_front_of(&self, url: &str) -> String {
        let (scheme_and_user, rest) = url.split_once('@').expect("a URL with a user");
        let path = rest.split_once('/').map_or("", |(_, path)| path);
        format!("{scheme_and_user}@127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// A JSON object without its `updated_at` (a time the test cannot predict).
pub fn without_updated_at(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("updated_at");
    }
    value
}

/// A pg_auto_failover formation of the test's own (Debian package
/// `postgresql-15-auto-failover`, installed by `tests/with-services.sh`): a monitor and two
/// PostgreSQL nodes on free ports, trust authentication, synchronous replication (the
/// formation's default with one standby), and health checks tightened so that a dead
/// primary is failed over within seconds. Every process is killed when dropped.
#[derive(Debug)]
pub struct PrivateFormation {
    /// The monitor's port.
    pub monitor_port: u16,
    /// The nodes' ports, the first one the primary at the start.
    pub node_ports: [u16; 2],
    /// The monitor's then the nodes' `pg_autoctl`, each the leader of its own process group.
    keepers: Vec<Child>,
    directory: TempDir,
}

impl PrivateFormation {
    /// Starts the monitor, then the primary, then the secondary, and waits until the
    /// formation reports one primary and one secondary (some 20 s).
    pub async fn start() -> Self {
        let directory = TempDir::new("failover");
        std::fs::create_dir_all(&directory.0).expect("a directory for the formation");
        let _ = Command::new("chown").args(["postgres"]).arg(&directory.0).status();
        let mut formation =
            Self { monitor_port: free_port(), node_ports: [free_port(), free_port()], keepers: Vec::new(), directory };
        let monitor = formation.monitor_port.to_string();
        formation.keep(&["create", "monitor", "--pgdata", &formation.data("monitor"), "--pgport", &monitor]);
        formation.wait_until("the monitor accepts connections", Duration::from_secs(30), |formation| {
            formation.monitor_sql("SELECT 1").as_deref() == Some("1")
        });
        // A dead primary is found within a few seconds, not the default 20 or more.
        for setting in [
            "health_check_period = 1000",
            "health_check_timeout = 1000",
            "health_check_max_retries = 1",
            "health_check_retry_delay = 500",
            "node_considered_unhealthy_timeout = 2000",
            // How long the monitor waits for a lost primary to demote itself before it promotes.
            "primary_demote_timeout = 3000",
        ] {
            formation.monitor_sql(&format!("ALTER SYSTEM SET pgautofailover.{setting}"));
        }
        formation.monitor_sql("SELECT pg_reload_conf()");
        let monitor_url = format!("postgres://autoctl_node@127.0.0.1:{monitor}/pg_auto_failover?sslmode=disable");
        for index in 0..2 {
            let (data, port) = (formation.data(&format!("node{}", index + 1)), formation.node_ports[index].to_string());
            formation.keep(&["create", "postgres", "--pgdata", &data, "--pgport", &port, "--monitor", &monitor_url]);
            if index == 0 {
                // Alone, the first node is `single` before it becomes a primary.
                formation.wait_until("a first node", Duration::from_secs(60), |formation| {
                    formation
                        .monitor_sql("SELECT count(*) FROM pgautofailover.node WHERE reportedstate = 'single'")
                        .as_deref()
                        == Some("1")
                });
            }
        }
        formation.wait_until("a primary and a synchronous secondary", Duration::from_secs(60), |formation| {
            formation
                .monitor_sql(
                    "SELECT count(*) FROM pgautofailover.node WHERE reportedstate = goalstate \
                     AND reportedstate IN ('primary', 'secondary')",
                )
                .as_deref()
                == Some("2")
        });
        formation
    }

    fn data(&self, name: &str) -> String {
        self.directory.0.join(name).to_string_lossy().into_owned()
    }

    /// Starts `pg_autoctl <args> --run` as the postgres user, in a process group of its own.
    fn keep(&mut self, args: &[&str]) {
        use std::os::unix::process::CommandExt;
        let root = Command::new("id").arg("-u").output().is_ok_and(|id| id.stdout.trim_ascii() == b"0");
        let mut command = if root {
            let mut command = Command::new("setpriv");
            command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "pg_autoctl"]);
            command
        } else {
            Command::new("pg_autoctl")
        };
        let log = std::fs::File::create(self.directory.0.join(format!("keeper-{}.log", self.keepers.len())))
            .expect("a log file");
        let child = command
            .args(args)
            .args(["--pgctl", "/usr/lib/postgresql/15/bin/pg_ctl", "--hostname", "127.0.0.1", "--auth", "trust"])
            .args(["--no-ssl", "--run"])
            .env("XDG_CONFIG_HOME", self.directory.0.join("config"))
            .env("XDG_DATA_HOME", self.directory.0.join("share"))
            .env("HOME", &self.directory.0)
            .current_dir(&self.directory.0)
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("pg_autoctl starts (is postgresql-15-auto-failover installed?)");
        self.keepers.push(child);
    }

    /// Runs `query` on the monitor's database; its first line, `None` on an error.
    pub fn monitor_sql(&self, query: &str) -> Option<String> {
        let url = format!("postgres://postgres@127.0.0.1:{}/pg_auto_failover?connect_timeout=2", self.monitor_port);
        let output = Command::new("psql").args([&url, "-Atc", query]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or("").to_owned())
    }

    fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < limit, "the formation never had {what}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The keepers' logs, for a failure's message.
    pub fn logs(&self) -> String {
        (0..self.keepers.len())
            .map(|index| {
                std::fs::read_to_string(self.directory.0.join(format!("keeper-{index}.log"))).unwrap_or_default()
            })
            .map(|log| log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// A URL naming both nodes, for `database`, that connects to whichever accepts writes
    /// (`target_session_attrs=read-write`), as the service's `DATABASE_URL` would in production.
    pub fn url(&self, database: &str) -> String {
        let [first, second] = self.node_ports;
        format!(
            "postgres://postgres@127.0.0.1:{first},127.0.0.1:{second}/{database}?target_session_attrs=read-write&connect_timeout=2"
        )
    }

    /// The port of the node the monitor reports as primary, if one is.
    pub fn primary_port(&self) -> Option<u16> {
        self.monitor_sql(
            "SELECT nodeport FROM pgautofailover.node WHERE reportedstate IN ('primary', 'wait_primary', 'single') \
             AND goalstate = reportedstate",
        )?
        .parse()
        .ok()
    }

    /// Kills the node on `port` at once (SIGKILL to its keeper, the keeper's helpers, and its
    /// PostgreSQL), as a crash of its machine would.
    pub fn kill_node(&mut self, port: u16) {
        let index = self.node_ports.iter().position(|node| *node == port).expect("a node of the formation");
        let keeper = &mut self.keepers[index + 1];
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", keeper.id())]).status();
        let _ = keeper.wait();
        let data = self.data(&format!("node{}", index + 1));
        let _ = Command::new("pkill").args(["-KILL", "-f", &format!("postgres -D {data}")]).status();
    }
}

impl Drop for PrivateFormation {
    fn drop(&mut self) {
        for keeper in &mut self.keepers {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", keeper.id())]).status();
            let _ = keeper.wait();
        }
        for name in ["monitor", "node1", "node2"] {
            let postmaster = format!("postgres -D {}", self.data(name));
            // Its children first: a background worker that does not watch for its
            // postmaster's death (the monitor's health check) outlives a killed postmaster,
            // and keeps its logger alive with it.
            let found = Command::new("pgrep").args(["-f", &postmaster]).output();
            for pid in found
                .map(|found| String::from_utf8_lossy(&found.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = Command::new("pkill").args(["-KILL", "-P", pid]).status();
            }
            let _ = Command::new("pkill").args(["-KILL", "-f", &postmaster]).status();
        }
    }
}

/// A Redis master, its replica and three Sentinels of the test's own, on free ports, the
/// Sentinels deciding a failover within about two seconds of the master's death
/// (`down-after-milliseconds 1000`, quorum 2). Every process is killed when dropped.
#[derive(Debug)]
pub struct PrivateSentinels {
    /// The master's then the replica's port (which is master changes with a failover).
    pub redis_ports: [u16; 2],
    /// The Sentinels' ports.
    pub sentinel_ports: [u16; 3],
    /// The name the Sentinels monitor the master under.
    pub master_name: &'static str,
    servers: Vec<Option<Child>>,
    directory: TempDir,
}

impl PrivateSentinels {
    /// Starts the master, the replica (waiting until it is in sync) and the Sentinels
    /// (waiting until each knows the replica and the other Sentinels).
    pub async fn start() -> Self {
        let directory = TempDir::new("sentinel");
        std::fs::create_dir_all(&directory.0).expect("a directory for the Sentinels");
        let mut set = Self {
            redis_ports: [free_port(), free_port()],
            sentinel_ports: [free_port(), free_port(), free_port()],
            master_name: "user-service-master",
            servers: Vec::new(),
            directory,
        };
        let [master, replica] = set.redis_ports;
        set.spawn(&["--port", &master.to_string()]);
        set.spawn(&["--port", &replica.to_string(), "--replicaof", "127.0.0.1", &master.to_string()]);
        set.wait_until("the replica in sync", |set| {
            set.cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
        })
        .await;
        for (index, port) in set.sentinel_ports.into_iter().enumerate() {
            let configuration = set.directory.0.join(format!("sentinel-{index}.conf"));
            std::fs::write(
                &configuration,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    name = set.master_name,
                ),
            )
            .expect("a Sentinel configuration");
            let configuration = configuration.to_string_lossy().into_owned();
            set.spawn(&[&configuration, "--sentinel"]);
        }
        set.wait_until("Sentinels that know the replica and each other", |set| {
            set.sentinel_ports.iter().all(|port| {
                let master = set.cli(*port, &["SENTINEL", "MASTER", set.master_name]);
                let fields: Vec<&str> = master.lines().collect();
                let field = |name: &str| fields.iter().position(|line| *line == name).and_then(|at| fields.get(at + 1));
                field("num-slaves") == Some(&"1") && field("num-other-sentinels") == Some(&"2")
            })
        })
        .await;
        set
    }

    fn spawn(&mut self, args: &[&str]) {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.directory.0)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.servers.push(Some(child));
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < Duration::from_secs(30), "never had {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args)
    }

    /// The port of the master the Sentinels name now, asked of the last one (never frozen).
    pub fn master_port_from_a_thawed_sentinel(&self) -> Option<u16> {
        let address = self.cli(self.sentinel_ports[2], &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name]);
        address.lines().nth(1)?.trim().parse().ok()
    }

    /// `REDIS_SENTINELS` for the Sentinels.
    pub fn sentinels_variable(&self) -> String {
        self.sentinel_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// Freezes the first Sentinel (SIGSTOP): it accepts connections and never answers, as
    /// behind a network partition. Thawed when the set is dropped (and killed).
    pub fn freeze_first_sentinel(&self) {
        if let Some(Some(child)) = self.servers.get(2) {
            send_signal(child, "-STOP");
        }
    }

    /// Kills the Redis server on `port` at once (SIGKILL): its data is gone.
    pub fn kill(&mut self, port: u16) {
        let index = self.redis_ports.iter().position(|redis| *redis == port).expect("a server of the set");
        if let Some(mut child) = self.servers[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateSentinels {
    fn drop(&mut self) {
        for mut child in self.servers.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of the test's own: three masters, each with a replica, on free ports. A
/// master is failed over about a second after its death (`cluster-node-timeout 1000`), by a
/// replica however long its link was down (`cluster-replica-validity-factor 0`). Every
/// process is killed when dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    /// The nodes' ports: the six made first, the masters' then their replicas', and a seventh
    /// with [`ClusterOptions::replica_isolated_with_it`].
    pub ports: Vec<u16>,
    /// The address each node announces, by the index of its port.
    hosts: Vec<&'static str>,
    servers: Vec<Option<Child>>,
    /// The nodes' bus proxies ([`ClusterOptions::bus_proxies`]).
    proxies: Vec<BusProxy>,
    /// The port of the node that [`Self::cut_isolated_bus`] cuts off, with bus proxies.
    isolated: Option<u16>,
    /// Set once the isolated node's bus is cut; read by every proxy.
    cut: Arc<AtomicBool>,
    options: ClusterOptions,
    directory: TempDir,
}

/// How [`PrivateCluster::start_with`] starts a cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    /// `cluster-node-timeout`, in milliseconds: how long before a silent node is suspected
    /// (and a master cut off from the others sees its cluster fail). 1000 by default.
    pub node_timeout_ms: u64,
    /// Whether every node's cluster bus goes through a proxy of the test's (the node
    /// announces the proxy's port as its bus port), and the first node started runs on
    /// 127.0.0.2 (its clients', bus and replication traffic alike, its outgoing connections
    /// from that address too), so that [`PrivateCluster::cut_isolated_bus`] can cut its bus
    /// links, and only those. That node is made a master with one replica. Off by default.
    pub bus_proxies: bool,
    /// Whether masters send their replicas nothing but the writes (no `PING` every 10 s), so
    /// that a replica's replication offset stays 0 until its master's first write, and the
    /// other nodes hear it is more only once the replica tells them over the bus. Off by
    /// default.
    pub quiet_replication: bool,
    /// With bus proxies: the isolated master's only replica runs on 127.0.0.2 too, so that
    /// the cut leaves them on one side together (a seventh node; the master's first replica
    /// moves to another master). It keeps following the master, its replication link up,
    /// after a takeover it does not hear of. Off by default.
    pub replica_isolated_with_it: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { node_timeout_ms: 1000, bus_proxies: false, quiet_replication: false, replica_isolated_with_it: false }
    }
}

/// The address the isolated node of a cluster with bus proxies runs on.
const ISOLATED_HOST: &str = "127.0.0.2";

impl PrivateCluster {
    /// Starts the six nodes, makes them a cluster, and waits until every replica is in sync.
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions::default()).await
    }

    /// [`Self::start`] with `options`.
    pub async fn start_with(options: ClusterOptions) -> Self {
        let directory = TempDir::new("cluster");
        std::fs::create_dir_all(&directory.0).expect("a directory for the cluster");
        let mut cluster = Self {
            ports: Vec::new(),
            hosts: Vec::new(),
            servers: Vec::new(),
            proxies: Vec::new(),
            isolated: None,
            cut: Arc::new(AtomicBool::new(false)),
            options,
            directory,
        };
        while cluster.ports.len() < 6 {
            let host = if options.bus_proxies && cluster.ports.is_empty() { ISOLATED_HOST } else { "127.0.0.1" };
            cluster.start_node(host).await;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|port| format!("{}:{port}", cluster.host(*port))).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        cluster.wait_until_whole().await;
        if options.bus_proxies {
            let isolated = cluster.ports[0];
            // redis-cli chooses the masters: when it made the isolated node a replica, it
            // becomes its master's master (a manual failover, which both agree on).
            if cluster.master_of(isolated).is_some() {
                redis_cli(isolated, &["CLUSTER", "FAILOVER"]);
                cluster
                    .wait_until("the isolated node a master with a replica", |cluster| {
                        cluster.ports.iter().any(|port| cluster.master_of(*port) == Some(isolated))
                    })
                    .await;
                cluster.wait_until_whole().await;
            }
            cluster.isolated = Some(isolated);
            if options.replica_isolated_with_it {
                cluster.isolate_a_replica_with(isolated).await;
            }
        }
        cluster
    }

    /// Gives the isolated master a replica on its own host instead of its first one, which
    /// moves to another master.
    async fn isolate_a_replica_with(&mut self, isolated: u16) {
        let first_replica =
            *self.ports.iter().find(|port| self.master_of(**port) == Some(isolated)).expect("a replica");
        let other_master =
            *self.ports.iter().find(|port| **port != isolated && self.master_of(**port).is_none()).expect("a master");
        self.start_node(ISOLATED_HOST).await;
        let added = *self.ports.last().expect("the node just started");
        // Through the isolated master's bus proxy, the bus port it announces.
        let nodes = redis_cli(isolated, &["CLUSTER", "NODES"]);
        let bus_port = nodes
            .lines()
            .find(|line| line.contains("myself"))
            .and_then(|line| line.split(' ').nth(1)?.split(['@', ',']).nth(1).map(str::to_owned))
            .expect("the isolated master's bus port");
        redis_cli(added, &["CLUSTER", "MEET", ISOLATED_HOST, &isolated.to_string(), &bus_port]);
        self.wait_until("the new node known to the cluster", |cluster| {
            cluster.ports.iter().all(|port| redis_cli(*port, &["CLUSTER", "NODES"]).lines().count() == 7)
        })
        .await;
        let id_of = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        redis_cli(added, &["CLUSTER", "REPLICATE", &id_of(isolated)]);
        redis_cli(first_replica, &["CLUSTER", "REPLICATE", &id_of(other_master)]);
        self.wait_until("the isolated master's replica on its host, its first elsewhere", |cluster| {
            cluster.master_of(added) == Some(isolated) && cluster.master_of(first_replica) == Some(other_master)
        })
        .await;
        self.wait_until_whole().await;
    }

    /// Waits until every node sees the cluster `ok` and every node but the three masters is a
    /// replica in sync.
    async fn wait_until_whole(&self) {
        self.wait_until("a whole cluster, every replica in sync", |cluster| {
            let replicas = cluster.ports.iter().filter(|port| cluster.master_of(**port).is_some()).count();
            let ok =
                cluster.ports.iter().all(|port| redis_cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            ok && replicas == cluster.ports.len() - 3
        })
        .await;
    }

    /// Starts a node on free ports, on others again when it does not answer within 5 s (a
    /// port taken between its choice and the server's start), at most five times. With bus
    /// proxies, the node announces `host` and its proxy's port; a node on [`ISOLATED_HOST`]
    /// also listens on 127.0.0.1 (for [`redis_cli`]) but connects from `host`.
    async fn start_node(&mut self, host: &'static str) {
        for _ in 0..5 {
            let (port, bus_port) = (free_port(), free_port());
            if port == bus_port || self.ports.contains(&port) {
                continue;
            }
            let (port_text, bus_port_text) = (port.to_string(), bus_port.to_string());
            let file = |name: &str| self.directory.0.join(format!("{name}-{port}"));
            let mut command = Command::new("redis-server");
            command.args(["--port", &port_text, "--cluster-port", &bus_port_text]);
            let proxy = if self.options.bus_proxies {
                let proxy = BusProxy::start(host, (host, bus_port), Arc::clone(&self.cut));
                command.args(["--cluster-announce-ip", host, "--cluster-announce-bus-port", &proxy.port.to_string()]);
                if host == ISOLATED_HOST {
                    // Protected mode takes only 127.0.0.1 for the loopback interface: it
                    // would refuse a replica on this host.
                    command.args(["--bind", host, "127.0.0.1", "--bind-source-addr", host, "--protected-mode", "no"]);
                } else {
                    command.args(["--bind", host]);
                }
                Some(proxy)
            } else {
                command.args(["--bind", "127.0.0.1"]);
                None
            };
            if self.options.quiet_replication {
                // The link is not held dead for an hour without the pings either.
                command.args(["--repl-ping-replica-period", "3600", "--repl-timeout", "3601"]);
            }
            let mut child = command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", &self.options.node_timeout_ms.to_string()])
                .args(["--cluster-replica-validity-factor", "0", "--cluster-config-file"])
                .arg(file("nodes"))
                .args(["--save", "", "--appendonly", "no", "--logfile"])
                .arg(file("log"))
                .arg("--dir")
                .arg(&self.directory.0)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) && child.try_wait().is_ok_and(|exited| exited.is_none()) {
                if redis_cli(port, &["PING"]).contains("PONG") {
                    self.ports.push(port);
                    self.hosts.push(host);
                    self.servers.push(Some(child));
                    self.proxies.extend(proxy);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(file("log")).unwrap_or_default();
            eprintln!("a Redis Cluster node on {port} did not start:\n{log}");
        }
        panic!("no Redis Cluster node started in five tries");
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(started.elapsed() < Duration::from_secs(30), "never had {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The address the node on `port` announces (and clients reach it on).
    pub fn host(&self, port: u16) -> &'static str {
        let index = self.ports.iter().position(|node| *node == port).expect("a node of the cluster");
        self.hosts[index]
    }

    /// The port of the master the node on `port` replicates, when it is a replica in sync.
    pub fn master_of(&self, port: u16) -> Option<u16> {
        let replication = redis_cli(port, &["INFO", "replication"]);
        if !replication.contains("role:slave") || !replication.contains("master_link_status:up") {
            return None;
        }
        replication.lines().find_map(|line| line.strip_prefix("master_port:")).and_then(|port| port.trim().parse().ok())
    }

    /// `REDIS_CLUSTER_NODES` for every node.
    pub fn nodes_variable(&self) -> String {
        self.nodes_variable_without(&[])
    }

    /// `REDIS_CLUSTER_NODES` for every node but those on `left_out`.
    pub fn nodes_variable_without(&self, left_out: &[u16]) -> String {
        self.ports
            .iter()
            .filter(|port| !left_out.contains(port))
            .map(|port| format!("{}:{port}", self.host(*port)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of the master that serves `key`'s slot (the others, replicas included,
    /// answer `MOVED`).
    pub fn owner_of(&self, key: &str) -> u16 {
        *self
            .ports
            .iter()
            .find(|port| matches!(redis_cli(**port, &["EXISTS", key]).trim(), "0" | "1"))
            .expect("a master serves every slot")
    }

    /// Whether the node on `port` holds `key` (a node that does not own its slot answers
    /// `MOVED`).
    pub fn holds(&self, port: u16, key: &str) -> bool {
        redis_cli(port, &["EXISTS", key]).trim() == "1"
    }

    /// The node that [`Self::cut_isolated_bus`] cuts off (a master, on 127.0.0.2), when
    /// started with bus proxies.
    pub fn isolated(&self) -> Option<u16> {
        self.isolated
    }

    /// Cuts the isolated node's cluster bus for good: every bus connection from or to it is
    /// closed, now and whenever one is made again, while its clients and its replication
    /// links stay up. It then learns nothing of the cluster (a failover of its slots
    /// included) and the others nothing of it, until the node timeout makes each side
    /// suspect the other. Panics without bus proxies.
    pub fn cut_isolated_bus(&self) {
        assert!(self.isolated.is_some(), "the cluster was started without bus proxies");
        self.cut.store(true, Ordering::SeqCst);
        for proxy in &self.proxies {
            proxy.close_isolated_links();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let index = self.ports.iter().position(|node| *node == port).expect("a node of the cluster");
        if let Some(Some(child)) = self.servers.get(index) {
            send_signal(child, signal);
        }
    }

    /// Kills the node on `port` at once (SIGKILL): its data is gone.
    pub fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|node| *node == port).expect("a node of the cluster");
        if let Some(mut child) = self.servers[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for mut child in self.servers.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The proxies stop when dropped, after the nodes.
        self.proxies.clear();
    }
}

/// A TCP proxy in front of one cluster node's bus port (std threads: one accepting, two per
/// connection), that closes the isolated node's connections once the cluster's `cut` is
/// set: all of them when it is that node's proxy, else those from [`ISOLATED_HOST`]. Stops
/// (closing every connection) when dropped.
#[derive(Debug)]
struct BusProxy {
    /// The port it listens on, on the node's host.
    port: u16,
    shared: Arc<ProxyShared>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct ProxyShared {
    /// The listening address, to wake the accepting thread when stopping.
    address: std::net::SocketAddr,
    /// Whether this is the isolated node's proxy (all of its connections are cut).
    of_isolated: bool,
    cut: Arc<AtomicBool>,
    stopping: AtomicBool,
    /// Both ends of every connection forwarded, each with whether the cut closes it.
    links: Mutex<Vec<(bool, TcpStream, TcpStream)>>,
}

impl BusProxy {
    /// Listens on `host` (a free port) and forwards every connection to `target`.
    fn start(host: &str, target: (&str, u16), cut: Arc<AtomicBool>) -> Self {
        let listener = TcpListener::bind((host, 0)).expect("a port for a bus proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(ProxyShared {
            address,
            of_isolated: host == ISOLATED_HOST,
            cut,
            stopping: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
        });
        let target: std::net::SocketAddr =
            format!("{}:{}", target.0, target.1).parse().expect("the node's bus address");
        let accepting = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for incoming in listener.incoming() {
                    if shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(downstream) = incoming else { continue };
                    let isolated = shared.of_isolated
                        || downstream.peer_addr().is_ok_and(|peer| peer.ip().to_string() == ISOLATED_HOST);
                    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else { continue };
                    shared.forward(isolated, downstream, upstream);
                }
            })
        };
        Self { port: address.port(), shared, accepting: Some(accepting) }
    }

    /// Closes the connections the cut applies to (new ones are refused by the accepting side).
    fn close_isolated_links(&self) {
        let links = self.shared.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, downstream, upstream) in links.iter().filter(|(isolated, ..)| *isolated) {
            let _ = downstream.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

impl ProxyShared {
    /// Copies both ways between the two ends, unless the cut (or the stop) applies already.
    fn forward(&self, isolated: bool, downstream: TcpStream, upstream: TcpStream) {
        let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the lock that the cut's closing takes after setting the flag: a connection is
        // either refused here or closed there.
        if (isolated && self.cut.load(Ordering::SeqCst)) || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (Ok(down_copy), Ok(up_copy), Ok(down_kept), Ok(up_kept)) =
            (downstream.try_clone(), upstream.try_clone(), downstream.try_clone(), upstream.try_clone())
        else {
            return;
        };
        links.push((isolated, down_kept, up_kept));
        let pipe = |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
        };
        pipe(downstream, up_copy);
        pipe(upstream, down_copy);
    }
}

impl Drop for BusProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which sees that it stops.
        let _ = TcpStream::connect_timeout(&self.shared.address, Duration::from_secs(1));
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
        let links = self.shared.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, downstream, upstream) in links.iter() {
            let _ = downstream.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// Sends `signal` (e.g. `-STOP`) to `child`, asserting that it was delivered.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status();
    assert!(status.is_ok_and(|status| status.success()), "kill {signal} failed");
}
