//! [`Context`]: the application context attached to database writes.

#[cfg(feature = "tower")]
pub(crate) mod layer;
pub mod scope;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Application context attached to every write made while it is active: who made the change,
/// where and why (user id, API endpoint, job name, request parameters, ...).
///
/// A context is a JSON object. It is stored as-is in the `context` column of the `changes` table.
///
/// # Examples
///
/// ```
/// use bemi_core::Context;
/// use serde_json::json;
///
/// let by_pairs = Context::from([("user_id", json!(7)), ("endpoint", json!("/todo"))]);
/// let by_builder = Context::new().with("user_id", 7).with("endpoint", "/todo");
/// let by_json = Context::try_from(json!({"user_id": 7, "endpoint": "/todo"}))?;
///
/// assert_eq!(by_pairs, by_builder);
/// assert_eq!(by_builder, by_json);
/// assert_eq!(by_json.get("user_id"), Some(&json!(7)));
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Map<String, Value>);

impl Context {
    /// An empty context. Writes made with an empty context carry no comment.
    pub fn new() -> Self {
        Self(Map::new())
    }

    /// Builds a context from a JSON value, which must be an object.
    ///
    /// # Errors
    ///
    /// [`Error::ContextNotAnObject`] when `value` is not a JSON object.
    pub fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            other => Err(Error::ContextNotAnObject {
                found: json_type_name(&other),
            }),
        }
    }

    /// Returns the context with `key` set to `value` (builder style).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`, returning the previous value of `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// Whether the context has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of top-level keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates over the top-level keys and values.
    pub fn iter(&self) -> serde_json::map::Iter<'_> {
        self.0.iter()
    }

    /// Copies every top-level key of `other` into `self`; keys of `other` win (a shallow merge).
    ///
    /// # Examples
    ///
    /// ```
    /// use bemi_core::Context;
    ///
    /// let mut request = Context::new().with("user_id", 7).with("endpoint", "/todo");
    /// request.merge(&Context::new().with("endpoint", "/todo/complete"));
    /// assert_eq!(request, Context::new().with("user_id", 7).with("endpoint", "/todo/complete"));
    /// ```
    pub fn merge(&mut self, other: &Context) {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
    }

    /// A copy of `self` with `other` merged over it (see [`Context::merge`]).
    #[must_use]
    pub fn merged(&self, other: &Context) -> Context {
        let mut merged = self.clone();
        merged.merge(other);
        merged
    }

    /// The context as a JSON object map.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Turns the context into its JSON object map.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// Turns the context into a JSON value (always an object).
    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// The name of a JSON value's type, for error messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({self})")
    }
}

/// Formats the context as compact JSON.
impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(&self.0).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self(map)
    }
}

impl From<Context> for Map<String, Value> {
    fn from(context: Context) -> Self {
        context.0
    }
}

impl From<Context> for Value {
    fn from(context: Context) -> Self {
        Value::Object(context.0)
    }
}

impl TryFrom<Value> for Context {
    type Error = Error;

    fn try_from(value: Value) -> Result<Self> {
        Self::from_value(value)
    }
}

impl<K: Into<String>, V: Into<Value>, const N: usize> From<[(K, V); N]> for Context {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Context {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<Value>> Extend<(K, V)> for Context {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (key, value) in iter {
            self.insert(key, value);
        }
    }
}

impl IntoIterator for Context {
    type Item = (String, Value);
    type IntoIter = serde_json::map::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Context {
    type Item = (&'a String, &'a Value);
    type IntoIter = serde_json::map::Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn builds_from_object_and_rejects_other_json() {
        let context = Context::try_from(json!({"user_id": 1})).unwrap();
        assert_eq!(context.get("user_id"), Some(&json!(1)));

        let error = Context::try_from(json!([1, 2])).unwrap_err();
        assert!(matches!(
            error,
            Error::ContextNotAnObject { found: "array" }
        ));
        assert_eq!(
            error.to_string(),
            "context must be a JSON object, found array"
        );
        assert!(Context::try_from(json!(null)).is_err());
        assert!(Context::try_from(json!("x")).is_err());
    }

    #[test]
    fn merge_is_shallow_and_right_biased() {
        let base = Context::from([("a", json!({"x": 1})), ("b", json!(1))]);
        let over = Context::from([("a", json!({"y": 2})), ("c", json!(3))]);
        let merged = base.merged(&over);
        assert_eq!(merged.into_value(), json!({"a": {"y": 2}, "b": 1, "c": 3}));
    }

    #[test]
    fn display_is_compact_json_and_serde_is_transparent() {
        let context = Context::new().with("user", "ann").with("n", 2);
        assert_eq!(context.to_string(), r#"{"n":2,"user":"ann"}"#);
        let round: Context =
            serde_json::from_str(&serde_json::to_string(&context).unwrap()).unwrap();
        assert_eq!(round, context);
        assert_eq!(format!("{context:?}"), r#"Context({"n":2,"user":"ann"})"#);
    }

    #[test]
    fn collects_and_extends() {
        let mut context: Context = vec![("a", 1), ("b", 2)].into_iter().collect();
        context.extend([("c", 3)]);
        assert_eq!(context.len(), 3);
        assert_eq!(context.remove("a"), Some(json!(1)));
        assert!(!context.is_empty());
        let keys: Vec<_> = context.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "c"]);
    }
}
