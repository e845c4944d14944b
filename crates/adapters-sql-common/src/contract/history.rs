//! Contract cases of [`ConsentHistory`], and of the history that every write of a consent
//! appends in its own transaction.

use super::*;

/// How many rows a registration with default preferences and no phone appends.
const REGISTRATION_ROWS: usize = 4;

/// A registration records every field it sets, from unset, and its device, made by the user
/// itself when it acts without a credential.
pub async fn registration_records_every_field_set_and_the_initial_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    new_user.preferences.push = false;
    new_user.preferences.quiet_hours = Some(quiet_hours("22:00", "07:00"));
    new_user.device = Some(registration("token", Platform::Ios, true));
    let id = new_user.id;
    let created = create(store, new_user).await.expect("create");
    let device = created.profile.devices[0].id;

    assert_eq!(
        changes_of(store, id, 0).await,
        [
            change("preferences.email", None, Some("true")),
            change("preferences.push", None, Some("false")),
            change("preferences.quiet_hours", None, Some("22:00-07:00")),
            change("preferences.timezone", None, Some("UTC")),
            change("contact.email", None, Some("john@example.com")),
            change("contact.phone", None, Some("+2348012345678")),
            change(&format!("devices.{device}.active"), None, Some("true")),
        ]
    );
    for record in history_of(store, id).await {
        assert_eq!(record.at, at(0));
        assert_eq!(record.actor, Actor::user(id));
        assert_eq!(record.request_id, None);
    }

    let mut by_a_service = record("jane@example.com", at(1));
    by_a_service.provenance = by();
    let jane = create(store, by_a_service).await.expect("create").profile.user.id;
    let records = history_of(store, jane).await;
    assert_eq!(records.len(), REGISTRATION_ROWS);
    assert!(records.iter().all(|record| Some(&record.actor) == by().actor.as_ref()));
    assert!(records.iter().all(|record| record.request_id == by().request_id));
}

/// A token given at registration that another user held leaves that user's history too.
pub async fn a_registration_that_moves_a_token_records_it_in_both_histories(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut first = record("first@example.com", at(0));
    first.device = Some(registration("shared", Platform::Web, false));
    let first_id = first.id;
    let device = create(store, first).await.expect("create").profile.devices[0].id;
    let mut second = record("second@example.com", at(5));
    second.device = Some(registration("shared", Platform::Web, true));
    let second_id = second.id;

    create(store, second).await.expect("create the second user");

    let field = format!("devices.{device}.active");
    assert_eq!(changes_of(store, first_id, REGISTRATION_ROWS + 1).await, [change(&field, Some("false"), None)]);
    assert_eq!(changes_of(store, second_id, REGISTRATION_ROWS).await, [change(&field, None, Some("true"))]);
    let moved_away = history_of(store, first_id).await.pop().expect("a row");
    assert_eq!((moved_away.at, moved_away.actor), (at(5), Actor::user(second_id)));
}

/// A preferences write records the fields it changed, each once, and nothing when it
/// changed none.
pub async fn preferences_updates_record_only_the_fields_they_change(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let update = PreferencesUpdate {
        email: Some(true),
        push: Some(false),
        quiet_hours: Some(Some(quiet_hours("22:00", "07:00"))),
        timezone: None,
    };
    store.update_preferences(id, update.clone(), at(1), &by()).await.expect("update").expect("exists");
    store.update_preferences(id, update, at(2), &by()).await.expect("the same again").expect("exists");
    let zone = PreferencesUpdate {
        quiet_hours: Some(None),
        timezone: Some(TimeZoneName::parse("Europe/Paris").unwrap()),
        ..PreferencesUpdate::default()
    };
    store.update_preferences(id, zone, at(3), &by()).await.expect("update").expect("exists");

    assert_eq!(
        changes_of(store, id, REGISTRATION_ROWS).await,
        [
            change("preferences.push", Some("true"), Some("false")),
            change("preferences.quiet_hours", None, Some("22:00-07:00")),
            change("preferences.quiet_hours", Some("22:00-07:00"), None),
            change("preferences.timezone", Some("UTC"), Some("Europe/Paris")),
        ]
    );
    let records = history_of(store, id).await;
    let times: Vec<_> = records[REGISTRATION_ROWS..].iter().map(|record| record.at).collect();
    assert_eq!(times, [at(1), at(1), at(3), at(3)]);
    let last = records.last().expect("a row");
    assert_eq!((Some(&last.actor), &last.request_id), (by().actor.as_ref(), &by().request_id));
}

/// A contact write records a changed email address and phone number; the name is no
/// consent.
pub async fn contact_updates_record_email_and_phone_but_not_the_name(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let renamed = ContactUpdate { name: Some(UserName::parse("Johnny").unwrap()), ..ContactUpdate::default() };
    store.update_contact(id, renamed, at(1), &by()).await.expect("rename").expect("exists");
    let moved = ContactUpdate {
        name: None,
        email: Some(EmailAddress::parse("johnny@example.com").unwrap()),
        phone: Some(Some(PhoneNumber::parse("+2348012345678").unwrap())),
    };
    store.update_contact(id, moved, at(2), &by()).await.expect("move").expect("exists");
    let no_phone = ContactUpdate { phone: Some(None), ..ContactUpdate::default() };
    store.update_contact(id, no_phone, at(3), &by()).await.expect("clear").expect("exists");

    assert_eq!(
        changes_of(store, id, REGISTRATION_ROWS).await,
        [
            change("contact.email", Some("john@example.com"), Some("johnny@example.com")),
            change("contact.phone", None, Some("+2348012345678")),
            change("contact.phone", Some("+2348012345678"), None),
        ]
    );
}

/// Device registrations record a new device, a changed state, and a move (in both users'
/// histories); a refresh in the same state records nothing.
pub async fn device_registrations_record_new_refreshed_changed_and_moved_devices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(0)).await;

    let device = upsert(store, first, registration("token", Platform::Ios, true), at(1)).await.expect("new").device.id;
    upsert(store, first, registration("token", Platform::Android, true), at(2)).await.expect("refresh");
    upsert(store, first, registration("token", Platform::Android, false), at(3)).await.expect("deactivate");
    upsert(store, second, registration("token", Platform::Android, true), at(4)).await.expect("move");

    let field = format!("devices.{device}.active");
    assert_eq!(
        changes_of(store, first, REGISTRATION_ROWS).await,
        [
            change(&field, None, Some("true")),
            change(&field, Some("true"), Some("false")),
            change(&field, Some("false"), None)
        ]
    );
    assert_eq!(changes_of(store, second, REGISTRATION_ROWS).await, [change(&field, None, Some("true"))]);
    let moved_away = history_of(store, first).await.pop().expect("a row");
    assert_eq!((moved_away.at, Some(&moved_away.actor)), (at(4), by().actor.as_ref()));
}

/// Activating or deactivating records the change, not a repeat; removing records the device
/// gone.
pub async fn set_active_and_delete_record_the_device_state(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let device = upsert(store, id, registration("token", Platform::Ios, true), at(1)).await.expect("new").device.id;

    store.set_active(id, &selector("token"), false, at(2), &by()).await.expect("off").expect("found");
    store.set_active(id, &selector("token"), false, at(3), &by()).await.expect("off again").expect("found");
    store.set_active(id, &selector(&device.to_string()), true, at(4), &by()).await.expect("on").expect("found");
    assert!(DeviceRepository::delete(store, id, &selector("token"), at(5), &by()).await.expect("delete"));
    assert!(!DeviceRepository::delete(store, id, &selector("token"), at(6), &by()).await.expect("delete again"));

    let field = format!("devices.{device}.active");
    assert_eq!(
        changes_of(store, id, REGISTRATION_ROWS).await,
        [
            change(&field, None, Some("true")),
            change(&field, Some("true"), Some("false")),
            change(&field, Some("false"), Some("true")),
            change(&field, Some("true"), None),
        ]
    );
    let times: Vec<_> = history_of(store, id).await[REGISTRATION_ROWS..].iter().map(|record| record.at).collect();
    assert_eq!(times, [at(1), at(2), at(4), at(5)]);
}

/// Pages come newest first, each row once, following the cursor to the end; an unknown
/// user has no history.
pub async fn pages_come_newest_first_with_a_working_cursor(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let other = create_user(store, "other@example.com", at(0)).await;
    for minute in 1..=6 {
        let update = PreferencesUpdate { email: Some(minute % 2 == 0), ..PreferencesUpdate::default() };
        store.update_preferences(id, update, at(minute), &by()).await.expect("update").expect("exists");
        store
            .update_preferences(
                other,
                PreferencesUpdate { push: Some(minute % 2 == 0), ..Default::default() },
                at(minute),
                &by(),
            )
            .await
            .expect("update")
            .expect("exists");
    }
    // 4 registration rows and 6 switches of email.
    let first = store.page(id, 4, None).await.expect("page").expect("exists");
    assert_eq!(first.records.len(), 4);
    let sequences: Vec<i64> = first.records.iter().map(|record| record.sequence).collect();
    assert!(sequences.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {sequences:?}");
    assert_eq!(first.records[0].at, at(6));
    assert_eq!(first.next_cursor, Some(sequences[3]));

    let second = store.page(id, 4, first.next_cursor).await.expect("page").expect("exists");
    assert_eq!(second.records.len(), 4);
    assert!(second.records[0].sequence < sequences[3]);
    let third = store.page(id, 4, second.next_cursor).await.expect("page").expect("exists");
    assert_eq!(third.records.len(), 2);
    assert_eq!(third.next_cursor, None);
    assert_eq!(third.records.last().expect("a row").change.field.to_string(), "preferences.email");

    let exact = store.page(id, 10, None).await.expect("page").expect("exists");
    assert_eq!((exact.records.len(), exact.next_cursor), (10, None), "no next page when none is left");
    let all: Vec<_> = [first.records, second.records, third.records].concat();
    assert_eq!(all, exact.records);
    assert!(all.iter().all(|record| record.actor != Actor::user(other)), "only the user's rows");
    assert_eq!(store.page(UserId::generate(), 4, None).await.expect("page"), None);
}

/// A change never gets a time before the user's previous row (clocks of several instances
/// disagree): it gets the previous row's time.
pub async fn a_change_never_gets_an_earlier_time_than_the_previous_row(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(10)).await;

    let push_off = PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() };
    store.update_preferences(id, push_off, at(5), &by()).await.expect("update").expect("exists");
    let email_off = PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() };
    store.update_preferences(id, email_off, at(12), &by()).await.expect("update").expect("exists");
    let push_on = PreferencesUpdate { push: Some(true), ..PreferencesUpdate::default() };
    store.update_preferences(id, push_on, at(11), &by()).await.expect("update").expect("exists");

    let times: Vec<_> = history_of(store, id).await[REGISTRATION_ROWS..].iter().map(|record| record.at).collect();
    assert_eq!(times, [at(10), at(12), at(12)]);
}

/// `since` gives the first change of each field after the instant (whose old value is the
/// field's value then), and when the last change at or before it was made.
pub async fn since_splits_the_history_at_the_instant(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    for (minute, email) in [(10, false), (20, true), (30, false)] {
        let update = PreferencesUpdate { email: Some(email), ..PreferencesUpdate::default() };
        store.update_preferences(id, update, at(minute), &by()).await.expect("update").expect("exists");
    }

    let split = store.since(id, at(20)).await.expect("since");
    assert_eq!(split.last_before, Some(at(20)), "a change at the instant counts as before");
    let times: Vec<_> = split.changes.iter().map(|record| record.at).collect();
    assert_eq!(times, [at(30)]);
    assert_eq!(split.changes[0].change.new.to_stored().as_deref(), Some("false"));

    let between = store.since(id, at(25)).await.expect("since");
    assert_eq!((between.last_before, between.changes.len()), (Some(at(20)), 1));
    let early = store.since(id, at(5)).await.expect("since");
    assert_eq!(early.last_before, Some(at(0)), "the registration");
    let times: Vec<_> = early.changes.iter().map(|record| record.at).collect();
    assert_eq!(times, [at(10)], "only the first of the three changes of the field after the instant");
    assert_eq!(
        (early.changes[0].change.old.to_stored().as_deref(), early.changes[0].change.new.to_stored().as_deref()),
        (Some("true"), Some("false")),
        "its old value is the field's value at the instant"
    );
    let before = store.since(id, at(-1)).await.expect("since");
    let fields: std::collections::HashSet<String> =
        before.changes.iter().map(|record| record.change.field.to_string()).collect();
    assert_eq!((before.last_before, before.changes.len()), (None, REGISTRATION_ROWS), "one per field: {fields:?}");
    assert_eq!(fields.len(), REGISTRATION_ROWS);
    assert!(before.changes.iter().all(|record| record.at == at(0)), "the registration's rows");
    let after = store.since(id, at(40)).await.expect("since");
    assert_eq!((after.last_before, after.changes.len()), (Some(at(30)), 0));
}

/// Erasing a user erases its history (the right to erasure wins over the record); other
/// users' histories stay.
pub async fn erasing_a_user_erases_its_history(fixture: &impl StoreFixture) {
    let store = fixture.store();
    CategoryRepository::create(store, category("marketing", false, true, true, at(0))).await.expect("create");
    let doomed = create_user(store, "doomed@example.com", at(0)).await;
    let kept = create_user(store, "kept@example.com", at(0)).await;
    let choice = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });
    store.change_choice(doomed, &key("marketing"), choice, at(1), &by()).await.expect("choose").expect("exists");

    assert!(UserRepository::delete(store, doomed).await.expect("delete"));

    let rows = format!("SELECT count(*) AS count FROM consent_history WHERE user_id = '{doomed}'");
    assert_eq!(fixture.count(&rows).await, 0);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_choices").await, 0);
    assert_eq!(store.page(doomed, 10, None).await.expect("page"), None);
    assert_eq!(history_of(store, kept).await.len(), REGISTRATION_ROWS);
}

/// Concurrent preference writes of one user leave one chain per field: in row order, each
/// row's old value is the previous row's new value, times never go back, and the last new
/// values are the stored preferences.
pub async fn concurrent_preference_updates_leave_a_consistent_history(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let zones = ["Europe/Paris", "Asia/Tokyo", "UTC"];

    let results = all_at_once(|task| {
        let store = store.clone();
        let update = PreferencesUpdate {
            email: Some(task % 2 == 0),
            push: (task % 3 != 0).then_some(task % 5 == 0),
            quiet_hours: None,
            timezone: Some(TimeZoneName::parse(zones[task % 3]).unwrap()),
        };
        // Clocks that disagree: a later task may carry an earlier time.
        let now = at(10) + Duration::seconds(i64::try_from(task * 7 % 11).unwrap());
        async move { store.update_preferences(id, update, now, &by()).await }
    })
    .await;
    for result in results {
        result.expect("every update succeeds").expect("the user exists");
    }

    let records = history_of(store, id).await;
    assert!(records.windows(2).all(|pair| pair[0].sequence < pair[1].sequence && pair[0].at <= pair[1].at));
    let mut latest: HashMap<String, Option<String>> = HashMap::new();
    for record in &records {
        let field = record.change.field.to_string();
        let previous = latest.get(&field).cloned().unwrap_or(None);
        assert_eq!(record.change.old.to_stored(), previous, "{field} at row {}", record.sequence);
        assert_ne!(record.change.old, record.change.new, "a row records a change");
        latest.insert(field, record.change.new.to_stored());
    }
    let stored = preferences_of(store, id).await.expect("exists");
    assert_eq!(latest["preferences.email"].as_deref(), Some(stored.email.to_string().as_str()));
    assert_eq!(latest["preferences.push"].as_deref(), Some(stored.push.to_string().as_str()));
    assert_eq!(latest["preferences.timezone"].as_deref(), Some(stored.timezone.as_str()));
}

/// A row written around the service that the domain cannot read fails the read: a history
/// with a hole would answer for a consent it cannot show.
pub async fn a_history_row_the_domain_refuses_is_an_error_not_skipped(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    fixture
        .execute(&format!(
            "INSERT INTO consent_history (user_id, at, field, old_value, new_value, actor_kind, actor_name) \
             VALUES ('{id}', '2026-11-25 09:01:00+00:00', 'preferences.email', 'yes', 'no', 'user', '{id}')"
        ))
        .await;

    let page = store.page(id, 10, None).await;
    assert!(matches!(page, Err(RepositoryError::Unexpected(_))), "{page:?}");
    // After the registration, the corrupt row is the first change of its field.
    let since = store.since(id, at(0)).await;
    assert!(matches!(since, Err(RepositoryError::Unexpected(_))), "{since:?}");
}
