//! [`CategoryRepository`] on SQLite. Write transactions are serialized (see the crate
//! docs): what a write checks first (a taken key, the category of a choice, the choices in
//! a category being removed) still holds when it writes.

use adapters_sql_common::rows::{CategoryRow, ChoiceRow, RevisionRow, categories_from_rows, category_from_revisions};
use adapters_sql_common::writes::{HistoryEntry, history_entries};
use async_trait::async_trait;
use diesel::dsl::exists;
use diesel::prelude::*;
use domain::category::{Category, CategoryChoice, CategoryKey, CategoryPatch};
use domain::consent::{Provenance, choice_changes};
use domain::event::{EventType, NewEvent};
use domain::ports::{CategoryRemoval, CategoryRepository, ChoiceChange, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::errors::StoreError;
use crate::history::append;
use crate::outbox;
use crate::schema::{
    CATEGORY, CHOICE, CategoryValues, ChoiceValues, Id, REVISION, RevisionValues, category_choices, category_revisions,
    notification_categories, user_exists,
};

/// The category with `key`, if any.
fn find_category(connection: &mut SqliteConnection, key: &str) -> Result<Option<Category>, StoreError> {
    let row: Option<CategoryRow> =
        notification_categories::table.find(key).select(CATEGORY).get_result(connection).optional()?;
    Ok(row.map(Category::try_from).transpose()?)
}

/// The instant of a new revision of `key`: `now`, or the key's latest revision if that is
/// later (writes are serialized, but their clock readings were taken before they waited), so
/// that revisions in `id` order never go back in time and `as_of` reads them in the order
/// they were made.
fn revision_time(
    connection: &mut SqliteConnection,
    key: &CategoryKey,
    now: OffsetDateTime,
) -> QueryResult<OffsetDateTime> {
    let latest: Option<OffsetDateTime> = category_revisions::table
        .filter(category_revisions::key.eq(key.as_str()))
        .order(category_revisions::id.desc())
        .select(category_revisions::at)
        .first(connection)
        .optional()?;
    Ok(latest.map_or(now, |latest| latest.max(now)))
}

#[async_trait]
impl CategoryRepository for SqliteStore {
    async fn list(&self) -> Result<Vec<Category>, RepositoryError> {
        self.read(|connection| {
            let rows: Vec<CategoryRow> =
                notification_categories::table.order(notification_categories::key).select(CATEGORY).load(connection)?;
            Ok(categories_from_rows(rows)?)
        })
        .await
    }

    async fn find(&self, key: &CategoryKey) -> Result<Option<Category>, RepositoryError> {
        let key = key.clone();
        self.read(move |connection| find_category(connection, key.as_str())).await
    }

    async fn as_of(&self, key: &CategoryKey, at: OffsetDateTime) -> Result<Option<Category>, RepositoryError> {
        let key = key.clone();
        self.read(move |connection| {
            // A category has few revisions: all of them up to `at` also give its creation time.
            let revisions: Vec<RevisionRow> = category_revisions::table
                .filter(category_revisions::key.eq(key.as_str()))
                .filter(category_revisions::at.le(at))
                .order((category_revisions::at, category_revisions::id))
                .select(REVISION)
                .load(connection)?;
            Ok(category_from_revisions(revisions)?)
        })
        .await
    }

    async fn create(&self, category: Category) -> Result<Category, RepositoryError> {
        self.write(move |connection| {
            // Checked first: SQLite does not name the violated constraint.
            let taken = notification_categories::table.find(category.key.as_str());
            if diesel::select(exists(taken)).get_result(connection)? {
                return Err(RepositoryError::CategoryExists.into());
            }
            let at = revision_time(connection, &category.key, category.updated_at)?;
            let category = Category { created_at: at, updated_at: at, ..category };
            diesel::insert_into(notification_categories::table)
                .values(CategoryValues::new(&category))
                .execute(connection)?;
            diesel::insert_into(category_revisions::table)
                .values(RevisionValues::new(&category, at, false))
                .execute(connection)?;
            outbox::append(connection, vec![NewEvent::category(EventType::CategoryCreated, &category)], at)?;
            Ok(category)
        })
        .await
    }

    async fn update(
        &self,
        key: &CategoryKey,
        patch: CategoryPatch,
        now: OffsetDateTime,
    ) -> Result<Option<Category>, RepositoryError> {
        let key = key.clone();
        self.write(move |connection| {
            let Some(category) = find_category(connection, key.as_str())? else { return Ok(None) };
            let at = revision_time(connection, &key, now)?;
            let old = category;
            let category = patch.apply(old.clone(), at);
            if category == old {
                return Ok(Some(old));
            }
            diesel::update(notification_categories::table.find(key.as_str()))
                .set(CategoryValues::new(&category))
                .execute(connection)?;
            diesel::insert_into(category_revisions::table)
                .values(RevisionValues::new(&category, at, false))
                .execute(connection)?;
            outbox::append(connection, vec![NewEvent::category(EventType::CategoryUpdated, &category)], at)?;
            Ok(Some(category))
        })
        .await
    }

    async fn remove(
        &self,
        key: &CategoryKey,
        force: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<CategoryRemoval, RepositoryError> {
        let (key, by) = (key.clone(), by.clone());
        self.write(move |connection| {
            let Some(category) = find_category(connection, key.as_str())? else {
                return Ok(CategoryRemoval::NotFound);
            };
            let choices: Vec<ChoiceRow> = category_choices::table
                .filter(category_choices::category_key.eq(key.as_str()))
                .order(category_choices::user_id)
                .select(CHOICE)
                .load(connection)?;
            if !force && !choices.is_empty() {
                return Ok(CategoryRemoval::InUse(u64::try_from(choices.len()).unwrap_or(u64::MAX)));
            }
            let history: Vec<HistoryEntry> = choices
                .iter()
                .flat_map(|choice| {
                    let changes = choice_changes(&key, choice.choice(), CategoryChoice::default());
                    history_entries(UserId::from(choice.user_id), changes, &by)
                })
                .collect();
            append(connection, history, now)?;
            // The choices go with the category (ON DELETE CASCADE).
            diesel::delete(notification_categories::table.find(key.as_str())).execute(connection)?;
            let at = revision_time(connection, &key, now)?;
            diesel::insert_into(category_revisions::table)
                .values(RevisionValues::new(&category, at, true))
                .execute(connection)?;
            let users: Vec<UserId> = choices.iter().map(|choice| UserId::from(choice.user_id)).collect();
            // Each user whose choice went, then the catalogue.
            let mut events: Vec<NewEvent> = users
                .iter()
                .map(|user| NewEvent::category_choice_changed(*user, &key, CategoryChoice::default()))
                .collect();
            events.push(NewEvent::category_removed(&key));
            outbox::append(connection, events, at)?;
            Ok(CategoryRemoval::Removed(users))
        })
        .await
    }

    async fn change_choice(
        &self,
        user: UserId,
        key: &CategoryKey,
        change: ChoiceChange,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<CategoryChoice>, RepositoryError> {
        let (key, by) = (key.clone(), by.clone());
        self.write(move |connection| {
            let category = notification_categories::table.find(key.as_str());
            if !diesel::select(exists(category)).get_result(connection)? {
                return Err(RepositoryError::CategoryNotFound.into());
            }
            if !user_exists(connection, user)? {
                return Ok(None);
            }
            let own_choice = category_choices::table.find((Id::from(user), key.as_str()));
            let stored: Option<ChoiceRow> = own_choice.select(CHOICE).get_result(connection).optional()?;
            let old = stored.as_ref().map(ChoiceRow::choice).unwrap_or_default();
            let new = match change {
                ChoiceChange::Set(update) => old.with_update(update),
                ChoiceChange::Clear => CategoryChoice::default(),
            };
            if new == old {
                return Ok(Some(new));
            }
            if new.is_empty() {
                // A choice that says nothing is no choice: the defaults apply.
                diesel::delete(own_choice).execute(connection)?;
            } else {
                let values = ChoiceValues::new(user, &key, new, now);
                diesel::insert_into(category_choices::table)
                    .values(&values)
                    .on_conflict((category_choices::user_id, category_choices::category_key))
                    .do_update()
                    .set(&values)
                    .execute(connection)?;
            }
            append(connection, history_entries(user, choice_changes(&key, old, new), &by), now)?;
            outbox::append(connection, vec![NewEvent::category_choice_changed(user, &key, new)], now)?;
            Ok(Some(new))
        })
        .await
    }
}
