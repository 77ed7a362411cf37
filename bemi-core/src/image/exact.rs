//! Reading JSON text into Rust values without losing digits.
//!
//! `serde_json` (without its process-wide `arbitrary_precision` feature) hands every number to
//! the target type as `u64`, `i64` or `f64`, so a NUMERIC value such as
//! `0.1000000000000000055511151231257827` reaches a `BigDecimal` field as `0.1`. This reader
//! keeps each number as its text and gives it to the target in the form the target asks for:
//! integer types get it parsed exactly (up to 128 bits), floats get the nearest float, and
//! types that accept any value (`BigDecimal`, `rust_decimal::Decimal`, `String`) get the digits
//! themselves. `serde_json::Value`, which cannot hold more than an `f64`, gets what `serde_json`
//! would give it.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};
use serde_json::value::RawValue;

/// Reads `raw` as a `T`, numbers exactly (see the module documentation). A target the exact
/// reader cannot fill (e.g. an enum with data) is read by `serde_json` itself.
/// The compact text of `raw` (no insignificant whitespace, object members sorted by name,
/// numbers as written), so equal values read from PostgreSQL and built with `serde_json`
/// compare equal.
pub(crate) fn compact(raw: &RawValue) -> Result<String, serde_json::Error> {
    let text = raw.get();
    if !text.contains(|c: char| c.is_ascii_whitespace() || c == '{') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    Exact::parse(raw)?.write_compact(&mut out)?;
    Ok(out)
}

pub(crate) fn read_exact<T: DeserializeOwned>(raw: &RawValue) -> Result<T, serde_json::Error> {
    match Exact::parse(raw).and_then(T::deserialize) {
        Ok(value) => Ok(value),
        Err(_) => serde_json::from_str(raw.get()),
    }
}

/// A JSON value whose numbers are kept as their text.
#[derive(Debug)]
enum Exact {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Exact>),
    Object(BTreeMap<String, Exact>),
}

impl Exact {
    fn parse(raw: &RawValue) -> Result<Self, serde_json::Error> {
        let text = raw.get().trim();
        Ok(match text.as_bytes().first() {
            Some(b'{') => {
                let members: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
                Exact::Object(
                    members
                        .into_iter()
                        .map(|(name, value)| Ok((name, Exact::parse(value)?)))
                        .collect::<Result<_, serde_json::Error>>()?,
                )
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                Exact::Array(
                    items
                        .into_iter()
                        .map(Exact::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            Some(b'"') => Exact::String(serde_json::from_str(text)?),
            Some(b't' | b'f') => Exact::Bool(serde_json::from_str(text)?),
            Some(b'n') => Exact::Null,
            _ => Exact::Number(text.to_owned()),
        })
    }
}

impl Exact {
    fn write_compact(&self, out: &mut String) -> Result<(), serde_json::Error> {
        match self {
            Exact::Null => out.push_str("null"),
            Exact::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Exact::Number(text) => out.push_str(text),
            Exact::String(text) => out.push_str(&serde_json::to_string(text)?),
            Exact::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write_compact(out)?;
                }
                out.push(']');
            }
            Exact::Object(members) => {
                out.push('{');
                for (index, (name, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(name)?);
                    out.push(':');
                    value.write_compact(out)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

/// Whether the visitor is `serde_json::Value`'s, which holds numbers as `u64`, `i64` or `f64`
/// only: it gets a float rather than the digits as a string.
fn wants_json_value<'de, V: Visitor<'de>>(visitor: &V) -> bool {
    struct Expecting<'a, V>(&'a V);
    impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.expecting(f)
        }
    }
    Expecting(visitor).to_string() == "any valid JSON value"
}

fn parse_float(text: &str) -> Result<f64, serde_json::Error> {
    text.parse()
        .map_err(|_| de::Error::custom(format_args!("`{text}` is not a JSON number")))
}

/// A number for a target that accepts any value.
fn visit_number<'de, V: Visitor<'de>>(
    text: &str,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    if let Ok(number) = text.parse::<u64>() {
        visitor.visit_u64(number)
    } else if let Ok(number) = text.parse::<i64>() {
        visitor.visit_i64(number)
    } else if wants_json_value(&visitor) {
        visitor.visit_f64(parse_float(text)?)
    } else {
        visitor.visit_str(text)
    }
}

/// A number for an integer target: exact up to 128 bits; a fraction goes as a float, which
/// integer types refuse.
fn visit_integer<'de, V: Visitor<'de>>(
    text: &str,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    if let Ok(number) = text.parse::<i64>() {
        visitor.visit_i64(number)
    } else if let Ok(number) = text.parse::<u64>() {
        visitor.visit_u64(number)
    } else if let Ok(number) = text.parse::<i128>() {
        visitor.visit_i128(number)
    } else if let Ok(number) = text.parse::<u128>() {
        visitor.visit_u128(number)
    } else {
        visitor.visit_f64(parse_float(text)?)
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self {
                Exact::Number(text) => visit_integer(&text, visitor),
                other => other.deserialize_any(visitor),
            }
        }
    )*};
}

macro_rules! floats {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self {
                Exact::Number(text) => visitor.visit_f64(parse_float(&text)?),
                other => other.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Exact {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Exact::Null => visitor.visit_unit(),
            Exact::Bool(value) => visitor.visit_bool(value),
            Exact::Number(text) => visit_number(&text, visitor),
            Exact::String(text) => visitor.visit_string(text),
            Exact::Array(items) => {
                let mut items = SeqDeserializer::new(items.into_iter());
                let value = visitor.visit_seq(&mut items)?;
                items.end()?;
                Ok(value)
            }
            Exact::Object(members) => {
                let mut members = MapDeserializer::new(members.into_iter());
                let value = visitor.visit_map(&mut members)?;
                members.end()?;
                Ok(value)
            }
        }
    }

    integers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);

    floats!(deserialize_f32 deserialize_f64);

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Exact::Number(text) | Exact::String(text) => visitor.visit_string(text),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Exact::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Exact::String(variant) => visitor.visit_enum(variant.into_deserializer()),
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool char bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl IntoDeserializer<'_, serde_json::Error> for Exact {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    fn read<T: DeserializeOwned>(text: &str) -> T {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        read_exact(&raw).unwrap()
    }

    #[test]
    fn integers_keep_every_digit_up_to_128_bits() {
        assert_eq!(
            read::<u128>("123456789012345678901234567890"),
            123_456_789_012_345_678_901_234_567_890
        );
        assert_eq!(
            read::<i128>("-18446744073709551616"),
            -18_446_744_073_709_551_616
        );
        assert_eq!(read::<i32>("-7"), -7);
        assert!(
            Exact::parse(&serde_json::from_str::<Box<RawValue>>("300").unwrap())
                .and_then(u8::deserialize)
                .is_err()
        );
        assert!(
            Exact::parse(&serde_json::from_str::<Box<RawValue>>("1.5").unwrap())
                .and_then(i64::deserialize)
                .is_err()
        );
    }

    #[test]
    fn strings_and_any_value_targets_get_the_digits() {
        assert_eq!(
            read::<String>("0.1000000000000000055511151231257827"),
            "0.1000000000000000055511151231257827"
        );
        assert_eq!(read::<Vec<String>>("[42.50, 1e400]"), ["42.50", "1e400"]);
        assert_eq!(read::<Option<String>>("null"), None);
    }

    #[test]
    fn floats_get_the_nearest_float_and_json_values_what_serde_json_gives() {
        assert_eq!(read::<f64>("0.1000000000000000055511151231257827"), 0.1);
        let text = r#"{"a": [1, -2, 9.99, 18446744073709551616], "b": {"c": "x"}}"#;
        assert_eq!(
            read::<Value>(text),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn structs_enums_and_maps_read_through() {
        #[derive(Deserialize, Debug, PartialEq)]
        enum Mood {
            Happy,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        enum Shape {
            Circle { radius: u32 },
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct Row {
            id: i64,
            mood: Mood,
            shape: Shape,
            tags: BTreeMap<String, bool>,
        }
        assert_eq!(
            read::<Row>(
                r#"{"id": 7, "mood": "Happy", "shape": {"Circle": {"radius": 2}}, "tags": {"x": true}}"#
            ),
            Row {
                id: 7,
                mood: Mood::Happy,
                shape: Shape::Circle { radius: 2 },
                tags: BTreeMap::from([("x".to_owned(), true)]),
            }
        );
    }
}
