//! RabbitMQ adapter: implements the domain's [`EventPublisher`] port with lapin (AMQP 0-9-1)
//! on tokio.
//!
//! - [`AmqpPublisher`]: publishes change events to a topic exchange, built from
//!   [`AmqpSettings`] without connecting.
//! - `testing` (feature `test-support`): a TCP proxy that cuts or blackholes the broker, for
//!   fault tests here and in the service's API tests.
//!
//! # What a publish promises
//!
//! [`EventPublisher::publish`] returns `Ok` only once the broker has **confirmed** every event
//! (publisher confirms, `confirm.select`): a confirmed persistent message has been taken in
//! charge by the broker (written to disk for durable queues), so the relay may then mark the
//! events published in the outbox. Any failure leaves them unmarked and the relay sends them
//! again next round: delivery is **at least once**, and consumers de-duplicate by the
//! message id (the event id). Events are published in the order given, on one channel, so
//! that a queue receives them in that order.
//!
//! Each event goes to the exchange with the routing key = its type (`user.created`, …), the
//! body = its CloudEvents JSON ([`ChangeEvent::to_cloudevent`]) and the properties
//! `content_type` = [`CONTENT_TYPE`], `delivery_mode` = 2 (persistent), `message_id` = the
//! event id, `type` = the event type, `timestamp` = the event time (Unix seconds). Messages
//! are not `mandatory`: an exchange without a bound queue drops them, which is the
//! consumers' business (they catch up from the pull feed).
//!
//! Throughput: a batch is queued whole on the channel, then all its confirmations are
//! awaited together (the broker confirms many messages at once): never one round trip, nor
//! even one hand-off to lapin's IO thread, per event (see `AmqpPublisher::send`). About
//! 14,000 events/s in batches of 500 against a local broker, in a debug build.
//!
//! # Connection handling
//!
//! One connection with one confirm-mode channel, made on the first call (of
//! [`publish`](AmqpPublisher::publish) or [`check`](EventPublisher::check)), not at
//! construction: the service starts while the broker is down. Making it is bounded by
//! [`AmqpSettings::connect_timeout`] (TCP, handshake, channel, `confirm.select` and the
//! exchange declaration: durable, `topic`). Sending a batch and awaiting its confirmations is
//! bounded by [`AmqpSettings::confirm_timeout`]. Any failure or timeout drops the connection
//! and the next call makes a new one: lapin's own status flags do not reliably notice a dead
//! peer, so an error is the only trusted sign; a connection lapin reports closed is replaced
//! before use. The heartbeat (5 s unless the URL sets `heartbeat`) makes the broker notice
//! a dead publisher and lapin notice a dead broker on idle connections. lapin's automatic
//! recovery is not used: a failed batch must be reported (and sent again by the relay), not
//! silently replayed. Calls are serialised by a mutex (one relay publishes at a time).
//!
//! A dropped connection's socket is shut down, not just left to lapin: each lapin connection
//! runs an IO loop on its own OS thread, which ends only when its socket fails. Towards a
//! silent peer (a network partition: the blackhole) that takes until the heartbeat is missed,
//! or, for a connection still in its handshake, until TCP gives up (minutes), so every
//! timed-out attempt of a relay retrying through a partition would leave a thread behind.
//!
//! # Errors
//!
//! - [`PublishError::Unreachable`]: no connection (refused, reset, lost, heartbeat missed, or
//!   no answer within the connect timeout). Retrying later may succeed.
//! - [`PublishError::Refused`]: the broker refuses us, which needs an operator:
//!   `ACCESS_REFUSED` (wrong credentials, or no permission on the exchange), `NOT_ALLOWED`
//!   (no access to the virtual host), `PRECONDITION_FAILED` (the exchange exists with another
//!   type or other flags).
//! - [`PublishError::Unconfirmed`]: a batch was sent but not confirmed in time, negatively
//!   acknowledged, or its channel was closed by the broker (e.g. the exchange deleted
//!   meanwhile: it is declared again on the next connection).
//!
//! The URL's password never appears in logs, errors or `Debug` output ([`redact_url`]).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::{Future, poll_fn};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use domain::error::BoxError;
use domain::event::ChangeEvent;
use domain::ports::{EventPublisher, PublishError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    AsyncTcpStream, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind,
};
use tokio::sync::Mutex;
use tokio::time::timeout;

/// The `content_type` of every message: a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// The heartbeat asked for when the URL does not set one, in seconds.
const HEARTBEAT_SECONDS: u16 = 5;
/// The largest frame proposed to the broker, unless the URL sets `frame_max`. lapin keeps
/// 32 frames of send buffer and 32 of receive buffer, zero-filled: at RabbitMQ's default of
/// 128 KiB that is 8 MiB resident for a connection that carries events of a few hundred
/// bytes, a third of the idle service. Larger messages are split into several frames.
const FRAME_MAX_BYTES: u32 = 16_384;

/// `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// The connection's name in the broker's management UI.
const CONNECTION_NAME: &str = "user-service event publisher";

/// Where and how to publish. `Debug` hides the URL's password.
#[derive(Clone)]
pub struct AmqpSettings {
    /// The broker, `amqp://user:password@host:port/vhost` (`%2f` is the default vhost `/`).
    /// `amqps://` is refused: the workspace builds lapin without a TLS backend. The query
    /// parameter `heartbeat` (seconds) is honoured, 5 when missing; `connection_timeout`
    /// (ms) is filled in from `connect_timeout` when missing, but lapin's async connect
    /// ignores it: `connect_timeout` is the bound.
    pub url: String,
    /// The topic exchange, declared durable on every connection.
    pub exchange: String,
    /// The bound on making a connection: TCP, AMQP handshake, channel, exchange declaration.
    pub connect_timeout: Duration,
    /// The bound on sending a batch and receiving all its confirmations.
    pub confirm_timeout: Duration,
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

/// Why [`AmqpSettings`] cannot make a publisher. Never contains the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The URL is not an AMQP URL.
    #[error("invalid event broker URL {url}: {reason}")]
    Url {
        /// The URL with its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The exchange name is empty or longer than 255 bytes.
    #[error("invalid exchange name: must be 1 to 255 bytes long")]
    Exchange,
    /// A timeout is zero.
    #[error("{0} must be longer than zero")]
    Timeout(&'static str),
}

/// Whether `url` is an AMQP URL this publisher can use (for configuration checks, before
/// anything connects): the reason when it is not, which never repeats the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: AMQPUri = url.parse().map_err(|reason: String| {
        // The parser's reason may quote a piece of the URL, a password included: kept only
        // when it quotes none.
        let pieces = url.split([':', '@', '/', '?', '&', '=', '#']).filter(|piece| piece.len() >= 3);
        if pieces.clone().any(|piece| reason.contains(piece)) || reason.contains(url) {
            "is not an AMQP URL".to_owned()
        } else {
            format!("is not an AMQP URL: {reason}")
        }
    })?;
    if uri.scheme == AMQPScheme::AMQPS {
        return Err("must start with amqp:// (TLS to the broker is not built in: terminate it in a sidecar)".to_owned());
    }
    if uri.authority.host.is_empty() {
        return Err("names no host".to_owned());
    }
    check_frame_max(&uri)
}

/// The frame sizes a URL may set (`frame_max`): from AMQP's minimum to RabbitMQ's default
/// maximum. lapin reserves 64 frames of buffer before it negotiates: 0 (no limit) would keep
/// 8 MiB, a large value aborts the process on the allocation, a small one never connects.
const FRAME_MAX_RANGE: std::ops::RangeInclusive<u32> = 4_096..=131_072;

fn check_frame_max(uri: &AMQPUri) -> Result<(), String> {
    match uri.query.frame_max {
        Some(frame_max) if !FRAME_MAX_RANGE.contains(&frame_max) => Err(format!(
            "sets frame_max={frame_max}: it must be between {} and {} bytes",
            FRAME_MAX_RANGE.start(),
            FRAME_MAX_RANGE.end()
        )),
        _ => Ok(()),
    }
}

/// Publishes change events to RabbitMQ with publisher confirms (see the crate docs).
pub struct AmqpPublisher {
    /// The parsed URL, with heartbeat and connection timeout filled in.
    uri: AMQPUri,
    /// The URL without its password, for logs.
    broker: String,
    exchange: ShortString,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    /// The connection in use; `None` before the first call and after a failure.
    session: Mutex<Option<Session>>,
}

/// A connection and its confirm-mode channel, on which the exchange is declared.
struct Session {
    channel: Channel,
    /// Kept so that the connection stays open (the channel also holds it) and for its status.
    connection: Connection,
    socket: SocketHandle,
}

impl Session {
    /// Drops a session that failed, hangs, or was closed, shutting its socket down: lapin
    /// would try to close it politely, and its IO thread lives until the socket fails, which
    /// for a silent peer may take minutes (see the crate docs). Abrupt also for a healthy
    /// connection (after a negative acknowledgement): rare enough not to distinguish.
    fn abandon(self) {
        self.socket.shut_down();
    }

    /// Whether lapin still believes in this connection. `true` proves nothing (a dead peer
    /// goes unnoticed until an error or a missed heartbeat); `false` is worth believing.
    fn looks_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

impl fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("broker", &self.broker)
            .field("exchange", &self.exchange.as_str())
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish_non_exhaustive()
    }
}

impl AmqpPublisher {
    /// A publisher of these settings. Does not connect (the first call does).
    ///
    /// Errors: the URL is not an AMQP URL, the exchange name is empty or too long, or a
    /// timeout is zero.
    pub fn new(settings: AmqpSettings) -> Result<Self, SettingsError> {
        let AmqpSettings { url, exchange, connect_timeout, confirm_timeout } = settings;
        let broker = redact_url(&url);
        let mut uri: AMQPUri = url.parse().map_err(|reason: String| SettingsError::Url {
            url: broker.clone(),
            // The parser quotes the whole URL in some of its messages.
            reason: if reason.contains(url.as_str()) { "not an absolute URL".to_owned() } else { reason },
        })?;
        if uri.scheme == AMQPScheme::AMQPS {
            // Without a TLS feature, lapin would silently speak plain AMQP to the TLS port.
            return Err(SettingsError::Url { url: broker, reason: "amqps (TLS) is not built in".to_owned() });
        }
        check_frame_max(&uri).map_err(|reason| SettingsError::Url { url: broker.clone(), reason })?;
        if exchange.is_empty() {
            return Err(SettingsError::Exchange);
        }
        let exchange = ShortString::try_new(exchange).map_err(|_| SettingsError::Exchange)?;
        if connect_timeout.is_zero() {
            return Err(SettingsError::Timeout("connect_timeout"));
        }
        if confirm_timeout.is_zero() {
            return Err(SettingsError::Timeout("confirm_timeout"));
        }
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECONDS);
        uri.query.frame_max.get_or_insert(FRAME_MAX_BYTES);
        uri.query.connection_timeout.get_or_insert(u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX));
        Ok(Self { uri, broker, exchange, connect_timeout, confirm_timeout, session: Mutex::new(None) })
    }

    /// The broker's URL without its password, for logs.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The exchange events go to.
    pub fn exchange(&self) -> &str {
        self.exchange.as_str()
    }

    /// One round trip to the broker on the publisher's connection (made if needed): the
    /// exchange declared again (as at connect, so the answer is the one a publication would
    /// meet), within the confirm timeout. On an error the connection is dropped.
    async fn probe(&self) -> Result<(), PublishError> {
        let mut slot = self.session.lock().await;
        let session = self.connected(&mut slot).await?;
        let declare = session.channel.exchange_declare(
            self.exchange.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        );
        let outcome = match timeout(self.confirm_timeout, declare).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                let failure = Failure::Broker { step: "declaring the exchange", source };
                Err(if failure.needs_operator() {
                    PublishError::Refused(failure.boxed())
                } else {
                    PublishError::Unreachable(failure.boxed())
                })
            }
            Err(_) => Err(PublishError::Unreachable(
                Failure::TimedOut { step: "declaring the exchange", limit: self.confirm_timeout }.boxed(),
            )),
        };
        if outcome.is_err()
            && let Some(session) = slot.take()
        {
            session.abandon();
        }
        outcome
    }

    /// Closes the connection politely (at shutdown), waiting at most the connect timeout.
    /// A later call connects again.
    pub async fn close(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        match timeout(self.connect_timeout, session.connection.close(200, "bye".into())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(broker = %self.broker, %error, "closing the event broker connection failed")
            }
            Err(_) => tracing::debug!(broker = %self.broker, "closing the event broker connection timed out"),
        }
        session.abandon();
    }

    /// The session in `slot`, made first if there is none or lapin knows it is closed.
    async fn connected<'a>(&self, slot: &'a mut Option<Session>) -> Result<&'a Session, PublishError> {
        let session = match slot.take() {
            Some(session) if session.looks_open() => session,
            stale => {
                if let Some(stale) = stale {
                    tracing::debug!(broker = %self.broker, "the event broker connection is closed; connecting again");
                    stale.abandon();
                }
                self.connect().await?
            }
        };
        Ok(slot.insert(session))
    }

    /// Makes a connection, its confirm-mode channel, and declares the exchange, within the
    /// connect timeout.
    async fn connect(&self) -> Result<Session, PublishError> {
        let socket = SocketHandle::default();
        let attempt = async {
            let properties = ConnectionProperties::default().with_connection_name(CONNECTION_NAME.into());
            let runtime = lapin::runtime::default_runtime().map_err(Failure::at("connecting"))?;
            // lapin's own TCP connection (`Connection::connect_uri`), keeping a handle on it.
            let handle = socket.clone();
            let tcp = taking(&runtime, async move |uri: AMQPUri, runtime| {
                let stream = uri.connect_with_config_async(OwnedTLSConfig::default().as_ref(), &runtime).await?;
                if let AsyncTcpStream::Plain(plain) = &stream {
                    handle.keep(plain.get_ref());
                }
                Ok(stream)
            });
            let connection = Connection::connector(self.uri.clone(), runtime, tcp, properties)
                .await
                .map_err(Failure::at("connecting"))?;
            let channel = connection.create_channel().await.map_err(Failure::at("opening a channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(Failure::at("enabling publisher confirms"))?;
            channel
                .exchange_declare(
                    self.exchange.clone(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await
                .map_err(Failure::at("declaring the exchange"))?;
            Ok::<_, Failure>(Session { channel, connection, socket: socket.clone() })
        };
        match timeout(self.connect_timeout, attempt).await {
            Ok(Ok(session)) => {
                tracing::info!(broker = %self.broker, exchange = %self.exchange, "connected to the event broker");
                Ok(session)
            }
            Ok(Err(failure)) => Err(if failure.needs_operator() {
                PublishError::Refused(failure.boxed())
            } else {
                PublishError::Unreachable(failure.boxed())
            }),
            Err(_) => {
                socket.shut_down();
                Err(PublishError::Unreachable(
                    Failure::TimedOut { step: "connecting", limit: self.connect_timeout }.boxed(),
                ))
            }
        }
    }

    /// Sends `events` on `channel` and awaits all their confirmations, within the confirm
    /// timeout.
    async fn send(&self, channel: &Channel, events: &[ChangeEvent]) -> Result<(), PublishError> {
        let work = async {
            let (heads, bodies): (Vec<_>, Vec<_>) = events
                .iter()
                .filter_map(Message::of)
                .map(|message| ((message.routing_key, message.properties), message.body))
                .unzip();
            // Each `basic_publish` future queues its frames (and numbers the message for its
            // confirmation) in its first poll, then waits for lapin's IO thread to write them.
            // Awaiting them one by one would cost a thread hand-off per event (~5,000/s);
            // polling each once now, in order, queues the whole batch in order at once, and
            // the waits below overlap.
            let mut writes = Vec::with_capacity(bodies.len());
            for ((routing_key, properties), body) in heads.into_iter().zip(&bodies) {
                let mut write = Box::pin(channel.basic_publish(
                    self.exchange.clone(),
                    routing_key,
                    BasicPublishOptions::default(),
                    body,
                    properties,
                ));
                let first_poll = poll_fn(|context| Poll::Ready(write.as_mut().poll(context))).await;
                writes.push(match first_poll {
                    Poll::Ready(written) => Ok(written),
                    Poll::Pending => Err(write),
                });
            }
            let mut confirms = Vec::with_capacity(writes.len());
            for write in writes {
                let written = match write {
                    Ok(written) => written,
                    Err(pending) => pending.await,
                };
                confirms.push(written.map_err(|source| {
                    let failure = Failure::Broker { step: "publishing", source };
                    if failure.needs_operator() {
                        PublishError::Refused(failure.boxed())
                    } else {
                        PublishError::Unreachable(failure.boxed())
                    }
                })?);
            }
            // Sequential awaits cost nothing: every message is already on its way, and the
            // broker acknowledges them in order, usually many at once.
            let sent = confirms.len();
            let mut nacked = 0;
            for confirm in confirms {
                match confirm.await {
                    Ok(Confirmation::Ack(_)) => {}
                    Ok(Confirmation::Nack(_)) => nacked += 1,
                    Ok(Confirmation::NotRequested) => {
                        return Err(PublishError::Unconfirmed(Failure::NotInConfirmMode.boxed()));
                    }
                    Err(source) => {
                        let failure = Failure::Broker { step: "awaiting confirmations", source };
                        return Err(if failure.needs_operator() {
                            PublishError::Refused(failure.boxed())
                        } else if failure.is_transport() {
                            PublishError::Unreachable(failure.boxed())
                        } else {
                            PublishError::Unconfirmed(failure.boxed())
                        });
                    }
                }
            }
            if nacked > 0 {
                return Err(PublishError::Unconfirmed(Failure::Nacked { nacked, sent }.boxed()));
            }
            Ok(())
        };
        timeout(self.confirm_timeout, work).await.unwrap_or_else(|_| {
            Err(PublishError::Unconfirmed(
                Failure::TimedOut { step: "publishing and awaiting confirmations", limit: self.confirm_timeout }
                    .boxed(),
            ))
        })
    }
}

#[async_trait]
impl EventPublisher for AmqpPublisher {
    /// Publishes `events` in order and returns once the broker confirmed them all.
    ///
    /// An event that cannot be published at all — its stored data is not JSON, or its type
    /// is longer than a routing key may be (255 bytes) — is logged (id, type, subject and
    /// sequence; never its data) at error level and **skipped**, counted as published: it
    /// would fail the same way at every attempt, and must not block the events behind it
    /// forever. It stays in the outbox and the pull feed for inspection.
    ///
    /// On any error the connection is dropped (the next call makes a new one) and none of
    /// the events may be considered published, though some may have reached the broker.
    async fn publish(&self, events: &[ChangeEvent]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut slot = self.session.lock().await;
        let outcome = match self.connected(&mut slot).await {
            Ok(session) => self.send(&session.channel, events).await,
            Err(error) => return Err(error),
        };
        if let Err(error) = &outcome {
            tracing::debug!(broker = %self.broker, %error, "dropping the event broker connection after a failure");
            if let Some(session) = slot.take() {
                session.abandon();
            }
        }
        outcome
    }

    /// Connects if needed and makes one round trip to the broker (see the crate docs).
    async fn check(&self) -> Result<(), PublishError> {
        self.probe().await
    }
}

/// A second handle on a connection's TCP socket, to shut it down when the connection is
/// abandoned (see [`Session::abandon`]). Dropping it leaves the socket alone (but, holding a
/// duplicate descriptor, it keeps the socket from being released before: a session whose
/// connection lapin saw fail is abandoned when next used).
#[derive(Clone, Default)]
struct SocketHandle(Arc<StdMutex<KeptSocket>>);

#[derive(Default)]
struct KeptSocket {
    socket: Option<TcpStream>,
    /// Set by `shut_down`: a socket lapin opens later for this connection (it retries a
    /// handshake cut short) is shut down at once.
    abandoned: bool,
}

impl SocketHandle {
    /// Keeps a duplicate of `socket`'s descriptor.
    fn keep(&self, socket: &impl AsFd) {
        match socket.as_fd().try_clone_to_owned() {
            Ok(duplicate) => {
                let duplicate = TcpStream::from(duplicate);
                let mut kept = self.lock();
                if kept.abandoned {
                    let _ = duplicate.shutdown(Shutdown::Both);
                } else {
                    kept.socket = Some(duplicate);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot keep a handle on the event broker socket"),
        }
    }

    /// Shuts the socket down (both ways): lapin's IO loop sees it closed and ends.
    fn shut_down(&self) {
        let mut kept = self.lock();
        kept.abandoned = true;
        if let Some(socket) = kept.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeptSocket> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `connect`, whose runtime argument has the type of `runtime` (which the compiler cannot
/// infer for an async closure, and lapin's runtime type cannot be named).
fn taking<R, O, F: AsyncFn(AMQPUri, R) -> O>(_runtime: &R, connect: F) -> F {
    connect
}

/// An event ready to send.
struct Message {
    routing_key: ShortString,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl Message {
    /// The message of `event`, or `None` (logged) when it cannot be published.
    fn of(event: &ChangeEvent) -> Option<Self> {
        let skip = |reason: &dyn fmt::Display| {
            tracing::error!(
                event_id = %event.id,
                kind = %event.kind,
                subject = %event.subject,
                sequence = event.sequence,
                %reason,
                "cannot publish this change event; skipping it (it stays in the outbox and the feed)"
            );
        };
        let body = match event.to_cloudevent() {
            Ok(body) => body,
            Err(error) => {
                skip(&format_args!("its data is not JSON: {error}"));
                return None;
            }
        };
        let Ok(routing_key) = ShortString::try_new(event.kind.as_str()) else {
            skip(&"its type is longer than a routing key may be (255 bytes)");
            return None;
        };
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(event.id.to_string()))
            .with_type(routing_key.clone())
            .with_timestamp(u64::try_from(event.time.unix_timestamp()).unwrap_or(0));
        Some(Self { routing_key, body, properties })
    }
}

/// What went wrong, inside a [`PublishError`] (its `source`).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// lapin failed at a step.
    #[error("{step} failed")]
    Broker {
        step: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// A step took too long.
    #[error("{step} took longer than {limit:?}")]
    TimedOut { step: &'static str, limit: Duration },
    /// The broker negatively acknowledged some messages.
    #[error("the broker rejected {nacked} of {sent} events (negative acknowledgement)")]
    Nacked { nacked: usize, sent: usize },
    /// A confirmation said the channel is not in confirm mode (never, after `confirm.select`).
    #[error("the channel is not in confirm mode")]
    NotInConfirmMode,
}

impl Failure {
    fn at(step: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Broker { step, source }
    }

    fn boxed(self) -> BoxError {
        Box::new(self)
    }

    /// Whether the broker refuses us for a reason only an operator can fix.
    fn needs_operator(&self) -> bool {
        let Self::Broker { source, .. } = self else {
            return false;
        };
        match source.kind() {
            ErrorKind::ProtocolError(error) => matches!(
                error.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => true,
            _ => false,
        }
    }

    /// Whether the connection itself failed (rather than the broker closing the channel).
    fn is_transport(&self) -> bool {
        let Self::Broker { source, .. } = self else {
            return false;
        };
        matches!(
            source.kind(),
            ErrorKind::IOError(_)
                | ErrorKind::RuntimeShutdownError(_)
                | ErrorKind::MissingHeartbeatError
                | ErrorKind::InvalidConnectionState(_)
                | ErrorKind::InvalidChannelState(..)
                | ErrorKind::InvalidChannel(_)
        )
    }
}

/// `url` with the password of its user info replaced by `***`, for logs and `Debug`. Works
/// on text that does not parse, too, and errs on the side of hiding: the user info ends at
/// the last `@` (a password may hold an unescaped `@`, `/` or `?`).
pub fn redact_url(url: &str) -> String {
    let rest_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[rest_start..];
    let Some(at) = rest.rfind('@') else {
        // Without user info, a ':' in the host part followed by anything but a port may be
        // a password's (a URL that lost its '@').
        let host = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let unbracketed = host.rsplit_once(']').map_or(host, |(_, after)| after);
        return match unbracketed.rsplit_once(':') {
            Some((_, port)) if !port.bytes().all(|byte| byte.is_ascii_digit()) => {
                format!("{}***", &url[..rest_start + host.len() - port.len()])
            }
            _ => url.to_owned(),
        };
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_owned();
    };
    format!("{}:***{}", &url[..rest_start + colon], &rest[at..])
}
