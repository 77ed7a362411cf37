//! Carrying out erasures in the destination, inside a writer's transaction: recording the
//! requests a batch stores, and erasing the subjects' values from the stored changes.
//!
//! Writers take an advisory lock before they read `bemi.erasures` (shared) or record a
//! request (exclusive), after the batch before them committed: a writer that records an
//! erasure sees every change committed before it, and a writer that stored changes of the
//! subject meanwhile sees the erasure before it commits them, so no change of an erased
//! subject is left with its values, however the writers (and `ingest` processes) interleave.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::change_row::ChangeRow;
use crate::erasure::personal::{from_stored, to_stored};
use crate::erasure::request::named_contexts;
use crate::erasure::{Erased, Subject, Texts, erase_values};
use crate::{Error, Result};

/// The advisory lock of `bemi.erasures`.
const LOCK: &str = "pg_catalog.hashtextextended('bemi.erasures', 0)";

/// Whether `row` is a request for erasure: an insert into the source's
/// `bemi.erasure_requests`.
pub(crate) fn is_request(row: &ChangeRow) -> bool {
    &*row.schema == bemi_core::setup::BEMI_SCHEMA
        && &*row.table == "erasure_requests"
        && row.operation == bemi_core::Operation::Create
}

/// A request's row, as the source's `bemi.erasure_requests` holds it.
#[derive(Debug, Deserialize)]
struct RequestRow {
    id: i64,
    schema_name: String,
    table_name: String,
    key: String,
    context_key: Option<String>,
    reason: String,
    requested_by: String,
    requested_at: DateTime<Utc>,
}

/// One erasure recorded in `bemi.erasures`.
#[derive(Debug, Clone)]
pub(crate) struct Erasure {
    pub(crate) request: Uuid,
    pub(crate) sequence: i64,
    pub(crate) database: String,
    pub(crate) subject: Subject,
}

/// Learns every erasure recorded so far, without erasing anything (their changes are erased),
/// with every key its subject's row had in the stored changes of `stored` (a key changed after
/// the erasure is known again after a restart).
pub(crate) async fn learn(
    transaction: &Transaction<'_>,
    stored: &str,
    erased: &mut Erased,
) -> Result<()> {
    let rows = transaction
        .query(
            "SELECT sequence, schema_name, table_name, key, context_key, database \
             FROM bemi.erasures ORDER BY sequence",
            &[],
        )
        .await
        .map_err(Error::postgres("read the erasures"))?;
    for row in rows {
        erased.add(
            row.get(5),
            &Subject {
                schema: row.get(1),
                table: row.get(2),
                key: row.get(3),
                context_key: row.get(4),
            },
        );
        erased.sequence = row.get(0);
    }
    for key in subject_keys(transaction, stored, None).await? {
        erased.add_row(&key.database, &key.schema, &key.table, &key.key);
    }
    Ok(())
}

/// Records the erasure requests among `rows` and erases, in the stored table `stored`, the
/// values of every subject erased since `erased` was last brought up to date (by this
/// transaction or another), which it then knows. Call after the batch before committed. Returns
/// whether it rewrote stored changes.
pub(crate) async fn catch_up(
    transaction: &Transaction<'_>,
    stored: &str,
    rows: &[ChangeRow],
    erased: &mut Erased,
) -> Result<bool> {
    let requests: Vec<&ChangeRow> = rows.iter().filter(|row| is_request(row)).collect();
    if requests.is_empty() {
        // The common case, in one round trip: nothing recorded since this writer last looked.
        let replies = transaction
            .simple_query(&format!(
                "SELECT pg_catalog.pg_advisory_xact_lock_shared({LOCK}); \
                 SELECT max(sequence) AS newest FROM bemi.erasures"
            ))
            .await
            .map_err(Error::postgres("lock and read bemi.erasures"))?;
        let newest = replies.iter().find_map(|reply| match reply {
            tokio_postgres::SimpleQueryMessage::Row(row)
                if row.columns().first().map(|column| column.name()) == Some("newest") =>
            {
                row.get(0).and_then(|text| text.parse::<i64>().ok())
            }
            _ => None,
        });
        if newest.is_none_or(|newest| newest <= erased.sequence) {
            return Ok(false);
        }
    } else {
        transaction
            .execute(
                &format!("SELECT pg_catalog.pg_advisory_xact_lock({LOCK})"),
                &[],
            )
            .await
            .map_err(Error::postgres("lock bemi.erasures"))?;
        for row in &requests {
            record(transaction, row).await?;
        }
    }
    let new = transaction
        .query(
            "SELECT request, sequence, database, schema_name, table_name, key, context_key \
             FROM bemi.erasures WHERE sequence > $1 ORDER BY sequence",
            &[&erased.sequence],
        )
        .await
        .map_err(Error::postgres("read new erasures"))?;
    let mut rewrote = false;
    for row in new {
        let erasure = Erasure {
            request: row.get(0),
            sequence: row.get(1),
            database: row.get(2),
            subject: Subject {
                schema: row.get(3),
                table: row.get(4),
                key: row.get(5),
                context_key: row.get(6),
            },
        };
        let keys: Vec<String> = subject_keys(transaction, stored, Some(erasure.request))
            .await?
            .into_iter()
            .map(|key| key.key)
            .collect();
        let changes = erase_stored(transaction, stored, &erasure, &keys).await?;
        rewrote |= changes > 0;
        if requests.iter().any(|request| request.id == erasure.request) {
            transaction
                .execute(
                    "UPDATE bemi.erasures SET changes = $2 WHERE request = $1",
                    &[&erasure.request, &changes],
                )
                .await
                .map_err(Error::postgres("count an erasure's changes"))?;
            tracing::info!(
                schema = %erasure.subject.schema,
                table = %erasure.subject.table,
                changes,
                "erased a subject's personal values"
            );
        }
        erased.add(&erasure.database, &erasure.subject);
        for key in &keys {
            erased.add_row(
                &erasure.database,
                &erasure.subject.schema,
                &erasure.subject.table,
                key,
            );
        }
        erased.sequence = erasure.sequence;
    }
    Ok(rewrote)
}

/// Records one request in `bemi.erasures` (once: a replayed batch records nothing more). A
/// request that cannot be read is logged and stored as a change, like any.
async fn record(transaction: &Transaction<'_>, row: &ChangeRow) -> Result<()> {
    let request: RequestRow = match serde_json::from_str(&row.after) {
        Ok(request) => request,
        Err(error) => {
            tracing::error!(%error, change = %row.id, "an erasure request that cannot be read: not carried out");
            return Ok(());
        }
    };
    transaction
        .execute(
            "INSERT INTO bemi.erasures (request, database, request_id, schema_name, table_name, \
             key, context_key, reason, requested_by, requested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            &[
                &row.id,
                &&*row.database,
                &request.id,
                &request.schema_name,
                &request.table_name,
                &request.key,
                &request.context_key,
                &request.reason,
                &request.requested_by,
                &request.requested_at,
            ],
        )
        .await
        .map_err(Error::postgres("record an erasure"))?;
    Ok(())
}

/// A key an erased subject's row had.
#[derive(Debug)]
struct SubjectKey {
    database: String,
    schema: String,
    table: String,
    key: String,
}

/// Every key the rows of the subjects of `request` (or of every erasure) had: the one named, and
/// those an UPDATE changed it from or to, followed both ways (`previous_primary_key` links, by
/// their partial index), in one query.
async fn subject_keys(
    transaction: &Transaction<'_>,
    stored: &str,
    request: Option<Uuid>,
) -> Result<Vec<SubjectKey>> {
    // Each key's links by the two (table, key) indexes. The planner's guess for a recursive
    // query is large enough to compile it (JIT), which took 0.4 s here for a 4 ms query.
    transaction
        .batch_execute("SET LOCAL jit = off")
        .await
        .map_err(Error::postgres("turn JIT off"))?;
    let rows = transaction
        .query(
            &format!(
                "WITH RECURSIVE keys (database, schema_name, table_name, key) AS ( \
                   SELECT database, schema_name, table_name, key FROM bemi.erasures \
                   WHERE $1::uuid IS NULL OR request = $1 \
                 UNION \
                   SELECT k.database, k.schema_name, k.table_name, link.key \
                   FROM keys k CROSS JOIN LATERAL ( \
                     SELECT c.primary_key AS key FROM {stored} c \
                     WHERE c.database = k.database AND c.schema = k.schema_name \
                       AND c.\"table\" = k.table_name AND c.previous_primary_key = k.key \
                     UNION ALL \
                     SELECT c.previous_primary_key FROM {stored} c \
                     WHERE c.database = k.database AND c.schema = k.schema_name \
                       AND c.\"table\" = k.table_name AND c.primary_key = k.key \
                       AND c.previous_primary_key IS NOT NULL) link) \
                 SELECT database, schema_name, table_name, key FROM keys WHERE key IS NOT NULL"
            ),
            &[&request],
        )
        .await
        .map_err(Error::postgres("follow erased subjects' key changes"))?;
    Ok(rows
        .iter()
        .map(|row| SubjectKey {
            database: row.get(0),
            schema: row.get(1),
            table: row.get(2),
            key: row.get(3),
        })
        .collect())
}

/// Erases the values of `erasure`'s subject from the stored changes of its database; returns
/// how many changes held values it erased.
pub(crate) async fn erase_stored(
    transaction: &Transaction<'_>,
    stored: &str,
    erasure: &Erasure,
    keys: &[String],
) -> Result<i32> {
    let columns = "id, committed_at, schema, \"table\", primary_key, previous_primary_key, \
         \"before\"::text, \"after\"::text, after_changed::text, context::text, personal::text";
    let subject = &erasure.subject;
    // The subject's own changes, under each of its keys, by the (table, key) indexes; the
    // changes whose context names it, by the context index (a JSON number or string).
    let mut found = transaction
        .query(
            &format!(
                "SELECT {columns} FROM {stored} WHERE database = $1 AND schema = $2 \
                 AND \"table\" = $3 AND primary_key = ANY($4) AND personal IS NOT NULL \
                 UNION SELECT {columns} FROM {stored} WHERE database = $1 AND schema = $2 \
                 AND \"table\" = $3 AND previous_primary_key = ANY($4) AND personal IS NOT NULL"
            ),
            &[&erasure.database, &subject.schema, &subject.table, &keys],
        )
        .await
        .map_err(Error::postgres("find the changes of an erased subject"))?;
    if let Some(context_key) = &subject.context_key {
        for containing in named_contexts(context_key, &subject.key) {
            found.extend(
                transaction
                    .query(
                        &format!(
                            "SELECT {columns} FROM {stored} WHERE context @> $2 \
                             AND context IS NOT NULL AND database = $1 AND personal IS NOT NULL"
                        ),
                        &[&erasure.database, &containing],
                    )
                    .await
                    .map_err(Error::postgres("find the changes naming an erased subject"))?,
            );
        }
    }
    let mut changes = 0_i32;
    let mut done = std::collections::HashSet::new();
    for row in found {
        let id: Uuid = row.get(0);
        if !done.insert(id) {
            continue;
        }
        let Some(mut values) = row
            .get::<_, Option<String>>(10)
            .as_deref()
            .and_then(from_stored)
        else {
            tracing::warn!(change = %id, "a change whose personal values cannot be read: not erased");
            continue;
        };
        let owned = row.get::<_, &str>(2) == subject.schema
            && row.get::<_, &str>(3) == subject.table
            && [row.get::<_, Option<String>>(4), row.get(5)]
                .iter()
                .flatten()
                .any(|key| keys.contains(key));
        let mut texts = Texts {
            before: row.get(6),
            after: row.get(7),
            after_changed: row.get(8),
            context: row.get(9),
        };
        let named = texts
            .context
            .as_deref()
            .is_some_and(|context| subject.named_by(context));
        let erased = erase_values(&mut texts, &mut values, |value| {
            if value.place.is_image() { owned } else { named }
        });
        if erased == 0 {
            continue;
        }
        let committed_at: DateTime<Utc> = row.get(1);
        transaction
            .execute(
                &format!(
                    "UPDATE {stored} SET \"before\" = $3::text::json, \"after\" = $4::text::json, \
                     after_changed = $5::text::jsonb, context = $6::text::jsonb, \
                     personal = $7::text::jsonb WHERE id = $1 AND committed_at = $2"
                ),
                &[
                    &id,
                    &committed_at,
                    &texts.before,
                    &texts.after,
                    &texts.after_changed,
                    &texts.context,
                    &to_stored(&values),
                ],
            )
            .await
            .map_err(Error::postgres("erase a subject's values from a change"))?;
        changes += 1;
    }
    Ok(changes)
}
