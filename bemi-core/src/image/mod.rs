//! [`Image`], a row as the `changes` table stores it, and [`JsonText`], one column's value:
//! JSON text kept as stored, so numbers keep every digit.

mod exact;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One JSON value as text, exactly as stored (a NUMERIC keeps all its digits and its scale).
///
/// The text is kept compact (no insignificant whitespace, object members sorted by name), so
/// two values are equal when their texts are: a value read from the `changes` table equals
/// the same value built with `serde_json`, except for a number's spelling (`1.0` and `1.00`
/// differ, as they do in the source row).
///
/// # Examples
///
/// ```
/// use bemi_core::JsonText;
///
/// let price = JsonText::from_json("0.1000000000000000055511151231257827")?;
/// assert_eq!(price.as_str(), "0.1000000000000000055511151231257827");
/// assert_eq!(price.parse::<String>()?, "0.1000000000000000055511151231257827");
/// assert_eq!(price.parse::<f64>()?, 0.1);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// Validates `text` as one JSON value and keeps it (compacted).
    ///
    /// # Errors
    ///
    /// When `text` is not one JSON value.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        Self::from_raw(RawValue::from_string(text.into())?)
    }

    fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let compact = exact::compact(&raw)?;
        if compact == raw.get() {
            Ok(Self(raw))
        } else {
            RawValue::from_string(compact).map(Self)
        }
    }

    /// The JSON text of a value, compacted like every `JsonText` (members sorted by name,
    /// whatever order the map keeps them in).
    pub fn from_value(value: &Value) -> Self {
        Self::from_json(value.to_string()).unwrap_or_else(|_| Self::null())
    }

    /// JSON `null`.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.as_str() == "null"
    }

    /// Reads the value as a `T` without rounding numbers: integer types up to 128 bits get
    /// every digit, `BigDecimal`, `rust_decimal::Decimal` and `String` get the number's text,
    /// floats get the nearest float. `serde_json::Value` holds at most an `f64`, so
    /// [`JsonText::to_value`] and `parse::<Value>()` round numbers beyond it.
    ///
    /// # Errors
    ///
    /// When the value does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        exact::read_exact(&self.0)
    }

    /// The value as a [`serde_json::Value`] (numbers beyond `u64`, `i64` and `f64` rounded).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.as_str()).unwrap_or(Value::Null)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self::from_value(value)
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from_value(&value)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonText {}

impl Hash for JsonText {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

/// A row image: column name → the column's value as stored ([`JsonText`]), sorted by column.
///
/// Read a column with [`Image::read`] (exact, typed), [`Image::get`] (the stored text) or
/// [`Image::value`] (a `serde_json::Value`).
///
/// # Examples
///
/// ```
/// use bemi_core::Image;
/// use serde_json::json;
///
/// let image: Image = serde_json::from_str(r#"{"id": 7, "price": 12345678901234567890.50}"#)?;
/// assert_eq!(image.read::<i64>("id")?, 7);
/// assert_eq!(image.read::<String>("price")?, "12345678901234567890.50");
/// assert_eq!(image.value("id"), Some(json!(7)));
/// assert_eq!(image.read::<Option<i64>>("missing")?, None);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Image(BTreeMap<String, JsonText>);

impl Image {
    /// An image without columns.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored value of `column`.
    pub fn get(&self, column: &str) -> Option<&JsonText> {
        self.0.get(column)
    }

    /// The value of `column` as a [`serde_json::Value`] (see [`JsonText::to_value`]).
    pub fn value(&self, column: &str) -> Option<Value> {
        self.get(column).map(JsonText::to_value)
    }

    /// Reads `column` as a `T`, exactly (see [`JsonText::parse`]); a missing column reads as
    /// `null`, so an `Option` field of a column added later reads `None`.
    ///
    /// # Errors
    ///
    /// When the value does not fit `T`.
    pub fn read<T: DeserializeOwned>(&self, column: &str) -> Result<T, serde_json::Error> {
        match self.get(column) {
            Some(value) => value.parse(),
            None => JsonText::null().parse(),
        }
    }

    /// Whether the image has `column`.
    pub fn contains(&self, column: &str) -> bool {
        self.0.contains_key(column)
    }

    /// Sets `column`, returning its previous value.
    pub fn insert(
        &mut self,
        column: impl Into<String>,
        value: impl Into<JsonText>,
    ) -> Option<JsonText> {
        self.0.insert(column.into(), value.into())
    }

    /// Removes `column`, returning its value.
    pub fn remove(&mut self, column: &str) -> Option<JsonText> {
        self.0.remove(column)
    }

    /// The column names, sorted.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The columns and their values, sorted by column.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &JsonText)> {
        self.0
            .iter()
            .map(|(column, value)| (column.as_str(), value))
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the image has no columns (e.g. `before` of a CREATE).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The image as one JSON object text, values exactly as stored.
    pub fn to_json(&self) -> String {
        let mut json = String::from("{");
        for (index, (column, value)) in self.0.iter().enumerate() {
            if index > 0 {
                json.push(',');
            }
            json.push_str(&Value::from(column.as_str()).to_string());
            json.push(':');
            json.push_str(value.as_str());
        }
        json.push('}');
        json
    }

    /// The image as a JSON object of [`serde_json::Value`]s (see [`JsonText::to_value`]).
    pub fn to_value(&self) -> Map<String, Value> {
        self.iter()
            .map(|(column, value)| (column.to_owned(), value.to_value()))
            .collect()
    }
}

impl From<Map<String, Value>> for Image {
    fn from(object: Map<String, Value>) -> Self {
        Self(
            object
                .iter()
                .map(|(column, value)| (column.clone(), JsonText::from_value(value)))
                .collect(),
        )
    }
}

impl FromIterator<(String, JsonText)> for Image {
    fn from_iter<I: IntoIterator<Item = (String, JsonText)>>(columns: I) -> Self {
        Self(columns.into_iter().collect())
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn images_round_trip_their_text_exactly() {
        let text =
            r#"{"a": 0.1000000000000000055511151231257827, "b": {"c": [1, 2]}, "q\"": null}"#;
        let image: Image = serde_json::from_str(text).unwrap();
        assert_eq!(
            image.to_json(),
            r#"{"a":0.1000000000000000055511151231257827,"b":{"c":[1,2]},"q\"":null}"#
        );
        let again: Image = serde_json::from_str(&image.to_json()).unwrap();
        assert_eq!(again, image);
        assert_eq!(serde_json::to_string(&image).unwrap(), image.to_json());
    }

    #[test]
    fn values_convert_both_ways() {
        let object = json!({"id": 1, "done": true}).as_object().unwrap().clone();
        let image = Image::from(object.clone());
        assert_eq!(image.to_value(), object);
        assert_eq!(image.get("done").map(JsonText::as_str), Some("true"));
        assert!(Image::new().is_empty());
        assert!(JsonText::from_json("{").is_err());
        assert!(JsonText::null().is_null());
    }
}
