//! Change events at run time: the relay task that publishes the store's outbox (every
//! instance runs one; the store lets one relay at a time), the pruning of done events, and
//! the state `/health` reports.
//!
//! A round runs every [`POLL_INTERVAL`] (at once again while events wait), publishes at most
//! `EVENTS_RELAY_BATCH` events and marks them published once the broker confirmed them. A
//! failing broker is retried with a backoff up to [`MAX_BACKOFF`]; the events wait in the
//! store meanwhile (nothing is lost, nothing is published twice except after a crash between
//! a confirm and its commit: consumers de-duplicate by id).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::event::{Backlog, ChangeEvent, RelayRound};
use domain::ports::{Clock, EventOutbox, EventPublisher, PublishError, RelayError};
use time::OffsetDateTime;

use crate::metrics::Metrics;

/// How often an idle relay looks for new events: the publication delay when writes are rare.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long an instance whose relay another instance holds waits before trying again.
const STANDBY_INTERVAL: Duration = Duration::from_secs(1);
/// The first and the longest wait after a failed round.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the backlog is measured (for `/health` and metrics) and done events pruned.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How many pruning batches one pruning pass runs at most.
const PRUNE_BATCHES_PER_PASS: usize = 10;
/// Pending events older than this make the events `lagging`.
pub const LAGGING_AFTER: Duration = Duration::from_secs(10);
/// A failed publication is reported as `down` for this long after it happened.
const DOWN_FOR: Duration = Duration::from_secs(30);
/// How often an instance with nothing to publish (idle, or another instance relays) asks the
/// broker whether it would take events, so that its health says so before events wait.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What `/health` reports of the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsStatus {
    /// No broker configured: events go to the pull feed only.
    Disabled,
    /// Published as they come.
    Ok,
    /// The oldest pending event waits longer than [`LAGGING_AFTER`].
    Lagging,
    /// The broker refused or failed the last publication.
    Down,
}

impl EventsStatus {
    /// The name `/health` shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Ok => "ok",
            Self::Lagging => "lagging",
            Self::Down => "down",
        }
    }
}

/// The relay's latest observations, shared with `/health`.
#[derive(Debug, Default)]
pub struct RelayState {
    inner: Mutex<Observed>,
}

#[derive(Debug, Default)]
struct Observed {
    publishing: bool,
    backlog: Backlog,
    last_failure: Option<(Instant, &'static str)>,
}

/// What `/health` shows.
#[derive(Debug, Clone, Copy)]
pub struct EventsReport {
    /// The status.
    pub status: EventsStatus,
    /// Events waiting (capped by the store's count).
    pub pending: u64,
    /// The oldest pending event's age.
    pub oldest_pending_age: Option<Duration>,
    /// Why the last publication failed (`unreachable`, `refused`, `unconfirmed`), while `down`.
    pub reason: Option<&'static str>,
}

impl RelayState {
    fn new(publishing: bool) -> Self {
        Self { inner: Mutex::new(Observed { publishing, ..Observed::default() }) }
    }

    fn update(&self, change: impl FnOnce(&mut Observed)) {
        if let Ok(mut observed) = self.inner.lock() {
            change(&mut observed);
        }
    }

    /// The events' state at `now`.
    pub fn report(&self, now: OffsetDateTime) -> EventsReport {
        let Ok(observed) = self.inner.lock() else {
            return EventsReport { status: EventsStatus::Down, pending: 0, oldest_pending_age: None, reason: None };
        };
        let age = observed.backlog.oldest.map(|oldest| (now - oldest).try_into().unwrap_or(Duration::ZERO));
        let failure = observed.last_failure.filter(|(at, _)| at.elapsed() < DOWN_FOR).map(|(_, reason)| reason);
        let status = if !observed.publishing {
            EventsStatus::Disabled
        } else if failure.is_some() {
            EventsStatus::Down
        } else if age.is_some_and(|age| age > LAGGING_AFTER) {
            EventsStatus::Lagging
        } else {
            EventsStatus::Ok
        };
        EventsReport { status, pending: observed.backlog.pending, oldest_pending_age: age, reason: failure }
    }
}

/// Measures publications: the time from the first publish to the last confirm.
struct MeteredPublisher {
    inner: Arc<dyn EventPublisher>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl EventPublisher for MeteredPublisher {
    async fn check(&self) -> Result<(), PublishError> {
        self.inner.check().await
    }

    async fn publish(&self, events: &[ChangeEvent]) -> Result<(), PublishError> {
        let started = Instant::now();
        let published = self.inner.publish(events).await;
        match &published {
            Ok(()) => self.metrics.observe_publication(events.len(), started.elapsed()),
            Err(error) => self.metrics.count_publish_failure(failure_reason(error)),
        }
        published
    }
}

fn failure_reason(error: &PublishError) -> &'static str {
    match error {
        PublishError::Unreachable(_) => "unreachable",
        PublishError::Refused(_) => "refused",
        PublishError::Unconfirmed(_) => "unconfirmed",
    }
}

/// What the relay runs on.
pub struct Relay {
    /// The store's outbox.
    pub outbox: Arc<dyn EventOutbox>,
    /// The broker, if one is configured.
    pub publisher: Option<Arc<dyn EventPublisher>>,
    /// Events per round.
    pub batch: u32,
    /// Done events older than this are pruned.
    pub retention: Duration,
    /// The service's clock.
    pub clock: Arc<dyn Clock>,
    /// Where publications are counted.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("publishing", &self.publisher.is_some()).field("batch", &self.batch).finish()
    }
}

impl Relay {
    /// Starts the relay on its own task and returns the state it keeps for `/health`, and the
    /// task (aborted when the service stops).
    pub fn spawn(self) -> (Arc<RelayState>, tokio::task::JoinHandle<()>) {
        let state = Arc::new(RelayState::new(self.publisher.is_some()));
        let task = tokio::spawn(self.run(state.clone()));
        (state, task)
    }

    async fn run(self, state: Arc<RelayState>) {
        let publisher: Option<Arc<dyn EventPublisher>> = self.publisher.clone().map(|inner| {
            Arc::new(MeteredPublisher { inner, metrics: self.metrics.clone() }) as Arc<dyn EventPublisher>
        });
        let mut backoff = MIN_BACKOFF;
        let mut last_reported: Option<&'static str> = None;
        let (mut measured_at, mut pruned_at, mut checked_at) = (None::<Instant>, None::<Instant>, None::<Instant>);
        loop {
            let mut round = self.outbox.relay(publisher.as_deref(), self.batch, self.clock.now()).await;
            // The broker answered this iteration: a publication went through, or a check did.
            let mut answered = matches!(round, Ok(RelayRound::Relayed { published: 1.., .. }));
            let idle = matches!(round, Ok(RelayRound::Busy | RelayRound::Relayed { published: 0, more: false, .. }));
            if idle
                && let Some(publisher) = &publisher
                && checked_at.is_none_or(|at| at.elapsed() >= CHECK_INTERVAL)
            {
                checked_at = Some(Instant::now());
                match publisher.check().await {
                    Ok(()) => answered = true,
                    Err(error) => round = Err(RelayError::Publish(error)),
                }
            }
            if answered {
                if last_reported.take().is_some() {
                    tracing::info!("the event broker takes events again");
                }
                state.update(|observed| observed.last_failure = None);
            }
            let pause = match round {
                Ok(RelayRound::Busy) => STANDBY_INTERVAL,
                Ok(RelayRound::Relayed { more, .. }) => {
                    backoff = MIN_BACKOFF;
                    if more { Duration::ZERO } else { POLL_INTERVAL }
                }
                Err(error) => {
                    let reason = match &error {
                        RelayError::Publish(error) => failure_reason(error),
                        RelayError::Store(_) => "store",
                    };
                    if reason != "store" {
                        state.update(|observed| observed.last_failure = Some((Instant::now(), reason)));
                    }
                    // Once per kind of failure, not once per retry.
                    if last_reported != Some(reason) {
                        warn_relay_failure(&error);
                        last_reported = Some(reason);
                    }
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            if measured_at.is_none_or(|at| at.elapsed() >= BACKLOG_INTERVAL) {
                measured_at = Some(Instant::now());
                self.measure_backlog(&state).await;
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                pruned_at = Some(Instant::now());
                self.prune().await;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    async fn measure_backlog(&self, state: &RelayState) {
        match self.outbox.backlog(self.publisher.is_some()).await {
            Ok(backlog) => {
                self.metrics.set_event_backlog(backlog, self.clock.now());
                state.update(|observed| observed.backlog = backlog);
            }
            Err(error) => tracing::debug!(error = %crate::error::error_chain(&error), "event backlog unknown"),
        }
    }

    async fn prune(&self) {
        let before = self.clock.now() - self.retention;
        let mut pruned = 0;
        for _ in 0..PRUNE_BATCHES_PER_PASS {
            match self.outbox.prune(before, self.publisher.is_some()).await {
                Ok(0) => break,
                Ok(deleted) => pruned += deleted,
                Err(error) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "pruning old events failed");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::debug!(pruned, "old events pruned");
        }
    }
}

/// Says what the operator must do about a failed round (never the broker's URL, which may
/// hold a password).
fn warn_relay_failure(error: &RelayError) {
    let chain = crate::error::error_chain(error);
    match error {
        RelayError::Publish(PublishError::Refused(_)) => tracing::warn!(
            error = %chain,
            "the event broker refuses the publisher: check AMQP_URL's user, password and virtual host, \
             and that AMQP_EXCHANGE is not already declared with another type; events wait in the outbox"
        ),
        RelayError::Publish(_) => tracing::warn!(
            error = %chain,
            "publishing events failed; they wait in the outbox and are retried"
        ),
        RelayError::Store(_) => tracing::warn!(error = %chain, "the event relay cannot read the outbox; retrying"),
    }
}
