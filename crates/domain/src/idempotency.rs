//! Idempotent writes: a retried request with the same `Idempotency-Key` gets the first
//! request's answer instead of running again.
//!
//! The record of a request is written in the same transaction as the change it made, so a
//! committed change always has its record and a retry can never run the change twice, even
//! if every cache lost its data. While the first request runs, a retry is refused as in
//! flight; a retry with another body is refused as a reused key.

use std::fmt;

use time::OffsetDateTime;

use crate::error::InvalidValue;
use crate::user::UserId;

/// A client-chosen key: 1–255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks the key's length and characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let printable = raw.bytes().all(|byte| (0x20..=0x7e).contains(&byte));
        if raw.is_empty() || raw.len() > 255 || !printable {
            return Err(InvalidValue::new("must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The answer given to the first request, replayed to its retries.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The users whose cached entries the change touched (set by the use case, not by the
    /// renderer): a replay invalidates them again before it answers, since the first answer
    /// may have been cut short before their invalidation held.
    pub invalidates: Vec<UserId>,
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("body_bytes", &self.body.len())
            .field("location", &self.location)
            .field("invalidates", &self.invalidates)
            .finish()
    }
}

/// Which request a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    /// Whose key it is: keys of different callers never meet.
    pub caller: String,
    /// The key.
    pub key: IdempotencyKey,
    /// A digest of the request (method, path, body): a retry must match it.
    pub fingerprint: Vec<u8>,
    /// When the request arrived, by the service's clock: records that expired by then are
    /// ignored.
    pub received_at: OffsetDateTime,
    /// When the record may be forgotten.
    pub expires_at: OffsetDateTime,
}

/// A stored record found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The fingerprint of the request that created it.
    pub fingerprint: Vec<u8>,
    /// Its answer.
    pub response: StoredResponse,
}

impl IdempotencyRecord {
    /// What a request with `fingerprint` gets for this record.
    pub fn replay_for(self, fingerprint: &[u8]) -> Result<StoredResponse, IdempotencyConflict> {
        if self.fingerprint == fingerprint { Ok(self.response) } else { Err(IdempotencyConflict::KeyReused) }
    }
}

/// Why an idempotent request cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyConflict {
    /// The key was used with another request.
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    /// The first request with this key is still running.
    #[error("a request with this idempotency key is still in flight")]
    InFlight,
}

/// Renders the answer of a fresh execution, to be stored with the change.
pub type RenderResponse<T> = Box<dyn FnOnce(&T) -> StoredResponse + Send>;

/// An idempotent write: the request and how to render its answer.
pub struct IdempotentWrite<T> {
    /// The request.
    pub request: IdempotentRequest,
    /// Renders the answer from the write's result, inside the write's transaction.
    pub render: RenderResponse<T>,
}

impl<T> fmt::Debug for IdempotentWrite<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentWrite").field("request", &self.request).finish_non_exhaustive()
    }
}

impl<T> IdempotentWrite<T> {
    /// The same write for a wider result type, rendering from the part of it that `T` is.
    pub fn map<U: 'static>(self, part: impl FnOnce(&U) -> &T + Send + 'static) -> IdempotentWrite<U>
    where
        T: 'static,
    {
        let render = self.render;
        IdempotentWrite { request: self.request, render: Box::new(move |whole: &U| render(part(whole))) }
    }
}

impl<T: 'static> IdempotentWrite<T> {
    /// The same write, storing with its answer the users whose cached entries it touched
    /// (see [`StoredResponse::invalidates`]).
    pub fn invalidating(self, touched: impl Fn(&T) -> Vec<UserId> + Send + 'static) -> Self {
        let render = self.render;
        Self {
            request: self.request,
            render: Box::new(move |result: &T| StoredResponse { invalidates: touched(result), ..render(result) }),
        }
    }
}

/// What an idempotent write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent<T> {
    /// It ran now.
    Executed(T),
    /// It had run before: here is the stored answer.
    Replayed(StoredResponse),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255_characters() {
        assert!(IdempotencyKey::parse("order-42 retry").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", "tab\there", "é", "nul\0"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn a_record_replays_only_for_the_same_request() {
        let response = StoredResponse { status: 201, body: b"{}".to_vec(), location: None, invalidates: Vec::new() };
        let record = IdempotencyRecord { fingerprint: vec![1, 2, 3], response: response.clone() };
        assert_eq!(record.clone().replay_for(&[1, 2, 3]), Ok(response));
        assert_eq!(record.replay_for(&[9]), Err(IdempotencyConflict::KeyReused));
    }
}
