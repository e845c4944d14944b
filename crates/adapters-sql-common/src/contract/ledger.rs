//! Contract cases of the cache's [`InvalidationLedger`].

use super::*;

/// The users the ledger lists.
fn users_of(entries: &[LedgerEntry]) -> Vec<UserId> {
    entries.iter().map(|entry| entry.user).collect()
}

/// A user recorded twice in one call is listed once; a user recorded again gets a new mark
/// and moves behind the others.
pub async fn the_ledger_lists_each_recorded_user_once_oldest_recording_first(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let (first, second) = (UserId::generate(), UserId::generate());
    assert!(store.recorded(10).await.expect("list").is_empty());

    store.record(&[first, first]).await.expect("record");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record(&[second]).await.expect("record");
    let listed = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&listed), [first, second]);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record(&[first]).await.expect("record again");
    let relisted = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&relisted), [second, first]);
    assert_ne!(relisted[1].mark, listed[0].mark, "a new recording has a new mark");
    assert_eq!(relisted[0], listed[1]);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM cache_invalidation_ledger").await, 2);
}

/// Forgetting the recording a replay confirmed keeps the recording a later write made.
pub async fn forgetting_a_recording_keeps_a_newer_recording_of_the_same_user(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = UserId::generate();
    store.record(&[user]).await.expect("record");
    let replayed = store.recorded(10).await.expect("list");
    store.record(&[user]).await.expect("a later write records the user again");

    store.forget(&replayed).await.expect("forget");
    let left = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&left), [user]);
    assert_ne!(left[0].mark, replayed[0].mark);

    store.forget(&left).await.expect("forget");
    assert!(store.recorded(10).await.expect("list").is_empty());
    store.forget(&left).await.expect("forgetting twice is no error");
    store.forget(&[]).await.expect("forgetting nothing is no error");
    store.record(&[]).await.expect("recording nothing is no error");
}

/// Listing stops at the limit; forgetting takes more recordings than one statement binds.
pub async fn the_ledger_lists_at_most_the_limit_and_forgets_in_any_number(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let users: Vec<UserId> = (0..1_200).map(|_| UserId::generate()).collect();
    store.record(&users).await.expect("record");
    assert_eq!(store.recorded(3).await.expect("list").len(), 3);
    let all = store.recorded(5_000).await.expect("list");
    assert_eq!(all.len(), 1_200);

    store.forget(&all).await.expect("forget");
    assert!(store.recorded(5_000).await.expect("list").is_empty());
}
