//! [`CategoryRepository`] on PostgreSQL.
//!
//! Locks, always in this order so that no two writes deadlock: the category's row (`FOR
//! UPDATE` to remove it, `FOR NO KEY UPDATE` to change it, `FOR KEY SHARE` to choose in
//! it), then users' consent locks (see [`crate::history`]). A choice taken while a category
//! is being removed waits for the removal, then finds no category; a removal waits for the
//! choices being made, then drops them too.

use adapters_sql_common::rows::{CategoryRow, ChoiceRow, RevisionRow, categories_from_rows, category_from_revisions};
use adapters_sql_common::writes::{HistoryEntry, history_entries};
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::category::{Category, CategoryChoice, CategoryKey, CategoryPatch};
use domain::consent::{Provenance, choice_changes};
use domain::event::{EventType, NewEvent};
use domain::ports::{CategoryRemoval, CategoryRepository, ChoiceChange, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;

use crate::history::{append, lock_consent};
use crate::idempotency::TxError;
use crate::outbox;
use crate::prepared::kept_prepared;
use crate::rows::{CATEGORY, CHOICE, CategoryValues, ChoiceValues, REVISION, RevisionValues};
use crate::schema::{category_choices, category_revisions, notification_categories};
use crate::work::Unit;
use crate::{PgStore, RecordedAt};

/// The instant of a new revision of `key`, taken once the write holds the category's lock:
/// `at` (the database's clock when `None`, see [`crate::RecordClock`]), or the key's latest
/// revision if that is later, so that revisions in `id` order never go back in time and
/// [`as_of`] reads them in the order they were made.
///
/// [`as_of`]: CategoryRepository::as_of
async fn revision_time(
    connection: &mut AsyncPgConnection,
    key: &CategoryKey,
    at: RecordedAt,
) -> QueryResult<OffsetDateTime> {
    #[derive(QueryableByName)]
    struct Instant {
        #[diesel(sql_type = Timestamptz)]
        at: OffsetDateTime,
    }
    let instant: Instant = diesel::sql_query(
        "SELECT GREATEST(COALESCE($1, clock_timestamp()), (SELECT max(at) FROM category_revisions WHERE key = $2)) \
         AS at",
    )
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Text, _>(key.as_str())
    .get_result(connection)
    .await?;
    Ok(instant.at)
}

#[async_trait]
impl CategoryRepository for PgStore {
    async fn list(&self) -> Result<Vec<Category>, RepositoryError> {
        let rows: Vec<CategoryRow> = self
            .run(Unit::Statements, async |connection| {
                notification_categories::table
                    .order(notification_categories::key)
                    .select(CATEGORY)
                    .load(connection)
                    .await
            })
            .await?;
        categories_from_rows(rows)
    }

    async fn find(&self, key: &CategoryKey) -> Result<Option<Category>, RepositoryError> {
        let row: Option<CategoryRow> = self
            .run(Unit::Statements, async |connection| {
                notification_categories::table
                    .find(key.as_str())
                    .select(CATEGORY)
                    .get_result(connection)
                    .await
                    .optional()
            })
            .await?;
        row.map(Category::try_from).transpose()
    }

    async fn as_of(&self, key: &CategoryKey, at: OffsetDateTime) -> Result<Option<Category>, RepositoryError> {
        // A category has few revisions: all of them up to `at` also give its creation time.
        let revisions: Vec<RevisionRow> = self
            .run(Unit::Statements, async |connection| {
                category_revisions::table
                    .filter(category_revisions::key.eq(key.as_str()))
                    .filter(category_revisions::at.le(at))
                    .order((category_revisions::at, category_revisions::id))
                    .select(REVISION)
                    .load(connection)
                    .await
            })
            .await?;
        category_from_revisions(revisions)
    }

    async fn create(&self, category: Category) -> Result<Category, RepositoryError> {
        let recorded_at = self.recorded_at(category.updated_at);
        // A taken key fails the insert on the primary key (mapped to "exists"); a concurrent
        // creation of the same key waits for this one's commit, then fails so.
        let created = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                let at = revision_time(connection, &category.key, recorded_at).await?;
                let category = Category { created_at: at, updated_at: at, ..category };
                diesel::insert_into(notification_categories::table)
                    .values(CategoryValues::new(&category))
                    .execute(connection)
                    .await?;
                diesel::insert_into(category_revisions::table)
                    .values(RevisionValues::new(&category, at, false))
                    .execute(connection)
                    .await?;
                outbox::append(connection, vec![NewEvent::category(EventType::CategoryCreated, &category)], Some(at))
                    .await?;
                Ok(category)
            })
            .await?;
        Ok(created)
    }

    async fn update(
        &self,
        key: &CategoryKey,
        patch: CategoryPatch,
        now: OffsetDateTime,
    ) -> Result<Option<Category>, RepositoryError> {
        let recorded_at = self.recorded_at(now);
        let key = key.clone();
        let outcome = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // `NO KEY`: users' choices (which only share the key) go on meanwhile.
                let row: Option<CategoryRow> = notification_categories::table
                    .find(key.as_str())
                    .select(CATEGORY)
                    .for_no_key_update()
                    .get_result(connection)
                    .await
                    .optional()?;
                let Some(row) = row else { return Ok(None) };
                let at = revision_time(connection, &key, recorded_at).await?;
                let old = Category::try_from(row).map_err(TxError::Repository)?;
                let category = patch.apply(old.clone(), at);
                if category == old {
                    return Ok(Some(old));
                }
                kept_prepared(
                    diesel::update(notification_categories::table.find(key.as_str()))
                        .set(CategoryValues::new(&category)),
                )
                .execute(connection)
                .await?;
                diesel::insert_into(category_revisions::table)
                    .values(RevisionValues::new(&category, at, false))
                    .execute(connection)
                    .await?;
                outbox::append(connection, vec![NewEvent::category(EventType::CategoryUpdated, &category)], Some(at))
                    .await?;
                Ok(Some(category))
            })
            .await?;
        Ok(outcome)
    }

    async fn remove(
        &self,
        key: &CategoryKey,
        force: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<CategoryRemoval, RepositoryError> {
        let recorded_at = self.recorded_at(now);
        let (key, by) = (key.clone(), by.clone());
        let outcome = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // Locked against new choices first: those under way end before this reads.
                let row: Option<CategoryRow> = notification_categories::table
                    .find(key.as_str())
                    .select(CATEGORY)
                    .for_update()
                    .get_result(connection)
                    .await
                    .optional()?;
                let Some(row) = row else { return Ok(CategoryRemoval::NotFound) };
                let category = Category::try_from(row).map_err(TxError::Repository)?;
                let in_category = category_choices::table.filter(category_choices::category_key.eq(key.as_str()));
                if !force {
                    let users: i64 = in_category.count().get_result(connection).await?;
                    if users > 0 {
                        return Ok(CategoryRemoval::InUse(u64::try_from(users).unwrap_or_default()));
                    }
                }
                let choices: Vec<ChoiceRow> = in_category.select(CHOICE).load(connection).await?;
                // A user erased since the choices were read (its erasure committed while this
                // waited for its consent lock) has no history left to append to: only the
                // users whose locks are granted get rows, and their choices are the ones dropped.
                let owners: Vec<_> = choices.iter().map(|choice| choice.user_id).collect();
                let remaining = if owners.is_empty() { Vec::new() } else { lock_consent(connection, &owners).await? };
                let choices: Vec<&ChoiceRow> =
                    choices.iter().filter(|choice| remaining.contains(&choice.user_id)).collect();
                let users: Vec<UserId> = choices.iter().map(|choice| UserId::from(choice.user_id)).collect();
                let history: Vec<HistoryEntry> = choices
                    .iter()
                    .flat_map(|choice| {
                        let changes = choice_changes(&key, choice.choice(), CategoryChoice::default());
                        history_entries(UserId::from(choice.user_id), changes, &by)
                    })
                    .collect();
                append(connection, history, recorded_at).await?;
                // The choices go with the category (ON DELETE CASCADE).
                diesel::delete(notification_categories::table.find(key.as_str())).execute(connection).await?;
                let at = revision_time(connection, &key, recorded_at).await?;
                diesel::insert_into(category_revisions::table)
                    .values(RevisionValues::new(&category, at, true))
                    .execute(connection)
                    .await?;
                // Each user whose choice went, then the catalogue.
                let mut events: Vec<NewEvent> = users
                    .iter()
                    .map(|user| NewEvent::category_choice_changed(*user, &key, CategoryChoice::default()))
                    .collect();
                events.push(NewEvent::category_removed(&key));
                outbox::append(connection, events, Some(at)).await?;
                Ok(CategoryRemoval::Removed(users))
            })
            .await?;
        Ok(outcome)
    }

    async fn change_choice(
        &self,
        user: UserId,
        key: &CategoryKey,
        change: ChoiceChange,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<CategoryChoice>, RepositoryError> {
        let recorded_at = self.recorded_at(now);
        let (key, by) = (key.clone(), by.clone());
        let outcome = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // The category cannot go away until this commits (a removal waits for it).
                let category: Option<String> = notification_categories::table
                    .find(key.as_str())
                    .select(notification_categories::key)
                    .for_key_share()
                    .get_result(connection)
                    .await
                    .optional()?;
                if category.is_none() {
                    return Err(TxError::Repository(RepositoryError::CategoryNotFound));
                }
                // The user's consent lock serializes its choices: the old one is read under it.
                if lock_consent(connection, &[user.as_uuid()]).await?.is_empty() {
                    return Ok(None);
                }
                let stored: Option<ChoiceRow> = category_choices::table
                    .find((user.as_uuid(), key.as_str()))
                    .select(CHOICE)
                    .get_result(connection)
                    .await
                    .optional()?;
                let old = stored.as_ref().map(ChoiceRow::choice).unwrap_or_default();
                let new = match change {
                    ChoiceChange::Set(update) => old.with_update(update),
                    ChoiceChange::Clear => CategoryChoice::default(),
                };
                if new == old {
                    return Ok(Some(new));
                }
                let own_choice = category_choices::table.find((user.as_uuid(), key.as_str()));
                if new.is_empty() {
                    // A choice that says nothing is no choice: the defaults apply.
                    diesel::delete(own_choice).execute(connection).await?;
                } else {
                    let values = ChoiceValues::new(user, &key, new, now);
                    kept_prepared(
                        diesel::insert_into(category_choices::table)
                            .values(&values)
                            .on_conflict((category_choices::user_id, category_choices::category_key))
                            .do_update()
                            .set(&values),
                    )
                    .execute(connection)
                    .await?;
                }
                append(connection, history_entries(user, choice_changes(&key, old, new), &by), recorded_at).await?;
                outbox::append(connection, vec![NewEvent::category_choice_changed(user, &key, new)], recorded_at)
                    .await?;
                Ok(Some(new))
            })
            .await?;
        Ok(outcome)
    }
}
