//! Personal values in a stored change: where each sits, its salt, its commitment, and the
//! marker that replaces it once erased.
//!
//! A change's `personal` column lists its personal values as a JSON array of
//! `[place, key, salt]`: the place (`before`, `after`, `after_changed` or `context`), the
//! top-level key there (a column, or a context key) and 16 random bytes in hex. The seal covers
//! each such value through its commitment, SHA-256 over `"bemi personal v1\0"`, the salt and the
//! value's JSON text, not through the value itself. Erasure replaces the value with
//! `{"bemi_erased": "<commitment>"}` and the salt with `null`: the change's leaf hash is the same
//! (the seals still verify), and without the salt the commitment says nothing of the value, even
//! of one guessed from a short list.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::seal::anchor::hex;

/// The bytes of a salt.
pub(crate) const SALT_BYTES: usize = 16;

/// Where a personal value sits in a stored change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// The row before the change.
    Before,
    /// The row after the change.
    After,
    /// The changed columns of a compactly stored UPDATE.
    AfterChanged,
    /// The change's context.
    Context,
}

impl Place {
    /// The column's name.
    pub const fn name(self) -> &'static str {
        match self {
            Place::Before => "before",
            Place::After => "after",
            Place::AfterChanged => "after_changed",
            Place::Context => "context",
        }
    }

    /// The place named `name`.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "before" => Some(Place::Before),
            "after" => Some(Place::After),
            "after_changed" => Some(Place::AfterChanged),
            "context" => Some(Place::Context),
            _ => None,
        }
    }

    /// Whether the place is a row image (the subject's own values) rather than the context.
    pub const fn is_image(self) -> bool {
        !matches!(self, Place::Context)
    }
}

/// One personal value of a change: where it is and, until it is erased, its salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalValue {
    /// Where the value is.
    pub place: Place,
    /// Its top-level key there (a column, or a context key).
    pub key: String,
    /// The salt of its commitment; `None` once erased.
    pub salt: Option<[u8; SALT_BYTES]>,
}

impl PersonalValue {
    /// A value not erased, with a fresh random salt.
    pub(crate) fn fresh(place: Place, key: &str) -> Self {
        Self {
            place,
            key: key.to_owned(),
            salt: Some(random_salt(key)),
        }
    }
}

/// Random bytes from the operating system, fetched 4 KiB at a time (one system call per 256
/// salts instead of one per salt).
struct RandomBytes {
    buffer: [u8; 4096],
    used: usize,
}

thread_local! {
    static RANDOM: std::cell::RefCell<RandomBytes> = const {
        std::cell::RefCell::new(RandomBytes { buffer: [0; 4096], used: 4096 })
    };
}

/// A salt of random bytes. The operating system's generator does not fail on the systems
/// PostgreSQL runs on; if it did, a salt from the clock, a counter and `key` still hides the
/// value from a guess list.
fn random_salt(key: &str) -> [u8; SALT_BYTES] {
    let drawn = RANDOM.with(|random| {
        let mut random = random.borrow_mut();
        if random.used + SALT_BYTES > random.buffer.len() {
            if getrandom::fill(&mut random.buffer).is_err() {
                return None;
            }
            random.used = 0;
        }
        let mut salt = [0_u8; SALT_BYTES];
        let at = random.used;
        salt.copy_from_slice(&random.buffer[at..at + SALT_BYTES]);
        // Each byte is used once.
        random.buffer[at..at + SALT_BYTES].fill(0);
        random.used += SALT_BYTES;
        Some(salt)
    });
    drawn.unwrap_or_else(|| {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut digest = Sha256::new();
        digest.update(format!("{:?}{count}{key}", std::time::SystemTime::now()));
        let mut salt = [0_u8; SALT_BYTES];
        salt.copy_from_slice(&digest.finalize()[..SALT_BYTES]);
        salt
    })
}

impl PersonalValue {}

/// The `personal` column's text for `values` (`None` when there are none).
pub(crate) fn to_stored<'v>(values: impl IntoIterator<Item = &'v PersonalValue>) -> Option<String> {
    let entries: Vec<(&str, &str, Option<String>)> = values
        .into_iter()
        .map(|value| {
            (
                value.place.name(),
                value.key.as_str(),
                value.salt.map(|salt| hex(&salt)),
            )
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    serde_json::to_string(&entries).ok()
}

/// The values a `personal` column's text lists; `None` when it is not such a list.
pub(crate) fn from_stored(text: &str) -> Option<Vec<PersonalValue>> {
    let entries: Vec<(String, String, Option<String>)> = serde_json::from_str(text).ok()?;
    entries
        .into_iter()
        .map(|(place, key, salt)| {
            Some(PersonalValue {
                place: Place::named(&place)?,
                key,
                salt: match salt {
                    Some(salt) => Some(unhex(&salt)?),
                    None => None,
                },
            })
        })
        .collect()
}

/// What the seal covers of `values`: their places and keys, without salts, as JSON.
pub(crate) fn sealed_list(values: &[PersonalValue]) -> String {
    let entries: Vec<(&str, &str)> = values
        .iter()
        .map(|value| (value.place.name(), value.key.as_str()))
        .collect();
    serde_json::to_string(&entries).unwrap_or_default()
}

/// The commitment to a value's JSON text `raw` under `salt`.
pub(crate) fn commitment(salt: &[u8; SALT_BYTES], raw: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"bemi personal v1\0");
    digest.update(salt);
    digest.update(raw);
    digest.finalize().into()
}

/// The JSON text that replaces an erased value.
pub(crate) fn marker(commitment: &[u8; 32]) -> String {
    format!("{{\"{}\": \"{}\"}}", bemi_core::ERASED_KEY, hex(commitment))
}

/// The commitment a marker's JSON text holds; `None` when `raw` is not a marker.
pub(crate) fn commitment_of_marker(raw: &str) -> Option<[u8; 32]> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
    if object.len() != 1 {
        return None;
    }
    unhex(object.get(bemi_core::ERASED_KEY)?.as_str()?)
}

/// The commitment of the value `raw` of `value`: from its salt, or from its marker once erased.
pub(crate) fn commitment_of(value: &PersonalValue, raw: &str) -> Option<[u8; 32]> {
    match &value.salt {
        Some(salt) => Some(commitment(salt, raw.as_bytes())),
        None => commitment_of_marker(raw),
    }
}

/// Decodes lowercase or uppercase hex of exactly `N` bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0_u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The top-level members of the JSON object `text`, in order: each key and the byte range of its
/// value's text in `text`. `None` when `text` is not an object.
pub(crate) fn members(text: &str) -> Option<Vec<(Cow<'_, str>, Range<usize>)>> {
    let Members(found) = serde_json::from_str(text).ok()?;
    let start = text.as_ptr() as usize;
    Some(
        found
            .into_iter()
            .map(|(key, raw)| {
                let at = raw.get().as_ptr() as usize - start;
                (key, at..at + raw.get().len())
            })
            .collect(),
    )
}

/// The range of the value of each of `keys` in the object `text` (its first member), from one
/// parse; `None` when `text` is not an object or lacks one of the keys.
pub(crate) fn value_ranges(text: &str, keys: &[&str]) -> Option<Vec<Range<usize>>> {
    let members = members(text)?;
    keys.iter()
        .map(|key| {
            members
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, range)| range.clone())
        })
        .collect()
}

/// `text` with each range replaced; `None` when two ranges overlap (a key given twice).
pub(crate) fn splice(text: &str, mut replacements: Vec<(Range<usize>, &str)>) -> Option<String> {
    replacements.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(text.len() + 96 * replacements.len());
    let mut from = 0;
    for (range, with) in replacements {
        if range.start < from {
            return None;
        }
        out.push_str(text.get(from..range.start)?);
        out.push_str(with);
        from = range.end;
    }
    out.push_str(text.get(from..)?);
    Some(out)
}

/// The JSON text of the value of `key` in the object `text` (its first member).
pub(crate) fn value_text<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let members = members(text)?;
    let (_, range) = members.into_iter().find(|(name, _)| name == key)?;
    text.get(range)
}

/// An object's members as read: keys (borrowed from the text unless they hold escapes) and
/// their values' raw text, in order.
struct Members<'t>(Vec<(Cow<'t, str>, &'t RawValue)>);

/// A key as read: borrowed from the text when it can be.
struct Key<'t>(Cow<'t, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Read;
        impl<'de> Visitor<'de> for Read {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Read)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = Vec::new();
                while let Some((Key(key), raw)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    found.push((key, raw));
                }
                Ok(Members(found))
            }
        }
        deserializer.deserialize_map(Collect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_give_exact_value_ranges() {
        let text = r#"{"id": 7, "email" : "a\"b@x", "nested": {"email": 1}, "n": 1.50}"#;
        let found = members(text).unwrap_or_default();
        let pairs: Vec<(&str, &str)> = found
            .iter()
            .map(|(key, range)| (key.as_ref(), &text[range.clone()]))
            .collect();
        assert_eq!(
            pairs,
            [
                ("id", "7"),
                ("email", r#""a\"b@x""#),
                ("nested", r#"{"email": 1}"#),
                ("n", "1.50")
            ]
        );
        assert_eq!(members("[1]"), None);
        assert_eq!(members("{\"a\":"), None);
    }

    #[test]
    fn replacing_keeps_every_other_byte() {
        let text = r#"{"name":"Ann","email":"ann@x.org","n":1.50}"#;
        let ranges = value_ranges(text, &["email", "n"]).unwrap_or_default();
        let replaced = splice(
            text,
            vec![(ranges[1].clone(), "2"), (ranges[0].clone(), "\"c\"")],
        );
        assert_eq!(
            replaced.as_deref(),
            Some(r#"{"name":"Ann","email":"c","n":2}"#)
        );
        assert_eq!(value_ranges(text, &["missing"]), None);
        assert_eq!(
            splice(
                text,
                vec![(ranges[0].clone(), "1"), (ranges[0].clone(), "2")]
            ),
            None
        );
        assert_eq!(value_text(text, "n"), Some("1.50"));
    }

    #[test]
    fn a_marker_holds_the_commitment_and_nothing_else() {
        let salt = [7_u8; SALT_BYTES];
        let committed = commitment(&salt, b"\"ann@x.org\"");
        assert_ne!(committed, commitment(&[8; SALT_BYTES], b"\"ann@x.org\""));
        let marked = marker(&committed);
        assert!(!marked.contains("ann"));
        assert_eq!(commitment_of_marker(&marked), Some(committed));
        assert!(bemi_core::is_erased(
            &serde_json::from_str(&marked).unwrap_or_default()
        ));
        assert_eq!(commitment_of_marker(r#"{"bemi_erased": "00"}"#), None);
        assert_eq!(commitment_of_marker("\"text\""), None);
    }

    #[test]
    fn the_stored_list_reads_back() {
        let values = vec![
            PersonalValue::fresh(Place::After, "email"),
            PersonalValue {
                place: Place::Context,
                key: "ip".into(),
                salt: None,
            },
        ];
        let stored = to_stored(&values).unwrap_or_default();
        assert_eq!(from_stored(&stored), Some(values.clone()));
        assert_eq!(
            sealed_list(&values),
            r#"[["after","email"],["context","ip"]]"#
        );
        assert_eq!(to_stored(&[]), None);
        assert_eq!(from_stored(r#"[["elsewhere","x",null]]"#), None);
        assert_ne!(
            values[0].salt,
            PersonalValue::fresh(Place::After, "email").salt
        );
    }
}
