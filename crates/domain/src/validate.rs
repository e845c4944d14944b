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

/// Bidirectional controls: embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069)
/// and the marks (U+200E, U+200F, U+061C). They reorder how the text around them is shown,
/// so `alice\u{202E}moc.elpmaxe` reads as another name or address.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Characters that show nothing or only format others: white space, controls, every format
/// character (general category `Cf`: zero-width spaces and joiners, bidirectional controls,
/// the byte-order mark, interlinear annotations, tags, hieroglyph format controls, ...) and
/// the blanks of other categories (Hangul fillers, the combining grapheme joiner, variation
/// selectors, Khmer inherent vowels, Mongolian free variation selectors, the blank braille
/// pattern, the null notehead).
fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    // ASCII, nearly every character checked: its only invisible characters are the space and
    // the controls (no format character is ASCII), without a search of the Unicode tables.
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_control();
    }
    c.is_whitespace()
        || c.is_control()
        || c.general_category() == GeneralCategory::Format
        || matches!(
            c,
            '\u{034F}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180D}'
                | '\u{180F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{1D159}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// Rejects text that hides itself: any bidirectional control, or nothing visible at all.
/// Other invisible characters may stand inside visible text (a zero-width joiner makes an
/// emoji sequence; a non-joiner spells Persian).
pub(crate) fn reject_hidden_text(value: &str) -> Result<(), InvalidValue> {
    if value.chars().any(is_bidi_control) {
        return Err(InvalidValue::new(
            "must not contain bidirectional control characters (U+202A–U+202E, U+2066–U+2069)",
        ));
    }
    if !value.is_empty() && value.chars().all(is_invisible) {
        return Err(InvalidValue::new("must contain a visible character"));
    }
    Ok(())
}

/// Rejects any invisible or formatting character: identifiers (email local parts, tokens)
/// have no use for them, and with them two values that look the same differ.
pub(crate) fn reject_invisible_characters(value: &str) -> Result<(), InvalidValue> {
    if value.chars().any(is_invisible) {
        return Err(InvalidValue::new("must not contain invisible, formatting or white-space characters"));
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

#[cfg(test)]
mod tests {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

    use super::is_invisible;

    #[test]
    fn the_ascii_shortcut_agrees_with_the_unicode_rule() {
        for c in (0_u8..=127).map(char::from) {
            let by_unicode = c.is_whitespace() || c.is_control() || c.general_category() == GeneralCategory::Format;
            assert_eq!(is_invisible(c), by_unicode, "{c:?}");
        }
        assert!(is_invisible('\u{0B}') && is_invisible('\u{7F}') && !is_invisible('~'));
        assert!(is_invisible('\u{200B}') && is_invisible('\u{00A0}') && !is_invisible('é'));
    }
}
