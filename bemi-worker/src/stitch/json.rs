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

/// The positions of the escapes (`\"`, `\\`, `\uXXXX`, ...) in valid JSON `text`, in order.
/// Outside strings there are none; inside, an escape is two characters, and the hex digits of
/// `\uXXXX` hold no backslash.
fn escapes(text: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(found) = next_special(bytes, at, b"\\") {
            if bytes[found] == b'\\' {
                at = found + 2;
                return Some(found);
            }
            // A control byte: not an escape.
            at = found + 1;
        }
        None
    })
}

/// The code unit of the `\uXXXX` escape at `at`, if that is one.
fn unicode_escape(bytes: &[u8], at: usize) -> Option<u16> {
    if bytes.get(at) != Some(&b'\\') || bytes.get(at + 1) != Some(&b'u') {
        return None;
    }
    let hex = std::str::from_utf8(bytes.get(at + 2..at + 6)?).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

/// The bytes of valid JSON `text` outside its strings (a string's quotes included), with their
/// positions.
fn outside_strings(text: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(at)?;
        let position = at;
        at += 1;
        if byte == b'"' {
            // To the closing quote: the first one that is not an escape's second character.
            loop {
                let found = next_special(bytes, at, b"\"\\")?;
                let quote = bytes[found] == b'"';
                at = found + if bytes[found] == b'\\' { 2 } else { 1 };
                if quote {
                    break;
                }
            }
        }
        Some((position, byte))
    })
}

/// JSON text with every `\u0000` escape replaced by `\ufffd` (`jsonb` cannot store NUL), or
/// `None` when it has none. Works on the text, so numbers keep every digit; an escaped
/// backslash followed by `u0000` (`\\u0000`, which is no NUL) is left alone.
pub(crate) fn replace_nul_escapes(text: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for found in escapes(text) {
        if text.as_bytes().get(found..found + 6) == Some(b"\\u0000") {
            let replaced = out.get_or_insert_with(|| String::with_capacity(text.len()));
            replaced.push_str(&text[copied..found]);
            replaced.push_str("\\ufffd");
            copied = found + 6;
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
    for (_, byte) in outside_strings(text) {
        match byte {
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
    // Where the low half of the last high half must start.
    let mut low_expected_at: Option<usize> = None;
    for found in escapes(text) {
        let unit = unicode_escape(bytes, found);
        if let Some(expected) = low_expected_at.take() {
            if found == expected && matches!(unit, Some(0xDC00..=0xDFFF)) {
                continue;
            }
            return true;
        }
        match unit {
            Some(0xD800..=0xDBFF) => low_expected_at = Some(found + 6),
            Some(0xDC00..=0xDFFF) => return true,
            _ => {}
        }
    }
    low_expected_at.is_some()
}

/// Whether valid JSON `text` holds a number `jsonb` cannot take (its `numeric` keeps at most
/// 131,072 digits before the decimal point and 16,383 after): a `json` column accepts any.
/// Strings are skipped; the bounds are kept a little inside PostgreSQL's.
pub(crate) fn has_number_beyond_numeric(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Where the number being read ends: its digits are not the start of another.
    let mut number_end = 0;
    for (at, byte) in outside_strings(text) {
        if at < number_end || !(byte == b'-' || byte.is_ascii_digit()) {
            continue;
        }
        let (end, beyond) = number_beyond_numeric(bytes, at);
        if beyond {
            return true;
        }
        number_end = end;
    }
    false
}

/// Reads the JSON number starting at `at`: where it ends, and whether `numeric` cannot hold it.
fn number_beyond_numeric(bytes: &[u8], mut at: usize) -> (usize, bool) {
    const MAX_WEIGHT: i64 = 131_000;
    const MAX_SCALE: i64 = 16_000;
    at += usize::from(bytes.get(at) == Some(&b'-'));
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
    let weight = length(&integer[integer.len() - significant..]).saturating_add(exponent);
    (at, scale > MAX_SCALE || (!zero && weight > MAX_WEIGHT))
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

    /// JSON string literals made of pieces that trip scanners: escapes of quotes, backslashes,
    /// NUL and surrogate halves, an escaped backslash before `u0000`, brackets and digits.
    fn tricky_string() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "a",
            "[",
            "]",
            "{",
            "}",
            "1e99999",
            "\\\"",
            "\\\\",
            "\\u0000",
            "\\\\u0000",
            "\\ud83d",
            "\\ude00",
            "\\u0041",
            "\\n",
            ",",
        ]);
        prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    /// Arrays and objects of tricky strings and numbers, nested.
    fn tricky_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            tricky_string(),
            Just("-0.5e-3".to_owned()),
            Just("1e-20000".to_owned()),
            Just("12".to_owned()),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((tricky_string(), inner), 0..4).prop_map(|members| {
                    // Keys made distinct: a parser keeps only the last of equal keys, and with
                    // it only that value's depth.
                    let members: Vec<String> = members
                        .iter()
                        .enumerate()
                        .map(|(index, (key, value))| format!("\"{index}{}:{value}", &key[1..]))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// The depth of a parsed value (a scalar is 0).
    fn depth(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(members) => {
                1 + members.values().map(depth).max().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Whether a string or key of `value` holds NUL.
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(members) => members
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }

    /// `value` with every NUL replaced by U+FFFD.
    fn without_nul(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(text) => text.replace('\0', "\u{fffd}").into(),
            serde_json::Value::Array(items) => items.iter().map(without_nul).collect(),
            serde_json::Value::Object(members) => members
                .iter()
                .map(|(key, value)| (key.replace('\0', "\u{fffd}"), without_nul(value)))
                .collect(),
            other => other.clone(),
        }
    }

    #[test]
    fn numbers_in_strings_are_not_numbers() {
        assert!(!has_number_beyond_numeric(r#"["1e200000", "\"1e200000"]"#));
        assert!(has_number_beyond_numeric(r#"["\"", 1e200000]"#));
        assert!(has_number_beyond_numeric(r#"{"a\\": 0.1e-20000}"#));
        assert!(!has_number_beyond_numeric("[0e999999, 1e-2, 10]"));
    }

    proptest! {
        #[test]
        fn scanners_agree_with_a_parser(text in tricky_json()) {
            // serde_json refuses lone surrogates, as jsonb does; json accepts them.
            let lone = has_lone_surrogate(&text);
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            prop_assert_eq!(lone, parsed.is_err(), "{}", text);
            let Ok(parsed) = parsed else {
                return Ok(());
            };
            let deepest = depth(&parsed);
            prop_assert!(!nesting_exceeds(&text, deepest), "{}", text);
            prop_assert_eq!(deepest > 0 && nesting_exceeds(&text, deepest - 1), deepest > 0);
            // The only number beyond `numeric` is the leaf `1e-20000` (strings hold `1e99999`).
            let beyond = ["[", ",", ":"]
                .iter()
                .any(|before| text.contains(&format!("{before}1e-20000")))
                || text == "1e-20000";
            prop_assert_eq!(has_number_beyond_numeric(&text), beyond, "{}", text);
            let replaced = replace_nul_escapes(&text);
            prop_assert_eq!(replaced.is_some(), has_nul(&parsed), "{}", text);
            let replaced: serde_json::Value =
                serde_json::from_str(replaced.as_deref().unwrap_or(&text)).unwrap();
            prop_assert_eq!(replaced, without_nul(&parsed));
        }

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
