//! The category catalogue, users' choices in it, the consent history, and eligibility: now
//! (from the cached profile) and as recorded at a past instant (rebuilt from the history).

use time::OffsetDateTime;

use super::UserService;
use crate::category::{Category, CategoryKey, CategoryPatch, NewCategory, ResolvedChoice};
use crate::consent::{ConsentState, HistoryPage, Provenance};
use crate::eligibility::{Channel, Eligibility, decide_as_recorded, decide_sending};
use crate::failure::{CatalogueError, ChoiceError, EligibilityError, ReadError, ServiceError};
use crate::ports::{CategoryRemoval, ChoiceChange};
use crate::preferences::Preferences;
use crate::user::UserId;

/// A decision rebuilt from the consent history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEligibility {
    /// The decision, as the user's recorded consent at its instant allowed.
    pub eligibility: Eligibility,
    /// The time of the last recorded change at or before the instant (the registration at
    /// the earliest): the state the decision rests on held from then.
    pub rests_on: OffsetDateTime,
}

/// A user's preferences with every category of the catalogue resolved for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencesOverview {
    /// The global channel switches, quiet hours and time zone.
    pub preferences: Preferences,
    /// Every category, with the user's setting in it.
    pub categories: Vec<(Category, ResolvedChoice)>,
}

impl UserService {
    /// The catalogue, by key.
    pub async fn categories(&self) -> Result<Vec<Category>, CatalogueError> {
        Ok(self.ports.categories.list().await?)
    }

    /// One category.
    pub async fn category(&self, key: &CategoryKey) -> Result<Category, CatalogueError> {
        self.ports.categories.find(key).await?.ok_or(CatalogueError::CategoryNotFound)
    }

    /// Adds a category to the catalogue.
    pub async fn create_category(&self, new: NewCategory) -> Result<Category, CatalogueError> {
        self.detached(
            move |write| async move { Ok(write.ports.categories.create(Category::new(new, write.now())).await?) },
        )
        .await
    }

    /// Changes a category. Users' representations hold only their own choices, never a
    /// category's defaults, so no cached entry changes with it.
    pub async fn update_category(&self, key: CategoryKey, patch: CategoryPatch) -> Result<Category, CatalogueError> {
        if patch.is_empty() {
            return self.category(&key).await;
        }
        self.detached(move |write| async move {
            write.ports.categories.update(&key, patch, write.now()).await?.ok_or(CatalogueError::CategoryNotFound)
        })
        .await
    }

    /// Removes a category; with `force`, also while users have choices in it (dropped, each
    /// recorded in its owner's history, and each owner's representation invalidated).
    pub async fn remove_category(&self, key: CategoryKey, force: bool, by: Provenance) -> Result<(), CatalogueError> {
        self.detached(move |write| async move {
            match write.ports.categories.remove(&key, force, write.now(), &by).await {
                Ok(CategoryRemoval::Removed(touched)) => {
                    write.after_write(Ok(()), &touched, |_| true).await?;
                    Ok(())
                }
                Ok(CategoryRemoval::InUse(users)) => Err(CatalogueError::CategoryInUse(users)),
                Ok(CategoryRemoval::NotFound) => Err(CatalogueError::CategoryNotFound),
                // A failure may still have committed: nobody knows whose choices went.
                Err(error) => Err(error.into()),
            }
        })
        .await
    }

    /// Sets or clears the user's choice in a category and answers the setting that now
    /// applies.
    pub async fn change_category_choice(
        &self,
        user: UserId,
        key: CategoryKey,
        change: ChoiceChange,
        by: Provenance,
    ) -> Result<(Category, ResolvedChoice), ChoiceError> {
        let choice = self
            .detached(move |write| {
                let key = key.clone();
                async move {
                    let result = write.ports.categories.change_choice(user, &key, change, write.now(), &by).await;
                    let choice =
                        write.after_write(result, &[user], Option::is_some).await?.ok_or(ChoiceError::UserNotFound)?;
                    Ok::<_, ChoiceError>((key, choice))
                }
            })
            .await?;
        let (key, choice) = choice;
        let category = self.ports.categories.find(&key).await?.ok_or(ChoiceError::CategoryNotFound)?;
        let resolved = category.resolve(Some(&choice));
        Ok((category, resolved))
    }

    /// The user's preferences with every category resolved, from the cached representation
    /// when warm.
    pub async fn preferences(&self, id: UserId) -> Result<PreferencesOverview, ReadError> {
        let encoded = self.reads.encoded_profile(id).await?;
        let profile = self.reads.decoded(id, &encoded).await?;
        let catalogue = self.ports.categories.list().await?;
        let categories = catalogue
            .into_iter()
            .map(|category| {
                let resolved = category.resolve(profile.categories.get(&category.key));
                (category, resolved)
            })
            .collect();
        Ok(PreferencesOverview { preferences: profile.preferences, categories })
    }

    /// A page of the user's consent history, newest first.
    pub async fn consent_history(
        &self,
        user: UserId,
        limit: u32,
        before: Option<i64>,
    ) -> Result<HistoryPage, ReadError> {
        self.ports.history.page(user, limit, before).await?.ok_or(ReadError::UserNotFound)
    }

    /// Whether `user` may be sent to on `channel` at `at`, in `category` if given; decided
    /// from the cached profile when warm.
    pub async fn eligibility(
        &self,
        user: UserId,
        channel: Channel,
        category: Option<&CategoryKey>,
        at: OffsetDateTime,
    ) -> Result<Eligibility, EligibilityError> {
        let category = self.category_for_decisions(category).await?;
        let sending = self.reads.sending(user, channel).await.map_err(ServiceError::from)?;
        Ok(decide_sending(&sending, channel, category.as_ref(), at))
    }

    /// Send eligibility of many users on one channel (and category) at one instant, in the
    /// order of `ids` (`None` for unknown users).
    pub async fn eligibilities(
        &self,
        ids: &[UserId],
        channel: Channel,
        category: Option<&CategoryKey>,
        at: OffsetDateTime,
    ) -> Result<Vec<(UserId, Option<Eligibility>)>, EligibilityError> {
        let category = self.category_for_decisions(category).await?;
        let sending = self.reads.sending_many(ids, channel).await.map_err(ServiceError::from)?;
        // An id asked twice is decided twice from the same projection: the same answer.
        Ok(ids
            .iter()
            .map(|id| (*id, sending.get(id).map(|profile| decide_sending(profile, channel, category.as_ref(), at))))
            .collect())
    }

    /// Whether `user` could be sent to on `channel` (in `category`) at the past instant `at`,
    /// as their consent was then: today's state with each field changed since taken back to
    /// its value at `at` (the old value of its first change after `at`), and the category as
    /// the catalogue had it then.
    ///
    /// The profile is read before the history: a change committed in between is then in the
    /// history but not in the profile, and taking it back sets the value the profile already
    /// has; the other order could miss one.
    pub async fn eligibility_as_recorded(
        &self,
        user: UserId,
        channel: Channel,
        category: Option<&CategoryKey>,
        at: OffsetDateTime,
    ) -> Result<RecordedEligibility, EligibilityError> {
        let profile = self.ports.users.find_profile(user).await?.ok_or(EligibilityError::UserNotFound)?;
        let since = self.ports.history.since(user, at).await?;
        let mut state = ConsentState::of(&profile);
        for record in &since.changes {
            state.undo(&record.change).map_err(|error| {
                EligibilityError::Unexpected(format!("consent history row {}: {error}", record.sequence).into())
            })?;
        }
        // Every user has an address from its registration on: none at `at` is an instant
        // before the registration's rows. Those rows may be stamped by the store's clock,
        // `created_at` by the registering instance's: an instant before `created_at` counts
        // as before the registration only when nothing was recorded by then (a user
        // registered before the history existed has no such rows).
        let before_created = at < profile.user.created_at && since.last_before.is_none();
        if state.email.is_none() || before_created {
            return Err(EligibilityError::NotYetRegistered);
        }
        let category = match category {
            Some(key) => Some(self.ports.categories.as_of(key, at).await?.ok_or(EligibilityError::CategoryNotFound)?),
            None => None,
        };
        // The answer rests on the user's last change and on the category's version then.
        let user_state_since = since.last_before.unwrap_or(profile.user.created_at);
        let rests_on = category.as_ref().map_or(user_state_since, |category| user_state_since.max(category.updated_at));
        Ok(RecordedEligibility { eligibility: decide_as_recorded(&state, channel, category.as_ref(), at), rests_on })
    }

    async fn category_for_decisions(&self, key: Option<&CategoryKey>) -> Result<Option<Category>, EligibilityError> {
        match key {
            Some(key) => Ok(Some(self.ports.categories.find(key).await?.ok_or(EligibilityError::CategoryNotFound)?)),
            None => Ok(None),
        }
    }
}
