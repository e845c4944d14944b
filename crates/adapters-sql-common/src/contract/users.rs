//! Contract cases of [`UserRepository`]: registration, profiles, contact, preferences, credentials.

use super::*;

/// A user, its preferences and its initial device are stored together and read back as
/// one profile.
pub async fn create_stores_the_user_preferences_and_initial_device_and_find_profile_returns_them(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    new_user.preferences = Preferences {
        email: true,
        push: false,
        quiet_hours: Some(quiet_hours("22:00", "07:00")),
        timezone: TimeZoneName::parse("Africa/Lagos").unwrap(),
        updated_at: at(0),
    };
    new_user.device = Some(registration("fcm-token-1", Platform::Unknown, true));
    let id = new_user.id;
    let expected_preferences = new_user.preferences.clone();

    let created = create(store, new_user).await.expect("create").profile;

    assert_eq!(created.user.id, id);
    assert_eq!(created.user.name.as_str(), "John Doe");
    assert_eq!(created.user.email.as_str(), "john@example.com");
    assert_eq!(created.user.phone.as_ref().map(PhoneNumber::as_str), Some("+2348012345678"));
    assert_eq!((created.user.created_at, created.user.updated_at), (at(0), at(0)));
    assert_eq!(created.preferences, expected_preferences);
    assert_eq!(created.devices.len(), 1);
    let device = &created.devices[0];
    assert_eq!((device.user_id, device.token.as_str(), device.platform), (id, "fcm-token-1", Platform::Unknown));
    assert!(device.active);
    assert_eq!((device.created_at, device.updated_at, device.last_seen_at), (at(0), at(0), at(0)));

    let found = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(found, created);
    assert_eq!(found.push_token().map(PushToken::as_str), Some("fcm-token-1"));

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let stored_hash = format!("SELECT count(*) AS count FROM users WHERE password_hash = '{PASSWORD_HASH}'");
    assert_eq!(fixture.count(&stored_hash).await, 1);
}

/// Without a device, a user gets the preferences it was created with and no device.
pub async fn create_without_a_device_stores_default_preferences_and_no_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "jane@example.com", at(0)).await;

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(profile.preferences, Preferences::defaults(at(0)));
    assert!(profile.devices.is_empty());
    assert_eq!(profile.user.phone, None);
    assert_eq!(preferences_of(store, id).await, Some(Preferences::defaults(at(0))));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// A taken email refuses the whole registration, device included.
pub async fn create_with_a_registered_email_is_email_taken_and_writes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    let mut duplicate = record("john@example.com", at(1));
    duplicate.device = Some(registration("token-of-the-duplicate", Platform::Unknown, true));
    let result = create(store, duplicate).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// Emails compare case-insensitively in the store itself, not only in the domain.
pub async fn create_with_an_email_stored_in_another_case_is_email_taken(fixture: &impl StoreFixture) {
    let store = fixture.store();
    // Written around the service, which always lower-cases: only the store can catch it.
    fixture.execute(&insert_user_around_the_service("John", "JOHN@Example.com")).await;

    let result = create(store, record("john@example.com", at(0))).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 0);
}

/// A registration is one transaction: a failing device insert leaves no user behind.
pub async fn create_writes_nothing_when_a_later_insert_of_its_transaction_fails(fixture: &impl StoreFixture) {
    let store = fixture.store();
    fixture.reject_device_inserts().await;
    let mut new_user = record("john@example.com", at(0));
    new_user.device = Some(registration("token", Platform::Unknown, true));

    let result = create(store, new_user).await;

    assert!(matches!(result, Err(RepositoryError::Unexpected(_))), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 0);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 0);
}

/// A token given at registration moves from its previous owner, who is reported.
pub async fn create_with_a_push_token_held_by_another_user_moves_the_token(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut first = record("first@example.com", at(0));
    first.device = Some(registration("shared-token", Platform::Unknown, true));
    let first_id = first.id;
    let first_created = create(store, first).await.expect("create the first user");
    assert_eq!(first_created.device_moved_from, None);
    let first_device = first_created.profile.devices[0].clone();

    let mut second = record("second@example.com", at(5));
    second.device = Some(registration("shared-token", Platform::Unknown, true));
    let second_id = second.id;
    let second_created = create(store, second).await.expect("create the second user");
    assert_eq!(second_created.device_moved_from, Some(first_id));
    let second_profile = second_created.profile;

    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let moved = &second_profile.devices[0];
    assert_eq!((moved.id, moved.user_id), (first_device.id, second_id));
    assert_eq!((moved.created_at, moved.last_seen_at), (at(0), at(5)));
    let first_profile = store.find_profile(first_id).await.expect("find").expect("the first user exists");
    assert!(first_profile.devices.is_empty());
}

/// A registration that may not take devices leaves a held token with its owner, reports it,
/// and still registers a token nobody holds.
pub async fn create_that_leaves_held_tokens_registers_the_user_without_one_another_user_holds(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let mut owner = record("owner@example.com", at(0));
    owner.device = Some(registration("owned-token", Platform::Ios, true));
    let owner_id = owner.id;
    let owned = create(store, owner).await.expect("create the owner").profile.devices[0].clone();

    let mut thief = record("thief@example.com", at(5));
    thief.device = Some(registration("owned-token", Platform::Unknown, true));
    thief.if_token_held = HeldToken::Leave;
    let created = create(store, thief).await.expect("the user is registered");
    assert!(created.token_left_with_its_owner);
    assert_eq!((created.device_moved_from, created.profile.devices.len()), (None, 0));
    let owner_profile = store.find_profile(owner_id).await.expect("find").expect("the owner exists");
    assert_eq!(owner_profile.devices, vec![owned], "the owner's device is untouched");

    let mut newcomer = record("newcomer@example.com", at(6));
    newcomer.device = Some(registration("fresh-token", Platform::Unknown, true));
    newcomer.if_token_held = HeldToken::Leave;
    let created = create(store, newcomer).await.expect("the user is registered");
    assert!(!created.token_left_with_its_owner);
    assert_eq!(created.profile.devices[0].token.as_str(), "fresh-token");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 2);
}

/// Unknown ids have no profile.
pub async fn find_profile_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    assert_eq!(store.find_profile(UserId::generate()).await.expect("find"), None);
}

/// `find_profiles` returns the same profiles as `find_profile`, one per known id.
pub async fn find_profiles_loads_each_named_user_and_leaves_unknown_ids_out(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let alice = create_user(store, "alice@example.com", at(0)).await;
    let bob = create_user(store, "bob@example.com", at(1)).await;
    let carol = create_user(store, "carol@example.com", at(2)).await;
    upsert(store, alice, registration("alice-old", Platform::Ios, true), at(3)).await.expect("upsert");
    upsert(store, alice, registration("alice-new", Platform::Web, true), at(4)).await.expect("upsert");
    upsert(store, carol, registration("carol-phone", Platform::Android, true), at(5)).await.expect("upsert");

    let profiles = store.find_profiles(&[bob, UserId::generate(), alice]).await.expect("find profiles");

    let mut by_id: HashMap<UserId, UserProfile> =
        profiles.into_iter().map(|profile| (profile.user.id, profile)).collect();
    assert_eq!(by_id.len(), 2, "carol was not asked for and the unknown id has no profile");
    assert_eq!(by_id.remove(&alice), store.find_profile(alice).await.expect("find"));
    assert_eq!(by_id.remove(&bob), store.find_profile(bob).await.expect("find"));
    assert!(store.find_profiles(&[]).await.expect("no ids").is_empty());
}

/// `exists` answers for stored users only.
pub async fn exists_tells_stored_users_from_unknown_ids(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    assert!(store.exists(id).await.expect("exists"));
    assert!(!store.exists(UserId::generate()).await.expect("exists"));
}

/// Every read of devices orders them active first, then most recently seen first.
pub async fn devices_come_active_first_then_most_recently_seen_first(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    for (token, active, seen) in
        [("active-old", true, 1), ("inactive-new", false, 5), ("active-new", true, 3), ("inactive-old", false, 2)]
    {
        upsert(store, id, registration(token, Platform::Android, active), at(seen)).await.expect("upsert");
    }
    let expected = ["active-new", "active-old", "inactive-new", "inactive-old"];

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(tokens(&profile.devices), expected);
    assert_eq!(profile.push_token().map(PushToken::as_str), Some("active-new"));
    let listed = DeviceRepository::list(store, id).await.expect("list").expect("the user exists");
    assert_eq!(tokens(&listed), expected);
    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list profiles");
    assert_eq!(tokens(&page.items[0].devices), expected);
    let profiles = store.find_profiles(&[id]).await.expect("find profiles");
    assert_eq!(tokens(&profiles[0].devices), expected);
}

/// Sightings a fraction of a second apart still order correctly, whole seconds included
/// (a store that keeps timestamps as text must keep them comparable).
pub async fn device_order_respects_sub_second_differences(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let base = at(1);
    for (token, offset) in
        [("at-250ms", 250_000), ("at-0", 0), ("at-500ms", 500_000), ("at-1us", 1), ("at-1s", 1_000_000)]
    {
        let seen = base + Duration::microseconds(offset);
        upsert(store, id, registration(token, Platform::Web, true), seen).await.expect("upsert");
    }
    let expected = ["at-1s", "at-500ms", "at-250ms", "at-1us", "at-0"];

    let listed = DeviceRepository::list(store, id).await.expect("list").expect("the user exists");
    assert_eq!(tokens(&listed), expected);
    assert_eq!(listed[3].last_seen_at, base + Duration::microseconds(1), "microseconds are kept");
    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(tokens(&profile.devices), expected);
}

// ---------------------------------------------------------------------------------------
// Users: list
// ---------------------------------------------------------------------------------------

/// Pages follow registration time and carry the total, also beyond the last page.
pub async fn list_profiles_pages_by_registration_time_and_reports_the_total(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let empty = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");
    assert!(empty.items.is_empty());
    assert_eq!(empty.total, 0);

    // Inserted out of order: the listing follows `created_at`, not insertion order.
    for minute in [4, 0, 3, 1, 2] {
        create_user(store, &format!("user{minute}@example.com"), at(minute)).await;
    }

    let first = store.list_profiles(PageRequest::new(1, 2).unwrap()).await.expect("page 1");
    assert_eq!(emails(&first), ["user0@example.com", "user1@example.com"]);
    assert_eq!(first.total, 5);
    let second = store.list_profiles(PageRequest::new(2, 2).unwrap()).await.expect("page 2");
    assert_eq!(emails(&second), ["user2@example.com", "user3@example.com"]);
    assert_eq!(second.total, 5);
    let last = store.list_profiles(PageRequest::new(3, 2).unwrap()).await.expect("page 3");
    assert_eq!(emails(&last), ["user4@example.com"]);
    assert_eq!(last.total, 5);
    let beyond = store.list_profiles(PageRequest::new(4, 2).unwrap()).await.expect("page 4");
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 5);
    let far_beyond = store.list_profiles(PageRequest::new(u32::MAX, 100).unwrap()).await.expect("last page");
    assert!(far_beyond.items.is_empty());
    assert_eq!(far_beyond.total, 5);
}

/// Each listed profile carries its own devices and no one else's.
pub async fn list_profiles_attaches_each_device_to_its_owner(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let alice = create_user(store, "alice@example.com", at(0)).await;
    let bob = create_user(store, "bob@example.com", at(1)).await;
    let carol = create_user(store, "carol@example.com", at(2)).await;
    upsert(store, alice, registration("alice-phone", Platform::Ios, true), at(3)).await.expect("upsert");
    upsert(store, carol, registration("carol-browser", Platform::Web, true), at(4)).await.expect("upsert");
    upsert(store, alice, registration("alice-tablet", Platform::Android, true), at(5)).await.expect("upsert");

    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");

    assert_eq!(page.total, 3);
    let ids: Vec<UserId> = page.items.iter().map(|profile| profile.user.id).collect();
    assert_eq!(ids, [alice, bob, carol]);
    assert_eq!(tokens(&page.items[0].devices), ["alice-tablet", "alice-phone"]);
    assert!(page.items[1].devices.is_empty());
    assert_eq!(tokens(&page.items[2].devices), ["carol-browser"]);
    for profile in &page.items {
        assert!(profile.devices.iter().all(|device| device.user_id == profile.user.id));
    }
}

// ---------------------------------------------------------------------------------------
// Users: update contact, delete
// ---------------------------------------------------------------------------------------

/// A contact change touches the named fields and `updated_at` only; a phone can be cleared.
pub async fn update_contact_changes_only_the_given_fields(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    let id = new_user.id;
    create(store, new_user).await.expect("create");

    let renamed = ContactUpdate { name: Some(UserName::parse("Johnny").unwrap()), ..ContactUpdate::default() };
    let user = store.update_contact(id, renamed, at(1), &by()).await.expect("update").expect("the user exists");
    assert_eq!(user.name.as_str(), "Johnny");
    assert_eq!(user.email.as_str(), "john@example.com");
    assert_eq!(user.phone.as_ref().map(PhoneNumber::as_str), Some("+2348012345678"));
    assert_eq!((user.created_at, user.updated_at), (at(0), at(1)));

    let cleared = ContactUpdate { phone: Some(None), ..ContactUpdate::default() };
    let user = store.update_contact(id, cleared, at(2), &by()).await.expect("update").expect("the user exists");
    assert_eq!(user.phone, None);
    assert_eq!(user.name.as_str(), "Johnny");

    let moved = ContactUpdate {
        email: Some(EmailAddress::parse("johnny@example.com").unwrap()),
        phone: Some(Some(PhoneNumber::parse("+15551234567").unwrap())),
        ..ContactUpdate::default()
    };
    let user = store.update_contact(id, moved, at(3), &by()).await.expect("update").expect("the user exists");
    assert_eq!(user.email.as_str(), "johnny@example.com");
    assert_eq!(user.phone.as_ref().map(PhoneNumber::as_str), Some("+15551234567"));
    assert_eq!(user.name.as_str(), "Johnny");
    assert_eq!(user.updated_at, at(3));

    let stored = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(stored.user, user);
}

/// Moving to another user's email (in any case) is refused and changes nothing; a user's
/// own email is not taken.
pub async fn update_contact_to_another_users_email_is_email_taken_and_changes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "taken@example.com", at(0)).await;
    let id = create_user(store, "john@example.com", at(1)).await;
    fixture.execute(&insert_user_around_the_service("Upper", "UPPER@Example.com")).await;

    for email in ["taken@example.com", "upper@example.com"] {
        let update = ContactUpdate {
            name: Some(UserName::parse("Someone Else").unwrap()),
            email: Some(EmailAddress::parse(email).unwrap()),
            ..ContactUpdate::default()
        };
        let result = store.update_contact(id, update, at(2), &by()).await;
        assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{email}: {result:?}");
    }
    let stored = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(stored.user.email.as_str(), "john@example.com");
    assert_eq!(stored.user.name.as_str(), "John Doe");
    assert_eq!(stored.user.updated_at, at(1));

    let own =
        ContactUpdate { email: Some(EmailAddress::parse("john@example.com").unwrap()), ..ContactUpdate::default() };
    assert!(store.update_contact(id, own, at(3), &by()).await.expect("update").is_some());
}

/// Updating an unknown id is `None` and writes nothing.
pub async fn update_contact_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;
    let update = ContactUpdate { name: Some(UserName::parse("Nobody").unwrap()), ..ContactUpdate::default() };

    assert_eq!(store.update_contact(UserId::generate(), update, at(1), &by()).await.expect("update"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users WHERE name = 'Nobody'").await, 0);
}

/// Deleting a user takes its preferences and devices along, and nothing else.
pub async fn delete_removes_the_user_with_its_preferences_and_devices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let doomed = create_user(store, "doomed@example.com", at(0)).await;
    let kept = create_user(store, "kept@example.com", at(1)).await;
    upsert(store, doomed, registration("doomed-1", Platform::Ios, true), at(2)).await.expect("upsert");
    upsert(store, doomed, registration("doomed-2", Platform::Web, false), at(3)).await.expect("upsert");
    upsert(store, kept, registration("kept-1", Platform::Android, true), at(4)).await.expect("upsert");

    assert!(UserRepository::delete(store, doomed).await.expect("delete"));

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices WHERE token = 'kept-1'").await, 1);
    assert_eq!(store.find_profile(doomed).await.expect("find"), None);
    assert!(store.find_profile(kept).await.expect("find").is_some());

    assert!(!UserRepository::delete(store, doomed).await.expect("delete again"));
    assert!(!UserRepository::delete(store, UserId::generate()).await.expect("delete unknown"));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
}

// ---------------------------------------------------------------------------------------
// Preferences
// ---------------------------------------------------------------------------------------

/// A partial preferences change keeps the omitted fields; quiet hours can be cleared.
pub async fn update_preferences_changes_only_the_given_fields(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let push_off = PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() };
    let preferences = store.update_preferences(id, push_off, at(1), &by()).await.expect("update").expect("exists");
    assert_eq!(
        preferences,
        Preferences { push: false, updated_at: at(1), ..Preferences::defaults(at(0)) },
        "only push and updated_at change"
    );

    let night = PreferencesUpdate {
        quiet_hours: Some(Some(quiet_hours("22:30", "06:45"))),
        timezone: Some(TimeZoneName::parse("Africa/Lagos").unwrap()),
        ..PreferencesUpdate::default()
    };
    let preferences = store.update_preferences(id, night, at(2), &by()).await.expect("update").expect("exists");
    assert!(preferences.email);
    assert!(!preferences.push, "an omitted field keeps its stored value");
    assert_eq!(preferences.quiet_hours, Some(quiet_hours("22:30", "06:45")));
    assert_eq!(preferences.timezone.as_str(), "Africa/Lagos");
    assert_eq!(preferences.updated_at, at(2));

    let cleared = PreferencesUpdate { quiet_hours: Some(None), ..PreferencesUpdate::default() };
    let preferences = store.update_preferences(id, cleared, at(3), &by()).await.expect("update").expect("exists");
    assert_eq!(preferences.quiet_hours, None);
    assert_eq!(preferences.timezone.as_str(), "Africa/Lagos");
    assert!(!preferences.push);

    assert_eq!(preferences_of(store, id).await, Some(preferences.clone()));
    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(profile.preferences, preferences);
}

/// Every combination of given and omitted fields is stored as the domain's rule
/// ([`Preferences::with_update`]) applies it: the stores' changesets and the rule agree.
pub async fn every_preferences_update_is_stored_as_the_domain_rule_applies_it(fixture: &impl StoreFixture) {
    let store = fixture.store();
    for combination in 0..16_u8 {
        let email = format!("user{combination}@example.com");
        let id = create_user(store, &email, at(0)).await;
        let start = PreferencesUpdate {
            email: Some(false),
            quiet_hours: Some(Some(quiet_hours("21:00", "06:00"))),
            timezone: Some(TimeZoneName::parse("Europe/Paris").unwrap()),
            ..PreferencesUpdate::default()
        };
        let stored = store.update_preferences(id, start, at(1), &by()).await.expect("update").expect("exists");
        let given = |bit: u8| combination & (1 << bit) != 0;
        let update = PreferencesUpdate {
            email: given(0).then_some(true),
            push: given(1).then_some(false),
            // Clearing and setting quiet hours alternate between combinations.
            quiet_hours: given(2).then(|| (combination % 8 == 4).then(|| quiet_hours("23:15", "05:30"))),
            timezone: given(3).then(|| TimeZoneName::parse("America/New_York").unwrap()),
        };

        let expected = stored.clone().with_update(&update, at(2));
        let updated =
            store.update_preferences(id, update.clone(), at(2), &by()).await.expect("update").expect("exists");
        assert_eq!(updated, expected, "{update:?} applied to {stored:?}");
        assert_eq!(preferences_of(store, id).await, Some(expected), "{update:?} as stored");
    }
}

/// Updating the preferences of an unknown id is `None` and writes nothing.
pub async fn update_preferences_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;
    let update = PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() };

    assert_eq!(store.update_preferences(UserId::generate(), update, at(1), &by()).await.expect("update"), None);
    assert_eq!(
        fixture.count("SELECT count(*) AS count FROM notification_preferences WHERE NOT email_enabled").await,
        0
    );
}

/// Concurrent partial updates of different fields are all applied (no lost update).
pub async fn concurrent_preference_updates_of_different_fields_all_survive(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let results = all_at_once(|task| {
        let store = store.clone();
        let update = match task % 4 {
            0 => PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() },
            1 => PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() },
            2 => PreferencesUpdate { quiet_hours: Some(Some(quiet_hours("22:00", "07:00"))), ..Default::default() },
            _ => PreferencesUpdate { timezone: Some(TimeZoneName::parse("Asia/Tokyo").unwrap()), ..Default::default() },
        };
        async move { store.update_preferences(id, update, at(1), &by()).await }
    })
    .await;
    for result in results {
        result.expect("every update succeeds").expect("the user exists");
    }

    let preferences = preferences_of(store, id).await.expect("the user exists");
    assert!(!preferences.email && !preferences.push, "{preferences:?}");
    assert_eq!(preferences.quiet_hours, Some(quiet_hours("22:00", "07:00")));
    assert_eq!(preferences.timezone.as_str(), "Asia/Tokyo");
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// Login finds an account by email in any stored case, and by id; unknown ones are `None`.
pub async fn credentials_are_found_by_case_insensitive_email_and_by_id(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    fixture.execute(&insert_user_around_the_service("Upper", "UPPER@Example.com")).await;

    let by_email = store.find_credentials(&EmailAddress::parse("john@example.com").unwrap()).await.expect("find");
    let by_email = by_email.expect("the account exists");
    assert_eq!((by_email.user_id, by_email.password_hash.as_str(), by_email.token_version), (id, PASSWORD_HASH, 0));
    assert_eq!(store.credentials_of(id).await.expect("find"), Some(by_email));

    let upper = store.find_credentials(&EmailAddress::parse("upper@example.com").unwrap()).await.expect("find");
    assert!(upper.is_some(), "an address stored in another case is found");
    let unknown = EmailAddress::parse("nobody@example.com").unwrap();
    assert_eq!(store.find_credentials(&unknown).await.expect("find"), None);
    assert_eq!(store.credentials_of(UserId::generate()).await.expect("find"), None);
}

fn hash(phc: &str) -> PasswordHash {
    PasswordHash::new(phc.to_owned())
}

/// A new password hash is stored; the token version moves on only when tokens are revoked.
pub async fn replace_password_hash_replaces_the_hash_and_moves_the_token_version_only_when_revoking(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    assert_eq!(store.token_version(id).await.expect("version"), Some(0));

    let kept = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$second"), false).await;
    assert_eq!(kept.expect("update"), Some(0));
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!(credentials.password_hash.as_str(), "$argon2id$second");

    let revoked = store.replace_password_hash(id, hash("$argon2id$second"), hash("$argon2id$third"), true).await;
    assert_eq!(revoked.expect("update"), Some(1));
    assert_eq!(store.token_version(id).await.expect("version"), Some(1));
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!((credentials.password_hash.as_str(), credentials.token_version), ("$argon2id$third", 1));

    let unknown = UserId::generate();
    assert_eq!(store.token_version(unknown).await.expect("version"), None);
    let result = store.replace_password_hash(unknown, hash(PASSWORD_HASH), hash("$argon2id$x"), true).await;
    assert_eq!(result.expect("update"), None);
}

/// Two changes that read the same hash: the second finds it replaced and writes nothing.
pub async fn replace_password_hash_never_overwrites_a_hash_changed_since_it_was_read(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let first = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$first"), true).await;
    assert_eq!(first.expect("update"), Some(1));
    let second = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$second"), true).await;
    assert_eq!(second.expect("update"), None);
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!((credentials.password_hash.as_str(), credentials.token_version), ("$argon2id$first", 1));
}

// ---------------------------------------------------------------------------------------
// Devices: upsert
// ---------------------------------------------------------------------------------------

/// Twenty concurrent registrations of different users, each with a device, all succeed.
pub async fn concurrent_registrations_of_different_users_all_succeed(fixture: &impl StoreFixture) {
    let store = fixture.store();

    let results = all_at_once(|task| {
        let store = store.clone();
        let mut new_user = record(&format!("user{task}@example.com"), at(task as i64));
        new_user.device = Some(registration(&format!("token-{task}"), Platform::Unknown, true));
        async move { create(&store, new_user).await }
    })
    .await;
    for result in results {
        assert_eq!(result.expect("every registration succeeds").profile.devices.len(), 1);
    }

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, TASKS as i64);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, TASKS as i64);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, TASKS as i64);
}

/// Of concurrent registrations of one email, exactly one succeeds; the others are told the
/// email is taken.
pub async fn concurrent_registrations_of_one_email_create_exactly_one_user(fixture: &impl StoreFixture) {
    let store = fixture.store();

    let results = all_at_once(|task| {
        let store = store.clone();
        let new_user = record("contended@example.com", at(task as i64));
        async move { create(&store, new_user).await }
    })
    .await;
    let mut created = 0;
    for result in results {
        match result {
            Ok(_) => created += 1,
            Err(RepositoryError::EmailTaken) => {}
            Err(other) => panic!("a registration failed otherwise than as taken: {other:?}"),
        }
    }

    assert_eq!(created, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
}

// ---------------------------------------------------------------------------------------
// Devices: set_active, delete, list
// ---------------------------------------------------------------------------------------
