//! Change events: the pull feed, the broker (the machine's RabbitMQ, each test on an
//! exchange of its own), and the guarantee under faults: an event for every committed change
//! and none for the others, through broker outages and a killed instance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use adapters_amqp::testing::FaultProxy;
use api_tests::{Reply, SERVICE_KEY, ServiceProcess, TestApp};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use reqwest::Method;
use serde_json::{Value, json};

/// The machine's broker (`TEST_AMQP_URL`, set by `tests/with-services.sh`).
fn broker_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn broker_address() -> SocketAddr {
    let uri: lapin::uri::AMQPUri = broker_url().parse().unwrap();
    tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port)).await.unwrap().next().unwrap()
}

/// A message the test's queue received.
#[derive(Debug, Clone)]
struct Received {
    routing_key: String,
    content_type: Option<String>,
    message_id: Option<String>,
    persistent: bool,
    event: Value,
}

/// The test's consumer: an exclusive queue bound to the test's own exchange with `#`.
struct Observer {
    channel: Channel,
    queue: String,
    exchange: String,
    _connection: Connection,
}

impl Observer {
    /// Declares `exchange` as the service does (topic, durable) and binds a queue to it.
    async fn bound_to(exchange: &str) -> Self {
        let connection = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await.unwrap();
        let queue = queue.name().as_str().to_owned();
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(queue.as_str().into(), exchange.into(), "#".into(), bind, FieldTable::default())
            .await
            .unwrap();
        Self { channel, queue, exchange: exchange.to_owned(), _connection: connection }
    }

    /// Every message waiting now, in queue order.
    async fn drain(&self) -> Vec<Received> {
        let mut received = Vec::new();
        let options = BasicGetOptions { no_ack: true };
        while let Some(message) = self.channel.basic_get(self.queue.as_str().into(), options).await.unwrap() {
            let delivery = message.delivery;
            let properties = &delivery.properties;
            received.push(Received {
                routing_key: delivery.routing_key.as_str().to_owned(),
                content_type: properties.content_type().as_ref().map(|value| value.as_str().to_owned()),
                message_id: properties.message_id().as_ref().map(|value| value.as_str().to_owned()),
                persistent: *properties.delivery_mode() == Some(2),
                event: serde_json::from_slice(&delivery.data).unwrap(),
            });
        }
        received
    }

    /// Drains until `done` says the messages so far are enough, for up to `timeout`.
    async fn collect_until(&self, timeout: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut received = Vec::new();
        loop {
            received.extend(self.drain().await);
            if done(&received) || Instant::now() > deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn delete_exchange(&self) {
        let _ = self.channel.exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

fn test_exchange() -> String {
    format!("user.events.test-{}", uuid::Uuid::new_v4().simple())
}

/// Reads the whole feed as `client` sees it, following `next_after`.
async fn read_feed(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/api/v1/events?limit=2&after={after}"),
            None => "/api/v1/events?limit=2".to_owned(),
        };
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let page = reply.body["data"]["events"].as_array().unwrap().clone();
        if page.is_empty() {
            return events;
        }
        after = reply.body["data"]["next_after"].as_str().map(str::to_owned);
        events.extend(page);
    }
}

/// The feed once it holds at least `count` events (the relay polls every 100 ms).
async fn feed_with(app: &TestApp, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = read_feed(app).await;
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_serves_every_committed_change_as_cloudevents_in_commit_order() {
    let keys = "gateway:test-service-key-0123456789:*;reader:reader-key-0123456789:users.read";
    let app = TestApp::spawn_with(&[("SERVICE_API_KEYS", keys)]).await;
    let id = app.register("ada@example.com").await;
    let opt_out = app.send(Method::PUT, &format!("/api/v1/users/{id}/preferences"), &json!({"email": false})).await;
    assert_eq!(opt_out.status, 200);
    let device = json!({"token": "fcm-token-1", "platform": "android"});
    assert_eq!(app.send(Method::POST, &format!("/api/v1/users/{id}/devices"), &device).await.status, 201);
    // A failed write records nothing.
    let taken = app
        .send(
            Method::POST,
            "/api/v1/users",
            &json!({
                "name": "Other", "email": "ADA@example.com", "password": "correct horse battery"
            }),
        )
        .await;
    assert_eq!(taken.status, 409);

    let events = feed_with(&app, 3).await;
    let types: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user.created", "user.preferences.changed", "user.device.added"]);
    for (number, event) in events.iter().enumerate() {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "/user-service");
        assert_eq!(event["subject"], id.as_str());
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["sequence"], format!("{:020}", number + 1));
        assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        assert!(!event.to_string().contains("argon2"), "no password hash in an event");
    }
    assert_eq!(events[1]["data"]["email"], false);
    assert_eq!(events[2]["data"]["token"], "fcm-token-1");

    // The cursor: after the first event come the other two; after the last, nothing.
    let first = events[0]["id"].as_str().unwrap();
    let rest = app.get(&format!("/api/v1/events?after={first}")).await;
    assert_eq!(rest.body["data"]["events"].as_array().unwrap().len(), 2);
    assert_eq!(rest.body["data"]["has_more"], false);
    let last = events[2]["id"].as_str().unwrap();
    let none = app.get(&format!("/api/v1/events?after={last}")).await;
    assert_eq!(none.body["data"]["events"], json!([]));
    assert_eq!(none.body["data"]["next_after"], last, "an empty page keeps the cursor");

    let gone = app.get(&format!("/api/v1/events?after={}", uuid::Uuid::now_v7())).await;
    assert_eq!((gone.status, gone.body["error"].as_str()), (410, Some("cursor_expired")));
    gone.assert_envelope();
    let shouted = first.to_uppercase();
    let braced = format!("%7B{first}%7D");
    let bad_inputs = ["after=not-an-id", "limit=0", "limit=1001", "limit=x", "since=1", "limit=-1"];
    let non_canonical =
        [format!("after={shouted}"), format!("after={}", first.replace('-', "")), format!("after={braced}")];
    for bad in bad_inputs.iter().map(|bad| (*bad).to_owned()).chain(non_canonical) {
        let reply = app.get(&format!("/api/v1/events?{bad}")).await;
        assert!(matches!(reply.status, 400 | 422), "{bad}: {}", reply.status);
        reply.assert_envelope();
    }
    let anonymous =
        Reply::from_response(app.anonymous.get(format!("{}/api/v1/events", app.address)).send().await.unwrap()).await;
    assert_eq!(anonymous.status, 401);
    let reader = Reply::from_response(
        app.anonymous
            .get(format!("{}/api/v1/events", app.address))
            .header("x-service-key", "reader-key-0123456789")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reader.status, 403, "users.read does not reach every user's changes");
    let user_token = app.login("ada@example.com", "StrongPass123!").await;
    let as_user = Reply::from_response(
        app.anonymous.get(format!("{}/api/v1/events", app.address)).bearer_auth(user_token).send().await.unwrap(),
    )
    .await;
    assert_eq!(as_user.status, 403, "an end user never reads the feed");

    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["events"]["status"], "disabled", "{:?}", health.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_the_broker_with_their_properties_and_health_says_when_it_is_down() {
    let exchange = test_exchange();
    let observer = Observer::bound_to(&exchange).await;
    let proxy = FaultProxy::start(broker_address().await).await.unwrap();
    let url = proxy.url_for("amqp://guest:guest@{addr}/%2f");
    let app = TestApp::spawn_with(&[("AMQP_URL", url.as_str()), ("AMQP_EXCHANGE", exchange.as_str())]).await;
    let id = app.register("ada@example.com").await;
    let patch = app.send(Method::PATCH, &format!("/api/v1/users/{id}"), &json!({"name": "Ada L"})).await;
    assert_eq!(patch.status, 200);

    let received = observer.collect_until(Duration::from_secs(10), |received| received.len() >= 2).await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].routing_key, "user.created");
    assert_eq!(received[1].routing_key, "user.updated");
    for message in &received {
        assert_eq!(message.content_type.as_deref(), Some("application/cloudevents+json; charset=utf-8"));
        assert_eq!(message.message_id.as_deref(), message.event["id"].as_str(), "the message id is the event id");
        assert!(message.persistent);
        assert_eq!(message.event["subject"], id.as_str());
    }
    assert_eq!(received[1].event["data"]["name"], "Ada L");
    // The feed serves the same events, with the same ids.
    let feed = feed_with(&app, 2).await;
    let feed_ids: Vec<&Value> = feed.iter().map(|event| &event["id"]).collect();
    let broker_ids: Vec<&Value> = received.iter().map(|message| &message.event["id"]).collect();
    assert_eq!(feed_ids, broker_ids);
    let health = app.get("/health").await;
    assert_eq!(health.body["data"]["checks"]["events"]["status"], "ok", "{:?}", health.body);

    // The broker goes away: writes still succeed, health says `down` (still 200), and the
    // event waits, then arrives once the broker is back.
    proxy.cut();
    let patch = app.send(Method::PATCH, &format!("/api/v1/users/{id}"), &json!({"name": "Ada King"})).await;
    assert_eq!(patch.status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let health = app.get("/health").await;
        let events = &health.body["data"]["checks"]["events"];
        if (events["status"] == "down" && events["pending"] == 1) || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.status, 200);
    assert_eq!(health.body["data"]["checks"]["events"]["status"], "down", "{:?}", health.body);
    assert_eq!(health.body["data"]["status"], "degraded");
    assert_eq!(health.body["data"]["checks"]["events"]["pending"], 1);
    assert!(observer.drain().await.is_empty());
    proxy.pass();
    let late = observer.collect_until(Duration::from_secs(20), |received| !received.is_empty()).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].event["data"]["name"], "Ada King");
    assert_eq!(late[0].event["sequence"], format!("{:020}", 3));
    observer.delete_exchange().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_reported_and_nothing_is_lost() {
    let exchange = test_exchange();
    let observer = Observer::bound_to(&exchange).await;
    let uri: lapin::uri::AMQPUri = broker_url().parse().unwrap();
    let wrong = format!("amqp://guest:wrong-password@{}:{}/%2f", uri.authority.host, uri.authority.port);
    let app = TestApp::spawn_with(&[("AMQP_URL", wrong.as_str()), ("AMQP_EXCHANGE", exchange.as_str())]).await;
    // Nothing to publish yet: the relay asks the broker all the same, and health says so.
    let deadline = Instant::now() + Duration::from_secs(15);
    let idle = loop {
        let health = app.get("/health").await;
        if health.body["data"]["checks"]["events"]["reason"] == "refused" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(idle.body["data"]["checks"]["events"]["status"], "down", "{:?}", idle.body);
    assert_eq!(idle.body["data"]["checks"]["events"]["pending"], 0);
    app.register("ada@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let health = app.get("/health").await;
        if health.body["data"]["checks"]["events"]["reason"] == "refused" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health.body["data"]["checks"]["events"]["status"], "down", "{:?}", health.body);
    assert_eq!(health.body["data"]["checks"]["events"]["reason"], "refused");
    assert!(!health.body.to_string().contains("wrong-password"), "no secret in /health");
    assert_eq!(
        app.db.count("SELECT count(*) AS count FROM outbox_events WHERE published_at IS NULL").await.unwrap(),
        1
    );
    assert!(observer.drain().await.is_empty());
    observer.delete_exchange().await;
}

/// One user's writes as a client makes them: sequential, each to one of the instances.
#[derive(Debug, Default)]
struct Ledger {
    /// Per subject (user id): changes acknowledged (2xx).
    acknowledged: HashMap<String, usize>,
    /// Per subject: requests whose answer was lost (the instance died under them): they may
    /// or may not have committed.
    ambiguous: HashMap<String, usize>,
    /// Requests refused (4xx): must leave no event.
    refused: usize,
}

/// The instances' addresses; a killed one is `None` until restarted.
type Instances = Arc<RwLock<Vec<Option<String>>>>;

/// Sends `request` to instance `preferred` (or another live one when it is down). `Err(())`
/// when the answer was lost after the request may have reached an instance.
async fn send(
    client: &reqwest::Client,
    instances: &Instances,
    preferred: usize,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<Reply, ()> {
    for attempt in 0..40 {
        let live: Vec<String> = instances.read().unwrap().iter().flatten().cloned().collect();
        let address = instances.read().unwrap()[preferred % 2].clone().or_else(|| live.first().cloned());
        let Some(address) = address else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sent = client
            .request(method.clone(), format!("{address}{path}"))
            .header("x-service-key", SERVICE_KEY)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) => return Ok(Reply::from_response(response).await),
            // Never reached an instance: safe to send again (to the other one).
            Err(error) if error.is_connect() => {
                let _ = attempt;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return Err(()),
        }
    }
    Err(())
}

/// The writes of one user: registration, then `steps` changes of every kind, each of which
/// changes something whatever happened before it (unique names, quiet hours and tokens), and
/// now and then a request that must fail.
async fn write_one_user(
    number: usize,
    steps: usize,
    client: reqwest::Client,
    instances: Instances,
    ledger: Arc<Mutex<Ledger>>,
    pace: Duration,
) {
    let email = format!("user{number}@example.com");
    let register =
        json!({"name": format!("User {number}"), "email": email, "password": "correct horse battery staple"});
    let id = match send(&client, &instances, number, Method::POST, "/api/v1/users", &register).await {
        Ok(reply) if reply.status == 201 => reply.body["data"]["id"].as_str().unwrap().to_owned(),
        // Registration is the first write; a user whose registration is in doubt is left out.
        _ => return,
    };
    ledger.lock().unwrap().acknowledged.insert(id.clone(), 1);
    let mut tokens: Vec<String> = Vec::new();
    for step in 0..steps {
        tokio::time::sleep(pace).await;
        let (method, path, body, expect_change) = match step % 10 {
            9 => {
                // Another user's address: 409, no event.
                let other = format!("user{}@example.com", (number + 1) % 20);
                (Method::PATCH, format!("/api/v1/users/{id}"), json!({"email": other}), false)
            }
            4 => {
                // Quiet hours that are empty: 422, no event.
                let body = json!({"quiet_hours_start": "10:00", "quiet_hours_end": "10:00"});
                (Method::PUT, format!("/api/v1/users/{id}/preferences"), body, false)
            }
            0 | 5 => (
                Method::PATCH,
                format!("/api/v1/users/{id}"),
                json!({"name": format!("User {number} step {step}")}),
                true,
            ),
            1 | 6 => {
                let start = format!("{:02}:{:02}", step / 60, step % 60);
                let body = json!({"quiet_hours_start": start, "quiet_hours_end": "23:30"});
                (Method::PUT, format!("/api/v1/users/{id}/preferences"), body, true)
            }
            2 | 7 => {
                let token = format!("token-{number}-{step}");
                tokens.push(token.clone());
                let body = json!({"token": token, "platform": "android"});
                (Method::POST, format!("/api/v1/users/{id}/devices"), body, true)
            }
            _ => match tokens.pop() {
                Some(token) => (Method::PUT, format!("/api/v1/users/{id}/devices/{token}/deactivate"), json!({}), true),
                None => continue,
            },
        };
        let outcome = send(&client, &instances, number + step, method.clone(), &path, &body).await;
        let mut ledger = ledger.lock().unwrap();
        match outcome {
            Ok(reply) if (200..300).contains(&reply.status) && expect_change => {
                *ledger.acknowledged.entry(id.clone()).or_default() += 1;
            }
            Ok(reply) if !expect_change && matches!(reply.status, 409 | 422) => ledger.refused += 1,
            // A device that was not found (its registration was in doubt): no change.
            Ok(reply) if reply.status == 404 => {}
            Ok(reply) if reply.status == 503 => *ledger.ambiguous.entry(id.clone()).or_default() += 1,
            Ok(reply) => panic!("{method} {path}: unexpected {} {:?}", reply.status, reply.body),
            Err(()) => *ledger.ambiguous.entry(id.clone()).or_default() += 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_change_reaches_consumers_once_in_order_through_broker_outages_and_a_killed_instance() {
    const USERS: usize = 20;
    const STEPS: usize = 50;
    let database = adapters_postgres::testing::TestDatabase::create().await.unwrap();
    let exchange = test_exchange();
    let observer = Observer::bound_to(&exchange).await;
    let proxy = FaultProxy::start(broker_address().await).await.unwrap();
    let url = proxy.url_for("amqp://guest:guest@{addr}/%2f");
    let environment = [
        ("AMQP_URL", url.as_str()),
        ("AMQP_EXCHANGE", exchange.as_str()),
        ("SERVICE_API_KEYS", SERVICE_KEY),
        ("CACHE_ENABLED", "false"),
        ("RATE_LIMIT_PER_ADDRESS", "100000"),
    ];
    let first = ServiceProcess::start(&database, &environment).await;
    let mut second = Some(ServiceProcess::start(&database, &environment).await);
    let instances: Instances = Arc::new(RwLock::new(vec![
        Some(first.address.clone()),
        second.as_ref().map(|process| process.address.clone()),
    ]));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let writers: Vec<_> = (0..USERS)
        .map(|number| {
            let (client, instances, ledger) = (client.clone(), Arc::clone(&instances), Arc::clone(&ledger));
            tokio::spawn(write_one_user(number, STEPS, client, instances, ledger, Duration::from_millis(400)))
        })
        .collect();

    // The faults, in the middle of the writes: the broker unreachable for 10 s (cut, then
    // blackholed), and the second instance SIGKILLed, then started again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    instances.write().unwrap()[1] = None;
    drop(second.take()); // SIGKILL
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.blackhole();
    let restarted = ServiceProcess::start(&database, &environment).await;
    instances.write().unwrap()[1] = Some(restarted.address.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.pass();
    for writer in writers {
        writer.await.unwrap();
    }
    let writing = started.elapsed();

    // Every recorded event reaches the queue (the outbox is the truth of what committed).
    let recorded = || async {
        database.count("SELECT count(*) AS count FROM outbox_events WHERE published_at IS NULL").await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(recorded().await, 0, "every recorded event was published within 60 s of the end");
    let total = usize::try_from(database.count("SELECT count(*) AS count FROM outbox_events").await.unwrap()).unwrap();
    let received = observer
        .collect_until(Duration::from_secs(30), |received| {
            received.iter().filter_map(|message| message.message_id.as_deref()).collect::<HashSet<_>>().len() >= total
        })
        .await;

    // De-duplicated by id, in the order received: per subject, 1, 2, 3… with no gap.
    let mut seen = HashSet::new();
    let mut by_subject: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for message in &received {
        let id = message.event["id"].as_str().unwrap().to_owned();
        assert_eq!(message.message_id.as_deref(), Some(id.as_str()));
        if seen.insert(id) {
            let sequence: u64 = message.event["sequence"].as_str().unwrap().parse().unwrap();
            by_subject.entry(message.event["subject"].as_str().unwrap().to_owned()).or_default().push(sequence);
        }
    }
    let duplicates = received.len() - seen.len();
    assert_eq!(seen.len(), total, "every recorded event was received");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut ambiguous_committed = 0;
    for (subject, sequences) in &by_subject {
        let expected: Vec<u64> = (1..=u64::try_from(sequences.len()).unwrap()).collect();
        assert_eq!(sequences, &expected, "{subject}: received in sequence order, none missing");
        let acknowledged = ledger.acknowledged.get(subject).copied().unwrap_or_default();
        let ambiguous = ledger.ambiguous.get(subject).copied().unwrap_or_default();
        let events = sequences.len();
        assert!(
            acknowledged <= events && events <= acknowledged + ambiguous,
            "{subject}: {events} events for {acknowledged} acknowledged changes and {ambiguous} in doubt"
        );
        ambiguous_committed += events - acknowledged;
    }
    assert_eq!(by_subject.len(), ledger.acknowledged.len(), "an event stream for every registered user, no other");
    let acknowledged: usize = ledger.acknowledged.values().sum();
    let ambiguous: usize = ledger.ambiguous.values().sum();
    assert!(acknowledged >= 700, "most writes went through ({acknowledged})");
    assert!(ledger.refused >= 100, "the refused writes were made ({})", ledger.refused);
    eprintln!(
        "{acknowledged} acknowledged changes, {} refused, {ambiguous} in doubt ({ambiguous_committed} of them \
         committed); {total} events, {duplicates} duplicates delivered; writes took {writing:?}",
        ledger.refused
    );
    drop(restarted);
    drop(first);
    observer.delete_exchange().await;
}
