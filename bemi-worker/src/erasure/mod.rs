//! Erasure that keeps the proof: a subject's personal values leave the trail, the seals still
//! verify.
//!
//! Columns declared personal (`#[bemi(personal)]`, `--personal-columns`) and context keys
//! declared personal (`--personal-context`) are stored as they are, each with a random salt in
//! the change's `personal` column; the seal covers a salted commitment in the value's place (see
//! [`PersonalValue`]). `bemi-worker erase` writes a request into the source's
//! `bemi.erasure_requests`; the request travels in the stream like any change (and is stored
//! like one: the erasure is audited), and the worker, storing it, records it in the
//! destination's `bemi.erasures` and replaces in every stored change of the subject each of
//! its personal values with the commitment's marker, dropping the salt. Changes of the subject
//! that come later in the stream are erased before they are written.
//!
//! The subject is a row of a table, by its stored primary key: the personal values of every
//! change of that row (its images, under its key or its previous key), and, with a context key
//! (e.g. `user_id`), the personal context values of every change whose context names it.

pub(crate) mod personal;
pub(crate) mod request;
pub(crate) mod stored;

pub use personal::{PersonalValue, Place};
pub use request::{ErasureOutcome, ErasureRequest, request_erasure};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::change_row::ChangeRow;
use personal::{commitment_of, marker, value_text};

/// A subject whose personal values are erased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Subject {
    pub(crate) schema: String,
    pub(crate) table: String,
    /// The primary key as the `primary_key` column stores it.
    pub(crate) key: String,
    /// The context key that names the subject, if any.
    pub(crate) context_key: Option<String>,
}

impl Subject {
    /// Whether the context `text` names the subject under its context key: the key's value is
    /// the stored key, as a JSON string or as the same JSON text (a number).
    pub(crate) fn named_by(&self, context: &str) -> bool {
        let Some(context_key) = &self.context_key else {
            return false;
        };
        value_text(context, context_key).is_some_and(|raw| names_key(raw, &self.key))
    }
}

/// Whether the JSON text `raw` names the key `key`: `42` or `"42"` for the key `42`.
fn names_key(raw: &str, key: &str) -> bool {
    raw == key || serde_json::from_str::<String>(raw).is_ok_and(|text| text == key)
}

/// The texts of a change that may hold personal values, by place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Texts {
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) after_changed: Option<String>,
    pub(crate) context: Option<String>,
}

impl Texts {
    fn get_mut(&mut self, place: Place) -> Option<&mut String> {
        match place {
            Place::Before => self.before.as_mut(),
            Place::After => self.after.as_mut(),
            Place::AfterChanged => self.after_changed.as_mut(),
            Place::Context => self.context.as_mut(),
        }
    }
}

/// Erases the values of `values` that `select` picks and that are not erased yet: each replaced
/// in `texts` by its marker, its salt dropped. Returns how many it erased. A value whose key is
/// missing from its text is left as it is (the seal then reports the change).
pub(crate) fn erase_values(
    texts: &mut Texts,
    values: &mut [PersonalValue],
    select: impl Fn(&PersonalValue) -> bool,
) -> usize {
    let mut erased = 0;
    for place in [
        Place::Before,
        Place::After,
        Place::AfterChanged,
        Place::Context,
    ] {
        let Some(text) = texts.get_mut(place) else {
            continue;
        };
        let picked: Vec<usize> = values
            .iter()
            .enumerate()
            .filter(|(_, value)| value.place == place && value.salt.is_some() && select(value))
            .map(|(at, _)| at)
            .collect();
        if picked.is_empty() {
            continue;
        }
        // One parse of the text for all its values; a value whose key is missing stays.
        let Some(members) = personal::members(text) else {
            continue;
        };
        let mut replacements = Vec::new();
        let mut done = Vec::new();
        for at in picked {
            let value = &values[at];
            let Some((_, range)) = members.iter().find(|(key, _)| *key == value.key) else {
                continue;
            };
            let Some(committed) = text
                .get(range.clone())
                .and_then(|raw| commitment_of(value, raw))
            else {
                continue;
            };
            replacements.push((range.clone(), marker(&committed)));
            done.push(at);
        }
        let spliced = personal::splice(
            text,
            replacements
                .iter()
                .map(|(range, with)| (range.clone(), with.as_str()))
                .collect(),
        );
        if let Some(spliced) = spliced {
            *text = spliced;
            erased += done.len();
            for at in done {
                values[at].salt = None;
            }
        }
    }
    erased
}

/// Adds to change rows the personal values of their contexts: the top-level context keys
/// declared personal. Rows sharing a context (a statement's) share its salts.
#[derive(Debug, Default)]
pub(crate) struct ContextValues {
    keys: Vec<String>,
    last: Option<(Arc<str>, Vec<PersonalValue>)>,
}

impl ContextValues {
    /// Values for the context keys `keys`.
    pub(crate) fn new(keys: Vec<String>) -> Self {
        Self { keys, last: None }
    }

    /// Adds the personal values of `row`'s context to its list.
    pub(crate) fn add(&mut self, row: &mut ChangeRow) {
        if self.keys.is_empty() || row.rejected.is_some() {
            return;
        }
        if let Some((context, values)) = &self.last
            && Arc::ptr_eq(context, &row.context)
        {
            row.personal.extend(values.iter().cloned());
            return;
        }
        let values: Vec<PersonalValue> = personal::members(&row.context)
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, _)| self.keys.iter().any(|personal| personal == key))
            .map(|(key, _)| PersonalValue::fresh(Place::Context, &key))
            .collect();
        row.personal.extend(values.iter().cloned());
        self.last = Some((Arc::clone(&row.context), values));
    }
}

/// A table of a source database: database, schema, table.
type TableOf = (Arc<str>, Arc<str>, Arc<str>);

/// The erasures a writer knows of: the subjects whose later changes it erases before writing
/// them.
#[derive(Debug, Default)]
pub(crate) struct Erased {
    /// The highest `bemi.erasures.sequence` read.
    pub(crate) sequence: i64,
    /// Subjects by row: their keys by database, schema and table (looked up for every change
    /// with personal values without allocating).
    rows: HashMap<TableOf, HashSet<String>>,
    /// Subjects by context: their keys by database and context key.
    contexts: HashMap<Arc<str>, HashMap<String, HashSet<String>>>,
}

impl Erased {
    /// Adds a subject of the source database `database`.
    pub(crate) fn add(&mut self, database: &str, subject: &Subject) {
        self.add_row(database, &subject.schema, &subject.table, &subject.key);
        if let Some(context_key) = &subject.context_key {
            self.contexts
                .entry(Arc::from(database))
                .or_default()
                .entry(context_key.clone())
                .or_default()
                .insert(subject.key.clone());
        }
    }

    /// Adds a key a subject's row had (or has since).
    pub(crate) fn add_row(&mut self, database: &str, schema: &str, table: &str, key: &str) {
        self.rows
            .entry((Arc::from(database), Arc::from(schema), Arc::from(table)))
            .or_default()
            .insert(key.to_owned());
    }

    /// Whether some of `rows` hold values of a known subject.
    pub(crate) fn covers_any(&self, rows: &[ChangeRow]) -> bool {
        rows.iter().any(|row| {
            let (owned, named) = self.matches(row);
            owned || named
        })
    }

    /// Whether `row` is a change of a known subject's row, and whether its context names one.
    fn matches(&self, row: &ChangeRow) -> (bool, bool) {
        if row.personal.is_empty() {
            return (false, false);
        }
        let owned = !self.rows.is_empty()
            && self
                .rows
                .get(&(
                    Arc::clone(&row.database),
                    Arc::clone(&row.schema),
                    Arc::clone(&row.table),
                ))
                .is_some_and(|keys| {
                    [&row.primary_key, &row.previous_primary_key]
                        .into_iter()
                        .flatten()
                        .any(|key| keys.contains(key))
                });
        // One parse of the context, whatever the number of subjects.
        let named = row
            .personal
            .iter()
            .any(|value| value.place == Place::Context)
            && self.contexts.get(&*row.database).is_some_and(|by_key| {
                personal::members(&row.context).is_some_and(|members| {
                    members.iter().any(|(context_key, range)| {
                        by_key.get(context_key.as_ref()).is_some_and(|keys| {
                            let raw = row.context.get(range.clone()).unwrap_or_default();
                            // `42` and `"42"` both name the key 42.
                            let named = serde_json::from_str::<String>(raw)
                                .unwrap_or_else(|_| raw.to_owned());
                            keys.contains(&named)
                        })
                    })
                })
            });
        (owned, named)
    }

    /// Erases in `row` the personal values of every known subject; returns how many. A change of
    /// a subject's row that changed its key makes the new key the subject's too.
    pub(crate) fn erase_row(&mut self, row: &mut ChangeRow) -> usize {
        let (owned, named) = self.matches(row);
        if !owned && !named {
            return 0;
        }
        if owned {
            let keys = self
                .rows
                .entry((
                    Arc::clone(&row.database),
                    Arc::clone(&row.schema),
                    Arc::clone(&row.table),
                ))
                .or_default();
            for key in [&row.primary_key, &row.previous_primary_key]
                .into_iter()
                .flatten()
            {
                keys.insert(key.clone());
            }
        }
        let compact = row.after_changed.is_some();
        let mut texts = Texts {
            before: Some(std::mem::take(&mut row.before)),
            after: Some(std::mem::take(&mut row.after)),
            after_changed: row.after_changed.take(),
            context: Some(row.context.to_string()),
        };
        let erased = erase_values(&mut texts, &mut row.personal, |value| {
            if value.place.is_image() { owned } else { named }
        });
        row.before = texts.before.unwrap_or_default();
        row.after = texts.after.unwrap_or_default();
        row.after_changed = texts.after_changed.filter(|_| compact);
        if let Some(context) = texts.context {
            row.context = context.into();
        }
        erased
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use personal::PersonalValue;

    #[test]
    fn erasing_replaces_picked_values_only() {
        let mut texts = Texts {
            before: Some(r#"{"id":1,"email":"a@x","name":"Ann"}"#.into()),
            after: None,
            after_changed: Some(r#"{"email": "b@x"}"#.into()),
            context: Some(r#"{"ip": "10.0.0.1", "user_id": 1}"#.into()),
        };
        let mut values = vec![
            PersonalValue::fresh(Place::Before, "email"),
            PersonalValue::fresh(Place::AfterChanged, "email"),
            PersonalValue::fresh(Place::Context, "ip"),
        ];
        let kept = values[2].clone();
        let erased = erase_values(&mut texts, &mut values, |value| value.place.is_image());
        assert_eq!(erased, 2);
        let before = texts.before.clone().unwrap_or_default();
        assert!(
            !before.contains("a@x") && before.contains("\"name\":\"Ann\""),
            "{before}"
        );
        assert!(before.contains("bemi_erased"));
        assert!(
            !texts
                .after_changed
                .clone()
                .unwrap_or_default()
                .contains("b@x")
        );
        assert!(
            texts
                .context
                .clone()
                .unwrap_or_default()
                .contains("10.0.0.1")
        );
        assert_eq!(values[0].salt, None);
        assert_eq!(values[2], kept);
        // Erased values stay erased; nothing more to do.
        assert_eq!(erase_values(&mut texts, &mut values, |_| true), 1);
        assert_eq!(erase_values(&mut texts, &mut values, |_| true), 0);
    }

    /// A change of `table` row `key` whose `after` holds a personal email and whose context
    /// holds a personal `user_email` and `user_id`.
    fn change(table: &str, key: &str, user_id: &str) -> ChangeRow {
        let at = chrono::DateTime::default();
        ChangeRow {
            id: uuid::Uuid::nil(),
            primary_key: Some(key.to_owned()),
            before: "{}".into(),
            after: format!(r#"{{"id":{key},"email":"x@example.org"}}"#),
            after_changed: None,
            context: Arc::from(format!(
                r#"{{"user_id": {user_id}, "user_email": "me@example.org"}}"#
            )),
            database: Arc::from("app"),
            schema: Arc::from("public"),
            table: Arc::from(table),
            operation: bemi_core::Operation::Create,
            committed_at: at,
            queued_at: at,
            transaction_id: 1,
            position: 1,
            commit_lsn: 1,
            sequence: 0,
            previous_primary_key: None,
            rejected: None,
            personal: vec![
                PersonalValue::fresh(Place::After, "email"),
                PersonalValue::fresh(Place::Context, "user_email"),
            ],
        }
    }

    #[test]
    fn known_subjects_are_erased_from_rows_before_they_are_written() {
        let mut erased = Erased::default();
        erased.add(
            "app",
            &Subject {
                schema: "public".into(),
                table: "users".into(),
                key: "42".into(),
                context_key: Some("user_id".into()),
            },
        );
        let others = [change("users", "7", "7"), change("orders", "42", "8")];
        assert!(
            !erased.covers_any(&others),
            "no row of the subject, no context naming it"
        );
        let mut own = change("users", "42", "7");
        let mut named = change("orders", "1", "\"42\"");
        assert!(erased.covers_any(std::slice::from_ref(&named)));
        assert_eq!(erased.erase_row(&mut own), 1);
        assert!(!own.after.contains("x@example.org") && own.context.contains("me@example.org"));
        assert_eq!(erased.erase_row(&mut named), 1);
        assert!(!named.context.contains("me@example.org") && named.after.contains("x@example.org"));
        // Another database's subject 42 is not this one.
        let mut elsewhere = change("users", "42", "42");
        elsewhere.database = Arc::from("billing");
        assert!(!erased.covers_any(&[elsewhere]));
    }

    #[test]
    fn a_context_names_a_subject_by_number_or_string() {
        let subject = Subject {
            schema: "public".into(),
            table: "users".into(),
            key: "42".into(),
            context_key: Some("user_id".into()),
        };
        assert!(subject.named_by(r#"{"user_id": 42}"#));
        assert!(subject.named_by(r#"{"user_id": "42"}"#));
        assert!(!subject.named_by(r#"{"user_id": 421}"#));
        assert!(!subject.named_by(r#"{"other": 42}"#));
    }
}
