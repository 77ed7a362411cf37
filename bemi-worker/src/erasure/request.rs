//! `bemi-worker erase`: asking for an erasure in the source, and waiting for the worker to
//! carry it out in the destination.

use std::time::Duration;

use bemi_core::QualifiedName;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{ConnectionOptions, Error, Result};

/// What to erase, and why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ErasureRequest {
    /// The subject's table.
    pub table: QualifiedName,
    /// The subject's primary key, as the `primary_key` column stores it (`42`, or
    /// `["7","eu"]` for a composite key).
    pub key: String,
    /// The context key that names the subject (e.g. `user_id`): the personal context values of
    /// the changes it made are erased too.
    pub context_key: Option<String>,
    /// Why (a ticket, a legal basis); required, stored with the erasure.
    pub reason: String,
    /// Who asks, beside the database role (recorded in the request's context).
    pub operator: Option<String>,
    /// Erase even where a legal hold in force covers the subject's changes (the holds are
    /// named in the request's context).
    pub despite_holds: bool,
}

impl ErasureRequest {
    /// A request to erase the personal values of the row `key` of `table`, for `reason`.
    pub fn new(table: QualifiedName, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            table,
            key: key.into(),
            context_key: None,
            reason: reason.into(),
            operator: None,
            despite_holds: false,
        }
    }

    /// Erases the personal context values of the changes whose context names the subject
    /// under `key`.
    #[must_use]
    pub fn context_key(mut self, key: impl Into<String>) -> Self {
        self.context_key = Some(key.into());
        self
    }

    /// Records who asks in the request's context.
    #[must_use]
    pub fn operator(mut self, operator: impl Into<String>) -> Self {
        self.operator = Some(operator.into());
        self
    }

    /// Erases even where a legal hold in force covers the subject's changes.
    #[must_use]
    pub fn despite_holds(mut self) -> Self {
        self.despite_holds = true;
        self
    }
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErasureOutcome {
    /// The worker carried it out.
    Erased {
        /// The request's id in the source's `bemi.erasure_requests`.
        request_id: i64,
        /// How many stored changes held values it erased.
        changes: i32,
        /// When.
        erased_at: DateTime<Utc>,
        /// The partitions of the changes table vacuumed afterwards (the old row versions, which
        /// held the values, are gone from them).
        vacuumed: Vec<String>,
        /// Partitions that could not be vacuumed, with why: run `VACUUM` on them as their owner.
        not_vacuumed: Vec<(String, String)>,
    },
    /// Requested, not carried out within the wait: the worker carries it out when the stream
    /// reaches it (it is behind, or not running).
    Pending {
        /// The request's id in the source's `bemi.erasure_requests`.
        request_id: i64,
    },
}

/// Writes `request` into the source's `bemi.erasure_requests` (with a context naming the
/// operation, the reason and the operator), then waits up to `wait` for the worker to carry it
/// out in the destination, and vacuums the partitions that held the subject's changes.
///
/// A legal hold in force on the subject's table or on every change (or, with a context key,
/// any hold: the changes naming the subject may be anywhere) makes it refuse, unless
/// [`ErasureRequest::despite_holds`]: a hold keeps evidence, which erasure would destroy.
///
/// # Errors
///
/// A connection or query failure; [`Error::Config`] for an empty key or reason, a source set
/// up before erasure (no `bemi.erasure_requests`), or a legal hold in force.
pub async fn request_erasure(
    source: &ConnectionOptions,
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
    request: &ErasureRequest,
    wait: Duration,
) -> Result<ErasureOutcome> {
    if request.key.is_empty() || request.reason.trim().is_empty() {
        return Err(Error::Config(
            "an erasure needs a key and a reason".to_owned(),
        ));
    }
    let destination = destination.connect("bemi-worker erase").await?;
    let holds = holds_in_force(&destination, request).await?;
    if !holds.is_empty() && !request.despite_holds {
        let named: Vec<String> = holds
            .iter()
            .map(|(id, reason)| format!("{id} ({reason})"))
            .collect();
        return Err(Error::Config(format!(
            "legal holds in force cover the changes of {} {}: {}; erasure refused (release them, \
             or erase despite them)",
            request.table,
            request.key,
            named.join(", ")
        )));
    }
    let mut client = source.connect("bemi-worker erase").await?;
    if !crate::postgres::table_exists(&client, "bemi.erasure_requests").await? {
        return Err(Error::Config(
            "the source has no bemi.erasure_requests: run `bemi-worker setup` again".to_owned(),
        ));
    }
    let transaction = client
        .transaction()
        .await
        .map_err(Error::postgres("begin the erasure request"))?;
    let mut context = json!({ "operation": "erase", "reason": request.reason });
    if let Some(operator) = &request.operator {
        context["operator"] = json!(operator);
    }
    if !holds.is_empty() {
        let ids: Vec<i64> = holds.iter().map(|(id, _)| *id).collect();
        context["despite_holds"] = json!(ids);
    }
    transaction
        .execute(
            "SELECT pg_catalog.pg_logical_emit_message(true, $1::text, $2::text)",
            &[
                &bemi_core::setup::MESSAGE_PREFIX,
                &bemi_core::encode_payload(&context),
            ],
        )
        .await
        .map_err(Error::postgres("record the erasure's context"))?;
    let row = transaction
        .query_one(
            "INSERT INTO bemi.erasure_requests (schema_name, table_name, key, context_key, reason) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, pg_catalog.current_database()::text",
            &[
                &request.table.schema(),
                &request.table.name(),
                &request.key,
                &request.context_key,
                &request.reason,
            ],
        )
        .await
        .map_err(Error::postgres("request the erasure"))?;
    let (request_id, database): (i64, String) = (row.get(0), row.get(1));
    transaction
        .commit()
        .await
        .map_err(Error::postgres("commit the erasure request"))?;
    tracing::info!(
        request_id,
        "erasure requested; waiting for the worker to carry it out"
    );

    let deadline = tokio::time::Instant::now() + wait;
    let mut waited_log = tokio::time::Instant::now();
    let (changes, erased_at) = loop {
        let done = destination
            .query_opt(
                "SELECT changes, erased_at FROM bemi.erasures WHERE database = $1 AND request_id = $2",
                &[&database, &request_id],
            )
            .await
            .map_err(Error::postgres("look for the erasure"))?;
        if let Some(done) = done {
            break (done.get::<_, i32>(0), done.get::<_, DateTime<Utc>>(1));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(ErasureOutcome::Pending { request_id });
        }
        if waited_log.elapsed() >= Duration::from_secs(5) {
            eprintln!("waiting for the worker to reach the erasure request {request_id}...");
            waited_log = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The updated rows' old versions hold the values until VACUUM removes them.
    let stored = bemi_core::setup::stored_changes_table(changes_table).to_string();
    let mut partitions: Vec<String> = destination
        .query(
            &format!(
                "SELECT DISTINCT tableoid::regclass::text FROM {stored} \
                 WHERE database = $1 AND schema = $2 AND \"table\" = $3 \
                 AND (primary_key = $4 OR previous_primary_key = $4) AND personal IS NOT NULL"
            ),
            &[
                &database,
                &request.table.schema(),
                &request.table.name(),
                &request.key,
            ],
        )
        .await
        .map_err(Error::postgres("find the partitions to vacuum"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(context_key) = &request.context_key {
        for named in named_contexts(context_key, &request.key) {
            let rows = destination
                .query(
                    &format!(
                        "SELECT DISTINCT tableoid::regclass::text FROM {stored} \
                         WHERE context @> $2 AND context IS NOT NULL AND database = $1 \
                         AND personal IS NOT NULL"
                    ),
                    &[&database, &named],
                )
                .await
                .map_err(Error::postgres("find the partitions to vacuum"))?;
            partitions.extend(rows.iter().map(|row| row.get::<_, String>(0)));
        }
    }
    partitions.sort();
    partitions.dedup();
    let (mut vacuumed, mut not_vacuumed) = (Vec::new(), Vec::new());
    for partition in partitions {
        // VACUUM only warns when it skips a table it may not vacuum.
        let may: bool = destination
            .query_one(
                "SELECT pg_catalog.pg_has_role(c.relowner, 'MEMBER') \
                 OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
                 FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
                &[&partition],
            )
            .await
            .map_err(Error::postgres("check who may vacuum"))?
            .get(0);
        if !may {
            not_vacuumed.push((partition, "not its owner".to_owned()));
            continue;
        }
        match destination
            .batch_execute(&format!("VACUUM {partition}"))
            .await
        {
            Ok(()) => vacuumed.push(partition),
            Err(error) => not_vacuumed.push((partition, error.to_string())),
        }
    }
    Ok(ErasureOutcome::Erased {
        request_id,
        changes,
        erased_at,
        vacuumed,
        not_vacuumed,
    })
}

/// The legal holds in force that cover changes `request` erases values from: its table's, every
/// change's, and with a context key any.
async fn holds_in_force(
    client: &tokio_postgres::Client,
    request: &ErasureRequest,
) -> Result<Vec<(i64, String)>> {
    if !crate::postgres::table_exists(client, "bemi.legal_holds").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id, reason FROM bemi.legal_holds WHERE held_until > pg_catalog.now() \
             AND (schema_name IS NULL OR $3 OR (schema_name = $1 AND table_name = $2)) \
             ORDER BY id",
            &[
                &request.table.schema(),
                &request.table.name(),
                &request.context_key.is_some(),
            ],
        )
        .await
        .map_err(Error::postgres("read the legal holds"))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The contexts that name the subject `key` under `context_key`: as a string, and as a number
/// when the key is one.
pub(crate) fn named_contexts(context_key: &str, key: &str) -> Vec<serde_json::Value> {
    let mut named = vec![json!({ context_key: key })];
    if let Ok(number) = serde_json::from_str::<serde_json::Number>(key) {
        named.push(json!({ context_key: number }));
    }
    named
}
