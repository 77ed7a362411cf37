//! Writing batches of changes into the destination's `changes` table.
//!
//! A batch is one destination transaction: `COPY` of its rows, then the progress row. When
//! the `COPY` hits a row that is already stored (a replay the progress did not cover), the
//! batch is written again through a staging table with `ON CONFLICT DO NOTHING`.
//!
//! When PostgreSQL rejects a value for a reason tied to the value ([`ErrorKind::BadData`]: a
//! data exception such as a number beyond `numeric`'s range inside a `json` column, a `json`
//! value nested deeper than the server's stack allows), the batch is written row by row:
//! each rejected row is stored with its images kept as text in `context._bemi.unstorable`, and
//! a row refused even so is parked whole in `bemi.rejected` (its JSON as bytes, with its
//! position, transaction and the reason). The worker never stalls on one change, and never
//! drops one silently.
//!
//! [`ErrorKind::BadData`]: crate::ErrorKind::BadData

use std::sync::Arc;

use bemi_core::QualifiedName;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::change_row::ChangeRow;
use crate::erasure::Erased;
use crate::error::{ErrorKind, sqlstate_kind};
use crate::pipeline::progress::Progress;
use crate::pipeline::turn::Turn;
use crate::seal::written::Written;
use crate::sink::partitions::PartitionUpkeep;
use crate::source::recorded_shape::RecordedShape;
use crate::stitch::postgres_time;
use crate::{Error, Result};

/// The columns written, in COPY order.
const COLUMNS: &str = "id, primary_key, \"before\", \"after\", context, database, schema, \"table\", \
    operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence, \
    previous_primary_key, after_changed, personal";

/// The context of the last change stored: the next change of the same transaction with an
/// equal context stores none (NULL: the `changes` view takes it from the change before).
#[derive(Clone, Debug)]
pub(crate) struct LastContext {
    database: Arc<str>,
    commit_lsn: i64,
    transaction_id: i64,
    sequence: i32,
    context: Arc<str>,
}

impl LastContext {
    fn of(row: &ChangeRow) -> Self {
        Self {
            database: Arc::clone(&row.database),
            commit_lsn: row.commit_lsn,
            transaction_id: row.transaction_id,
            sequence: row.sequence,
            context: Arc::clone(&row.context),
        }
    }

    /// Whether `row` comes right after this change in the same transaction, with the same
    /// context. Right after: the view takes a change's context from the nearest change before
    /// it that holds one, and a change between them stored by someone else (another `ingest`
    /// process) may hold another.
    fn shared_by(&self, row: &ChangeRow) -> bool {
        self.commit_lsn == row.commit_lsn
            && self.transaction_id == row.transaction_id
            && self.sequence.checked_add(1) == Some(row.sequence)
            && (Arc::ptr_eq(&self.context, &row.context) || self.context == row.context)
            && (Arc::ptr_eq(&self.database, &row.database) || self.database == row.database)
    }
}

/// Writes batches to the destination.
pub(crate) struct Store {
    client: Client,
    /// The table that stores changes (behind the `changes` view).
    changes: String,
    source: String,
    staging_ready: bool,
    partitions: PartitionUpkeep,
    /// The last change this store wrote, when the write committed.
    last_context: Option<LastContext>,
    /// Whether the destination has `bemi.erasures` (`None`: not looked yet).
    erasures: Option<bool>,
    /// The erasures this store knows of: it erases their subjects' values from what it writes.
    erased: Erased,
    /// Where it records the transactions it writes changes in, for the sealer.
    written: Option<Arc<Written>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("changes", &self.changes)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store writing the changes of the `changes` view (into its stored table) for `source`
    /// (the progress key: system id, database, slot).
    pub(crate) fn new(client: Client, changes: &QualifiedName, source: String) -> Self {
        Self {
            client,
            changes: bemi_core::setup::stored_changes_table(changes).to_string(),
            source,
            staging_ready: false,
            partitions: PartitionUpkeep::Unknown,
            last_context: None,
            erasures: None,
            erased: Erased::default(),
            written: None,
        }
    }

    /// Records in `written` each transaction in which it writes stored changes.
    pub(crate) fn record_written_in(&mut self, written: Arc<Written>) {
        self.written = Some(written);
    }

    /// An id above every change of `database` stored so far (nil when there is none).
    pub(crate) async fn id_above_stored(&self, database: &str) -> Result<Uuid> {
        let highest = crate::seal::highest_stored(&self.client, &self.changes, database).await?;
        Ok(highest.map_or(Uuid::nil(), |id| {
            Uuid::from_u128(id.as_u128().saturating_add(1))
        }))
    }

    /// The table shapes recorded per relation in `bemi.schema_versions` (the source's table of
    /// table shapes, stored like any change), newest last, for `database`: what the stream
    /// showed before this session's start position.
    pub(crate) async fn load_recorded_shapes(
        &self,
        database: &str,
    ) -> Result<Vec<(u32, RecordedShape)>> {
        let rows = self
            .client
            .query(
                "SELECT shape FROM bemi.schema_history WHERE database = $1 \
                 ORDER BY commit_lsn, sequence",
                &[&database],
            )
            .await
            .map_err(Error::postgres("read the recorded table shapes"))?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                RecordedShape::from_version(&row.get::<_, Option<serde_json::Value>>(0)?)
            })
            .collect())
    }

    /// The stored progress of this source.
    pub(crate) async fn load_progress(&self) -> Result<Option<Progress>> {
        let row = self
            .client
            .query_opt(
                "SELECT commit_lsn, stored_changes, complete, committed_at \
                 FROM bemi.worker_progress WHERE source = $1",
                &[&self.source],
            )
            .await
            .map_err(Error::postgres("read the worker's progress"))?;
        Ok(row.map(|row| {
            let committed_at: chrono::DateTime<chrono::Utc> = row.get(3);
            Progress {
                commit_lsn: u64::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
                stored_changes: u32::try_from(row.get::<_, i32>(1)).unwrap_or_default(),
                complete: row.get(2),
                committed_at_micros: committed_at.timestamp_micros()
                    - postgres_time(0).timestamp_micros(),
            }
        }))
    }

    /// Stores `rows` and `progress` in one transaction (rows marked
    /// [`ChangeRow::rejected`] are parked in `bemi.rejected`), committed in its `turn`.
    pub(crate) async fn write(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        turn.wait_prepared().await?;
        let upkept = self
            .partitions
            .prepare(&self.client, &self.changes, rows)
            .await?;
        // The call may have moved earlier changes into a new partition, in a subtransaction of
        // its own: those row versions are sealed as found.
        if let (true, Some(written), Some(first)) =
            (upkept, &self.written, rows.iter().map(|row| row.id).min())
        {
            written.inherit_below(first);
        }
        turn.prepared();
        if self.erasures.is_none() {
            self.erasures = Some(self.load_erasures().await?);
        }
        // Changes of subjects erased before: erased before they are written.
        let erased_rows: Option<Vec<ChangeRow>> = self.erased.covers_any(rows).then(|| {
            let mut rows = rows.to_vec();
            for row in &mut rows {
                self.erased.erase_row(row);
            }
            rows
        });
        let rows = erased_rows.as_deref().unwrap_or(rows);
        // Parked changes and recorded table shapes go to their own tables, in the same
        // transaction.
        let parked: Vec<&ChangeRow> = rows
            .iter()
            .filter(|row| row.rejected.is_some() || is_schema_version(row))
            .collect();
        let mut last_context = self.last_context.take();
        let data = if parked.is_empty() {
            encode_copy(rows, &mut last_context)
        } else {
            let storable: Vec<ChangeRow> = rows
                .iter()
                .filter(|row| row.rejected.is_none() && !is_schema_version(row))
                .cloned()
                .collect();
            encode_copy(&storable, &mut last_context)
        };
        let stored_by = self
            .write_copied(rows, &data, &parked, progress, turn)
            .await?;
        // Rows stored one by one hold their own context.
        self.last_context = match stored_by {
            StoredBy::RowByRow => None,
            StoredBy::Copy | StoredBy::Staged => last_context,
        };
        Ok(())
    }

    /// Whether the destination has `bemi.erasures`; if so, learns the erasures recorded so far
    /// (their changes are erased already).
    async fn load_erasures(&mut self) -> Result<bool> {
        let transaction = self
            .client
            .transaction()
            .await
            .map_err(Error::postgres("begin reading erasures"))?;
        let installed = crate::postgres::table_exists(&transaction, "bemi.erasures").await?;
        if installed {
            crate::erasure::stored::learn(&transaction, &self.changes, &mut self.erased).await?;
        }
        transaction
            .commit()
            .await
            .map_err(Error::postgres("end reading erasures"))?;
        Ok(installed)
    }

    /// Writes `data` (the batch `rows` in COPY format) and `parked`, idempotently when some
    /// changes were stored already, row by row when PostgreSQL refuses a value; says how.
    async fn write_copied(
        &mut self,
        rows: &[ChangeRow],
        data: &Bytes,
        parked: &[&ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<StoredBy> {
        match self
            .write_with(rows, data, parked, progress, CopyTarget::Changes, turn)
            .await
        {
            Ok(()) => Ok(StoredBy::Copy),
            Err(Error::Postgres { source, .. })
                if source.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
            {
                tracing::info!(
                    rows = rows.len(),
                    "some changes were already stored: storing the batch idempotently"
                );
                self.write_with(rows, data, parked, progress, CopyTarget::Staging, turn)
                    .await
                    .map(|()| StoredBy::Staged)
            }
            Err(Error::Postgres { source, .. }) if is_bad_data(&source) => {
                tracing::warn!(
                    rows = rows.len(),
                    sqlstate = sqlstate(&source),
                    "a change was rejected: storing the batch row by row"
                );
                self.write_row_by_row(rows, progress, turn)
                    .await
                    .map(|()| StoredBy::RowByRow)
            }
            Err(other) => Err(other),
        }
    }

    async fn write_with(
        &mut self,
        rows: &[ChangeRow],
        data: &Bytes,
        parked: &[&ChangeRow],
        progress: Option<Progress>,
        target: CopyTarget,
        turn: &mut Turn,
    ) -> Result<()> {
        let written = self.written.clone();
        let transaction = self
            .client
            .transaction()
            .await
            .map_err(Error::postgres("begin a destination transaction"))?;
        if !data.is_empty() {
            let table = match target {
                CopyTarget::Changes => self.changes.clone(),
                CopyTarget::Staging => {
                    if !self.staging_ready {
                        transaction
                            .batch_execute(&format!(
                                "CREATE TEMPORARY TABLE IF NOT EXISTS bemi_staging \
                                 (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                                self.changes
                            ))
                            .await
                            .map_err(Error::postgres("create the staging table"))?;
                    }
                    "bemi_staging".to_owned()
                }
            };
            let sink = transaction
                .copy_in(&format!("COPY {table} ({COLUMNS}) FROM STDIN"))
                .await
                .map_err(Error::postgres("start COPY into the changes table"))?;
            let mut sink = std::pin::pin!(sink);
            sink.send(data.clone())
                .await
                .map_err(Error::postgres("COPY into the changes table"))?;
            sink.as_mut()
                .finish()
                .await
                .map_err(Error::postgres("COPY into the changes table"))?;
            if target == CopyTarget::Staging {
                transaction
                    .batch_execute(&format!(
                        "INSERT INTO {changes} ({COLUMNS}) SELECT {COLUMNS} FROM bemi_staging \
                         ON CONFLICT DO NOTHING",
                        changes = self.changes
                    ))
                    .await
                    .map_err(Error::postgres("insert staged changes"))?;
            }
        }
        for row in parked {
            set_aside(&transaction, &self.source, row).await?;
        }
        // Before waiting for the turn to commit: the round trip is not in the ordered part.
        let highest = rows.iter().map(|row| row.id).max();
        if let (false, Some(highest)) = (data.is_empty(), highest) {
            record_written(written.as_deref(), &transaction, highest).await?;
        }
        turn.wait_committed().await?;
        catch_up_erasures(
            self.erasures,
            &transaction,
            &self.changes,
            rows,
            &mut self.erased,
            written.as_deref().filter(|_| data.is_empty()),
        )
        .await?;
        save_progress(&transaction, &self.source, progress).await?;
        transaction
            .commit()
            .await
            .map_err(Error::postgres("commit a batch of changes"))?;
        if target == CopyTarget::Staging {
            self.staging_ready = true;
        }
        Ok(())
    }

    async fn write_row_by_row(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        let insert = format!(
            "INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3::text::json, $4::text::json, \
             $5::text::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17::text::jsonb, $18::text::jsonb) ON CONFLICT DO NOTHING",
            self.changes
        );
        // Each row goes in under a savepoint, a subtransaction with an id of its own: the
        // sealer is told the row version's `xmin`, read back (a partitioned table cannot
        // return it from the INSERT).
        let read_xmin = format!(
            "SELECT xmin::text::int8 FROM {} WHERE id = $1 AND committed_at = $2",
            self.changes
        );
        let written = self.written.clone();
        let mut transaction = self
            .client
            .transaction()
            .await
            .map_err(Error::postgres("begin a destination transaction"))?;
        let statement = transaction
            .prepare(&insert)
            .await
            .map_err(Error::postgres("prepare the row insert"))?;
        let xmin_of = match written {
            Some(_) => Some(
                transaction
                    .prepare(&read_xmin)
                    .await
                    .map_err(Error::postgres("prepare reading a row version's xmin"))?,
            ),
            None => None,
        };
        for row in rows {
            if row.rejected.is_some() || is_schema_version(row) {
                set_aside(&transaction, &self.source, row).await?;
                continue;
            }
            let savepoint = transaction
                .savepoint("bemi_row")
                .await
                .map_err(Error::postgres("create a savepoint"))?;
            let stored = insert_row(&savepoint, &statement, row).await;
            match stored {
                Ok(inserted) => {
                    let xmin = written_xmin(&savepoint, xmin_of.as_ref(), inserted, row).await?;
                    savepoint
                        .commit()
                        .await
                        .map_err(Error::postgres("release a savepoint"))?;
                    note_written(written.as_deref(), xmin, row.id);
                }
                Err(source) if is_bad_data(&source) => {
                    savepoint
                        .rollback()
                        .await
                        .map_err(Error::postgres("roll back a savepoint"))?;
                    let reason = describe(&source);
                    // Logs carry no row value (PostgreSQL's message may quote one): the
                    // reason is stored with the change.
                    tracing::warn!(
                        table = %row.table, id = %row.id, sqlstate = sqlstate(&source),
                        "change rejected by PostgreSQL: stored with its values as text"
                    );
                    let kept = unstorable(row, &reason);
                    let savepoint = transaction
                        .savepoint("bemi_kept")
                        .await
                        .map_err(Error::postgres("create a savepoint"))?;
                    match insert_row(&savepoint, &statement, &kept).await {
                        Ok(inserted) => {
                            let xmin =
                                written_xmin(&savepoint, xmin_of.as_ref(), inserted, &kept).await?;
                            savepoint
                                .commit()
                                .await
                                .map_err(Error::postgres("release a savepoint"))?;
                            note_written(written.as_deref(), xmin, kept.id);
                        }
                        Err(again) if is_bad_data(&again) => {
                            savepoint
                                .rollback()
                                .await
                                .map_err(Error::postgres("roll back a savepoint"))?;
                            let reason = format!("{reason}; kept as text: {}", describe(&again));
                            tracing::error!(
                                table = %row.table, id = %row.id, sqlstate = sqlstate(&again),
                                "change refused by PostgreSQL even as text: parked in bemi.rejected"
                            );
                            park(&transaction, &self.source, row, &reason).await?;
                        }
                        Err(source) => {
                            return Err(Error::Postgres {
                                action: "store a rejected change as text".into(),
                                source,
                            });
                        }
                    }
                }
                Err(source) => {
                    return Err(Error::Postgres {
                        action: "store a change".into(),
                        source,
                    });
                }
            }
        }
        turn.wait_committed().await?;
        catch_up_erasures(
            self.erasures,
            &transaction,
            &self.changes,
            rows,
            &mut self.erased,
            written.as_deref(),
        )
        .await?;
        save_progress(&transaction, &self.source, progress).await?;
        transaction
            .commit()
            .await
            .map_err(Error::postgres("commit a batch of changes"))
    }
}

/// In a batch's `transaction`, after its turn to commit came: records the erasure requests
/// among `rows` and erases what erasures recorded since `erased` last looked, when the
/// destination has erasures (`installed`). When it rewrote stored changes, records the
/// transaction in `written` (`None` when it is recorded already, or nobody asks).
async fn catch_up_erasures(
    installed: Option<bool>,
    transaction: &tokio_postgres::Transaction<'_>,
    changes: &str,
    rows: &[ChangeRow],
    erased: &mut Erased,
    written: Option<&Written>,
) -> Result<()> {
    if installed == Some(true)
        && crate::erasure::stored::catch_up(transaction, changes, rows, erased).await?
    {
        record_written(written, transaction, Uuid::max()).await?;
    }
    Ok(())
}

/// Records the current transaction of `transaction` in `written` as one that wrote changes up
/// to `highest`.
async fn record_written(
    written: Option<&Written>,
    transaction: &tokio_postgres::Transaction<'_>,
    highest: Uuid,
) -> Result<()> {
    let Some(written) = written else {
        return Ok(());
    };
    let xid: i64 = transaction
        .query_one("SELECT (pg_catalog.txid_current() % 4294967296)::int8", &[])
        .await
        .map_err(Error::postgres("read the transaction's id"))?
        .get(0);
    written.record(u32::try_from(xid).unwrap_or_default(), highest);
    Ok(())
}

/// A row version with `xmin` was written for change `id` (`None`: it was stored already).
fn note_written(written: Option<&Written>, xmin: Option<u32>, id: Uuid) {
    if let (Some(written), Some(xmin)) = (written, xmin) {
        written.record(xmin, id);
    }
}

/// Saves `progress` for `source` inside `transaction`.
async fn save_progress(
    transaction: &tokio_postgres::Transaction<'_>,
    source: &str,
    progress: Option<Progress>,
) -> Result<()> {
    let Some(progress) = progress else {
        return Ok(());
    };
    transaction
        .execute(
            "INSERT INTO bemi.worker_progress \
                 (source, commit_lsn, stored_changes, complete, committed_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, pg_catalog.now()) \
                 ON CONFLICT (source) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, \
                 stored_changes = EXCLUDED.stored_changes, complete = EXCLUDED.complete, \
                 committed_at = EXCLUDED.committed_at, updated_at = EXCLUDED.updated_at",
            &[
                &source,
                &i64::try_from(progress.commit_lsn).unwrap_or(i64::MAX),
                &i32::try_from(progress.stored_changes).unwrap_or(i32::MAX),
                &progress.complete,
                &postgres_time(progress.committed_at_micros),
            ],
        )
        .await
        .map_err(Error::postgres("save the worker's progress"))?;
    Ok(())
}

/// How a batch reached the changes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredBy {
    /// One COPY into the table.
    Copy,
    /// One COPY into a staging table, then an insert skipping changes stored already.
    Staged,
    /// One insert per change, after PostgreSQL refused a value of the batch.
    RowByRow,
}

/// Where a batch's COPY goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyTarget {
    /// The changes table.
    Changes,
    /// The session's staging table, for an idempotent insert.
    Staging,
}

/// The server's message and SQLSTATE for a database error, the driver's text otherwise.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// The SQLSTATE of a driver error, for logs.
fn sqlstate(error: &tokio_postgres::Error) -> &str {
    error.code().map_or("none", |code| code.code())
}

/// Whether PostgreSQL refused a row for a reason tied to its values (see
/// [`ErrorKind::BadData`]).
fn is_bad_data(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| sqlstate_kind(code.code()) == ErrorKind::BadData)
}

/// Whether `row` records a tracked table's shape (an insert into the source's
/// `bemi.schema_versions`): kept in `bemi.schema_history`, not in `changes`.
pub(crate) fn is_schema_version(row: &ChangeRow) -> bool {
    &*row.schema == bemi_core::setup::BEMI_SCHEMA
        && &*row.table == "schema_versions"
        && row.operation == bemi_core::Operation::Create
}

/// Writes a row that does not belong in `changes`: a parked change, or a table shape.
async fn set_aside(
    transaction: &tokio_postgres::Transaction<'_>,
    source: &str,
    row: &ChangeRow,
) -> Result<()> {
    if let Some(reason) = &row.rejected {
        return park(transaction, source, row, reason).await;
    }
    transaction
        .execute(
            "INSERT INTO bemi.schema_history (id, database, commit_lsn, sequence, committed_at, \
             transaction_id, context, shape) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb) \
             ON CONFLICT (id) DO NOTHING",
            &[
                &row.id,
                &&*row.database,
                &row.commit_lsn,
                &row.sequence,
                &row.committed_at,
                &row.transaction_id,
                &&*row.context,
                &row.after,
            ],
        )
        .await
        .map_err(Error::postgres(
            "record a table's shape in bemi.schema_history",
        ))?;
    Ok(())
}

/// Parks a change the `changes` table refused in `bemi.rejected`: its whole JSON (as bytes, which
/// PostgreSQL always accepts), where it sits in the source's WAL, and why. Idempotent on the
/// change's id, like the `changes` table.
async fn park(
    transaction: &tokio_postgres::Transaction<'_>,
    source: &str,
    row: &ChangeRow,
    reason: &str,
) -> Result<()> {
    let payload = crate::sink::jetstream::wire::encode(row);
    transaction
        .execute(
            "INSERT INTO bemi.rejected (change_id, source, commit_lsn, position, transaction_id, \
             schema, \"table\", reason, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (change_id) DO NOTHING",
            &[
                &row.id,
                &source,
                &row.commit_lsn,
                &row.position,
                &row.transaction_id,
                &&*row.schema,
                &&*row.table,
                &reason.replace('\0', "\u{fffd}"),
                &payload,
            ],
        )
        .await
        .map_err(Error::postgres("park a refused change in bemi.rejected"))?;
    Ok(())
}

/// Inserts `row`; whether it was inserted (not stored already).
async fn insert_row(
    client: &impl tokio_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    row: &ChangeRow,
) -> Result<bool, tokio_postgres::Error> {
    client
        .execute(
            statement,
            &[
                &row.id,
                &row.primary_key,
                &row.before,
                &row.after_changed.is_none().then_some(&row.after),
                &&*row.context,
                &&*row.database,
                &&*row.schema,
                &&*row.table,
                &row.operation.as_str(),
                &row.committed_at,
                &row.queued_at,
                &row.transaction_id,
                &row.position,
                &row.commit_lsn,
                &row.sequence,
                &row.previous_primary_key,
                &row.after_changed,
                &crate::erasure::personal::to_stored(&row.personal),
            ],
        )
        .await
        .map(|inserted| inserted == 1)
}

/// The `xmin` of the row version just `inserted` for `row`, read with `xmin_of` (`None` when
/// nothing was inserted or nobody asked).
async fn written_xmin(
    client: &impl tokio_postgres::GenericClient,
    xmin_of: Option<&tokio_postgres::Statement>,
    inserted: bool,
    row: &ChangeRow,
) -> Result<Option<u32>> {
    let Some(statement) = xmin_of.filter(|_| inserted) else {
        return Ok(None);
    };
    let xmin: Option<i64> = client
        .query_opt(statement, &[&row.id, &row.committed_at])
        .await
        .map_err(Error::postgres("read a row version's xmin"))?
        .map(|found| found.get(0));
    Ok(xmin.and_then(|xmin| u32::try_from(xmin).ok()))
}

/// `row` with `before`/`after` emptied and their JSON text kept as strings in the context, which
/// PostgreSQL always accepts.
fn unstorable(row: &ChangeRow, error: &str) -> ChangeRow {
    // The images' JSON text is kept exactly, as strings (which any `jsonb` accepts); the rest of
    // the context is merged into without parsing its numbers.
    let mut notes = serde_json::Map::new();
    notes.insert(
        "unstorable".to_owned(),
        json!({
            "error": error.replace('\0', "\u{fffd}"),
            "before": row.before,
            "after": row.after,
        }),
    );
    ChangeRow {
        before: "{}".to_owned(),
        after: "{}".to_owned(),
        after_changed: None,
        context: crate::stitch::context::with_notes(&row.context, notes),
        // The images are gone (their text, kept in the context, is not erasable).
        personal: row
            .personal
            .iter()
            .filter(|value| value.place == crate::erasure::Place::Context)
            .cloned()
            .collect(),
        ..row.clone()
    }
}

/// The rows in `COPY ... FROM STDIN` text format. `last_context` is the change stored last
/// (`None` when unknown): a change with the context of the change right before it in its
/// transaction stores none. It ends as the last of `rows`.
pub(crate) fn encode_copy(rows: &[ChangeRow], last_context: &mut Option<LastContext>) -> Bytes {
    let size: usize = rows
        .iter()
        .map(|row| row.before.len() + row.after.len() + row.context.len() + 256)
        .sum();
    let mut out = BytesMut::with_capacity(size);
    // The rows of a transaction share their times: format each distinct one once.
    let mut times: [Option<(chrono::DateTime<chrono::Utc>, String)>; 2] = [None, None];
    let mut numbers = itoa::Buffer::new();
    for row in rows {
        let mut uuid = uuid::Uuid::encode_buffer();
        field(&mut out, row.id.hyphenated().encode_lower(&mut uuid));
        tab(&mut out);
        match &row.primary_key {
            Some(key) => field(&mut out, key),
            None => out.put_slice(b"\\N"),
        }
        let shared = last_context
            .as_ref()
            .is_some_and(|last| last.shared_by(row));
        let after = row.after_changed.is_none().then_some(&row.after[..]);
        let context = (!shared).then_some(&row.context[..]);
        for text in [
            Some(&row.before[..]),
            after,
            context,
            Some(&row.database[..]),
            Some(&row.schema[..]),
            Some(&row.table[..]),
            Some(row.operation.as_str()),
        ] {
            tab(&mut out);
            match text {
                Some(text) => field(&mut out, text),
                None => out.put_slice(b"\\N"),
            }
        }
        match last_context {
            Some(last) if shared => last.sequence = row.sequence,
            _ => *last_context = Some(LastContext::of(row)),
        }
        for (slot, time) in times.iter_mut().zip([row.committed_at, row.queued_at]) {
            tab(&mut out);
            let text = match slot {
                Some((cached, text)) if *cached == time => text,
                _ => {
                    let text = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                    &slot.insert((time, text)).1
                }
            };
            out.put_slice(text.as_bytes());
        }
        for number in [
            row.transaction_id,
            row.position,
            row.commit_lsn,
            i64::from(row.sequence),
        ] {
            tab(&mut out);
            out.put_slice(numbers.format(number).as_bytes());
        }
        for text in [&row.previous_primary_key, &row.after_changed] {
            tab(&mut out);
            match text {
                Some(text) => field(&mut out, text),
                None => out.put_slice(b"\\N"),
            }
        }
        tab(&mut out);
        // A change that stores no context lists none of its values.
        let personal = crate::erasure::personal::to_stored(
            row.personal
                .iter()
                .filter(|value| !shared || value.place != crate::erasure::Place::Context),
        );
        match personal {
            Some(text) => field(&mut out, &text),
            None => out.put_slice(b"\\N"),
        }
        out.put_u8(b'\n');
    }
    out.freeze()
}

fn tab(out: &mut BytesMut) {
    out.put_u8(b'\t');
}

/// A text-format COPY field: backslash, tab, newline and carriage return escaped.
fn field(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    let mut search_from = 0;
    while let Some(at) = crate::stitch::json::next_special(bytes, search_from, b"\\") {
        search_from = at + 1;
        let escape: &[u8] = match bytes[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            // Other control characters need no escape in COPY text.
            _ => continue,
        };
        out.put_slice(&bytes[clean_from..at]);
        out.put_slice(escape);
        clean_from = at + 1;
    }
    out.put_slice(&bytes[clean_from..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bemi_core::Operation;

    use super::*;

    fn row() -> ChangeRow {
        let at = postgres_time(0);
        ChangeRow {
            id: uuid::Uuid::nil(),
            primary_key: None,
            before: "{}".into(),
            after: r#"{"t":"a\tb\\c\nd"}"#.into(),
            after_changed: None,
            context: Arc::from("{}"),
            database: Arc::from("db"),
            schema: Arc::from("public"),
            table: Arc::from("t\tab"),
            operation: Operation::Create,
            committed_at: at,
            queued_at: at,
            transaction_id: 1,
            position: 2,
            commit_lsn: 3,
            sequence: 4,
            previous_primary_key: Some("7".into()),
            rejected: None,
            personal: Vec::new(),
        }
    }

    /// Reads a COPY text field back.
    fn unescape(field: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = field.iter();
        while let Some(&byte) = bytes.next() {
            if byte == b'\\' {
                match bytes.next() {
                    Some(b't') => out.push(b'\t'),
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(&other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(byte);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn fields_round_trip_and_never_hold_raw_separators(text in "(?s).{0,64}") {
            let mut out = BytesMut::new();
            field(&mut out, &text);
            proptest::prop_assert!(!out.iter().any(|byte| matches!(byte, b'\t' | b'\n' | b'\r')));
            proptest::prop_assert_eq!(unescape(&out), text.as_bytes());
        }
    }

    #[test]
    fn copy_text_escapes_fields() {
        let encoded = encode_copy(&[row()], &mut None);
        let expected = [
            "00000000-0000-0000-0000-000000000000",
            r"\N",
            "{}",
            r#"{"t":"a\\tb\\\\c\\nd"}"#,
            "{}",
            "db",
            "public",
            r"t\tab",
            "CREATE",
            "2000-01-01T00:00:00.000000Z",
            "2000-01-01T00:00:00.000000Z",
            "1",
            "2",
            "3",
            "4",
            "7",
            r"\N",
            r"\N",
        ]
        .join("\t")
            + "\n";
        assert_eq!(std::str::from_utf8(&encoded).unwrap(), expected);
    }

    /// The `after` and `context` fields of each encoded row (`None` for `\N`).
    fn compact_fields(encoded: &[u8]) -> Vec<(Option<String>, Option<String>)> {
        let text = std::str::from_utf8(encoded).unwrap();
        let value = |field: &str| (field != r"\N").then(|| field.to_owned());
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                (value(fields[3]), value(fields[4]))
            })
            .collect()
    }

    #[test]
    fn a_change_stores_its_context_only_when_the_change_before_it_has_another() {
        let request = Arc::from(r#"{"user":1}"#);
        let at = |sequence: i32, context: &Arc<str>, commit_lsn: i64| ChangeRow {
            sequence,
            commit_lsn,
            context: Arc::clone(context),
            ..row()
        };
        let other: Arc<str> = Arc::from(r#"{"user":2}"#);
        // Equal text in another allocation counts as the same context.
        let same_text: Arc<str> = Arc::from(r#"{"user":1}"#);
        let rows = [
            at(0, &request, 10),
            at(1, &request, 10),
            at(2, &same_text, 10),
            at(3, &other, 10),
            at(4, &request, 10),
            // Another transaction always starts with its context.
            at(0, &request, 11),
        ];
        let mut last = None;
        let contexts: Vec<Option<String>> = compact_fields(&encode_copy(&rows, &mut last))
            .into_iter()
            .map(|(_, context)| context)
            .collect();
        let user = |n: u8| Some(format!(r#"{{"user":{n}}}"#));
        assert_eq!(contexts, [user(1), None, None, user(2), user(1), user(1)]);
        // The next batch of the same transaction goes on from the last change stored.
        let next = compact_fields(&encode_copy(&[at(1, &request, 11)], &mut last));
        assert_eq!(next[0].1, None);
        // Without knowing what was stored before (a restart), the context is stored.
        let fresh = compact_fields(&encode_copy(&[at(1, &request, 11)], &mut None));
        assert_eq!(fresh[0].1, user(1));
        // After a gap (a change stored elsewhere, by another `ingest` process, or not stored
        // in `changes`), too: the change in the gap may hold another context.
        let mut last = None;
        let gap = compact_fields(&encode_copy(
            &[at(0, &request, 12), at(2, &request, 12)],
            &mut last,
        ));
        assert_eq!((gap[0].1.clone(), gap[1].1.clone()), (user(1), user(1)));
    }

    #[test]
    fn an_update_with_its_changed_columns_stores_no_after_image() {
        let update = ChangeRow {
            operation: Operation::Update,
            before: r#"{"a":1,"b":2}"#.into(),
            after: r#"{"a":1,"b":3}"#.into(),
            after_changed: Some(r#"{"b":3}"#.into()),
            ..row()
        };
        let line = String::from_utf8(encode_copy(&[update], &mut None).to_vec()).unwrap();
        let fields: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(fields[3], r"\N");
        assert_eq!(fields[16], r#"{"b":3}"#);
    }

    #[test]
    fn unstorable_rows_keep_their_values_as_text() {
        let kept = unstorable(&row(), "numeric field overflow");
        assert_eq!(kept.after, "{}");
        let context: serde_json::Value = serde_json::from_str(&kept.context).unwrap();
        assert_eq!(
            context["_bemi"]["unstorable"]["after"],
            json!(r#"{"t":"a\tb\\c\nd"}"#)
        );
        assert_eq!(
            context["_bemi"]["unstorable"]["error"],
            json!("numeric field overflow")
        );
    }
}
