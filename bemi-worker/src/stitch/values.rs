//! Column values, as pgoutput sends them in text format, written as exact JSON.
//!
//! | PostgreSQL | JSON |
//! | --- | --- |
//! | `smallint`, `integer`, `bigint`, `oid`, `numeric` | number, digit for digit (no float rounding) |
//! | `real`, `double precision` | number (shortest exact text); `NaN`/`Infinity` as strings |
//! | `numeric` `NaN`, `Infinity` | strings |
//! | `boolean` | `true` / `false` |
//! | `json`, `jsonb` | the JSON itself |
//! | `timestamptz` | string, ISO-8601 in UTC: `2024-01-02T03:04:05.123456Z` |
//! | `timestamp` | string, ISO-8601 without zone: `2024-01-02T03:04:05` |
//! | arrays of any element type, any dimensions | arrays of the converted elements |
//! | everything else (text, uuid, date, interval, bytea as `\x...`, enums, ranges, ...) | its text as a string |
//! | NULL | `null` |
//!
//! The worker's replication session pins `DateStyle`, `TimeZone`, `IntervalStyle`,
//! `extra_float_digits` and `bytea_output`, so the text is stable. Domains are converted as
//! their base type.
//!
//! JSON containing `\u0000` cannot be stored in `jsonb`: such escapes are replaced with
//! `\ufffd` and the column is reported in [`Notes`].

use crate::stitch::json::{is_number, push_string};

/// How a column's text becomes JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ValueKind {
    Bool,
    Integer,
    Numeric,
    Float,
    Json,
    Timestamptz,
    Timestamp,
    Text,
    Array {
        element: Box<ValueKind>,
        delimiter: u8,
    },
}

impl ValueKind {
    /// The kind of a built-in type, or `None` when the catalog must be asked (user-defined
    /// types, domains, arrays of those).
    pub(crate) fn builtin(type_id: u32) -> Option<ValueKind> {
        let array = |element: ValueKind| ValueKind::Array {
            element: Box::new(element),
            delimiter: b',',
        };
        Some(match type_id {
            16 => ValueKind::Bool,
            20 | 21 | 23 | 26 => ValueKind::Integer,
            1700 => ValueKind::Numeric,
            700 | 701 => ValueKind::Float,
            114 | 3802 => ValueKind::Json,
            1184 => ValueKind::Timestamptz,
            1114 => ValueKind::Timestamp,
            // text, varchar, bpchar, name, char, uuid, date, time, timetz, interval, bytea,
            // inet, cidr, macaddr, macaddr8, money, bit, varbit, xml, tsvector, pg_lsn, ...
            17 | 18 | 19 | 25 | 650 | 774 | 790 | 829 | 869 | 1042 | 1043 | 1082 | 1083 | 1186
            | 1266 | 1560 | 1562 | 142 | 2950 | 3220 | 3614 | 3615 => ValueKind::Text,
            1000 => array(ValueKind::Bool),
            1005 | 1007 | 1016 | 1028 => array(ValueKind::Integer),
            1231 => array(ValueKind::Numeric),
            1021 | 1022 => array(ValueKind::Float),
            199 | 3807 => array(ValueKind::Json),
            1185 => array(ValueKind::Timestamptz),
            1115 => array(ValueKind::Timestamp),
            1001 | 1002 | 1003 | 1009 | 1014 | 1015 | 1040 | 1041 | 1182 | 1183 | 1187 | 1270
            | 2951 | 651 | 143 | 3221 => array(ValueKind::Text),
            _ => return None,
        })
    }
}

/// Columns whose values had to be altered to be storable, reported with the change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Notes {
    /// `image.column` paths whose `\u0000` escapes were replaced by `\ufffd`.
    pub(crate) replaced_nul: Vec<String>,
    /// `image.column` paths of `json` values kept as a string of their text: they hold a number
    /// beyond what `jsonb` (PostgreSQL's `numeric`) can take.
    pub(crate) kept_as_text: Vec<String>,
    /// `image.column` paths whose value was an unchanged TOAST datum with no old value to
    /// copy it from.
    pub(crate) unavailable: Vec<String>,
    /// Images that hold only part of the row: `before` of an UPDATE or DELETE on a table whose
    /// replica identity is not `FULL` (the WAL held only the key, or nothing).
    pub(crate) incomplete: Vec<&'static str>,
}

impl Notes {
    pub(crate) fn is_empty(&self) -> bool {
        self.replaced_nul.is_empty()
            && self.kept_as_text.is_empty()
            && self.unavailable.is_empty()
            && self.incomplete.is_empty()
    }
}

/// How a value was rendered as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rendered {
    /// As it is.
    Exact,
    /// With `\u0000` escapes replaced by `\ufffd`.
    ReplacedNul,
    /// As a string of its text (a `json` value with a number `jsonb` cannot take).
    KeptAsText,
}

/// Appends the JSON for `text`, a value of `kind`, and says whether it had to be altered (for
/// an array, the most altered of its elements).
pub(crate) fn push_value(out: &mut String, kind: &ValueKind, text: &str) -> Rendered {
    match kind {
        ValueKind::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            other => push_string(out, other),
        },
        // `jsonb` numbers are `numeric`, which has no negative zero: a float's `-0` stays text.
        ValueKind::Float if text == "-0" => push_string(out, text),
        ValueKind::Integer | ValueKind::Numeric | ValueKind::Float => {
            if is_number(text) {
                out.push_str(text);
            } else {
                // NaN, Infinity, -Infinity, or anything unexpected: keep the exact text.
                push_string(out, text);
            }
        }
        ValueKind::Json => return push_json(out, text),
        ValueKind::Timestamptz => push_string(out, &iso_timestamptz(text)),
        ValueKind::Timestamp => push_string(out, &iso_timestamp(text)),
        ValueKind::Text => push_string(out, text),
        ValueKind::Array { element, delimiter } => {
            let start = out.len();
            match push_array(out, text, element, *delimiter) {
                Some(clean) => return clean,
                None => {
                    // Not a well-formed array literal: keep the exact text.
                    out.truncate(start);
                    push_string(out, text);
                }
            }
        }
    }
    Rendered::Exact
}

/// Appends JSON text as it is, with `\u0000` escapes (which `jsonb` rejects) replaced: never
/// parsed, so no number loses a digit. A value `jsonb` cannot take (a number beyond `numeric`,
/// half a surrogate pair) is kept as a string of its text: images are stored as `json`, and
/// such a value would make every read of its change fail.
fn push_json(out: &mut String, text: &str) -> Rendered {
    if crate::stitch::json::has_number_beyond_numeric(text)
        || crate::stitch::json::has_lone_surrogate(text)
    {
        push_string(out, text);
        return Rendered::KeptAsText;
    }
    match crate::stitch::json::replace_nul_escapes(text) {
        Some(replaced) => {
            out.push_str(&replaced);
            Rendered::ReplacedNul
        }
        None => {
            out.push_str(text);
            Rendered::Exact
        }
    }
}

/// `2024-01-02 03:04:05.123+00` → `2024-01-02T03:04:05.123Z`; other offsets become `+HH:MM`.
/// Text of another shape (`infinity`, BC dates) is kept.
fn iso_timestamptz(text: &str) -> String {
    let Some(iso) = date_time_with_t(text) else {
        return text.to_owned();
    };
    // The offset follows the seconds: the last '+' or '-' after the 'T'.
    let Some(offset_at) = iso.rfind(['+', '-']).filter(|&at| at > 10) else {
        return iso;
    };
    let (date_time, offset) = iso.split_at(offset_at);
    match offset {
        "+00" | "-00" | "+00:00" => format!("{date_time}Z"),
        offset if offset.len() == 3 => format!("{date_time}{offset}:00"),
        offset => format!("{date_time}{offset}"),
    }
}

/// `2024-01-02 03:04:05` → `2024-01-02T03:04:05`; other shapes are kept.
fn iso_timestamp(text: &str) -> String {
    date_time_with_t(text).unwrap_or_else(|| text.to_owned())
}

/// Replaces the space between an ISO date (`YYYY-MM-DD`) and the time with `T`.
fn date_time_with_t(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let looks_iso = bytes.len() > 11
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b' '
        && !text.ends_with(" BC");
    looks_iso.then(|| format!("{}T{}", &text[..10], &text[11..]))
}

/// Appends a PostgreSQL array literal (`{1,NULL,"a b"}`, nested, with optional `[l:u]=`
/// bounds) as a JSON array. Returns `None` when `text` is not a well-formed literal, else how
/// its most altered element was rendered.
fn push_array(
    out: &mut String,
    text: &str,
    element: &ValueKind,
    delimiter: u8,
) -> Option<Rendered> {
    let mut parser = ArrayParser {
        text,
        at: 0,
        delimiter,
    };
    if text.starts_with('[') {
        // Explicit bounds: `[0:2]={...}` (JSON arrays have no bounds; the elements are kept).
        parser.at = text.find('=')? + 1;
    }
    let clean = parser.array(out, element, 0)?;
    (parser.at == text.len()).then_some(clean)
}

struct ArrayParser<'a> {
    text: &'a str,
    at: usize,
    delimiter: u8,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn array(&mut self, out: &mut String, element: &ValueKind, depth: usize) -> Option<Rendered> {
        // PostgreSQL allows at most 6 dimensions.
        if depth > 6 || self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        out.push('[');
        let mut clean = Rendered::Exact;
        if self.peek()? == b'}' {
            self.at += 1;
            out.push(']');
            return Some(clean);
        }
        loop {
            match self.peek()? {
                b'{' => clean = clean.max(self.array(out, element, depth + 1)?),
                b'"' => {
                    let value = self.quoted()?;
                    clean = clean.max(push_value(out, element, &value));
                }
                _ => {
                    let value = self.unquoted();
                    if value.eq_ignore_ascii_case("NULL") {
                        out.push_str("null");
                    } else if value.is_empty() {
                        return None;
                    } else {
                        clean = clean.max(push_value(out, element, value));
                    }
                }
            }
            match self.peek()? {
                b'}' => {
                    self.at += 1;
                    out.push(']');
                    return Some(clean);
                }
                byte if byte == self.delimiter => {
                    self.at += 1;
                    out.push(',');
                }
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<String> {
        self.at += 1;
        let mut value = String::new();
        let mut chars = self.text.get(self.at..)?.char_indices();
        loop {
            let (offset, c) = chars.next()?;
            match c {
                '"' => {
                    self.at += offset + 1;
                    return Some(value);
                }
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
    }

    fn unquoted(&mut self) -> &str {
        let rest = self.text.get(self.at..).unwrap_or_default();
        let delimiter = char::from(self.delimiter);
        let len = rest.find([delimiter, '}', '{']).unwrap_or(rest.len());
        self.at += len;
        rest[..len].trim()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn convert(kind: &ValueKind, text: &str) -> (Value, Rendered) {
        let mut out = String::new();
        let clean = push_value(&mut out, kind, text);
        (
            serde_json::from_str(&out).unwrap_or_else(|error| panic!("{out}: {error}")),
            clean,
        )
    }

    fn json_of(type_id: u32, text: &str) -> Value {
        convert(&ValueKind::builtin(type_id).unwrap(), text).0
    }

    /// The JSON text written, unparsed (parsing into `f64` would round).
    fn raw(type_id: u32, text: &str) -> String {
        let mut out = String::new();
        push_value(&mut out, &ValueKind::builtin(type_id).unwrap(), text);
        out
    }

    #[test]
    fn numbers_stay_exact() {
        assert_eq!(raw(20, "9223372036854775807"), "9223372036854775807");
        assert_eq!(
            raw(1700, "123456789012345678901234567890.123456789"),
            "123456789012345678901234567890.123456789"
        );
        assert_eq!(raw(1231, "{0.10,NaN}"), r#"[0.10,"NaN"]"#);
        assert_eq!(json_of(1700, "0.10"), json!(0.10));
        assert_eq!(json_of(1700, "NaN"), json!("NaN"));
        assert_eq!(json_of(1700, "-Infinity"), json!("-Infinity"));
        assert_eq!(json_of(701, "1.5e+20"), json!(1.5e20));
        assert_eq!(json_of(700, "Infinity"), json!("Infinity"));
        assert_eq!(json_of(21, "-7"), json!(-7));
    }

    #[test]
    fn booleans_json_and_text() {
        assert_eq!(json_of(16, "t"), json!(true));
        assert_eq!(json_of(16, "f"), json!(false));
        assert_eq!(
            json_of(3802, r#"{"a": [1, {"b": null}]}"#),
            json!({"a": [1, {"b": null}]})
        );
        assert_eq!(
            json_of(25, "line\nwith \"quotes\" \\ and tab\t"),
            json!("line\nwith \"quotes\" \\ and tab\t")
        );
        assert_eq!(json_of(17, "\\x00ff"), json!("\\x00ff"));
        assert_eq!(
            json_of(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
    }

    #[test]
    fn timestamps_become_iso_8601() {
        assert_eq!(
            json_of(1184, "2024-01-02 03:04:05.123456+00"),
            json!("2024-01-02T03:04:05.123456Z")
        );
        assert_eq!(
            json_of(1184, "2024-01-02 03:04:05+05:30"),
            json!("2024-01-02T03:04:05+05:30")
        );
        assert_eq!(
            json_of(1184, "2024-01-02 03:04:05-08"),
            json!("2024-01-02T03:04:05-08:00")
        );
        assert_eq!(json_of(1184, "infinity"), json!("infinity"));
        assert_eq!(
            json_of(1184, "0044-03-15 12:00:00+00 BC"),
            json!("0044-03-15 12:00:00+00 BC")
        );
        assert_eq!(
            json_of(1114, "2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05")
        );
        assert_eq!(json_of(1082, "2024-01-02"), json!("2024-01-02"));
    }

    #[test]
    fn arrays_of_every_shape() {
        assert_eq!(json_of(1007, "{1,2,NULL,-4}"), json!([1, 2, null, -4]));
        assert_eq!(json_of(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(json_of(1007, "{}"), json!([]));
        assert_eq!(json_of(1007, "[0:1]={7,8}"), json!([7, 8]));
        assert_eq!(
            json_of(
                1009,
                r#"{plain,"with space","quote \" and \\ backslash",NULL,"NULL","{braces}",""}"#
            ),
            json!([
                "plain",
                "with space",
                "quote \" and \\ backslash",
                null,
                "NULL",
                "{braces}",
                ""
            ])
        );
        assert_eq!(json_of(1231, "{1.50,NaN}"), json!([1.50, "NaN"]));
        assert_eq!(json_of(1000, "{t,f}"), json!([true, false]));
        assert_eq!(
            json_of(3807, r#"{"{\"a\": 1}","[2]"}"#),
            json!([{"a": 1}, [2]])
        );
        assert_eq!(
            json_of(1185, r#"{"2024-01-02 03:04:05+00"}"#),
            json!(["2024-01-02T03:04:05Z"])
        );
        let boxes = ValueKind::Array {
            element: Box::new(ValueKind::Text),
            delimiter: b';',
        };
        assert_eq!(
            convert(&boxes, "{(1,1),(0,0);(2,2),(1,1)}").0,
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );
    }

    #[test]
    fn malformed_arrays_are_kept_as_text() {
        for text in [
            "{1,2",
            "1,2}",
            "{1,,2}",
            "{\"unterminated}",
            "{1}x",
            "[0:1]{1}",
            "{{{{{{{{1}}}}}}}}",
        ] {
            assert_eq!(json_of(1007, text), json!(text), "{text}");
        }
    }

    #[test]
    fn nul_escapes_in_json_are_replaced_and_reported() {
        let (value, clean) = convert(&ValueKind::Json, r#"{"k\u0000": "a\u0000b", "n": [1]}"#);
        assert_eq!(clean, Rendered::ReplacedNul);
        assert_eq!(value, json!({"k\u{fffd}": "a\u{fffd}b", "n": [1]}));
        let (value, clean) = convert(&ValueKind::Json, r#"{"escaped": "\\u0000 is text"}"#);
        assert_eq!(clean, Rendered::Exact);
        assert_eq!(value, json!({"escaped": "\\u0000 is text"}));
        let (value, clean) = convert(&ValueKind::builtin(199).unwrap(), r#"{"\"\\u0000\""}"#);
        assert_eq!(clean, Rendered::ReplacedNul);
        assert_eq!(value, json!(["\u{fffd}"]));
    }

    #[test]
    fn json_values_jsonb_refuses_are_kept_as_text() {
        // PostgreSQL's limits: 131,072 digits before the point, 16,383 after; surrogates in
        // pairs only.
        for (text, kept) in [
            (r#"{"x": 1e130000}"#, false),
            (r#"{"x": 1e200000}"#, true),
            (r#"{"x": -1.5e-15000}"#, false),
            (r#"{"x": 0.00001e-16379}"#, true),
            (r#"[0e999999999999999999999]"#, false),
            (r#"[0e-20000]"#, true),
            (r#"{"1e999999": "1e999999", "n": [1, 2.5, -0]}"#, false),
            (r#"["\ud800"]"#, true),
            (r#"{"\udc00": 1}"#, true),
            (r#"["\ud83d\ude00", "\\ud800"]"#, false),
            (r#"["\ud83dx"]"#, true),
        ] {
            // The text as written (serde's `f64` cannot hold these numbers).
            let mut out = String::new();
            let rendered = push_value(&mut out, &ValueKind::Json, text);
            if kept {
                assert_eq!(rendered, Rendered::KeptAsText, "{text}");
                assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!(text));
            } else {
                assert_eq!((rendered, out.as_str()), (Rendered::Exact, text));
            }
        }
        let big = format!("[{}]", "9".repeat(140_000));
        let mut out = String::new();
        assert_eq!(
            push_value(&mut out, &ValueKind::Json, &big),
            Rendered::KeptAsText
        );
        let (value, rendered) =
            convert(&ValueKind::builtin(199).unwrap(), r#"{"[1e200000]","[1]"}"#);
        assert_eq!(rendered, Rendered::KeptAsText);
        assert_eq!(value, json!(["[1e200000]", [1]]));
    }

    proptest! {
        #[test]
        fn any_text_of_any_kind_gives_valid_json(text in any::<String>(), type_id in prop::sample::select(vec![16_u32, 20, 1700, 701, 1184, 1114, 25, 1007, 1009, 1231, 3807])) {
            let kind = ValueKind::builtin(type_id).unwrap();
            let mut out = String::new();
            push_value(&mut out, &kind, &text);
            // JSON kinds pass text through: only check the others.
            if !matches!(kind, ValueKind::Json) && !matches!(&kind, ValueKind::Array { element, .. } if **element == ValueKind::Json) {
                prop_assert!(serde_json::from_str::<Value>(&out).is_ok(), "{}", out);
            }
        }

        #[test]
        fn text_arrays_round_trip(items in prop::collection::vec(prop::option::of(any::<String>()), 0..6)) {
            let literal = format!("{{{}}}", items.iter().map(|item| match item {
                None => "NULL".to_owned(),
                Some(text) => format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
            }).collect::<Vec<_>>().join(","));
            let (value, _) = convert(&ValueKind::builtin(1009).unwrap(), &literal);
            prop_assert_eq!(value, json!(items));
        }
    }
}
