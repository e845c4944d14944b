//! The transactional outbox: every write records its change events, numbered per subject, in
//! its own transaction; the relay sequences, publishes and marks them; the feed pages them.

use std::sync::Mutex;
use std::time::Duration as StdDuration;

use domain::event::{ChangeEvent, RelayRound, preferences_data};
use domain::ports::{EventOutbox, EventPublisher, PublishError, RelayError};

use super::*;

/// A broker double: records what it is given, or fails while told to. (The real broker is
/// exercised by `adapters-amqp` and the API tests; this one lets the store's relay be
/// checked alone.)
#[derive(Debug, Default)]
pub struct RecordingPublisher {
    received: Mutex<Vec<ChangeEvent>>,
    failing: std::sync::atomic::AtomicBool,
    delay: Option<StdDuration>,
}

#[async_trait]
impl EventPublisher for RecordingPublisher {
    async fn publish(&self, events: &[ChangeEvent]) -> Result<(), PublishError> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PublishError::Unreachable("the broker is down (test)".into()));
        }
        self.received.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

/// Sequences every recorded event (no broker), then reads the whole feed, oldest first.
async fn whole_feed(store: &impl EventOutbox) -> Vec<ChangeEvent> {
    loop {
        match store.relay(None, 1000, at(0)).await.expect("a relay round") {
            RelayRound::Relayed { more: false, .. } => break,
            RelayRound::Relayed { more: true, .. } => {}
            RelayRound::Busy => panic!("no other relay runs"),
        }
    }
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = store.feed(after, 3).await.expect("a feed page").expect("a known cursor");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        events.extend(page);
    }
    events
}

/// The types of `subject`'s events in feed order, checking that their sequence numbers are
/// 1, 2, 3… in that order.
fn types_of(events: &[ChangeEvent], subject: &str) -> Vec<String> {
    let of_subject: Vec<&ChangeEvent> = events.iter().filter(|event| event.subject == subject).collect();
    let sequences: Vec<i64> = of_subject.iter().map(|event| event.sequence).collect();
    let expected: Vec<i64> = (1..=i64::try_from(of_subject.len()).unwrap()).collect();
    assert_eq!(sequences, expected, "the events of {subject} are numbered 1, 2, 3… in feed order");
    of_subject.iter().map(|event| event.kind.clone()).collect()
}

fn data(event: &ChangeEvent) -> serde_json::Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

async fn outbox_rows(fixture: &impl StoreFixture) -> i64 {
    fixture.count("SELECT count(*) AS count FROM outbox_events").await
}

pub async fn every_write_records_its_events_numbered_per_subject<F: StoreFixture>(fixture: &F) {
    let store = fixture.store();
    let mut first = record("ada@example.com", at(0));
    first.device = Some(registration("token-one", Platform::Android, true));
    let ada = create(store, first).await.unwrap().profile.user.id;
    let renamed = ContactUpdate { name: Some(UserName::parse("Ada L").unwrap()), ..ContactUpdate::default() };
    store.update_contact(ada, renamed, at(1), &by()).await.unwrap().unwrap();
    let opt_out = PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() };
    let preferences = store.update_preferences(ada, opt_out.clone(), at(2), &by()).await.unwrap().unwrap();
    // Nothing changes: no event.
    store.update_preferences(ada, opt_out, at(3), &by()).await.unwrap().unwrap();
    CategoryRepository::create(store, category("promo", false, true, true, at(4))).await.unwrap();
    let choice = CategoryChoice { email: Some(false), push: None };
    store.change_choice(ada, &key("promo"), ChoiceChange::Set(choice), at(5), &by()).await.unwrap();
    store.set_active(ada, &selector("token-one"), false, at(6), &by()).await.unwrap().unwrap();
    // The same token, state and platform: only its times change, no event.
    upsert(store, ada, registration("token-one", Platform::Android, false), at(7)).await.unwrap();
    upsert(store, ada, registration("token-one", Platform::Ios, false), at(8)).await.unwrap();
    upsert(store, ada, registration("token-two", Platform::Web, true), at(9)).await.unwrap();
    let bob = create_user(store, "bob@example.com", at(10)).await;
    upsert(store, bob, registration("token-one", Platform::Ios, true), at(11)).await.unwrap();
    DeviceRepository::delete(store, ada, &selector("token-two"), at(12), &by()).await.unwrap();
    // A patch that restates the category changes nothing: no event.
    let restated = CategoryPatch { critical: Some(false), default_email: Some(true), ..CategoryPatch::default() };
    let unchanged = store.update(&key("promo"), restated, at(13)).await.unwrap().unwrap();
    assert_eq!(unchanged.updated_at, at(4), "a patch that changes nothing leaves updated_at");
    let patch = CategoryPatch { default_push: Some(false), ..CategoryPatch::default() };
    store.update(&key("promo"), patch, at(13)).await.unwrap().unwrap();
    UserRepository::delete(store, ada).await.unwrap();
    store.remove(&key("promo"), false, at(14), &by()).await.unwrap();

    let events = whole_feed(store).await;
    assert_eq!(
        types_of(&events, &ada.to_string()),
        [
            "user.created",
            "user.updated",
            "user.preferences.changed",
            "user.category_choice.changed",
            "user.device.deactivated",
            "user.device.refreshed",
            "user.device.added",
            "user.device.removed",
            "user.device.removed",
            "user.erased",
        ]
    );
    assert_eq!(types_of(&events, &bob.to_string()), ["user.created", "user.device.moved"]);
    assert_eq!(types_of(&events, "categories/promo"), ["category.created", "category.updated", "category.removed"]);

    let of = |kind: &str| events.iter().find(|event| event.kind == kind).map(data).unwrap();
    let created = of("user.created");
    assert_eq!(created["user"]["email"], "ada@example.com");
    assert_eq!(created["devices"][0]["token"], "token-one");
    assert_eq!(created["preferences"]["email"], true);
    // Both stores write the preferences as the domain does (PostgreSQL builds them in SQL).
    assert_eq!(of("user.preferences.changed"), preferences_data(&preferences));
    assert_eq!(
        of("user.category_choice.changed"),
        serde_json::json!({"category": "promo", "email": false, "push": null})
    );
    assert_eq!(of("user.device.moved")["from_user"], ada.to_string());
    assert_eq!(of("user.device.moved")["token"], "token-one");
    let removals: Vec<serde_json::Value> =
        events.iter().filter(|event| event.kind == "user.device.removed").map(data).collect();
    assert_eq!(removals[0]["reason"], "moved");
    assert_eq!(removals[1]["reason"], "deleted");
    assert_eq!(removals[1]["token"], "token-two");
    assert_eq!(of("category.updated")["default"], serde_json::json!({"email": true, "push": false}));
    for event in &events {
        assert!(!event.data.contains("argon2"), "no event carries a password hash: {}", event.data);
        assert!(event.to_cloudevent().is_ok());
    }
    let ids: std::collections::HashSet<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
}

pub async fn a_failed_or_empty_write_records_no_event<F: StoreFixture>(fixture: &F) {
    let store = fixture.store();
    let ada = create_user(store, "ada@example.com", at(0)).await;
    let before = outbox_rows(fixture).await;
    assert_eq!(before, 1);
    assert!(matches!(create(store, record("ADA@example.com", at(1))).await, Err(RepositoryError::EmailTaken)));
    let unknown = UserId::generate();
    let rename = ContactUpdate { name: Some(UserName::parse("Nobody").unwrap()), ..ContactUpdate::default() };
    assert!(store.update_contact(unknown, rename, at(2), &by()).await.unwrap().is_none());
    let opt_out = PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() };
    assert!(store.update_preferences(unknown, opt_out, at(3), &by()).await.unwrap().is_none());
    let choice = ChoiceChange::Set(CategoryChoice { email: Some(true), push: None });
    assert!(store.change_choice(ada, &key("missing"), choice, at(4), &by()).await.is_err());
    assert!(!UserRepository::delete(store, unknown).await.unwrap());
    assert!(!DeviceRepository::delete(store, ada, &selector("no-such-token"), at(5), &by()).await.unwrap());
    fixture.reject_device_inserts().await;
    let mut with_device = record("bob@example.com", at(6));
    with_device.device = Some(registration("token-one", Platform::Android, true));
    assert!(create(store, with_device).await.is_err(), "the device insert fails the registration");
    assert_eq!(outbox_rows(fixture).await, before, "no event for a write that failed or changed nothing");
}

pub async fn the_feed_pages_in_commit_order_and_an_unknown_cursor_is_none<F: StoreFixture>(fixture: &F) {
    let store = fixture.store();
    let mut users = Vec::new();
    for number in 0..5 {
        users.push(create_user(store, &format!("user{number}@example.com"), at(number)).await);
    }
    assert_eq!(store.feed(None, 10).await.unwrap(), Some(Vec::new()), "not in the feed before the relay ran");
    let events = whole_feed(store).await;
    let subjects: Vec<String> = events.iter().map(|event| event.subject.clone()).collect();
    let expected: Vec<String> = users.iter().map(ToString::to_string).collect();
    assert_eq!(subjects, expected);
    let page = store.feed(Some(events[1].id), 2).await.unwrap().unwrap();
    assert_eq!(page.iter().map(|event| event.id).collect::<Vec<_>>(), [events[2].id, events[3].id]);
    assert_eq!(store.feed(Some(events[4].id), 2).await.unwrap(), Some(Vec::new()));
    assert_eq!(store.feed(Some(uuid::Uuid::now_v7()), 2).await.unwrap(), None, "an unknown cursor");
}

pub async fn the_relay_publishes_in_feed_order_and_marks_only_what_the_broker_confirmed<F: StoreFixture>(fixture: &F) {
    let store = fixture.store();
    for number in 0..5 {
        create_user(store, &format!("user{number}@example.com"), at(number)).await;
    }
    let broker = RecordingPublisher::default();
    broker.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = store.relay(Some(&broker), 100, at(10)).await;
    assert!(matches!(failed, Err(RelayError::Publish(PublishError::Unreachable(_)))), "{failed:?}");
    assert_eq!(store.backlog(true).await.unwrap().pending, 5, "nothing is marked published");
    assert_eq!(store.feed(None, 10).await.unwrap().unwrap().len(), 5, "the feed goes on while the broker is down");

    broker.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let round = store.relay(Some(&broker), 2, at(11)).await.unwrap();
    assert_eq!(round, RelayRound::Relayed { sequenced: 0, published: 2, more: true });
    while let RelayRound::Relayed { more: true, .. } = store.relay(Some(&broker), 2, at(12)).await.unwrap() {}
    let feed = store.feed(None, 10).await.unwrap().unwrap();
    assert_eq!(*broker.received.lock().unwrap(), feed, "published once each, in feed order");
    let backlog = store.backlog(true).await.unwrap();
    assert_eq!((backlog.pending, backlog.oldest), (0, None));
    assert_eq!(
        store.relay(Some(&broker), 2, at(13)).await.unwrap(),
        RelayRound::Relayed { sequenced: 0, published: 0, more: false }
    );
}

pub async fn pruning_deletes_only_done_events_older_than_the_cutoff<F: StoreFixture>(fixture: &F) {
    let store = fixture.store();
    for number in 0..3 {
        create_user(store, &format!("user{number}@example.com"), at(number)).await;
    }
    let far_future = OffsetDateTime::now_utc() + Duration::days(365);
    assert_eq!(store.prune(far_future, false).await.unwrap(), 0, "events not yet in the feed are kept");
    whole_feed(store).await;
    assert_eq!(store.prune(far_future, true).await.unwrap(), 0, "unpublished events are kept while a broker is set");
    let broker = RecordingPublisher::default();
    store.relay(Some(&broker), 1, at(10)).await.unwrap();
    let past = OffsetDateTime::now_utc() - Duration::days(365);
    assert_eq!(store.prune(past, true).await.unwrap(), 0, "recent events are kept");
    assert_eq!(store.prune(far_future, true).await.unwrap(), 1, "the published one goes");
    assert_eq!(store.prune(far_future, false).await.unwrap(), 2, "without a broker, those in the feed go");
    assert_eq!(outbox_rows(fixture).await, 0);
}

pub async fn concurrent_writes_of_one_user_are_numbered_in_commit_order<F: StoreFixture>(fixture: &F) {
    let store = fixture.store().clone();
    let ada = create_user(&store, "ada@example.com", at(0)).await;
    let names: Vec<String> = all_at_once(|number| {
        let store = store.clone();
        async move {
            let name = format!("Name {number}");
            let update = ContactUpdate { name: Some(UserName::parse(&name).unwrap()), ..ContactUpdate::default() };
            store.update_contact(ada, update, at(1), &by()).await.unwrap().unwrap();
            name
        }
    })
    .await;
    let events = whole_feed(&store).await;
    let types = types_of(&events, &ada.to_string());
    assert_eq!(types.len(), TASKS + 1);
    // The last event says the name the user has now: events were numbered as they committed.
    let last = data(events.last().unwrap());
    let now = store.find_profile(ada).await.unwrap().unwrap().user.name;
    assert_eq!(last["name"], now.as_str());
    let mut seen: Vec<String> =
        events.iter().skip(1).map(|event| data(event)["name"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    let mut names = names;
    names.sort();
    assert_eq!(seen, names, "one event per committed change");
}

pub async fn one_relay_runs_at_a_time<F: StoreFixture>(fixture: &F) {
    let store = fixture.store().clone();
    create_user(&store, "ada@example.com", at(0)).await;
    let slow = Arc::new(RecordingPublisher { delay: Some(StdDuration::from_millis(500)), ..Default::default() });
    let first = {
        let (store, slow) = (store.clone(), Arc::clone(&slow));
        tokio::spawn(async move { store.relay(Some(slow.as_ref()), 10, at(1)).await.unwrap() })
    };
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    let second = store.relay(Some(slow.as_ref()), 10, at(2)).await.unwrap();
    assert_eq!(second, RelayRound::Busy, "another relay holds the outbox");
    assert_eq!(first.await.unwrap(), RelayRound::Relayed { sequenced: 1, published: 1, more: false });
    assert_eq!(slow.received.lock().unwrap().len(), 1);
}
