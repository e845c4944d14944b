//! Small text checks shared by the value objects.

use uuid::Uuid;

use crate::error::InvalidValue;

/// The UUID `raw` spells in canonical form (lower-case, hyphenated, 36 characters), if it
/// does; `None` for any other spelling, even of a valid UUID.
pub(crate) fn canonical_uuid(raw: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(raw).ok()?;
    (uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == raw).then_some(uuid)
}

/// Rejects NUL and other control characters, which PostgreSQL refuses (NUL) or which only
/// ever arrive by mistake or malice (the rest).
pub(crate) fn reject_control_characters(value: &str) -> Result<(), InvalidValue> {
    if value.contains('\0') {
        return Err(InvalidValue::new("must not contain NUL characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue::new("must not contain control characters"));
    }
    Ok(())
}

/// Checks that `value` holds between `min` and `max` characters (Unicode scalar values).
pub(crate) fn check_length(value: &str, min: usize, max: usize) -> Result<(), InvalidValue> {
    // Byte length bounds the character count from above: skip counting for short strings.
    let count = if value.len() <= max { value.chars().count() } else { value.chars().take(max + 1).count() };
    if count < min || count > max {
        return Err(InvalidValue::owned(format!("must be between {min} and {max} characters")));
    }
    Ok(())
}
