//! Contract cases of [`CategoryRepository`]: the catalogue, its revisions, users' choices.

use super::*;

/// How many rows a registration with default preferences and no phone appends.
const REGISTRATION_ROWS: usize = 4;

/// The catalogue stores what it is given, lists by key, and refuses a second category with
/// a key that is taken.
pub async fn categories_are_created_listed_and_found_and_a_taken_key_is_category_exists(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut marketing = category("marketing", false, true, false, at(0));
    marketing.description = Some(CategoryDescription::parse("Offers and news").unwrap());
    let security = category("security", true, true, true, at(1));

    CategoryRepository::create(store, security.clone()).await.expect("create security");
    CategoryRepository::create(store, marketing.clone()).await.expect("create marketing");

    assert_eq!(CategoryRepository::list(store).await.expect("list"), vec![marketing.clone(), security.clone()]);
    assert_eq!(store.find(&key("marketing")).await.expect("find"), Some(marketing.clone()));
    assert_eq!(store.find(&key("nothing")).await.expect("find"), None);

    let duplicate = category("marketing", true, false, false, at(2));
    let result = CategoryRepository::create(store, duplicate).await;
    assert!(matches!(result, Err(RepositoryError::CategoryExists)), "{result:?}");
    assert_eq!(store.find(&key("marketing")).await.expect("find"), Some(marketing), "unchanged");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_categories").await, 2);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_revisions").await, 2);
}

/// A patch changes the fields it names (a description can be removed) and appends a
/// revision; an unknown key is `None`.
pub async fn update_changes_what_the_patch_names_and_an_unknown_key_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut original = category("marketing", false, true, false, at(0));
    original.description = Some(CategoryDescription::parse("Offers").unwrap());
    CategoryRepository::create(store, original.clone()).await.expect("create");

    let patch = CategoryPatch {
        name: Some(CategoryName::parse("Deals").unwrap()),
        description: Some(None),
        default_push: Some(true),
        ..CategoryPatch::default()
    };
    let updated = store.update(&key("marketing"), patch.clone(), at(5)).await.expect("update").expect("it exists");

    assert_eq!(updated, patch.apply(original.clone(), at(5)));
    assert_eq!((updated.name.as_str(), updated.description.as_ref()), ("Deals", None));
    assert_eq!(updated.defaults, ChannelDefaults { email: true, push: true });
    assert_eq!((updated.created_at, updated.updated_at), (at(0), at(5)));
    assert_eq!(store.find(&key("marketing")).await.expect("find"), Some(updated));
    assert_eq!(store.update(&key("nothing"), patch, at(6)).await.expect("update unknown"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_revisions").await, 2);
}

/// A category users chose in is removed only with `force`, which drops their choices and
/// records each dropped channel in its owner's history.
pub async fn remove_refuses_a_category_in_use_and_force_drops_the_choices_with_their_history(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    CategoryRepository::create(store, category("marketing", false, true, true, at(0))).await.expect("create");
    CategoryRepository::create(store, category("unused", false, true, true, at(0))).await.expect("create");
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(0)).await;
    let bystander = create_user(store, "bystander@example.com", at(0)).await;
    let marketing = key("marketing");
    let both = ChoiceChange::Set(CategoryChoice { email: Some(false), push: Some(true) });
    let push_only = ChoiceChange::Set(CategoryChoice { email: None, push: Some(false) });
    store.change_choice(first, &marketing, both, at(1), &by()).await.expect("choose").expect("user exists");
    store.change_choice(second, &marketing, push_only, at(1), &by()).await.expect("choose").expect("user exists");

    let refused = store.remove(&marketing, false, at(2), &by()).await.expect("remove");
    assert_eq!(refused, CategoryRemoval::InUse(2));
    assert!(store.find(&marketing).await.expect("find").is_some(), "still there");

    let removed = store.remove(&marketing, true, at(3), &by()).await.expect("remove with force");
    let CategoryRemoval::Removed(mut users) = removed else { panic!("removed: {removed:?}") };
    users.sort_by_key(|user| user.as_uuid());
    let mut expected = vec![first, second];
    expected.sort_by_key(|user| user.as_uuid());
    assert_eq!(users, expected);
    assert_eq!(store.find(&marketing).await.expect("find"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_choices").await, 0);
    let removal = "SELECT count(*) AS count FROM category_revisions WHERE key = 'marketing' AND removed";
    assert_eq!(fixture.count(removal).await, 1);

    assert_eq!(
        changes_of(store, first, REGISTRATION_ROWS + 2).await,
        [
            change("categories.marketing.email", Some("false"), None),
            change("categories.marketing.push", Some("true"), None),
        ]
    );
    assert_eq!(
        changes_of(store, second, REGISTRATION_ROWS + 1).await,
        [change("categories.marketing.push", Some("false"), None)]
    );
    let last = history_of(store, second).await.pop().expect("a row");
    assert_eq!((last.at, &last.actor, &last.request_id), (at(3), &by().actor.unwrap(), &by().request_id));
    assert_eq!(history_of(store, bystander).await.len(), REGISTRATION_ROWS, "no choice, no row");

    assert_eq!(
        store.remove(&key("unused"), false, at(4), &by()).await.expect("remove"),
        CategoryRemoval::Removed(vec![])
    );
    assert_eq!(store.remove(&marketing, true, at(5), &by()).await.expect("again"), CategoryRemoval::NotFound);
}

/// What a category was at an instant: nothing before its creation, each version from its
/// revision on, nothing after its removal, and a new life when its key is created again.
pub async fn as_of_answers_what_a_category_was_at_an_instant(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let original = category("marketing", false, true, false, at(0));
    CategoryRepository::create(store, original.clone()).await.expect("create");
    let patch = CategoryPatch { critical: Some(true), ..CategoryPatch::default() };
    let updated = store.update(&key("marketing"), patch, at(10)).await.expect("update").expect("it exists");
    store.remove(&key("marketing"), false, at(20), &by()).await.expect("remove");
    let again = category("marketing", false, false, false, at(30));
    CategoryRepository::create(store, again.clone()).await.expect("create again");

    let as_of = async |minutes| store.as_of(&key("marketing"), at(minutes)).await.expect("as of");
    assert_eq!(as_of(-1).await, None, "before its creation");
    assert_eq!(as_of(0).await, Some(original.clone()), "at its creation");
    assert_eq!(as_of(5).await, Some(original));
    assert_eq!(as_of(10).await, Some(updated.clone()));
    assert_eq!(as_of(15).await, Some(updated));
    assert_eq!(as_of(20).await, None, "removed");
    assert_eq!(as_of(25).await, None);
    assert_eq!(as_of(35).await, Some(again), "created again: a new creation time");
    assert_eq!(store.as_of(&key("nothing"), at(35)).await.expect("as of"), None);
}

/// A choice sets the channels it names and keeps the others; clearing it deletes it; each
/// changed channel is recorded, an unchanged one is not.
pub async fn change_choice_sets_channels_partially_and_clear_returns_to_the_defaults(fixture: &impl StoreFixture) {
    let store = fixture.store();
    CategoryRepository::create(store, category("marketing", false, true, true, at(0))).await.expect("create");
    let id = create_user(store, "john@example.com", at(0)).await;
    let marketing = key("marketing");
    let set = |email, push| ChoiceChange::Set(CategoryChoice { email, push });

    let email_off = store.change_choice(id, &marketing, set(Some(false), None), at(1), &by()).await.expect("set");
    assert_eq!(email_off, Some(CategoryChoice { email: Some(false), push: None }));
    let push_on = store.change_choice(id, &marketing, set(None, Some(true)), at(2), &by()).await.expect("set");
    assert_eq!(push_on, Some(CategoryChoice { email: Some(false), push: Some(true) }), "email kept");
    let same = store.change_choice(id, &marketing, set(Some(false), None), at(3), &by()).await.expect("same");
    assert_eq!(same, push_on);
    let profile = store.find_profile(id).await.expect("find").expect("exists");
    assert_eq!(profile.categories.get(&marketing), push_on.as_ref());
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_choices").await, 1);

    let cleared = store.change_choice(id, &marketing, ChoiceChange::Clear, at(4), &by()).await.expect("clear");
    assert_eq!(cleared, Some(CategoryChoice::default()));
    assert!(store.find_profile(id).await.expect("find").expect("exists").categories.is_empty());
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_choices").await, 0);
    let nothing = store.change_choice(id, &marketing, set(None, None), at(5), &by()).await.expect("empty");
    assert_eq!(nothing, Some(CategoryChoice::default()));
    assert_eq!(
        fixture.count("SELECT count(*) AS count FROM category_choices").await,
        0,
        "an empty choice is not stored"
    );

    assert_eq!(
        changes_of(store, id, REGISTRATION_ROWS).await,
        [
            change("categories.marketing.email", None, Some("false")),
            change("categories.marketing.push", None, Some("true")),
            change("categories.marketing.email", Some("false"), None),
            change("categories.marketing.push", Some("true"), None),
        ]
    );
}

/// A choice names a category of the catalogue and a user that exists.
pub async fn change_choice_in_an_unknown_category_is_category_not_found_and_for_an_unknown_user_is_none(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    CategoryRepository::create(store, category("marketing", false, true, true, at(0))).await.expect("create");
    let id = create_user(store, "john@example.com", at(0)).await;
    let choice = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });

    let unknown_category = store.change_choice(id, &key("nothing"), choice, at(1), &by()).await;
    assert!(matches!(unknown_category, Err(RepositoryError::CategoryNotFound)), "{unknown_category:?}");
    let unknown_user = store.change_choice(UserId::generate(), &key("marketing"), choice, at(1), &by()).await;
    assert_eq!(unknown_user.expect("no error"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM category_choices").await, 0);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM consent_history").await, REGISTRATION_ROWS as i64);
}

/// Every read of profiles carries each user's own choices, and only theirs.
pub async fn profiles_carry_the_users_category_choices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    CategoryRepository::create(store, category("marketing", false, true, true, at(0))).await.expect("create");
    CategoryRepository::create(store, category("news", false, false, true, at(0))).await.expect("create");
    let chooser = create_user(store, "chooser@example.com", at(0)).await;
    let other = create_user(store, "other@example.com", at(1)).await;
    let silent = create_user(store, "silent@example.com", at(2)).await;
    let marketing = CategoryChoice { email: Some(false), push: None };
    let news = CategoryChoice { email: Some(true), push: Some(false) };
    let theirs = CategoryChoice { email: None, push: Some(true) };
    store.change_choice(chooser, &key("marketing"), ChoiceChange::Set(marketing), at(3), &by()).await.expect("set");
    store.change_choice(chooser, &key("news"), ChoiceChange::Set(news), at(3), &by()).await.expect("set");
    store.change_choice(other, &key("news"), ChoiceChange::Set(theirs), at(3), &by()).await.expect("set");
    let expected = |user| {
        if user == chooser {
            [(key("marketing"), marketing), (key("news"), news)].into_iter().collect()
        } else if user == other {
            [(key("news"), theirs)].into_iter().collect()
        } else {
            domain::category::CategoryChoices::new()
        }
    };

    for user in [chooser, other, silent] {
        let profile = store.find_profile(user).await.expect("find").expect("exists");
        assert_eq!(profile.categories, expected(user));
    }
    let found = store.find_profiles(&[silent, chooser, UserId::generate(), other]).await.expect("find profiles");
    assert_eq!(found.len(), 3);
    for profile in &found {
        assert_eq!(profile.categories, expected(profile.user.id), "{}", profile.user.email.as_str());
    }
    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");
    assert_eq!(page.items.len(), 3);
    for profile in &page.items {
        assert_eq!(profile.categories, expected(profile.user.id), "{}", profile.user.email.as_str());
    }
}

/// One user's profile, read in one statement that pairs each device with each choice, has
/// every device once, in profile order (ties in the last sighting broken by the id), and
/// every choice once: the profile the batch reads give, whatever the numbers of devices and
/// choices (none, one or several of each).
pub async fn a_profile_has_each_device_and_each_choice_once_whatever_their_numbers(fixture: &impl StoreFixture) {
    let store = fixture.store();
    for name in ["marketing", "news", "security"] {
        CategoryRepository::create(store, category(name, false, true, false, at(0))).await.expect("create");
    }
    let set = |email, push| ChoiceChange::Set(CategoryChoice { email, push });
    let mut users = Vec::new();
    for (index, (devices, choices)) in [(0, 0), (0, 2), (3, 0), (1, 1), (3, 3), (4, 2)].into_iter().enumerate() {
        let id = create_user(store, &format!("user{index}@example.com"), at(0)).await;
        // Two devices seen at the same instant, one inactive device seen last.
        for device in 0..devices {
            let (active, seen) = match device {
                0 => (false, 9),
                1 | 2 => (true, 5),
                _ => (true, 1),
            };
            let token = format!("user{index}-device{device}");
            upsert(store, id, registration(&token, Platform::Web, active), at(seen)).await.expect("upsert");
        }
        let chosen = [
            ("marketing", set(Some(false), None)),
            ("news", set(None, Some(true))),
            ("security", set(Some(true), Some(false))),
        ];
        for (name, choice) in chosen.into_iter().take(choices) {
            store.change_choice(id, &key(name), choice, at(10), &by()).await.expect("choose");
        }
        users.push((id, devices, choices));
    }

    for (id, devices, choices) in users {
        let profile = store.find_profile(id).await.expect("find").expect("the user exists");
        assert_eq!(profile.devices.len(), devices, "{}", profile.user.email.as_str());
        assert_eq!(profile.categories.len(), choices, "{}", profile.user.email.as_str());
        let batch = store.find_profiles(&[id]).await.expect("find profiles").pop();
        assert_eq!(Some(&profile), batch.as_ref(), "the batch read gives the same profile");
        let listed = DeviceRepository::list(store, id).await.expect("list").expect("the user exists");
        assert_eq!(tokens(&profile.devices), tokens(&listed), "the devices' own order");
        if devices >= 3 {
            assert_eq!(profile.devices.last().map(|device| device.active), Some(false), "inactive last");
            assert!(profile.devices[0].last_seen_at >= profile.devices[1].last_seen_at);
        }
    }
}
