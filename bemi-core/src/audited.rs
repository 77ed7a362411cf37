//! [`Audited`]: what bemi needs to know about a model to give its typed history, and
//! [`AuditedChange`], a change with its row images as model values.

use crate::{AuditKey, Change, Image, JsonText, QualifiedName, Result};

/// The value shown instead of a redacted column's content in typed history.
pub const REDACTED: &str = "[REDACTED]";

/// A model (a Diesel `Queryable` struct or a SeaORM `Model`) whose table bemi audits.
///
/// Implement it with `#[derive(Audited)]` (re-exported by the `bemi` crate): the derive reads
/// the table, schema, primary key and column names from the `#[diesel(...)]` or
/// `#[sea_orm(...)]` attributes, and `#[bemi(...)]` overrides them.
///
/// The integrations add `history`, `as_of`, `all_as_of` and revert on top of it
/// (`bemi_diesel::AuditedQueries`, `bemi_seaorm::AuditedQueries`).
pub trait Audited: Sized {
    /// The primary-key value: one column's type, or a tuple for a composite key.
    type Key: AuditKey;

    /// The table's schema.
    const SCHEMA: &'static str;
    /// The table's name.
    const TABLE: &'static str;
    /// The primary-key columns, in key order.
    const PRIMARY_KEY: &'static [&'static str];
    /// Columns left out of history: removed from images and diffs (their fields take
    /// `Default::default()`); the worker does not store them when setup was given this model.
    const IGNORED: &'static [&'static str];
    /// Columns whose values history never shows: images and diffs carry [`REDACTED`] (their
    /// fields take `Default::default()`); the worker redacts them before storing when setup was
    /// given this model.
    const REDACTED: &'static [&'static str];
    /// Columns whose changes alone are not worth recording (e.g. `updated_at`): the worker skips
    /// an UPDATE that changes nothing else, when setup was given this model.
    const NOISE: &'static [&'static str] = &[];
    /// Columns holding personal data: stored and shown by history, and erasable per subject
    /// (`bemi-worker erase`) without breaking the seals, when setup was given this model. An
    /// erased value reads as `Default::default()`.
    const PERSONAL: &'static [&'static str] = &[];

    /// This value's primary key.
    fn key(&self) -> Self::Key;

    /// Builds a value from a row image of the `changes` table. Read fields with
    /// [`Image::read`], which keeps every digit of a number the field's type can hold.
    ///
    /// # Errors
    ///
    /// [`crate::Error::ModelField`] when a column's value does not fit its field.
    fn from_row(row: &Image) -> Result<Self>;

    /// The table, as a qualified name.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidIdentifier`] when `SCHEMA` or `TABLE` is empty or contains NUL.
    fn table() -> Result<QualifiedName> {
        QualifiedName::new(Self::SCHEMA, Self::TABLE)
    }

    /// Where this model's changes are stored (default `bemi.changes`).
    fn audit_log() -> AuditLog {
        AuditLog::default()
    }
}

/// Where changes are stored: the `changes` table of the destination database.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuditLog {
    changes_table: QualifiedName,
}

impl Default for AuditLog {
    /// `bemi.changes`.
    fn default() -> Self {
        Self {
            changes_table: QualifiedName::from_static(crate::setup::BEMI_SCHEMA, "changes"),
        }
    }
}

impl AuditLog {
    /// A log stored in `changes_table`.
    pub fn new(changes_table: QualifiedName) -> Self {
        Self { changes_table }
    }

    /// The `changes` table.
    pub fn changes_table(&self) -> &QualifiedName {
        &self.changes_table
    }
}

/// One change of a model's row, with its images as model values.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditedChange<M> {
    /// The change, with [`Audited::IGNORED`] columns removed from its images and
    /// [`Audited::REDACTED`] ones masked.
    pub change: Change,
    /// The row before the change (`None` for CREATE, TRUNCATE, SNAPSHOT and DDL).
    pub before: Option<M>,
    /// The row after the change (`None` for DELETE, TRUNCATE and DDL).
    pub after: Option<M>,
}

/// One column that a change modified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// The column.
    pub column: String,
    /// Its value before (`None` when the image has no such column, e.g. for CREATE).
    pub before: Option<JsonText>,
    /// Its value after.
    pub after: Option<JsonText>,
}

impl<M: Audited> AuditedChange<M> {
    /// Types a change of `M`'s table.
    ///
    /// # Errors
    ///
    /// [`crate::Error::ModelField`] when an image does not fit the model.
    pub fn from_change(mut change: Change) -> Result<Self> {
        for image in [&mut change.before, &mut change.after] {
            mask(image, M::IGNORED, M::REDACTED);
        }
        // A DDL change's images are the table's shapes, not rows.
        let ddl = change.operation == crate::Operation::Ddl;
        let typed = |image: &Image| -> Result<Option<M>> {
            if ddl || image.is_empty() {
                Ok(None)
            } else {
                M::from_row(image).map(Some)
            }
        };
        Ok(Self {
            before: typed(&change.before)?,
            after: typed(&change.after)?,
            change,
        })
    }

    /// The columns this change modified, with their values before and after, sorted by column.
    pub fn diff(&self) -> Vec<FieldChange> {
        self.change
            .changed_fields()
            .into_iter()
            .map(|column| FieldChange {
                column: column.to_owned(),
                before: self.change.before.get(column).cloned(),
                after: self.change.after.get(column).cloned(),
            })
            .collect()
    }
}

/// Removes `ignored` columns from an image and masks `redacted` ones.
pub(crate) fn mask(image: &mut Image, ignored: &[&str], redacted: &[&str]) {
    for column in ignored {
        image.remove(column);
    }
    for column in redacted {
        if image.contains(column) {
            image.insert(*column, serde_json::Value::from(REDACTED));
        }
    }
}

/// Reads a column that had other names before (`#[bemi(renamed_from = "...")]`): the image's
/// value under `column`, else under the first of `renamed_from` it has (images recorded before
/// the rename), else JSON `null`.
///
/// # Errors
///
/// [`crate::Error::ModelField`] when the value does not fit `T`.
pub fn read_renamed_field<T: serde::de::DeserializeOwned>(
    row: &Image,
    table: &str,
    column: &str,
    renamed_from: &[&str],
) -> Result<T> {
    let found = std::iter::once(column)
        .chain(renamed_from.iter().copied())
        .find(|name| row.contains(name))
        .unwrap_or(column);
    read_field(row, table, found)
}

/// The key of the object that replaces an erased personal value in stored images and contexts:
/// `{"bemi_erased": "<commitment>"}`, the hex SHA-256 commitment the seals cover in its place.
pub const ERASED_KEY: &str = "bemi_erased";

/// Whether `value` is what erasure left in place of a personal value (see [`ERASED_KEY`]).
pub fn is_erased(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(|object| {
        object.len() == 1
            && object
                .get(ERASED_KEY)
                .is_some_and(serde_json::Value::is_string)
    })
}

/// Reads a personal column (`#[bemi(personal)]`) into a model field: an erased value reads as
/// `Default::default()`, anything else as [`read_field`] reads it.
///
/// # Errors
///
/// [`crate::Error::ModelField`] when a value that is not erased does not fit `T`.
pub fn read_personal_field<T: serde::de::DeserializeOwned + Default>(
    row: &Image,
    table: &str,
    column: &str,
) -> Result<T> {
    if row.value(column).is_some_and(|value| is_erased(&value)) {
        return Ok(T::default());
    }
    read_field(row, table, column)
}

/// Reads one column of a row image into a model field (used by `#[derive(Audited)]`).
///
/// A missing column reads as JSON `null`, so `Option` fields of columns added later work.
///
/// # Errors
///
/// [`crate::Error::ModelField`] when the value does not fit `T`.
pub fn read_field<T: serde::de::DeserializeOwned>(
    row: &Image,
    table: &str,
    column: &str,
) -> Result<T> {
    row.read(column).map_err(|source| crate::Error::ModelField {
        table: table.to_owned(),
        column: column.to_owned(),
        source,
    })
}
