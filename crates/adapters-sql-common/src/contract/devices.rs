//! Contract cases of [`DeviceRepository`]: registration (upsert, moves), activation, removal.

use super::*;

/// A new token creates a device.
pub async fn upsert_of_a_new_token_creates_a_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let registered = upsert(store, id, registration("new-token", Platform::Ios, false), at(1)).await.expect("upsert");

    assert!(registered.created);
    assert_eq!(registered.previous_owner, None);
    let device = &registered.device;
    assert_eq!((device.user_id, device.token.as_str(), device.platform), (id, "new-token", Platform::Ios));
    assert!(!device.active);
    assert_eq!((device.created_at, device.updated_at, device.last_seen_at), (at(1), at(1), at(1)));
    assert_eq!(DeviceRepository::list(store, id).await.expect("list"), Some(vec![registered.device.clone()]));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// Registering a token again refreshes its device in place.
pub async fn upsert_of_a_known_token_for_the_same_user_refreshes_the_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let first = upsert(store, id, registration("token", Platform::Web, true), at(1)).await.expect("upsert");

    let again = upsert(store, id, registration("token", Platform::Android, false), at(7)).await.expect("upsert again");

    assert!(!again.created);
    assert_eq!(again.previous_owner, None, "the token did not change hands");
    assert_eq!(again.device.id, first.device.id);
    assert_eq!(again.device.user_id, id);
    assert_eq!(again.device.platform, Platform::Android);
    assert!(!again.device.active);
    assert_eq!(again.device.created_at, at(1));
    assert_eq!(again.device.last_seen_at, at(7));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// Another user's token moves to the registering user, and back.
pub async fn upsert_of_a_token_held_by_another_user_moves_it_and_names_the_previous_owner(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(1)).await;
    let original = upsert(store, first, registration("token", Platform::Ios, true), at(2)).await.expect("upsert");

    let moved = upsert(store, second, registration("token", Platform::Ios, true), at(3)).await.expect("move");

    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(moved.device.id, original.device.id);
    assert_eq!(moved.device.user_id, second);
    assert_eq!(moved.device.last_seen_at, at(3));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(DeviceRepository::list(store, first).await.expect("list"), Some(Vec::new()));
    assert_eq!(DeviceRepository::list(store, second).await.expect("list"), Some(vec![moved.device.clone()]));

    let back = upsert(store, first, registration("token", Platform::Ios, true), at(4)).await.expect("move back");
    assert_eq!(back.previous_owner, Some(second));
    assert_eq!(back.device.user_id, first);
}

/// A device cannot be registered for a user that does not exist.
pub async fn upsert_for_an_unknown_user_is_user_not_found(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    let result = upsert(store, UserId::generate(), registration("token", Platform::Web, true), at(1)).await;

    assert!(matches!(result, Err(RepositoryError::UserNotFound)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// Tokens of the maximum length (8 kB of UTF-8 here) are stored, unique, moved and found.
pub async fn upsert_accepts_a_token_of_the_maximum_length(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(1)).await;
    // Far above what a PostgreSQL B-tree entry holds (~2.7 kB).
    let token = format!("https://push.example.com/{}", "é".repeat(PushToken::MAX_LENGTH - 25));
    assert_eq!(token.chars().count(), PushToken::MAX_LENGTH);

    let created = upsert(store, first, registration(&token, Platform::Web, true), at(2)).await.expect("upsert");
    assert!(created.created);
    assert_eq!(created.device.token.as_str(), token);
    let moved = upsert(store, second, registration(&token, Platform::Web, true), at(3)).await.expect("move");
    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);

    let device = store.set_active(second, &selector(&token), false, at(4), &by()).await.expect("set active");
    assert_eq!(device.map(|device| device.id), Some(created.device.id));
}

/// Twenty concurrent registrations of one token converge on one row, created once, and
/// none of them fails (no deadlock, no "database is locked").
pub async fn concurrent_upserts_of_one_token_leave_one_row_and_report_one_creation(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let users =
        [create_user(store, "first@example.com", at(0)).await, create_user(store, "second@example.com", at(1)).await];

    let results: Vec<RegisteredDevice> = all_at_once(|task| {
        let store = store.clone();
        let user = users[task % 2];
        let seen = at(10 + task as i64);
        async move { upsert(&store, user, registration("contended-token", Platform::Android, true), seen).await }
    })
    .await
    .into_iter()
    .map(|result| result.expect("every upsert succeeds"))
    .collect();

    assert_eq!(results.iter().filter(|registered| registered.created).count(), 1);
    let id = results[0].device.id;
    assert!(results.iter().all(|registered| registered.device.id == id), "all upserts hit one row");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let owners: usize = [
        DeviceRepository::list(store, users[0]).await.expect("list").expect("exists").len(),
        DeviceRepository::list(store, users[1]).await.expect("list").expect("exists").len(),
    ]
    .iter()
    .sum();
    assert_eq!(owners, 1);
}

/// Concurrent registrations of one new token by two users record every move in both
/// histories: each registration that takes the device from the other user names it, so that
/// each user's rows for the device form one chain (each row starts from the value the one
/// before left) that ends in the device's state for that user.
pub async fn concurrent_registrations_of_a_new_token_record_every_move_in_both_histories(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let users =
        [create_user(store, "first@example.com", at(0)).await, create_user(store, "second@example.com", at(0)).await];

    let results: Vec<RegisteredDevice> = all_at_once(|task| {
        let store = store.clone();
        let user = users[task % 2];
        async move { upsert(&store, user, registration("raced-token", Platform::Web, true), at(1)).await }
    })
    .await
    .into_iter()
    .map(|result| result.expect("every upsert succeeds"))
    .collect();

    let device = results[0].device.id;
    let field = format!("devices.{device}.active");
    for user in users {
        let owns = DeviceRepository::list(store, user).await.expect("list").expect("exists").len() == 1;
        let mut state = None;
        for (changed, old, new) in changes_of(store, user, 0).await {
            if changed == field {
                assert_eq!(old, state, "{user:?}: a row that does not start where the one before ended");
                state = new;
            }
        }
        assert_eq!(state, owns.then(|| "true".to_owned()), "{user:?}: the history ends elsewhere than the device");
    }
    let moves = results.iter().filter(|registered| registered.previous_owner.is_some()).count();
    let moved_away = changes_of(store, users[0], 0).await.into_iter().chain(changes_of(store, users[1], 0).await);
    assert_eq!(moved_away.filter(|(changed, _, new)| *changed == field && new.is_none()).count(), moves);
}

/// A device is named by its id or by its token; a state change is not a sighting.
pub async fn set_active_finds_a_device_by_id_or_by_token(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let device =
        upsert(store, id, registration("plain-token", Platform::Ios, true), at(1)).await.expect("upsert").device;
    let other =
        upsert(store, id, registration("other-token", Platform::Ios, true), at(1)).await.expect("upsert").device;

    let by_id = store.set_active(id, &selector(&device.id.to_string()), false, at(2), &by()).await.expect("by id");
    let by_id = by_id.expect("found by id");
    assert_eq!(by_id.id, device.id);
    assert!(!by_id.active);
    assert_eq!(by_id.updated_at, at(2));
    assert_eq!(by_id.last_seen_at, at(1), "a state change is not a sighting");

    let by_token = store.set_active(id, &selector("plain-token"), true, at(3), &by()).await.expect("by token");
    let by_token = by_token.expect("found by token");
    assert_eq!(by_token.id, device.id);
    assert!(by_token.active);
    assert_eq!(by_token.updated_at, at(3));

    let untouched = DeviceRepository::list(store, id).await.expect("list").expect("exists");
    let untouched = untouched.iter().find(|listed| listed.id == other.id).expect("the other device");
    assert_eq!(untouched, &other);

    let unknown = store.set_active(id, &selector("no-such-token"), false, at(4), &by()).await.expect("unknown");
    assert_eq!(unknown, None);
}

/// A web-push endpoint whose `//` a proxy merged into `/` still names its device.
pub async fn set_active_finds_a_web_push_token_whose_double_slashes_were_merged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let endpoint = "https://push.example.com//wp/abc:DEF_123";
    let device = upsert(store, id, registration(endpoint, Platform::Web, true), at(1)).await.expect("upsert").device;

    let merged = store.set_active(id, &selector("https:/push.example.com/wp/abc:DEF_123"), false, at(2), &by()).await;
    let merged = merged.expect("set active").expect("found by the merged token");

    assert_eq!(merged.id, device.id);
    assert_eq!(merged.token.as_str(), endpoint, "the stored token keeps its slashes");
    assert!(!merged.active);
}

/// Setting the state a device already has keeps its `updated_at`.
pub async fn set_active_to_the_current_state_leaves_updated_at_unchanged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    upsert(store, id, registration("token", Platform::Android, true), at(1)).await.expect("upsert");

    let still_active = store.set_active(id, &selector("token"), true, at(2), &by()).await.expect("set").expect("found");
    assert!(still_active.active);
    assert_eq!(still_active.updated_at, at(1));

    let deactivated = store.set_active(id, &selector("token"), false, at(3), &by()).await.expect("set").expect("found");
    assert_eq!(deactivated.updated_at, at(3));
    let again = store.set_active(id, &selector("token"), false, at(4), &by()).await.expect("set").expect("found");
    assert!(!again.active);
    assert_eq!(again.updated_at, at(3));
    assert_eq!(DeviceRepository::list(store, id).await.expect("list").expect("exists"), vec![again]);
}

/// Another user's device is out of reach, by token and by id.
pub async fn set_active_on_another_users_device_is_none_and_changes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let owner = create_user(store, "owner@example.com", at(0)).await;
    let intruder = create_user(store, "intruder@example.com", at(1)).await;
    let device = upsert(store, owner, registration("token", Platform::Ios, true), at(2)).await.expect("upsert").device;

    let by_token = store.set_active(intruder, &selector("token"), false, at(3), &by()).await.expect("by token");
    let by_id =
        store.set_active(intruder, &selector(&device.id.to_string()), false, at(3), &by()).await.expect("by id");
    let unknown_user =
        store.set_active(UserId::generate(), &selector("token"), false, at(3), &by()).await.expect("unknown");

    assert_eq!((by_token, by_id, unknown_user), (None, None, None));
    assert_eq!(DeviceRepository::list(store, owner).await.expect("list").expect("exists"), vec![device]);
}

/// Deleting a device by id, token or merged token removes that device of that user only.
pub async fn delete_device_removes_only_the_named_device_of_that_user(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let owner = create_user(store, "owner@example.com", at(0)).await;
    let other = create_user(store, "other@example.com", at(1)).await;
    upsert(store, owner, registration("by-token", Platform::Ios, true), at(2)).await.expect("upsert");
    let by_id = upsert(store, owner, registration("by-id", Platform::Ios, true), at(3)).await.expect("upsert").device;
    upsert(store, owner, registration("https://push.example.com//wp/x", Platform::Web, true), at(4))
        .await
        .expect("upsert");
    let kept = upsert(store, owner, registration("kept", Platform::Android, true), at(5)).await.expect("upsert").device;

    assert!(
        !DeviceRepository::delete(store, other, &selector("by-token"), at(9), &by())
            .await
            .expect("delete as another user")
    );
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 4);

    assert!(
        DeviceRepository::delete(store, owner, &selector("by-token"), at(9), &by()).await.expect("delete by token")
    );
    assert!(
        DeviceRepository::delete(store, owner, &selector(&by_id.id.to_string()), at(9), &by())
            .await
            .expect("delete by id")
    );
    assert!(
        DeviceRepository::delete(store, owner, &selector("https:/push.example.com/wp/x"), at(9), &by())
            .await
            .expect("merged")
    );
    assert!(!DeviceRepository::delete(store, owner, &selector("by-token"), at(9), &by()).await.expect("delete again"));

    assert_eq!(DeviceRepository::list(store, owner).await.expect("list"), Some(vec![kept]));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// `list` tells an unknown user (`None`) from a user without devices (empty).
pub async fn device_list_is_none_for_an_unknown_user_and_empty_for_a_user_without_devices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    assert_eq!(DeviceRepository::list(store, UserId::generate()).await.expect("list unknown"), None);
    assert_eq!(DeviceRepository::list(store, id).await.expect("list"), Some(Vec::new()));
}

// ---------------------------------------------------------------------------------------
// Idempotency records
// ---------------------------------------------------------------------------------------
