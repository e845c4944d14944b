//! Contract cases of idempotent writes and [`IdempotencyRepository`].

use super::*;

fn idempotent_request(key: &str, fingerprint: u8, expires_at: OffsetDateTime) -> IdempotentRequest {
    IdempotentRequest {
        caller: "gateway".into(),
        key: IdempotencyKey::parse(key).unwrap(),
        fingerprint: vec![fingerprint],
        received_at: OffsetDateTime::now_utc(),
        expires_at,
    }
}

fn idempotent_device_write(
    key: &str,
    fingerprint: u8,
    expires_at: OffsetDateTime,
) -> IdempotentWrite<RegisteredDevice> {
    IdempotentWrite {
        request: idempotent_request(key, fingerprint, expires_at),
        render: Box::new(|registered: &RegisteredDevice| StoredResponse {
            status: if registered.created { 201 } else { 200 },
            body: registered.device.id.to_string().into_bytes(),
            location: Some("/somewhere".into()),
            invalidates: Vec::new(),
        }),
    }
}

fn far_future() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

/// A keyed write stores its answer; a retry gets it back without writing; another request
/// with the key is refused.
pub async fn an_idempotent_write_stores_its_answer_and_a_retry_replays_it_without_writing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "idem@example.com", at(0)).await;
    let first = store
        .upsert(
            user,
            registration("idem-token", Platform::Ios, true),
            at(1),
            &by(),
            Some(idempotent_device_write("k", 1, far_future())),
        )
        .await
        .expect("first write");
    let Idempotent::Executed(registered) = first else { panic!("the first write executes") };
    assert!(registered.created);

    let retry = store
        .upsert(
            user,
            registration("idem-token", Platform::Android, false),
            at(2),
            &by(),
            Some(idempotent_device_write("k", 1, far_future())),
        )
        .await
        .expect("retry");
    let expected = StoredResponse {
        status: 201,
        body: registered.device.id.to_string().into_bytes(),
        location: Some("/somewhere".into()),
        invalidates: Vec::new(),
    };
    assert_eq!(retry, Idempotent::Replayed(expected.clone()));
    // The retry changed nothing: the platform is still the first one.
    let devices = DeviceRepository::list(store, user).await.expect("list").expect("the user exists");
    assert_eq!(devices[0].platform, Platform::Ios);
    let key = IdempotencyKey::parse("k").unwrap();
    let found =
        store.find_record("gateway", &key, OffsetDateTime::now_utc()).await.expect("find").expect("the record exists");
    assert_eq!((found.fingerprint, found.response), (vec![1], expected));
    assert_eq!(
        store.find_record("someone-else", &key, OffsetDateTime::now_utc()).await.expect("find"),
        None,
        "keys are scoped by caller"
    );

    let reused = store
        .upsert(
            user,
            registration("idem-token", Platform::Ios, true),
            at(3),
            &by(),
            Some(idempotent_device_write("k", 2, far_future())),
        )
        .await;
    assert!(matches!(reused, Err(RepositoryError::Idempotency(IdempotencyConflict::KeyReused))), "{reused:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// A keyed registration stores its answer with the user; a retry replays it and creates
/// no second user.
pub async fn an_idempotent_create_stores_its_answer_and_a_retry_replays_it_without_writing(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let write = || IdempotentWrite {
        request: idempotent_request("signup", 7, far_future()),
        render: Box::new(|created: &CreatedUser| StoredResponse {
            status: 201,
            body: created.profile.user.id.to_string().into_bytes(),
            location: Some(format!("/api/v1/users/{}", created.profile.user.id)),
            invalidates: vec![created.profile.user.id, UserId::from(uuid::Uuid::nil())],
        }),
    };
    let new_user = record("idem@example.com", at(0));
    let id = new_user.id;

    let first = UserRepository::create(store, new_user, Some(write())).await.expect("first write");
    assert!(matches!(first, Idempotent::Executed(ref created) if created.profile.user.id == id), "{first:?}");
    // The retry carries a fresh id, as a retried request would: it must not be used.
    let retry = UserRepository::create(store, record("idem@example.com", at(1)), Some(write())).await.expect("retry");

    let expected = StoredResponse {
        status: 201,
        body: id.to_string().into_bytes(),
        location: Some(format!("/api/v1/users/{id}")),
        invalidates: vec![id, UserId::from(uuid::Uuid::nil())],
    };
    assert!(matches!(retry, Idempotent::Replayed(ref response) if *response == expected), "{retry:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// Concurrent keyed writes with one key run once: the others replay its answer or are told
/// it is in flight.
pub async fn concurrent_idempotent_writes_with_one_key_run_once(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "idem@example.com", at(0)).await;

    let results = all_at_once(|task| {
        let store = store.clone();
        let write = idempotent_device_write("once", 1, far_future());
        let registration = registration(&format!("token-{task}"), Platform::Web, true);
        async move { store.upsert(user, registration, at(1), &by(), Some(write)).await }
    })
    .await;
    let (mut executed, mut replayed) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(Idempotent::Executed(registered)) => executed.push(registered),
            Ok(Idempotent::Replayed(response)) => replayed.push(response),
            Err(RepositoryError::Idempotency(IdempotencyConflict::InFlight)) => {}
            Err(other) => panic!("a keyed write failed otherwise than as in flight: {other:?}"),
        }
    }

    assert_eq!(executed.len(), 1, "exactly one write ran");
    let body = executed[0].device.id.to_string().into_bytes();
    assert!(replayed.iter().all(|response| response.body == body), "every replay is the first answer");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// A record whose list of touched users was written around the service and no longer
/// reads is an error, never a replay that would skip invalidating those users.
pub async fn a_record_with_an_unreadable_touched_user_is_an_error_not_a_partial_replay(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "touched@example.com", at(0)).await;
    store
        .upsert(
            user,
            registration("touched-token", Platform::Web, true),
            at(1),
            &by(),
            Some(idempotent_device_write("touched", 1, far_future())),
        )
        .await
        .expect("first write");
    fixture.execute("UPDATE idempotency_records SET invalidates = 'not-a-user-id'").await;

    let key = IdempotencyKey::parse("touched").unwrap();
    let found = store.find_record("gateway", &key, OffsetDateTime::now_utc()).await;
    assert!(matches!(found, Err(RepositoryError::Unexpected(_))), "{found:?}");
    let retried = store
        .upsert(
            user,
            registration("touched-token", Platform::Web, true),
            at(2),
            &by(),
            Some(idempotent_device_write("touched", 1, far_future())),
        )
        .await;
    assert!(matches!(retried, Err(RepositoryError::Unexpected(_))), "{retried:?}");
}

/// An expired record is ignored (the key runs again and its record is replaced) and purged.
pub async fn an_expired_record_no_longer_replays_and_is_purged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "expired@example.com", at(0)).await;
    let past = OffsetDateTime::now_utc() - Duration::minutes(1);
    let first = store
        .upsert(
            user,
            registration("old-token", Platform::Web, true),
            at(1),
            &by(),
            Some(idempotent_device_write("old", 1, past)),
        )
        .await
        .expect("first write");
    assert!(matches!(first, Idempotent::Executed(_)));
    let key = IdempotencyKey::parse("old").unwrap();
    assert_eq!(store.find_record("gateway", &key, OffsetDateTime::now_utc()).await.expect("find"), None);

    // The same key runs again (the device is refreshed, not replayed) and its record is replaced.
    let again = store
        .upsert(
            user,
            registration("old-token", Platform::Web, true),
            at(2),
            &by(),
            Some(idempotent_device_write("old", 1, far_future())),
        )
        .await
        .expect("second write");
    assert!(matches!(again, Idempotent::Executed(RegisteredDevice { created: false, .. })));
    assert!(store.find_record("gateway", &key, OffsetDateTime::now_utc()).await.expect("find").is_some());

    store
        .upsert(
            user,
            registration("other-token", Platform::Web, true),
            at(3),
            &by(),
            Some(idempotent_device_write("stale", 1, past)),
        )
        .await
        .expect("third write");
    assert_eq!(fixture.purge_expired_idempotency_records(100, OffsetDateTime::now_utc()).await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

// ---------------------------------------------------------------------------------------
// The cache's invalidation ledger
// ---------------------------------------------------------------------------------------
