//! Small helpers for writing JSON text directly, without building `serde_json` values.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is zero.
const fn has_zero(word: u64) -> bool {
    word.wrapping_sub(ONES) & !word & HIGHS != 0
}

/// Whether any byte of `word` is below `limit` (at most 128).
const fn has_below(word: u64, limit: u8) -> bool {
    word.wrapping_sub(ONES * limit as u64) & !word & HIGHS != 0
}

/// Whether any byte of `word` equals `byte`.
const fn has_byte(word: u64, byte: u8) -> bool {
    has_zero(word ^ (ONES * byte as u64))
}

/// The first position from `at` whose byte is a control character or one of `specials`,
/// skipping eight clean bytes at a time.
pub(crate) fn next_special(bytes: &[u8], mut at: usize, specials: &[u8]) -> Option<usize> {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(chunk);
        if has_below(word, 0x20) || specials.iter().any(|&special| has_byte(word, special)) {
            break;
        }
        at += 8;
    }
    bytes
        .get(at..)?
        .iter()
        .position(|byte| *byte < 0x20 || specials.contains(byte))
        .map(|position| position + at)
}

/// Appends `text` as a JSON string literal (quoted, with `"`, `\` and control characters
/// escaped).
pub(crate) fn push_string(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    while let Some(at) = next_special(bytes, clean_from, b"\"\\") {
        let byte = bytes[at];
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            _ => "",
        };
        out.push_str(&text[clean_from..at]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{byte:04x}"));
        } else {
            out.push_str(escape);
        }
        clean_from = at + 1;
    }
    out.push_str(&text[clean_from..]);
    out.push('"');
}

/// JSON text with every `\u0000` escape replaced by `\ufffd` (`jsonb` cannot store NUL), or
/// `None` when it has none. Works on the text, so numbers keep every digit; an escaped
/// backslash followed by `u0000` (`\\u0000`, which is no NUL) is left alone.
pub(crate) fn replace_nul_escapes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = next_special(bytes, at, b"\\") {
        if bytes[found] != b'\\' {
            // A control byte: not an escape.
            at = found + 1;
            continue;
        }
        if bytes.get(found + 1) == Some(&b'u') && bytes.get(found + 2..found + 6) == Some(b"0000") {
            let replaced = out.get_or_insert_with(|| String::with_capacity(text.len()));
            replaced.push_str(&text[copied..found]);
            replaced.push_str("\\ufffd");
            copied = found + 6;
            at = found + 6;
        } else {
            // Any other escape is two characters (`\uXXXX` carries on as plain text).
            at = found + 2;
        }
    }
    out.map(|mut replaced| {
        replaced.push_str(&text[copied..]);
        replaced
    })
}

/// Whether valid JSON `text` nests arrays and objects deeper than `limit` (strings skipped).
pub(crate) fn nesting_exceeds(text: &str, limit: usize) -> bool {
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether valid JSON `text` holds a `\uXXXX` escape of half a surrogate pair without its
/// other half, which `json` accepts and `jsonb` refuses.
pub(crate) fn has_lone_surrogate(text: &str) -> bool {
    let bytes = text.as_bytes();
    let escape = |at: usize| -> Option<u16> {
        if bytes.get(at) != Some(&b'\\') || bytes.get(at + 1) != Some(&b'u') {
            return None;
        }
        let hex = std::str::from_utf8(bytes.get(at + 2..at + 6)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut at = 0;
    while let Some(found) = next_special(bytes, at, b"\\") {
        if bytes[found] != b'\\' {
            at = found + 1;
            continue;
        }
        match escape(found) {
            Some(0xD800..=0xDBFF) => match escape(found + 6) {
                Some(0xDC00..=0xDFFF) => at = found + 12,
                _ => return true,
            },
            Some(0xDC00..=0xDFFF) => return true,
            // Any other escape is two characters (`\uXXXX` carries on as plain text).
            _ => at = found + 2,
        }
    }
    false
}

/// Whether valid JSON `text` holds a number `jsonb` cannot take (its `numeric` keeps at most
/// 131,072 digits before the decimal point and 16,383 after): a `json` column accepts any.
/// Strings are skipped; the bounds are kept a little inside PostgreSQL's.
pub(crate) fn has_number_beyond_numeric(text: &str) -> bool {
    const MAX_WEIGHT: i64 = 131_000;
    const MAX_SCALE: i64 = 16_000;
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut in_string = false;
    let mut escaped = false;
    while let Some(&byte) = bytes.get(at) {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'-' | b'0'..=b'9' => {
                at += usize::from(byte == b'-');
                let count = |at: &mut usize| {
                    let start = *at;
                    while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                        *at += 1;
                    }
                    &bytes[start..*at]
                };
                let integer = count(&mut at);
                let fraction = if bytes.get(at) == Some(&b'.') {
                    at += 1;
                    count(&mut at)
                } else {
                    &[]
                };
                let mut exponent: i64 = 0;
                if matches!(bytes.get(at), Some(b'e' | b'E')) {
                    at += 1;
                    let negative = bytes.get(at) == Some(&b'-');
                    at += usize::from(matches!(bytes.get(at), Some(b'+' | b'-')));
                    let digits = count(&mut at);
                    exponent = digits.iter().fold(0_i64, |value, digit| {
                        value
                            .saturating_mul(10)
                            .saturating_add(i64::from(digit - b'0'))
                    });
                    if negative {
                        exponent = -exponent;
                    }
                }
                let significant = integer.iter().skip_while(|digit| **digit == b'0').count();
                let zero = significant == 0 && fraction.iter().all(|digit| *digit == b'0');
                let length = |digits: &[u8]| i64::try_from(digits.len()).unwrap_or(i64::MAX);
                let scale = length(fraction).saturating_sub(exponent);
                let weight =
                    length(&integer[integer.len() - significant..]).saturating_add(exponent);
                if scale > MAX_SCALE || (!zero && weight > MAX_WEIGHT) {
                    return true;
                }
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    false
}

/// Whether `text` is a JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
pub(crate) fn is_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut at = usize::from(bytes.first() == Some(&b'-'));
    let digits = |at: &mut usize| {
        let start = *at;
        while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at - start
    };
    match bytes.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => {
            digits(&mut at);
        }
        _ => return false,
    }
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        if digits(&mut at) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if digits(&mut at) == 0 {
            return false;
        }
    }
    at == bytes.len()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        for text in [
            "plain",
            "quote\" back\\slash",
            "ctl\n\r\t\u{8}\u{c}\u{1}\u{1f}",
            "zoë 😀",
            "\0",
        ] {
            let mut out = String::new();
            push_string(&mut out, text);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        }
    }

    #[test]
    fn recognises_json_numbers() {
        for number in [
            "0",
            "-0",
            "12",
            "-12.50",
            "1e5",
            "1.5E+20",
            "2.5e-05",
            "123456789012345678901234567890.000001",
        ] {
            assert!(is_number(number), "{number}");
        }
        for not in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "1_000",
            " 1",
            "0x10",
            "+1",
        ] {
            assert!(!is_number(not), "{not}");
        }
    }

    proptest! {
        #[test]
        fn any_string_round_trips(text in any::<String>()) {
            let mut out = String::new();
            push_string(&mut out, &text);
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        }

        #[test]
        fn numbers_agree_with_serde_json(text in "-?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?") {
            prop_assert_eq!(is_number(&text), serde_json::from_str::<serde_json::Number>(&text).is_ok());
        }
    }
}
