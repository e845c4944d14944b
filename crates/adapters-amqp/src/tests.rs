//! Tests against the machine's RabbitMQ (`TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Every test uses an exchange and a queue of its
//! own (the queue exclusive: it goes with the test's connection) and deletes its exchange at
//! the end, whether it passed or not; nothing shared is touched.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use domain::error::error_chain;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::testing::FaultProxy;

/// The bound on each test.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The publishers' timeouts in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// What a bounded failure may take beyond its timeout.
const SLACK: Duration = Duration::from_millis(1500);

fn broker_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The broker URL with another password, user, vhost or address.
fn broker_url_with(change: impl FnOnce(&mut AMQPUri)) -> String {
    let mut uri: AMQPUri = broker_url().parse().unwrap();
    change(&mut uri);
    uri.to_string()
}

async fn broker_address() -> SocketAddr {
    let uri: AMQPUri = broker_url().parse().unwrap();
    tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port)).await.unwrap().next().unwrap()
}

fn unique_exchange(test: &str) -> String {
    format!("test.adapters-amqp.{test}.{}", Uuid::now_v7().simple())
}

fn settings(url: String, exchange: &str) -> AmqpSettings {
    AmqpSettings {
        url,
        exchange: exchange.to_owned(),
        connect_timeout: CONNECT_TIMEOUT,
        confirm_timeout: CONFIRM_TIMEOUT,
    }
}

fn publisher(url: String, exchange: &str) -> AmqpPublisher {
    AmqpPublisher::new(settings(url, exchange)).unwrap()
}

fn event(kind: &str, subject: &str, sequence: i64) -> ChangeEvent {
    ChangeEvent {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        subject: subject.to_owned(),
        sequence,
        // Whole seconds, so that the `timestamp` property can be compared exactly.
        time: OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap(),
        data: json!({ "sequence": sequence, "subject": subject }).to_string(),
    }
}

fn events(count: usize) -> Vec<ChangeEvent> {
    let subject = Uuid::now_v7().to_string();
    (1..=count).map(|sequence| event("user.preferences.changed", &subject, sequence as i64)).collect()
}

/// Runs `body` within [`TEST_TIMEOUT`], then deletes `exchange`, whatever happened.
async fn run(exchange: &str, body: impl Future<Output = ()> + Send + 'static) {
    let outcome = tokio::spawn(tokio::time::timeout(TEST_TIMEOUT, body)).await;
    delete_exchange(exchange).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the test took longer than {TEST_TIMEOUT:?}"),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// `work`'s output, unless it takes longer than [`TEST_TIMEOUT`] (then the test fails).
async fn bounded<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, work).await.expect("the test took too long")
}

async fn delete_exchange(exchange: &str) {
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await.unwrap();
}

async fn exchange_exists(exchange: &str) -> bool {
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await.is_ok()
}

/// The test's own view of the broker: an exclusive queue bound to the exchange with `#`.
struct Observer {
    channel: Channel,
    queue: String,
    _connection: Connection,
}

impl Observer {
    /// Declares `exchange` as the publisher does (or as `kind`), and the bound queue.
    async fn on(exchange: &str, kind: ExchangeKind) -> Self {
        let connection = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel.exchange_declare(exchange.into(), kind, durable, FieldTable::default()).await.unwrap();
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await.unwrap();
        let queue = queue.name().as_str().to_owned();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self { channel, queue, _connection: connection }
    }

    async fn bound_to(exchange: &str) -> Self {
        Self::on(exchange, ExchangeKind::Topic).await
    }

    /// The next message in the queue, if any.
    async fn next(&self) -> Option<Delivery> {
        let options = BasicGetOptions { no_ack: true };
        self.channel.basic_get(self.queue.as_str().into(), options).await.unwrap().map(|message| message.delivery)
    }

    /// How many messages wait in the queue.
    async fn waiting(&self) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// The ids of every waiting message, in queue order.
    async fn drain(&self) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(delivery) = self.next().await {
            ids.push(delivery.properties.message_id().as_ref().unwrap().to_string());
        }
        ids
    }
}

// --- Publishing ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_whole_and_in_order_as_cloudevents_with_their_properties() {
    let exchange = unique_exchange("order");
    let name = exchange.clone();
    run(&exchange, async move {
        let observer = Observer::bound_to(&name).await;
        let publisher = publisher(broker_url(), &name);
        let user = Uuid::now_v7().to_string();
        // The last one is six frames long, with a different byte at every position of a frame.
        let mut large = event("user.preferences.changed", &user, 8);
        let text: String =
            (0..6 * FRAME_MAX_BYTES as usize).map(|index| char::from(b'a' + (index % 26) as u8)).collect();
        large.data = json!({ "text": text }).to_string();
        let sent = vec![
            event("user.created", &user, 1),
            event("user.preferences.changed", &user, 2),
            event("category.created", "categories/news", 7),
            large,
        ];

        publisher.publish(&sent).await.unwrap();

        for event in &sent {
            let delivery = observer.next().await.expect("one message per event");
            assert_eq!(delivery.exchange.as_str(), name);
            assert_eq!(delivery.routing_key.as_str(), event.kind, "the routing key is the type");
            let properties = &delivery.properties;
            assert_eq!(properties.content_type().as_ref().map(ShortString::as_str), Some(CONTENT_TYPE));
            assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
            assert_eq!(properties.message_id().as_ref().map(ShortString::as_str), Some(event.id.to_string().as_str()));
            assert_eq!(properties.kind().as_ref().map(ShortString::as_str), Some(event.kind.as_str()));
            assert_eq!(*properties.timestamp(), Some(event.time.unix_timestamp() as u64));

            let body: Value = serde_json::from_slice(&delivery.data).unwrap();
            assert_eq!(body["specversion"], "1.0");
            assert_eq!(body["source"], "/user-service");
            assert_eq!(body["id"], event.id.to_string());
            assert_eq!(body["type"], event.kind);
            assert_eq!(body["subject"], event.subject);
            assert_eq!(body["sequence"], format!("{:020}", event.sequence));
            assert_eq!(body["data"], serde_json::from_str::<Value>(&event.data).unwrap());
        }
        assert!(observer.next().await.is_none(), "nothing more than the events");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_confirmed_quickly() {
    let exchange = unique_exchange("throughput");
    let name = exchange.clone();
    run(&exchange, async move {
        let observer = Observer::bound_to(&name).await;
        let publisher = publisher(broker_url(), &name);
        publisher.check().await.unwrap();

        let batch = events(2_000);
        let started = Instant::now();
        publisher.publish(&batch).await.unwrap();
        let one_batch = started.elapsed();

        // As the relay publishes: batches of 500.
        let batches: Vec<Vec<ChangeEvent>> = (0..4).map(|_| events(500)).collect();
        let started = Instant::now();
        for batch in &batches {
            publisher.publish(batch).await.unwrap();
        }
        let four_batches = started.elapsed();

        let rate = |elapsed: Duration| 2_000.0 / elapsed.as_secs_f64();
        println!(
            "2,000 events confirmed: one batch in {one_batch:?} ({:.0}/s), four batches of 500 in {four_batches:?} ({:.0}/s)",
            rate(one_batch),
            rate(four_batches)
        );
        // Very loose (the machine may be busy): one round trip per event would be far slower.
        assert!(rate(one_batch) > 500.0 && rate(four_batches) > 500.0, "too slow");
        // All there, in order (the batch is queued in one go: see `AmqpPublisher::send`).
        assert_eq!(observer.waiting().await, 4_000, "every confirmed event is in the queue");
        let expected: Vec<String> =
            batch.iter().chain(batches.iter().flatten()).map(|event| event.id.to_string()).collect();
        assert!(observer.drain().await == expected, "the events arrived out of order");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_data_is_not_json_is_skipped_and_the_others_go_through() {
    let exchange = unique_exchange("skip");
    let name = exchange.clone();
    run(&exchange, async move {
        let observer = Observer::bound_to(&name).await;
        let publisher = publisher(broker_url(), &name);
        let mut sent = events(3);
        sent[1].data = "{not json".to_owned();

        publisher.publish(&sent).await.unwrap();

        assert_eq!(observer.drain().await, [sent[0].id.to_string(), sent[2].id.to_string()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connects_and_declares_the_exchange_close_closes_and_nothing_to_publish_needs_no_broker() {
    let exchange = unique_exchange("check");
    let name = exchange.clone();
    run(&exchange, async move {
        let publisher = publisher(broker_url(), &name);
        assert!(!exchange_exists(&name).await);
        publisher.check().await.unwrap();
        // Declared by `check`, as a durable topic exchange (declaring it so again is accepted)...
        assert!(exchange_exists(&name).await);
        let observer = Observer::bound_to(&name).await;
        publisher.publish(&events(1)).await.unwrap();
        assert_eq!(observer.waiting().await, 1);
        // Closed (at shutdown), it connects again if called after all.
        publisher.close().await;
        publisher.publish(&events(1)).await.unwrap();
        assert_eq!(observer.waiting().await, 2);

        // ...and an empty batch does not even connect.
        let nowhere = publisher_to_unused_port(&name).await;
        nowhere.publish(&[]).await.unwrap();
        assert!(matches!(nowhere.check().await, Err(PublishError::Unreachable(_))));
    })
    .await;
}

// --- Refusals and unreachable brokers ----------------------------------------------------

async fn publisher_to_unused_port(exchange: &str) -> AmqpPublisher {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    publisher(
        broker_url_with(|uri| {
            uri.authority.host = address.ip().to_string();
            uri.authority.port = address.port();
        }),
        exchange,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_at_once_and_never_shown() {
    let password = format!("wrong-{}", Uuid::now_v7().simple());
    let url = broker_url_with(|uri| uri.authority.userinfo.password = password.clone());
    let publisher = publisher(url.clone(), &unique_exchange("password"));

    let started = Instant::now();
    let error = bounded(publisher.publish(&events(1))).await.unwrap_err();

    println!("wrong password: {} after {:?}", error_chain(&error), started.elapsed());
    assert!(matches!(error, PublishError::Refused(_)), "{error:?}");
    assert!(started.elapsed() < CONNECT_TIMEOUT, "refused, not timed out: {:?}", started.elapsed());
    for shown in
        [error_chain(&error), format!("{error:?}"), format!("{publisher:?}"), format!("{:?}", settings(url, "x"))]
    {
        assert!(!shown.contains(&password), "the password leaks: {shown}");
    }
    assert!(error_chain(&error).contains("ACCESS_REFUSED"), "the broker's reason is kept: {}", error_chain(&error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_virtual_host_is_refused() {
    let url = broker_url_with(|uri| uri.vhost = format!("no-such-vhost-{}", Uuid::now_v7().simple()));
    let publisher = publisher(url, &unique_exchange("vhost"));

    let error = bounded(publisher.publish(&events(1))).await.unwrap_err();

    assert!(matches!(error, PublishError::Refused(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_port_is_unreachable_without_waiting_for_the_timeout() {
    let publisher = publisher_to_unused_port(&unique_exchange("port")).await;

    let started = Instant::now();
    let error = bounded(publisher.publish(&events(1))).await.unwrap_err();

    assert!(matches!(error, PublishError::Unreachable(_)), "{error:?}");
    assert!(started.elapsed() < CONNECT_TIMEOUT, "refused at once: {:?}", started.elapsed());
    // And again on the next call (no state left behind).
    assert!(matches!(bounded(publisher.publish(&events(1))).await, Err(PublishError::Unreachable(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_of_another_type_is_refused() {
    let exchange = unique_exchange("direct");
    let name = exchange.clone();
    run(&exchange, async move {
        let _observer = Observer::on(&name, ExchangeKind::Direct).await;
        let publisher = publisher(broker_url(), &name);

        let error = publisher.publish(&events(1)).await.unwrap_err();

        assert!(matches!(error, PublishError::Refused(_)), "{error:?}");
        assert!(error_chain(&error).contains("PRECONDITION_FAILED"), "{}", error_chain(&error));
        assert!(matches!(publisher.check().await, Err(PublishError::Refused(_))), "refused again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_deleted_meanwhile_fails_one_batch_then_is_declared_again() {
    let exchange = unique_exchange("deleted");
    let name = exchange.clone();
    run(&exchange, async move {
        let publisher = publisher(broker_url(), &name);
        publisher.publish(&events(1)).await.unwrap();
        delete_exchange(&name).await;

        let error = publisher.publish(&events(1)).await.unwrap_err();
        assert!(matches!(error, PublishError::Unconfirmed(_)), "{error:?}");
        assert!(error_chain(&error).contains("NOT_FOUND"), "{}", error_chain(&error));

        let observer = Observer::bound_to(&name).await;
        let sent = events(2);
        publisher.publish(&sent).await.unwrap();
        assert_eq!(observer.drain().await, [sent[0].id.to_string(), sent[1].id.to_string()]);
    })
    .await;
}

// --- Network faults -----------------------------------------------------------------------

/// A publisher reaching the broker through `proxy`.
fn publisher_through(proxy: &FaultProxy, exchange: &str) -> AmqpPublisher {
    let address = proxy.address();
    publisher(
        broker_url_with(|uri| {
            uri.authority.host = address.ip().to_string();
            uri.authority.port = address.port();
        }),
        exchange,
    )
}

/// Asserts that `publishing` fails as one of `expected` within `limit` (plus slack), and at
/// least `at_least` after it started.
async fn fails_within(
    publishing: impl Future<Output = Result<(), PublishError>>,
    at_least: Duration,
    limit: Duration,
    expected: fn(&PublishError) -> bool,
) {
    let started = Instant::now();
    let error = publishing.await.expect_err("the publish must fail");
    let elapsed = started.elapsed();
    println!("failed after {elapsed:?}: {}", error_chain(&error));
    assert!(expected(&error), "unexpected error: {}", error_chain(&error));
    assert!(elapsed >= at_least && elapsed <= limit + SLACK, "failed after {elapsed:?}: {}", error_chain(&error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_the_batch_and_the_next_call_after_it_heals_reconnects() {
    let exchange = unique_exchange("cut");
    let name = exchange.clone();
    run(&exchange, async move {
        let proxy = FaultProxy::start(broker_address().await).await.unwrap();
        let observer = Observer::bound_to(&name).await;
        let publisher = publisher_through(&proxy, &name);
        let first = events(1);
        publisher.publish(&first).await.unwrap();

        proxy.cut();
        let lost = |error: &PublishError| matches!(error, PublishError::Unreachable(_) | PublishError::Unconfirmed(_));
        fails_within(publisher.publish(&events(1)), Duration::ZERO, CONFIRM_TIMEOUT, lost).await;
        // While cut, connecting fails at once (the proxy resets new connections).
        let unreachable = |error: &PublishError| matches!(error, PublishError::Unreachable(_));
        fails_within(publisher.publish(&events(1)), Duration::ZERO, Duration::ZERO, unreachable).await;

        proxy.pass();
        let last = events(1);
        publisher.publish(&last).await.unwrap();
        let received = observer.drain().await;
        assert_eq!(received.first(), Some(&first[0].id.to_string()));
        assert_eq!(received.last(), Some(&last[0].id.to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_broker_fails_within_the_timeouts_and_the_next_call_after_it_heals_reconnects() {
    let exchange = unique_exchange("blackhole");
    let name = exchange.clone();
    run(&exchange, async move {
        let proxy = FaultProxy::start(broker_address().await).await.unwrap();
        let observer = Observer::bound_to(&name).await;
        let publisher = publisher_through(&proxy, &name);
        publisher.publish(&events(1)).await.unwrap();

        proxy.blackhole();
        // The connection hangs: no confirmation comes within the confirm timeout.
        let unconfirmed = |error: &PublishError| matches!(error, PublishError::Unconfirmed(_));
        fails_within(publisher.publish(&events(1)), CONFIRM_TIMEOUT, CONFIRM_TIMEOUT, unconfirmed).await;
        // A new connection hangs in its handshake: the connect timeout ends it.
        let unreachable = |error: &PublishError| matches!(error, PublishError::Unreachable(_));
        fails_within(publisher.check(), CONNECT_TIMEOUT, CONNECT_TIMEOUT, unreachable).await;

        proxy.pass();
        let last = events(1);
        publisher.publish(&last).await.unwrap();
        // At least once: a batch sent into the blackhole may arrive too, once it heals.
        assert!(observer.drain().await.contains(&last[0].id.to_string()));
    })
    .await;
}

/// `Session::abandon`'s mechanism; the blackhole test above runs it against lapin (whose IO
/// thread then ends at once instead of when the heartbeat is missed or TCP gives up).
#[tokio::test]
async fn an_abandoned_socket_is_shut_down_even_if_lapin_opens_it_later() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let handle = SocketHandle::default();
    // The client is kept open (borrowed here): only the handle can close it.
    let peer_sees_it_closed = async |_open_client: &tokio::net::TcpStream| {
        let (mut server, _) = listener.accept().await.unwrap();
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut server, &mut byte));
        assert_eq!(read.await.expect("the socket must be shut down").unwrap(), 0);
    };

    let first = tokio::net::TcpStream::connect(address).await.unwrap();
    handle.keep(&first);
    handle.shut_down();
    bounded(peer_sees_it_closed(&first)).await;

    // A handshake retried on a new socket after the abandonment.
    let second = tokio::net::TcpStream::connect(address).await.unwrap();
    handle.keep(&second);
    bounded(peer_sees_it_closed(&second)).await;
}

// --- Settings -----------------------------------------------------------------------------

#[test]
fn passwords_are_hidden_from_urls_shown() {
    assert_eq!(redact_url("amqp://user:secret@host:5672/%2f"), "amqp://user:***@host:5672/%2f");
    assert_eq!(redact_url("amqps://user:se@c/r?et@host/vhost?heartbeat=5"), "amqps://user:***@host/vhost?heartbeat=5");
    assert_eq!(redact_url("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
    assert_eq!(redact_url("amqp://guest:S3cretPW"), "amqp://guest:***");
    assert_eq!(redact_url("amqp://guest:S3cretPW/%2f"), "amqp://guest:***");
    assert_eq!(check_url("amqp://guest:guest@127.0.0.1:5672/%2f"), Ok(()));
    for bad in ["amqp://guest:S3cretPW", "amqp://h:99999/", "amqp://h/?heartbeat=abc", "amqps://h/", "amqp://guest:x@"]
    {
        let reason = check_url(bad).expect_err(bad);
        assert!(!reason.contains("S3cretPW") && !reason.contains(bad), "{reason}");
    }
    assert_eq!(redact_url("amqp://user@host/%2f"), "amqp://user@host/%2f");
    assert_eq!(redact_url("user:secret@host"), "user:***@host");
}

#[test]
fn invalid_settings_are_rejected_without_showing_the_password() {
    let valid = settings("amqp://user:secret@localhost:5672/%2f".to_owned(), "user.events");
    assert!(AmqpPublisher::new(valid.clone()).is_ok());

    for url in [
        "http://user:secret@localhost/",
        "amqp://user:secret@localhost:99999/",
        "user:secret@localhost",
        "amqps://user:secret@localhost/%2f",
    ] {
        let error = AmqpPublisher::new(AmqpSettings { url: url.to_owned(), ..valid.clone() }).unwrap_err();
        assert!(matches!(error, SettingsError::Url { .. }), "{url}: {error:?}");
        assert!(!error.to_string().contains("secret") && !format!("{error:?}").contains("secret"), "{error}");
    }
    let error = AmqpPublisher::new(AmqpSettings { exchange: String::new(), ..valid.clone() }).unwrap_err();
    assert_eq!(error, SettingsError::Exchange);
    let error = AmqpPublisher::new(AmqpSettings { exchange: "x".repeat(256), ..valid.clone() }).unwrap_err();
    assert_eq!(error, SettingsError::Exchange);
    let error = AmqpPublisher::new(AmqpSettings { confirm_timeout: Duration::ZERO, ..valid }).unwrap_err();
    assert_eq!(error, SettingsError::Timeout("confirm_timeout"));
}

#[test]
fn the_url_gets_a_heartbeat_a_connection_timeout_and_a_frame_size_unless_it_has_them() {
    let defaulted = publisher("amqp://user:secret@localhost:5672/%2f".to_owned(), "user.events");
    assert_eq!(defaulted.uri.query.heartbeat, Some(5));
    assert_eq!(defaulted.uri.query.connection_timeout, Some(2_000));
    assert_eq!(defaulted.uri.query.frame_max, Some(FRAME_MAX_BYTES));
    let given = publisher(
        "amqp://user:secret@localhost:5672/%2f?heartbeat=30&connection_timeout=700&frame_max=65536".to_owned(),
        "user.events",
    );
    assert_eq!(given.uri.query.heartbeat, Some(30));
    assert_eq!(given.uri.query.connection_timeout, Some(700));
    assert_eq!(given.uri.query.frame_max, Some(65_536));
    // Sizes lapin would abort on (it reserves 64 frames before negotiating), keep 8 MiB for
    // (0: no limit), or never connect with (under AMQP's 4096).
    for frame_max in [0, 1, 4_095, 131_073, 2_000_000_000] {
        let url = format!("amqp://user:secret@localhost:5672/%2f?frame_max={frame_max}");
        let refused = AmqpPublisher::new(settings(url.clone(), "user.events")).expect_err("refused");
        assert!(refused.to_string().contains("between 4096 and 131072"), "{refused}");
        assert!(check_url(&url).unwrap_err().contains("between 4096 and 131072"));
    }
    for frame_max in [4_096, 131_072] {
        assert!(check_url(&format!("amqp://localhost/%2f?frame_max={frame_max}")).is_ok());
    }
    assert!(!format!("{given:?}").contains("secret"));
    assert_eq!(
        given.broker(),
        "amqp://user:***@localhost:5672/%2f?heartbeat=30&connection_timeout=700&frame_max=65536"
    );
}
