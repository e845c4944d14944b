//! Login and password changes.

use super::{UserService, Write};
use crate::auth::Authenticated;
use crate::failure::{LoginError, PasswordChangeError, ServiceError};
use crate::user::{EmailAddress, Password, PasswordHash, UserId};

impl UserService {
    /// Checks an email and password. Unknown accounts are verified against a dummy hash so
    /// that they take as long to refuse as wrong passwords; a correct password stored under
    /// weaker hashing parameters is re-hashed.
    pub async fn login(&self, email: &EmailAddress, password: Password) -> Result<Authenticated, LoginError> {
        let Some(credentials) = self.ports.users.find_credentials(email).await? else {
            self.ports.hasher.verify(password, self.ports.hasher.dummy_hash()).await?;
            return Err(LoginError::InvalidCredentials);
        };
        let stored = credentials.password_hash.clone();
        if !self.ports.hasher.verify(password.clone(), stored).await? {
            return Err(LoginError::InvalidCredentials);
        }
        if self.ports.hasher.needs_rehash(&credentials.password_hash) {
            let (user, weak) = (credentials.user_id, credentials.password_hash.clone());
            // A write too: it runs to its end even if the client goes away.
            let _ = self
                .detached(move |write| async move {
                    write.upgrade_hash(user, weak, password).await;
                    Ok::<_, ServiceError>(())
                })
                .await;
        }
        Ok(Authenticated { user_id: credentials.user_id, token_version: credentials.token_version })
    }

    /// Changes the user's password after checking the current one; every access token
    /// issued before stops working. Returns the new token version.
    pub async fn change_password(
        &self,
        user: UserId,
        current: Password,
        new: Password,
    ) -> Result<i32, PasswordChangeError> {
        self.detached(move |write| async move {
            let users = &write.ports.users;
            let credentials = users.credentials_of(user).await?.ok_or(PasswordChangeError::UserNotFound)?;
            if !write.ports.hasher.verify(current, credentials.password_hash.clone()).await? {
                return Err(PasswordChangeError::CurrentPasswordMismatch);
            }
            let hash = write.ports.hasher.hash(new).await?;
            // A concurrent change (or erasure) in between: the password checked is no longer
            // the current one, and this change is refused rather than silently lost.
            users
                .replace_password_hash(user, credentials.password_hash, hash, true)
                .await?
                .ok_or(PasswordChangeError::CurrentPasswordMismatch)
        })
        .await
    }
}

impl Write {
    /// Replaces a weak hash, unless the password changed meanwhile; a failure only delays the
    /// upgrade to the next login.
    async fn upgrade_hash(&self, user: UserId, weak: PasswordHash, password: Password) {
        let upgraded = match self.ports.hasher.hash(password).await {
            Ok(hash) => self
                .ports
                .users
                .replace_password_hash(user, weak, hash, false)
                .await
                .map(|_| ())
                .map_err(ServiceError::from),
            Err(error) => Err(ServiceError::from(error)),
        };
        if let Err(error) = upgraded {
            tracing::warn!(%user, error = %error, "password hash upgrade failed; it is retried at the next login");
        }
    }
}
