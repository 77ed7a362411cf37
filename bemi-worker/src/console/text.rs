//! Text as the console shows it: characters that hide or reorder text made visible, and a
//! comparison that does not leak the token through timing.

/// Whether `character` changes how text around it reads without being seen: bidirectional
/// controls (a name could read backwards), zero-width characters and the byte-order mark.
fn is_invisible(character: char) -> bool {
    matches!(
        character,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    ) || (character.is_control() && !matches!(character, '\n' | '\t'))
}

/// The pieces of `text`: plain runs, and each invisible character as its code point
/// (`U+202E`), for the page to mark. maud escapes both.
pub(crate) fn pieces(text: &str) -> Vec<(bool, String)> {
    let mut pieces: Vec<(bool, String)> = Vec::new();
    for character in text.chars() {
        if is_invisible(character) {
            pieces.push((true, format!("U+{:04X}", u32::from(character))));
        } else {
            match pieces.last_mut() {
                Some((false, run)) => run.push(character),
                _ => pieces.push((false, character.to_string())),
            }
        }
    }
    pieces
}

/// Equal bytes, compared in time that depends on the lengths only.
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_are_named() {
        assert_eq!(
            pieces("ab\u{202E}cd\u{200B}"),
            vec![
                (false, "ab".to_owned()),
                (true, "U+202E".to_owned()),
                (false, "cd".to_owned()),
                (true, "U+200B".to_owned()),
            ]
        );
        assert_eq!(
            pieces("plain\ttext"),
            vec![(false, "plain\ttext".to_owned())]
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
    }
}
