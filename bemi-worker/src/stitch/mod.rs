//! Assembling transactions from the replication stream and attributing context to each change.
//!
//! The attribution rule (see `bemi_core::setup`): within a transaction, in stream order, a
//! `_bemi` message with content sets the context of every following change, an empty one
//! clears it, and a transaction starts with none. Messages and changes are paired by stream
//! order, never by LSN.

pub(crate) mod context;
pub(crate) mod ddl;
pub(crate) mod json;
pub(crate) mod values;

use std::collections::HashMap;
use std::sync::Arc;

use bemi_core::Operation;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::change_row::{ChangeRow, change_id};
use crate::erasure::{PersonalValue, Place};
use crate::source::catalog::RelationInfo;
use crate::source::pgoutput::{Message, Tuple, Value as Datum};
use crate::stitch::values::{Notes, Rendered, push_value};
use crate::{Error, Result};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp (microseconds since 2000-01-01) as UTC.
pub(crate) fn postgres_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros.saturating_add(POSTGRES_EPOCH_MICROS))
        .unwrap_or_default()
}

/// The transaction being received.
#[derive(Debug)]
struct Transaction {
    xid: i64,
    commit_lsn: u64,
    committed_at: DateTime<Utc>,
    queued_at: DateTime<Utc>,
    /// The sequence number of the next change.
    next_sequence: u32,
    /// The context in force (JSON object text).
    context: Arc<str>,
}

impl Transaction {
    /// Numbers the transaction's next change, built or not: every delivery numbers the same.
    fn number_next(&mut self) -> Position {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        Position {
            commit_lsn: self.commit_lsn,
            sequence,
        }
    }
}

/// Where a change sits: the commit it belongs to and its order within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) commit_lsn: u64,
    pub(crate) sequence: u32,
}

/// Turns transactions of the replication stream into change rows.
#[derive(Debug)]
pub(crate) struct Stitcher {
    origin: Origin,
    max_context_bytes: usize,
    empty_context: Arc<str>,
    transaction: Option<Transaction>,
    /// A DELETE from a partition, held until the next change shows whether it is the first
    /// half of a row moving to another partition (see [`Stitcher::change`]).
    pending: Option<PendingDelete>,
}

/// A held DELETE from a partition.
#[derive(Debug)]
struct PendingDelete {
    row: ChangeRow,
    partition: Arc<str>,
}

impl Stitcher {
    pub(crate) fn new(database: &str, source_hash: u32, max_context_bytes: usize) -> Self {
        Self {
            origin: Origin {
                database: Arc::from(database),
                source_hash,
            },
            max_context_bytes,
            empty_context: context::empty(),
            transaction: None,
            pending: None,
        }
    }

    /// The held DELETE, if any: to be stored before anything that follows it.
    pub(crate) fn take_pending(&mut self) -> Option<ChangeRow> {
        self.pending.take().map(|pending| pending.row)
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// The 32-bit id of the open transaction, as the server's catalog functions take it.
    pub(crate) fn xid(&self) -> Option<u32> {
        self.transaction
            .as_ref()
            .map(|transaction| (transaction.xid & 0xffff_ffff) as u32)
    }

    /// The commit LSN of the open transaction.
    pub(crate) fn commit_lsn(&self) -> Option<u64> {
        self.transaction
            .as_ref()
            .map(|transaction| transaction.commit_lsn)
    }

    /// Starts a transaction; `xid` is its full (epoch-extended) id.
    pub(crate) fn begin(&mut self, xid: u64, final_lsn: u64, commit_time_micros: i64) {
        self.transaction = Some(Transaction {
            xid: i64::try_from(xid).unwrap_or(i64::MAX),
            commit_lsn: final_lsn,
            committed_at: postgres_time(commit_time_micros),
            queued_at: Utc::now(),
            next_sequence: 0,
            context: Arc::clone(&self.empty_context),
        });
    }

    /// Applies a logical message: `_bemi` transactional messages set or clear the context;
    /// anything else is ignored.
    pub(crate) fn message(&mut self, transactional: bool, prefix: &str, content: &[u8]) {
        if prefix != bemi_core::setup::MESSAGE_PREFIX || !transactional {
            return;
        }
        if let Some(transaction) = &mut self.transaction {
            transaction.context = if content.is_empty() {
                Arc::clone(&self.empty_context)
            } else {
                context::from_payload(content, self.max_context_bytes)
            };
        }
    }

    /// Turns one snapshotted row (the columns' texts, in `info`'s order) into a `SNAPSHOT`
    /// change row, numbered like any change; `None` when `keep` skips it.
    ///
    /// # Errors
    ///
    /// Outside a transaction, or when the row's column count is not the table's.
    pub(crate) fn snapshot_row(
        &mut self,
        info: &RelationInfo,
        values: &[Option<String>],
        position: u64,
        operation: Operation,
        keep: impl Fn(Position) -> bool,
    ) -> Result<Option<ChangeRow>> {
        let transaction = self
            .transaction
            .as_mut()
            .ok_or_else(|| Error::Protocol("snapshot row outside a transaction".into()))?;
        if values.len() != info.columns.len() {
            return Err(Error::Protocol(format!(
                "snapshot row of {}.{} has {} values for {} columns",
                info.schema,
                info.table,
                values.len(),
                info.columns.len()
            )));
        }
        let here = transaction.number_next();
        let sequence = here.sequence;
        if !keep(here) {
            return Ok(None);
        }
        let tuple = Tuple {
            values: values
                .iter()
                .map(|value| match value {
                    Some(text) => Datum::Text(text.as_bytes()),
                    None => Datum::Null,
                })
                .collect(),
        };
        Ok(Some(self.origin.build_row(
            transaction,
            RowChange {
                info,
                operation,
                images: Images {
                    before: None,
                    after: Some(&tuple),
                    before_incomplete: false,
                },
                position,
                sequence,
            },
        )))
    }

    /// A replication message that cannot be rendered (undecodable, or a change of a relation
    /// never described), as a change row to park in `bemi.rejected`: numbered like any change,
    /// with its raw bytes (hex, in `after`) and `reason`. `None` when `keep` skips it.
    ///
    /// # Errors
    ///
    /// Outside a transaction: there is nothing to number it by.
    pub(crate) fn unrenderable(
        &mut self,
        data: &[u8],
        position: u64,
        reason: &str,
        keep: impl Fn(Position) -> bool,
    ) -> Result<Option<ChangeRow>> {
        let transaction = self.transaction.as_mut().ok_or_else(|| {
            Error::Protocol(format!(
                "unreadable message outside a transaction: {reason}"
            ))
        })?;
        let here = transaction.number_next();
        let sequence = here.sequence;
        if !keep(here) {
            return Ok(None);
        }
        let hex: String = data.iter().map(|byte| format!("{byte:02x}")).collect();
        let mut after = String::with_capacity(hex.len() + 32);
        after.push_str("{\"pgoutput\":");
        json::push_string(&mut after, &format!("\\x{hex}"));
        after.push('}');
        Ok(Some(ChangeRow {
            id: change_id(self.origin.source_hash, transaction.commit_lsn, sequence),
            primary_key: None,
            before: "{}".to_owned(),
            after,
            after_changed: None,
            context: Arc::clone(&transaction.context),
            database: Arc::clone(&self.origin.database),
            schema: Arc::from(""),
            table: Arc::from(""),
            operation: Operation::Create,
            committed_at: transaction.committed_at,
            queued_at: transaction.queued_at,
            transaction_id: transaction.xid,
            position: i64::try_from(position).unwrap_or(i64::MAX),
            commit_lsn: i64::try_from(transaction.commit_lsn).unwrap_or(i64::MAX),
            sequence: i32::try_from(sequence).unwrap_or(i32::MAX),
            previous_primary_key: None,
            rejected: Some(Arc::from(reason)),
            personal: Vec::new(),
        }))
    }

    /// Numbers the next change of the transaction as one derived from the change just made (a
    /// DDL change from its schema version), returning its id and sequence; `None` outside a
    /// transaction or when it is already stored (`keep` says no). Called for every such change,
    /// kept or not, so the numbering is the same on every delivery.
    pub(crate) fn next_derived(
        &mut self,
        keep: impl Fn(Position) -> bool,
    ) -> Option<(uuid::Uuid, i32)> {
        let transaction = self.transaction.as_mut()?;
        let here = transaction.number_next();
        let sequence = here.sequence;
        keep(here).then(|| {
            (
                change_id(self.origin.source_hash, transaction.commit_lsn, sequence),
                i32::try_from(sequence).unwrap_or(i32::MAX),
            )
        })
    }

    /// Ends the transaction; returns how many changes it had.
    pub(crate) fn commit(&mut self) -> u32 {
        self.transaction
            .take()
            .map_or(0, |transaction| transaction.next_sequence)
    }

    /// Turns a decoded row-change message into change rows (one, or one per table for
    /// TRUNCATE), numbering them within the transaction. `keep` decides, by position, which
    /// rows are built (rows stored before a restart are skipped, but still numbered).
    ///
    /// Partitions are one table to their users: an UPDATE that moves a row to another
    /// partition, which PostgreSQL writes as a DELETE from one partition followed at once by
    /// an INSERT into the other, becomes one UPDATE of the partitioned table (numbered as the
    /// INSERT, so a restart cannot split it). A DELETE from a partition is therefore held until
    /// the next change, or [`Stitcher::take_pending`].
    pub(crate) fn change(
        &mut self,
        message: &Message<'_>,
        position: u64,
        relations: &HashMap<u32, Arc<RelationInfo>>,
        keep: impl Fn(Position) -> bool,
    ) -> Result<Vec<ChangeRow>> {
        let mut rows = self.change_rows(message, position, relations, keep)?;
        let moved_to = match message {
            Message::Insert { relation_id, .. } => relations
                .get(relation_id)
                .and_then(|info| info.partition.clone()),
            _ => None,
        };
        match (self.pending.take(), moved_to) {
            (Some(deleted), Some(partition))
                if rows.len() == 1
                    && partition != deleted.partition
                    && rows[0].schema == deleted.row.schema
                    && rows[0].table == deleted.row.table =>
            {
                if let Some(inserted) = rows.pop() {
                    rows.push(moved(deleted, inserted));
                }
            }
            (Some(deleted), _) => rows.insert(0, deleted.row),
            (None, _) => {}
        }
        if let Message::Delete { relation_id, .. } = message
            && let Some(partition) = relations
                .get(relation_id)
                .and_then(|info| info.partition.clone())
            && let Some(row) = rows.pop()
        {
            self.pending = Some(PendingDelete { row, partition });
        }
        Ok(rows)
    }

    fn change_rows(
        &mut self,
        message: &Message<'_>,
        position: u64,
        relations: &HashMap<u32, Arc<RelationInfo>>,
        keep: impl Fn(Position) -> bool,
    ) -> Result<Vec<ChangeRow>> {
        let transaction = self
            .transaction
            .as_mut()
            .ok_or_else(|| Error::Protocol("row change outside a transaction".into()))?;
        let relation = |id: &u32| {
            relations.get(id).ok_or_else(|| {
                Error::Protocol(format!(
                    "change for relation {id} arrived before its Relation message"
                ))
            })
        };
        let mut rows = Vec::new();
        let mut push = |transaction: &mut Transaction,
                        info: &RelationInfo,
                        operation,
                        images: Images<'_, '_>| {
            let here = transaction.number_next();
            let sequence = here.sequence;
            if keep(here) {
                rows.push(self.origin.build_row(
                    transaction,
                    RowChange {
                        info,
                        operation,
                        images,
                        position,
                        sequence,
                    },
                ));
            }
        };
        match message {
            Message::Insert { relation_id, new } => {
                let info = relation(relation_id)?;
                push(
                    transaction,
                    info,
                    Operation::Create,
                    Images {
                        before: None,
                        after: Some(new),
                        before_incomplete: false,
                    },
                );
            }
            Message::Update {
                relation_id,
                old,
                new,
                old_is_key,
            } => {
                let info = relation(relation_id)?;
                if only_noise_changed(info, old.as_ref(), new) {
                    // Not stored, but numbered: ids stay the same whatever the policies.
                    transaction.number_next();
                    return Ok(rows);
                }
                push(
                    transaction,
                    info,
                    Operation::Update,
                    Images {
                        before: old.as_ref(),
                        after: Some(new),
                        before_incomplete: old.is_none() || *old_is_key,
                    },
                );
            }
            Message::Delete {
                relation_id,
                old,
                old_is_key,
            } => {
                let info = relation(relation_id)?;
                push(
                    transaction,
                    info,
                    Operation::Delete,
                    Images {
                        before: Some(old),
                        after: None,
                        before_incomplete: *old_is_key,
                    },
                );
            }
            Message::Truncate { relation_ids, .. } => {
                for relation_id in relation_ids {
                    let info = relation(relation_id)?;
                    push(
                        transaction,
                        info,
                        Operation::Truncate,
                        Images {
                            before: None,
                            after: None,
                            before_incomplete: false,
                        },
                    );
                }
            }
            _ => {}
        }
        Ok(rows)
    }
}

/// One UPDATE of the partitioned table from a DELETE and the INSERT that moved its row to
/// another partition: the INSERT's id, position and new image, the DELETE's old image and key.
fn moved(deleted: PendingDelete, inserted: ChangeRow) -> ChangeRow {
    let mut notes = Map::new();
    notes.insert("moved_from".into(), Value::from(&*deleted.partition));
    let incomplete = serde_json::from_str::<Value>(&deleted.row.context)
        .ok()
        .and_then(|context| {
            context
                .get(bemi_core::MARKER_KEY)?
                .get("incomplete")
                .cloned()
        });
    if let Some(incomplete) = incomplete {
        notes.insert("incomplete".into(), incomplete);
    }
    ChangeRow {
        operation: Operation::Update,
        previous_primary_key: deleted
            .row
            .primary_key
            .filter(|old| Some(old) != inserted.primary_key.as_ref()),
        before: deleted.row.before,
        context: context::with_notes(&inserted.context, notes),
        personal: deleted
            .row
            .personal
            .into_iter()
            .filter(|value| value.place == Place::Before)
            .chain(
                inserted
                    .personal
                    .iter()
                    .filter(|value| value.place != Place::Before)
                    .cloned(),
            )
            .collect(),
        ..inserted
    }
}

/// The row images of a change.
#[derive(Clone, Copy)]
struct Images<'t, 'a> {
    before: Option<&'t Tuple<'a>>,
    after: Option<&'t Tuple<'a>>,
    /// The change had an old row (UPDATE, DELETE) but the WAL held only its replica-identity
    /// key (`before` then holds only those columns), or nothing at all.
    before_incomplete: bool,
}

/// Where change rows come from: the source database, and the hash of the source that change
/// ids carry.
#[derive(Debug)]
struct Origin {
    database: Arc<str>,
    source_hash: u32,
}

/// One row change to build: the relation, what happened, the images and where it is.
struct RowChange<'i, 't, 'a> {
    info: &'i RelationInfo,
    operation: Operation,
    images: Images<'t, 'a>,
    /// The change's WAL position.
    position: u64,
    /// Its number within the transaction.
    sequence: u32,
}

impl Origin {
    /// The change row of `change`, a change of `transaction`.
    fn build_row(&self, transaction: &Transaction, change: RowChange<'_, '_, '_>) -> ChangeRow {
        let RowChange {
            info,
            operation,
            images,
            position,
            sequence,
        } = change;
        let (database, source_hash) = (&self.database, self.source_hash);
        let mut notes = Notes::default();
        let before = images.before.map_or_else(
            || "{}".to_owned(),
            |tuple| {
                // A key-only image holds NULL for every other column: those NULLs are not values.
                let only = images.before_incomplete.then_some(&info.identity[..]);
                image(info, tuple, None, only, None, "before", &mut notes)
            },
        );
        if images.before_incomplete {
            notes.incomplete.push("before");
        }
        // Unchanged TOAST values of the new row are copied from the old row.
        let after = images.after.map_or_else(
            || "{}".to_owned(),
            |tuple| image(info, tuple, images.before, None, None, "after", &mut notes),
        );
        // An UPDATE with a complete old row: the columns that changed suffice to store it
        // (`before || after_changed` is `after`), unless a value of the new row is missing.
        let after_changed = match (operation, images.before, images.after) {
            (Operation::Update, Some(old), Some(new))
                if !images.before_incomplete && notes.unavailable.is_empty() =>
            {
                let mut scratch = Notes::default();
                Some(image(
                    info,
                    new,
                    Some(old),
                    None,
                    Some(old),
                    "after",
                    &mut scratch,
                ))
            }
            _ => None,
        };
        let key_source = match operation {
            Operation::Delete => images.before,
            _ => images.after,
        };
        let primary_key = key_source.and_then(|tuple| primary_key(info, tuple, images.before));
        // An UPDATE that changed the key: time travel must know the old key is gone.
        let previous_primary_key = match (operation, images.before) {
            (Operation::Update, Some(old)) => {
                primary_key_of(info, old).filter(|old_key| Some(old_key) != primary_key.as_ref())
            }
            _ => None,
        };
        let context = if notes.is_empty()
            && info.key_unavailable.is_empty()
            && info.partition.is_none()
        {
            Arc::clone(&transaction.context)
        } else {
            let mut marker = Map::new();
            if !notes.replaced_nul.is_empty() {
                tracing::warn!(table = %info.table, columns = ?notes.replaced_nul, "json value with \\u0000 replaced by U+FFFD");
                marker.insert("replaced_nul".into(), Value::from(notes.replaced_nul));
            }
            if !notes.kept_as_text.is_empty() {
                tracing::warn!(table = %info.table, columns = ?notes.kept_as_text, "json value with a number beyond numeric's range kept as a string of its text");
                marker.insert("kept_as_text".into(), Value::from(notes.kept_as_text));
            }
            if !notes.unavailable.is_empty() {
                tracing::warn!(table = %info.table, columns = ?notes.unavailable, "unchanged TOAST value without an old row image: left out");
                marker.insert("unavailable".into(), Value::from(notes.unavailable));
            }
            if let Some(partition) = &info.partition {
                marker.insert("partition".into(), Value::from(&**partition));
            }
            if !info.key_unavailable.is_empty() {
                marker.insert(
                    "key_unavailable".into(),
                    Value::from(info.key_unavailable.clone()),
                );
            }
            if !notes.incomplete.is_empty() {
                // Not logged per change: `status` warns about the table's replica identity.
                marker.insert("incomplete".into(), Value::from(notes.incomplete));
            }
            context::with_notes(&transaction.context, marker)
        };
        let personal = personal_values(
            info,
            [
                (Place::Before, Some(&before)),
                (Place::After, after_changed.is_none().then_some(&after)),
                (Place::AfterChanged, after_changed.as_ref()),
            ],
        );
        ChangeRow {
            id: change_id(source_hash, transaction.commit_lsn, sequence),
            primary_key,
            before,
            after,
            after_changed,
            context,
            database: Arc::clone(database),
            schema: Arc::clone(&info.schema),
            table: Arc::clone(&info.table),
            operation,
            committed_at: transaction.committed_at,
            queued_at: transaction.queued_at,
            transaction_id: transaction.xid,
            position: i64::try_from(position).unwrap_or(i64::MAX),
            commit_lsn: i64::try_from(transaction.commit_lsn).unwrap_or(i64::MAX),
            sequence: i32::try_from(sequence).unwrap_or(i32::MAX),
            previous_primary_key,
            rejected: None,
            personal,
        }
    }
}

/// The personal values of a change's images (`Some` texts, by place): the columns declared
/// personal that the images hold, except key columns (a change is found by its key) and
/// redacted ones (their value is not stored).
fn personal_values(
    info: &RelationInfo,
    images: [(Place, Option<&String>); 3],
) -> Vec<PersonalValue> {
    // Most tables have none: no work per row for them.
    if !info.flags.iter().any(|flags| flags.personal) {
        return Vec::new();
    }
    let personal: Vec<&str> = info
        .columns
        .iter()
        .enumerate()
        .filter(|(index, _)| {
            info.flags
                .get(*index)
                .is_some_and(|flags| flags.personal && !flags.redact && !flags.drop)
                && !info.key.contains(index)
        })
        .map(|(_, column)| column.as_str())
        .collect();
    if personal.is_empty() {
        return Vec::new();
    }
    let mut values = Vec::new();
    for (place, text) in images {
        let Some(members) = text.and_then(|text| crate::erasure::personal::members(text)) else {
            continue;
        };
        for (key, _) in members {
            if personal.contains(&key.as_ref()) {
                values.push(PersonalValue::fresh(place, &key));
            }
        }
    }
    values
}

/// The primary key of a complete row image.
fn primary_key_of(info: &RelationInfo, tuple: &Tuple<'_>) -> Option<String> {
    primary_key(info, tuple, None)
}

/// Whether an UPDATE changed columns, all of them noise (see `bemi_core::policy`). Without the
/// old row, nothing can be compared: not noise.
fn only_noise_changed(info: &RelationInfo, old: Option<&Tuple<'_>>, new: &Tuple<'_>) -> bool {
    let Some(old) = old else {
        return false;
    };
    if !info.has_noise() {
        return false;
    }
    let mut changed_any = false;
    for index in 0..info.columns.len() {
        let after = datum(new, Some(old), index);
        if after == old.values.get(index).copied() {
            continue;
        }
        if !info.flags.get(index).is_some_and(|flags| flags.noise) {
            return false;
        }
        changed_any = true;
    }
    changed_any
}

/// The value of column `index`, taking unchanged TOAST values from `fallback`.
fn datum<'a>(tuple: &Tuple<'a>, fallback: Option<&Tuple<'a>>, index: usize) -> Option<Datum<'a>> {
    match tuple.values.get(index)? {
        Datum::UnchangedToast => match fallback.and_then(|old| old.values.get(index)) {
            Some(value @ (Datum::Text(_) | Datum::Binary(_) | Datum::Null)) => Some(*value),
            _ => Some(Datum::UnchangedToast),
        },
        value => Some(*value),
    }
}

/// A row image as a JSON object.
///
/// `unchanged_from`: leave out the columns whose value equals the one in this row (the old row
/// of an UPDATE: the image of what changed).
fn image(
    info: &RelationInfo,
    tuple: &Tuple<'_>,
    fallback: Option<&Tuple<'_>>,
    only: Option<&[bool]>,
    unchanged_from: Option<&Tuple<'_>>,
    name: &str,
    notes: &mut Notes,
) -> String {
    let mut out = String::with_capacity(64 + 16 * info.columns.len());
    out.push('{');
    let mut first = true;
    for (index, column) in info.columns.iter().enumerate() {
        let flags = info.flags.get(index).copied().unwrap_or_default();
        if flags.drop || only.is_some_and(|only| !only.get(index).copied().unwrap_or(false)) {
            continue;
        }
        let Some(value) = datum(tuple, fallback, index) else {
            continue;
        };
        if unchanged_from.is_some_and(|old| old.values.get(index).copied() == Some(value)) {
            continue;
        }
        if flags.redact {
            if !first {
                out.push(',');
            }
            first = false;
            crate::stitch::json::push_string(&mut out, column);
            out.push(':');
            crate::stitch::json::push_string(&mut out, bemi_core::REDACTED);
            continue;
        }
        if value == Datum::UnchangedToast {
            notes.unavailable.push(format!("{name}.{column}"));
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        crate::stitch::json::push_string(&mut out, column);
        out.push(':');
        match value {
            Datum::Null | Datum::UnchangedToast => out.push_str("null"),
            Datum::Text(bytes) => {
                let text = match std::str::from_utf8(bytes) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(bytes),
                };
                let kind = info
                    .kinds
                    .get(index)
                    .unwrap_or(&crate::stitch::values::ValueKind::Text);
                match push_value(&mut out, kind, &text) {
                    Rendered::Exact => {}
                    Rendered::ReplacedNul => notes.replaced_nul.push(format!("{name}.{column}")),
                    Rendered::KeptAsText => notes.kept_as_text.push(format!("{name}.{column}")),
                }
            }
            Datum::Binary(bytes) => {
                let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
                crate::stitch::json::push_string(&mut out, &format!("\\x{hex}"));
            }
        }
    }
    out.push('}');
    out
}

/// The primary key of a row: the text of a one-column key, a JSON array of the texts of a
/// composite key, `None` without a key or when a key value is missing.
fn primary_key(
    info: &RelationInfo,
    tuple: &Tuple<'_>,
    fallback: Option<&Tuple<'_>>,
) -> Option<String> {
    if info.key.is_empty() {
        return None;
    }
    let mut parts = Vec::with_capacity(info.key.len());
    for &index in &info.key {
        match datum(tuple, fallback, index)? {
            Datum::Text(bytes) => parts.push(String::from_utf8_lossy(bytes).into_owned()),
            _ => return None,
        }
    }
    if parts.len() == 1 {
        parts.pop()
    } else {
        Some(Value::from(parts).to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stitch::values::ValueKind;

    fn relation() -> HashMap<u32, Arc<RelationInfo>> {
        let info = RelationInfo {
            id: 1,
            schema: Arc::from("public"),
            table: Arc::from("todo"),
            columns: vec!["id".into(), "task".into(), "doc".into()],
            kinds: vec![ValueKind::Integer, ValueKind::Text, ValueKind::Json],
            types_gone: vec![false; 3],
            key: vec![0],
            identity: vec![true, false, false],
            key_unavailable: Vec::new(),
            partition: None,
            flags: vec![Default::default(); 3],
        };
        HashMap::from([(1, Arc::new(info))])
    }

    fn tuple<'a>(values: &[Datum<'a>]) -> Tuple<'a> {
        Tuple {
            values: values.to_vec(),
        }
    }

    fn stitcher() -> Stitcher {
        let mut stitcher = Stitcher::new("app", 42, context::DEFAULT_MAX_CONTEXT_BYTES);
        stitcher.begin(7, 0x100, 0);
        stitcher
    }

    fn insert(id: &'static str) -> Message<'static> {
        Message::Insert {
            relation_id: 1,
            new: tuple(&[Datum::Text(id.as_bytes()), Datum::Text(b"t"), Datum::Null]),
        }
    }

    fn contexts(
        stitcher: &mut Stitcher,
        messages: &[Result<Message<'static>, &[u8]>],
    ) -> Vec<String> {
        let relations = relation();
        let mut out = Vec::new();
        for (position, message) in messages.iter().enumerate() {
            match message {
                Ok(change) => {
                    for row in stitcher
                        .change(change, position as u64, &relations, |_| true)
                        .unwrap()
                    {
                        out.push(row.context.to_string());
                    }
                }
                Err(content) => stitcher.message(true, "_bemi", content),
            }
        }
        out
    }

    #[test]
    fn each_change_gets_the_context_of_its_statement() {
        let mut stitcher = stitcher();
        let seen = contexts(
            &mut stitcher,
            &[
                Ok(insert("1")),
                Err(br#"{"a":1}"#),
                Ok(insert("2")),
                Ok(insert("3")),
                Err(b""),
                Ok(insert("4")),
                Err(br#"{"b":2}"#),
                Ok(insert("5")),
            ],
        );
        assert_eq!(
            seen,
            [r#"{}"#, r#"{"a":1}"#, r#"{"a":1}"#, "{}", r#"{"b":2}"#]
        );
    }

    #[test]
    fn other_prefixes_and_non_transactional_messages_are_ignored() {
        let mut stitcher = stitcher();
        stitcher.message(true, "other", br#"{"x":1}"#);
        stitcher.message(false, "_bemi", br#"{"x":1}"#);
        assert_eq!(contexts(&mut stitcher, &[Ok(insert("1"))]), ["{}"]);
    }

    #[test]
    fn a_new_transaction_starts_without_context() {
        let mut stitcher = stitcher();
        stitcher.message(true, "_bemi", br#"{"a":1}"#);
        assert_eq!(stitcher.commit(), 0);
        stitcher.begin(8, 0x200, 0);
        assert_eq!(contexts(&mut stitcher, &[Ok(insert("1"))]), ["{}"]);
    }

    #[test]
    fn rows_carry_images_keys_positions_and_ids() {
        let mut stitcher = stitcher();
        let relations = relation();
        let update = Message::Update {
            relation_id: 1,
            old: Some(tuple(&[
                Datum::Text(b"5"),
                Datum::Text(b"old"),
                Datum::Text(br#"{"big":"doc"}"#),
            ])),
            old_is_key: false,
            new: tuple(&[
                Datum::Text(b"5"),
                Datum::Text(b"new"),
                Datum::UnchangedToast,
            ]),
        };
        let rows = stitcher
            .change(&update, 0x150, &relations, |_| true)
            .unwrap();
        let row = &rows[0];
        assert_eq!(row.operation, Operation::Update);
        assert_eq!(row.primary_key.as_deref(), Some("5"));
        assert_eq!(
            serde_json::from_str::<Value>(&row.before).unwrap(),
            json!({"id": 5, "task": "old", "doc": {"big": "doc"}})
        );
        // The unchanged TOAST value is filled from the old row.
        assert_eq!(
            serde_json::from_str::<Value>(&row.after).unwrap(),
            json!({"id": 5, "task": "new", "doc": {"big": "doc"}})
        );
        // Stored instead of `after`: what changed.
        assert_eq!(
            serde_json::from_str::<Value>(row.after_changed.as_deref().unwrap()).unwrap(),
            json!({"task": "new"})
        );
        assert_eq!(
            (
                row.commit_lsn,
                row.sequence,
                row.position,
                row.transaction_id
            ),
            (0x100, 0, 0x150, 7)
        );
        assert_eq!(row.id, change_id(42, 0x100, 0));
        assert_eq!(&*row.database, "app");

        let delete = Message::Delete {
            relation_id: 1,
            old: tuple(&[Datum::Text(b"5"), Datum::Null, Datum::Null]),
            old_is_key: false,
        };
        let rows = stitcher
            .change(&delete, 0x160, &relations, |_| true)
            .unwrap();
        assert_eq!(
            (
                rows[0].primary_key.as_deref(),
                rows[0].after.as_str(),
                rows[0].sequence
            ),
            (Some("5"), "{}", 1)
        );
        assert_eq!(stitcher.commit(), 2);
    }

    #[test]
    fn unchanged_toast_without_an_old_row_is_left_out_and_noted() {
        let mut stitcher = stitcher();
        stitcher.message(true, "_bemi", br#"{"user":1}"#);
        let update = Message::Update {
            relation_id: 1,
            old: None,
            old_is_key: false,
            new: tuple(&[Datum::Text(b"5"), Datum::Text(b"x"), Datum::UnchangedToast]),
        };
        let rows = stitcher.change(&update, 1, &relation(), |_| true).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&rows[0].after).unwrap(),
            json!({"id": 5, "task": "x"})
        );
        // Without the old row, the full image is stored.
        assert_eq!(rows[0].after_changed, None);
        assert_eq!(
            serde_json::from_str::<Value>(&rows[0].context).unwrap(),
            json!({"user": 1, "_bemi": {"unavailable": ["after.doc"], "incomplete": ["before"]}})
        );
    }

    /// A datum for the property test: NULL, a value, or (new rows only) an unchanged TOAST
    /// value.
    /// Valid values of the relation's columns (`id` integer, `task` text, `doc` json).
    fn arbitrary_datum(column: usize, index: u8, toast: bool) -> Datum<'static> {
        const VALUES: [[&[u8]; 4]; 3] = [
            [b"1", b"2", b"-3", b"40"],
            [b"a", b"b", b"x\ty", b""],
            [br#"{"k":[1,2]}"#, b"null", br#""s""#, b"[]"],
        ];
        match index {
            0 => Datum::Null,
            5 if toast => Datum::UnchangedToast,
            other => Datum::Text(VALUES[column][usize::from(other) % 4]),
        }
    }

    fn arbitrary_tuple(values: &[u8], toast: bool) -> Tuple<'static> {
        let datums: Vec<Datum<'static>> = values
            .iter()
            .enumerate()
            .map(|(column, &value)| arbitrary_datum(column, value, toast))
            .collect();
        tuple(&datums)
    }

    proptest::proptest! {
        /// Whatever the old and new values, `before` merged with `after_changed` is `after`;
        /// without a complete old row (a key only, a value missing) nothing is left out.
        #[test]
        fn before_merged_with_what_changed_is_after(
            old in proptest::collection::vec(0_u8..5, 3),
            new in proptest::collection::vec(0_u8..6, 3),
            old_is_key in proptest::bool::ANY,
        ) {
            let mut stitcher = stitcher();
            let update = Message::Update {
                relation_id: 1,
                old: Some(arbitrary_tuple(&old, false)),
                old_is_key,
                new: arbitrary_tuple(&new, true),
            };
            let rows = stitcher.change(&update, 1, &relation(), |_| true).unwrap();
            let row = &rows[0];
            let after: Value = serde_json::from_str(&row.after).unwrap();
            match &row.after_changed {
                Some(changed) => {
                    proptest::prop_assert!(!old_is_key);
                    let mut merged: Value = serde_json::from_str(&row.before).unwrap();
                    let changed: Value = serde_json::from_str(changed).unwrap();
                    for (column, value) in changed.as_object().unwrap() {
                        merged[column] = value.clone();
                    }
                    proptest::prop_assert_eq!(merged, after);
                }
                None => proptest::prop_assert!(old_is_key),
            }
        }
    }

    #[test]
    fn a_row_moved_between_partitions_is_one_update_and_other_deletes_are_kept() {
        let partition = |id: u32, name: &str| {
            let mut info = (*relation()[&1]).clone();
            info.id = id;
            info.partition = Some(Arc::from(name));
            Arc::new(info)
        };
        let relations = HashMap::from([
            (2, partition(2, "public.todo_a")),
            (3, partition(3, "public.todo_b")),
        ]);
        let row = |id: &'static [u8]| tuple(&[Datum::Text(id), Datum::Text(b"t"), Datum::Null]);
        let mut stitcher = stitcher();
        let delete = |relation_id, old| Message::Delete {
            relation_id,
            old,
            old_is_key: false,
        };
        // Held: it may be the first half of a move.
        assert!(
            stitcher
                .change(&delete(2, row(b"1")), 10, &relations, |_| true)
                .unwrap()
                .is_empty()
        );
        let moved = stitcher
            .change(
                &Message::Insert {
                    relation_id: 3,
                    new: row(b"1"),
                },
                11,
                &relations,
                |_| true,
            )
            .unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].operation, Operation::Update);
        assert_eq!((moved[0].sequence, moved[0].position), (1, 11));
        assert_eq!(
            serde_json::from_str::<Value>(&moved[0].context).unwrap(),
            json!({"_bemi": {"partition": "public.todo_b", "moved_from": "public.todo_a"}})
        );
        // A DELETE followed by something else is a DELETE, stored first.
        assert!(
            stitcher
                .change(&delete(2, row(b"2")), 12, &relations, |_| true)
                .unwrap()
                .is_empty()
        );
        let rows = stitcher
            .change(
                &Message::Insert {
                    relation_id: 2,
                    new: row(b"3"),
                },
                13,
                &relations,
                |_| true,
            )
            .unwrap();
        let operations: Vec<_> = rows.iter().map(|row| row.operation).collect();
        assert_eq!(operations, [Operation::Delete, Operation::Create]);
        // The last one is handed over at the end of the transaction.
        assert!(
            stitcher
                .change(&delete(3, row(b"1")), 14, &relations, |_| true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            stitcher.take_pending().map(|row| row.operation),
            Some(Operation::Delete)
        );
        assert!(stitcher.take_pending().is_none());
    }

    #[test]
    fn an_unrenderable_message_becomes_a_numbered_row_to_park() {
        let mut stitcher = stitcher();
        stitcher.message(true, "_bemi", br#"{"user":1}"#);
        let row = stitcher
            .unrenderable(&[b'I', 0, 1], 77, "truncated", |_| true)
            .unwrap()
            .unwrap();
        assert_eq!(row.rejected.as_deref(), Some("truncated"));
        assert_eq!(row.after, r#"{"pgoutput":"\\x490001"}"#);
        assert_eq!((row.position, row.sequence), (77, 0));
        assert_eq!(&*row.context, r#"{"user":1}"#);
        // Numbered like any change: the next one gets the next sequence.
        let rows = stitcher
            .change(&insert("3"), 78, &relation(), |_| true)
            .unwrap();
        assert_eq!(rows[0].sequence, 1);
        stitcher.commit();
        assert!(stitcher.unrenderable(&[], 79, "x", |_| true).is_err());
    }

    #[test]
    fn derived_changes_are_numbered_whether_or_not_they_are_built() {
        let mut stitcher = stitcher();
        let first = stitcher
            .change(&insert("1"), 1, &relation(), |_| true)
            .unwrap();
        // Stored before a restart: not built, but numbered.
        assert_eq!(stitcher.next_derived(|_| false), None);
        let (id, sequence) = stitcher.next_derived(|_| true).unwrap();
        assert_eq!(sequence, 2);
        assert_ne!(id, first[0].id);
        let next = stitcher
            .change(&insert("2"), 2, &relation(), |_| true)
            .unwrap();
        assert_eq!(next[0].sequence, 3);
        stitcher.commit();
        assert_eq!(stitcher.next_derived(|_| true), None);
    }

    #[test]
    fn a_key_only_old_image_holds_only_the_key_and_is_marked() {
        let mut stitcher = stitcher();
        let delete = Message::Delete {
            relation_id: 1,
            old: tuple(&[Datum::Text(b"5"), Datum::Null, Datum::Null]),
            old_is_key: true,
        };
        let rows = stitcher.change(&delete, 1, &relation(), |_| true).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&rows[0].before).unwrap(),
            json!({"id": 5})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&rows[0].context).unwrap(),
            json!({"_bemi": {"incomplete": ["before"]}})
        );
    }

    #[test]
    fn composite_and_missing_keys() {
        let mut relations = relation();
        let mut info = (*relations[&1]).clone();
        info.key = vec![0, 1];
        relations.insert(1, Arc::new(info.clone()));
        let mut stitcher = stitcher();
        let rows = stitcher
            .change(&insert("3"), 1, &relations, |_| true)
            .unwrap();
        assert_eq!(rows[0].primary_key.as_deref(), Some(r#"["3","t"]"#));
        info.key.clear();
        relations.insert(1, Arc::new(info));
        let rows = stitcher
            .change(&insert("3"), 2, &relations, |_| true)
            .unwrap();
        assert_eq!(rows[0].primary_key, None);
    }

    #[test]
    fn skipped_rows_still_consume_sequence_numbers() {
        let mut stitcher = stitcher();
        let relations = relation();
        let kept: Vec<i32> = (0..4)
            .flat_map(|n| {
                stitcher
                    .change(&insert("1"), n, &relations, |position| {
                        position.sequence >= 2
                    })
                    .unwrap()
            })
            .map(|row| row.sequence)
            .collect();
        assert_eq!(kept, [2, 3]);
    }

    #[test]
    fn truncate_gives_one_row_per_table_and_unknown_relations_are_errors() {
        let mut stitcher = stitcher();
        let truncate = Message::Truncate {
            relation_ids: vec![1, 1],
            cascade: false,
            restart_identity: false,
        };
        let rows = stitcher
            .change(&truncate, 1, &relation(), |_| true)
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|row| row.operation == Operation::Truncate
            && row.primary_key.is_none()
            && row.before == "{}"));
        let unknown = Message::Insert {
            relation_id: 99,
            new: tuple(&[]),
        };
        assert!(stitcher.change(&unknown, 2, &relation(), |_| true).is_err());
    }

    #[test]
    fn postgres_epoch() {
        assert_eq!(postgres_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
    }
}
