//! The database objects bemi installs, as SQL, shared by the worker's CLI, the tests and the
//! examples.
//!
//! # What is installed
//!
//! In the **source** database ([`Setup::source_sql`]), all in schema `bemi` unless noted:
//!
//! | object | purpose |
//! | --- | --- |
//! | function `bemi.emit_context()` | statement trigger: copies the statement's context into the WAL |
//! | trigger `_bemi_context` on each tracked table | `BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT`, see below |
//! | `REPLICA IDENTITY FULL` on each tracked table | the WAL carries the whole old row, for `before` |
//! | publication (default `bemi`) | the tracked tables, never the `changes` table |
//! | tables `bemi.tracked_tables`, `bemi.tracked_schemas` | what is tracked and each table's previous replica identity (restored by teardown) |
//! | functions `bemi.track_table`, `bemi.untrack_table`, `bemi.sync_tracking`, `bemi.is_excluded` | apply the treatment to one table or to the configured set |
//! | event trigger `_bemi_track_new_tables` + function `bemi.track_new_tables()` | tables created later in a tracked schema get the same treatment (needs superuser; otherwise a NOTICE says to run setup again after creating tables) |
//! | table `bemi.column_policies` | columns the worker redacts, drops, treats as noise or as personal data, from `Audited` models (see [`crate::policy`]) |
//! | table `bemi.erasure_requests` | `bemi-worker erase`: a subject's personal values to erase from the trail, carried out by the worker where the stream reaches the request (only its owner may insert) |
//! | function `bemi.snapshot_table(regclass)` | `bemi-worker snapshot`: records the table's current rows through the WAL (see below) |
//!
//! In the **destination** database ([`Setup::destination_sql`]): the `changes` table (default
//! `bemi.changes`) with its indexes, and `bemi.worker_progress` (the last stored position per
//! slot). The replication **slot** (default `bemi`) is created by [`Setup::create_slot_sql`],
//! after the publication and outside any transaction that wrote.
//!
//! Everything is idempotent (running setup twice changes nothing) and reversible
//! ([`Setup::teardown_source_sql`] removes every source object and restores replica identities;
//! the `changes` table is kept unless [`Setup::teardown_destination_sql`] is run). All SQL runs
//! with an explicit `search_path` and qualifies every name, so table names that need quotes
//! (`"Order Items"`, `my-table`) work.
//!
//! # Emission: one message per statement
//!
//! The trigger fires once per *statement*, not per row. Its function emits one transactional
//! logical message, prefix `_bemi`, when
//!
//! - the statement's text ends with a `/*Bemi ... Bemi*/` comment (content: its payload; a
//!   comment-like string elsewhere, e.g. inside a literal, is data and ignored), or
//! - the setting `bemi.context` is set (a context for clients that cannot append comments, e.g.
//!   `SET LOCAL bemi.context = '{"user":"dba"}'` in psql; a comment takes precedence), or
//! - the transaction-local setting `bemi.context_active` is `on`, i.e. an earlier statement of
//!   this transaction had a context (content: the empty string, which clears it).
//!
//! It sets `bemi.context_active` accordingly. Untagged statements in untagged transactions emit
//! nothing. The trigger has no `WHEN` clause on purpose: PostgreSQL compiles a `WHEN` clause for
//! every statement execution, which measured more expensive than entering PL/pgSQL (per
//! single-row INSERT, server CPU: plain 3.4 µs, untagged +1.9 µs, tagged +5 µs; with a `WHEN`
//! clause: untagged +6.5 µs, tagged +14.5 µs).
//!
//! # The attribution rule (what the worker applies)
//!
//! Within one transaction, in WAL stream order:
//!
//! 1. a transaction starts with no context;
//! 2. a `_bemi` message with non-empty content sets the context for every following row change;
//! 3. a `_bemi` message with empty content clears it;
//! 4. a row change (INSERT, UPDATE, DELETE, TRUNCATE) gets the context set at that point.
//!
//! This gives each change the context of its own statement: a tagged statement's message
//! precedes its rows (and those of its FK cascades and triggers, which see the same query text);
//! an untagged statement following a tagged one emits an empty message first. A rolled-back
//! savepoint discards its messages together with its rows and reverts `bemi.context_active`, so
//! the rule stays exact. Pair messages and changes by stream order, never by LSN: a message's LSN
//! is the end of its record, and TOAST records may sit between it and the row.

//! # Snapshots: a baseline for time travel
//!
//! History only knows rows that changed after setup. `bemi.snapshot_table(t)` (run by
//! `bemi-worker snapshot`) locks `t` in SHARE mode, which waits for running writers and holds
//! new ones off until its transaction ends, then emits one `_bemi_snapshot` message describing
//! the table and one `_bemi_snapshot_row` message per row. The messages commit at one WAL
//! position: every change before it is in the rows read, none after it is. The worker stores
//! each row as a `SNAPSHOT` change, so `as_of` is right for rows that never changed, and a
//! snapshot replayed after a crash is absorbed like any change.

mod destination_sql;
mod erasures;
mod partitions;
mod requirements;
mod retention;
mod seals;
mod source_sql;

use crate::ident::quote_literal;
use crate::policy::ColumnAction;
use crate::{QualifiedName, Result};

pub use partitions::{
    ConversionStep, MAX_PARTITIONED_NAME_BYTES, PARTITIONS_AHEAD, Partitioning, conversion,
    conversion_index_name, legacy_partition_name,
};
pub use requirements::{Problem, RequirementError, ServerFacts};
pub use retention::{ACTIVE_HOLDS_QUERY, PARTITIONS_QUERY};

/// The schema holding bemi's own objects.
pub const BEMI_SCHEMA: &str = "bemi";
/// The name of the statement trigger on each tracked table.
pub const TRIGGER_NAME: &str = "_bemi_context";
/// The name of the event trigger that tracks new tables.
pub const EVENT_TRIGGER_NAME: &str = "_bemi_track_new_tables";
/// The prefix of bemi's logical messages.
pub const MESSAGE_PREFIX: &str = "_bemi";
/// The prefix of the worker's heartbeats: empty non-transactional logical messages it writes
/// in the source database while nothing there changes, so that the slot advances (confirmed
/// like a keepalive, only when nothing is in flight; anyone may write one, to no effect).
pub const HEARTBEAT_PREFIX: &str = "_bemi_heartbeat";
/// The prefix of the message that starts a table's snapshot (content: the table's OID, schema,
/// name and columns as JSON).
pub const SNAPSHOT_PREFIX: &str = "_bemi_snapshot";
/// The prefix of the messages carrying one snapshotted row each (content: a JSON array of the
/// columns' texts, in the order of the snapshot's header).
pub const SNAPSHOT_ROW_PREFIX: &str = "_bemi_snapshot_row";
/// The table (in [`BEMI_SCHEMA`], published) whose rows prove that a transaction comes from one of
/// bemi's own commands: only its owner may insert, and the worker trusts `_bemi_snapshot`
/// messages only in a transaction that inserted a row here first. Logical messages carry no
/// sender, and any role may emit them.
pub const PROOF_TABLE: &str = "message_proofs";
/// The default publication name.
pub const DEFAULT_PUBLICATION: &str = "bemi";
/// The default replication slot name.
pub const DEFAULT_SLOT: &str = "bemi";

/// Which tables to track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// Every table in these schemas, including tables created later.
    Schemas(Vec<String>),
    /// Exactly these tables.
    Tables(Vec<QualifiedName>),
}

/// What [`Setup`] installs and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupOptions {
    tracked: Tracked,
    changes_table: QualifiedName,
    publication: String,
    slot: String,
    /// Column policies of `Audited` models, stored in `bemi.column_policies`.
    model_policies: Vec<(QualifiedName, Vec<(String, ColumnAction)>)>,
    /// The role owning the audit tables, when not the role running setup.
    owner_role: Option<String>,
    /// Whether DDL events keep their statement's text.
    ddl_statements: bool,
    /// How a new `changes` table is partitioned.
    partitioning: Partitioning,
    /// Whether the images have GIN indexes for `before_contains` and `after_contains`.
    image_indexes: bool,
}

impl Default for SetupOptions {
    /// Track schema `public`, store into `bemi.changes`, publication and slot `bemi`.
    fn default() -> Self {
        Self {
            tracked: Tracked::Schemas(vec!["public".to_owned()]),
            changes_table: QualifiedName::from_static(BEMI_SCHEMA, "changes"),
            publication: DEFAULT_PUBLICATION.to_owned(),
            slot: DEFAULT_SLOT.to_owned(),
            model_policies: Vec::new(),
            owner_role: None,
            ddl_statements: true,
            partitioning: Partitioning::default(),
            image_indexes: false,
        }
    }
}

impl SetupOptions {
    /// Tracks every table of these schemas, including tables created later.
    #[must_use]
    pub fn schemas<S: Into<String>>(mut self, schemas: impl IntoIterator<Item = S>) -> Self {
        self.tracked = Tracked::Schemas(schemas.into_iter().map(Into::into).collect());
        self
    }

    /// Tracks exactly these tables.
    #[must_use]
    pub fn tables(mut self, tables: impl IntoIterator<Item = QualifiedName>) -> Self {
        self.tracked = Tracked::Tables(tables.into_iter().collect());
        self
    }

    /// Adds the table of an [`crate::Audited`] model to the tracked tables: declaring models
    /// `#[derive(Audited)]` is how selective tracking is set up. The first call replaces the
    /// default (every table of schema `public`) with exactly the models' tables.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidIdentifier`] when the model's schema or table name is invalid.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bemi_core::setup::{SetupOptions, Tracked};
    /// # struct Todo;
    /// # impl bemi_core::Audited for Todo {
    /// #     type Key = i32; const SCHEMA: &'static str = "public"; const TABLE: &'static str = "todo";
    /// #     const PRIMARY_KEY: &'static [&'static str] = &["id"]; const IGNORED: &'static [&'static str] = &[];
    /// #     const REDACTED: &'static [&'static str] = &[];
    /// #     fn key(&self) -> i32 { 1 }
    /// #     fn from_row(_: &bemi_core::Image) -> bemi_core::Result<Self> { Ok(Todo) }
    /// # }
    /// let options = SetupOptions::default().audited::<Todo>()?;
    /// assert_eq!(options.tracked(), &Tracked::Tables(vec!["public.todo".parse()?]));
    /// # Ok::<(), bemi_core::Error>(())
    /// ```
    pub fn audited<M: crate::Audited>(mut self) -> Result<Self> {
        let table = M::table()?;
        let rules: Vec<(String, ColumnAction)> = [
            (M::REDACTED, ColumnAction::Redact),
            (M::IGNORED, ColumnAction::Drop),
            (M::NOISE, ColumnAction::Noise),
            (M::PERSONAL, ColumnAction::Personal),
        ]
        .into_iter()
        .flat_map(|(columns, action)| {
            columns
                .iter()
                .map(move |column| ((*column).to_owned(), action))
        })
        .collect();
        self.model_policies.retain(|(known, _)| *known != table);
        self.model_policies.push((table.clone(), rules));
        match &mut self.tracked {
            Tracked::Tables(tables) => {
                if !tables.contains(&table) {
                    tables.push(table);
                }
            }
            Tracked::Schemas(_) => self.tracked = Tracked::Tables(vec![table]),
        }
        Ok(self)
    }

    /// Where changes are stored (default `bemi.changes`).
    #[must_use]
    pub fn changes_table(mut self, table: QualifiedName) -> Self {
        self.changes_table = table;
        self
    }

    /// The publication name (default `bemi`).
    #[must_use]
    pub fn publication(mut self, name: impl Into<String>) -> Self {
        self.publication = name.into();
        self
    }

    /// The replication slot name (default `bemi`).
    #[must_use]
    pub fn slot(mut self, name: impl Into<String>) -> Self {
        self.slot = name.into();
        self
    }

    /// Gives the audit tables (`changes`, `worker_progress`, `rejected`, `column_policies`) to a
    /// dedicated role, so that neither the audited application's role nor the worker's can
    /// delete audit rows or rewrite policies. Setup must run as a superuser or a member of the
    /// role. bemi's functions and schema stay with the role running setup: the event trigger,
    /// which runs as a superuser, must only call code that no other role can change.
    #[must_use]
    pub fn owner_role(mut self, role: impl Into<String>) -> Self {
        self.owner_role = Some(role.into());
        self
    }

    /// Whether DDL events (`Operation::Ddl` changes) keep the text of the statement that made
    /// them (default: yes, capped at 64 KiB). Turn it off when migrations may hold secrets
    /// (e.g. a default value): the events keep their command, shapes and context.
    #[must_use]
    pub fn ddl_statements(mut self, record: bool) -> Self {
        self.ddl_statements = record;
        self
    }

    /// How a new `changes` table is partitioned by `committed_at` (default: one partition per
    /// month, created ahead by the worker; see [`Partitioning`]). An existing table keeps its
    /// layout: `bemi-worker partition-changes` converts one while the worker runs.
    #[must_use]
    pub fn partitioning(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = partitioning;
        self
    }

    /// Whether `before` and `after` images get GIN indexes (`jsonb_path_ops`), so that
    /// [`crate::ChangeQuery::before_contains`] and [`crate::ChangeQuery::after_contains`] find
    /// a rare value without reading every change in their range (default: no). They cost bytes
    /// on every change and time on every write (BENCHMARKS.md has both); without them, bound an
    /// image search by table, key or time. Set on an existing table, setup builds them in one
    /// statement that holds the worker's writes until it is done.
    #[must_use]
    pub fn image_indexes(mut self, index: bool) -> Self {
        self.image_indexes = index;
        self
    }

    /// Whether the images get GIN indexes (see [`SetupOptions::image_indexes`]).
    pub fn indexes_images(&self) -> bool {
        self.image_indexes
    }

    /// How a new `changes` table is partitioned (see [`SetupOptions::partitioning`]).
    pub fn partitioning_of_changes(&self) -> Partitioning {
        self.partitioning
    }

    /// Whether DDL events keep their statement's text (see [`SetupOptions::ddl_statements`]).
    pub fn records_ddl_statements(&self) -> bool {
        self.ddl_statements
    }

    /// The role owning the audit tables, if one is set (see [`SetupOptions::owner_role`]).
    pub fn owner_role_name(&self) -> Option<&str> {
        self.owner_role.as_deref()
    }

    /// The column policies of the models given to [`SetupOptions::audited`], by table.
    pub fn model_policies(&self) -> &[(QualifiedName, Vec<(String, ColumnAction)>)] {
        &self.model_policies
    }

    /// What is tracked.
    pub fn tracked(&self) -> &Tracked {
        &self.tracked
    }

    /// The changes table.
    pub fn changes_table_name(&self) -> &QualifiedName {
        &self.changes_table
    }

    /// The table that stores the changes the `changes` view shows (see
    /// [`stored_changes_table`]).
    pub fn stored_changes_table(&self) -> QualifiedName {
        stored_changes_table(&self.changes_table)
    }

    /// The publication name.
    pub fn publication_name(&self) -> &str {
        &self.publication
    }

    /// The replication slot name.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }
}

/// The SQL that installs and removes bemi, for given [`SetupOptions`].
///
/// # Examples
///
/// ```
/// use bemi_core::setup::{Setup, SetupOptions};
///
/// let setup = Setup::new(SetupOptions::default().schemas(["public", "sales"]))?;
/// assert!(setup.source_sql().contains("CREATE OR REPLACE FUNCTION bemi.emit_context()"));
/// assert!(setup.destination_sql().contains("CREATE TABLE IF NOT EXISTS \"bemi\".\"changes_stored\""));
/// assert!(setup.destination_sql().contains("CREATE OR REPLACE VIEW \"bemi\".\"changes\""));
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Setup {
    options: SetupOptions,
}

impl Setup {
    /// Validates the options.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidIdentifier`] when a schema, publication or slot name is empty or
    /// contains NUL.
    pub fn new(options: SetupOptions) -> Result<Self> {
        crate::ident::quote_ident(&options.publication)?;
        crate::ident::quote_ident(&options.slot)?;
        // The stored table's partitions are named `<name>_stored_p20261201` (prefixed with
        // `<schema>_` outside schema bemi).
        let changes = &options.changes_table;
        let prefix = if changes.schema() == BEMI_SCHEMA {
            0
        } else {
            changes.schema().len() + 1
        };
        let max = partitions::MAX_PARTITIONED_NAME_BYTES - STORED_SUFFIX.len();
        if prefix + changes.name().len() > max {
            return Err(crate::Error::ChangesNameTooLong {
                name: changes.to_string(),
                max,
            });
        }
        if let Some(role) = &options.owner_role {
            crate::ident::quote_ident(role)?;
        }
        if let Tracked::Schemas(schemas) = &options.tracked {
            for schema in schemas {
                crate::ident::quote_ident(schema)?;
            }
        }
        Ok(Self { options })
    }

    /// The options.
    pub fn options(&self) -> &SetupOptions {
        &self.options
    }

    /// The idempotent script that installs the triggers, functions, publication and tracking
    /// in the source database. Run it as one transaction (one `batch_execute`), after
    /// [`Setup::destination_sql`] when both databases are the same.
    pub fn source_sql(&self) -> String {
        source_sql::install(&self.options)
    }

    /// The idempotent script that creates the `changes` table, its indexes and the worker's
    /// progress table in the destination database.
    pub fn destination_sql(&self) -> String {
        destination_sql::install(
            &self.options.changes_table,
            self.options.owner_role.as_deref(),
            self.options.partitioning,
            self.options.image_indexes,
        )
    }

    /// Creates the replication slot (pgoutput) if it does not exist, and records the new slot as
    /// a new incarnation (see [`create_slot_sql`]). Run it after [`Setup::source_sql`] has
    /// committed.
    pub fn create_slot_sql(&self) -> String {
        create_slot_sql(&self.options.slot)
    }

    /// Drops the replication slot if it exists. Fails while a worker is connected to it.
    pub fn drop_slot_sql(&self) -> String {
        let slot = quote_literal(&self.options.slot);
        format!(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {slot}"
        )
    }

    /// Removes every object [`Setup::source_sql`] installed and restores each table's previous
    /// replica identity. Audit data in the `changes` table is not touched.
    pub fn teardown_source_sql(&self) -> String {
        source_sql::teardown(&self.options)
    }

    /// Drops the `changes` table (all audit data!) and the progress table.
    pub fn teardown_destination_sql(&self) -> String {
        destination_sql::teardown(&self.options.changes_table)
    }

    /// The privileges of a read-only role `role` (see [`ReaderGrants`]); run them after setup,
    /// as the owner of bemi's objects.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidIdentifier`] when `role` cannot be an identifier.
    pub fn reader_grants_sql(&self, role: &str) -> Result<ReaderGrants> {
        let role_literal = crate::quote_literal(role);
        let role = crate::quote_ident(role)?;
        let changes = &self.options.changes_table;
        let stored = stored_changes_table(changes);
        let mut destination = format!("GRANT USAGE ON SCHEMA bemi TO {role};\n");
        if changes.schema() != BEMI_SCHEMA {
            destination.push_str(&format!(
                "GRANT USAGE ON SCHEMA {} TO {role};\n",
                crate::quote_ident(changes.schema())?
            ));
        }
        destination.push_str(&format!(
            "GRANT SELECT ON {changes}, {stored} TO {role};\n\
             GRANT EXECUTE ON FUNCTION bemi.read_trail(text, jsonb) TO {role};\n\
             GRANT SELECT ON bemi.worker_progress, bemi.rejected, bemi.partitioned_changes, \
             bemi.retention_runs, bemi.seals, bemi.erasures TO {role};\n"
        ));
        // `status` counts the default partition's changes (ones that found no partition).
        destination.push_str(&format!(
            "DO $bemi$\n\
             DECLARE part regclass;\n\
             BEGIN\n    \
                 SELECT c.oid::regclass INTO part FROM pg_catalog.pg_inherits i\n    \
                 JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid\n    \
                 WHERE i.inhparent = {stored_literal}::regclass\n      \
                   AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';\n    \
                 IF part IS NOT NULL THEN\n        \
                     EXECUTE pg_catalog.format('GRANT SELECT ON %s TO %I', part, {role_literal});\n    \
                 END IF;\n\
             END\n\
             $bemi$;\n",
            stored_literal = stored.regclass_literal(),
        ));
        let source = format!(
            "GRANT USAGE ON SCHEMA bemi TO {role};\n\
             GRANT SELECT ON bemi.slot_incarnations, bemi.trail_gaps, bemi.erasure_requests TO {role};\n"
        );
        Ok(ReaderGrants {
            destination,
            source,
        })
    }

    /// The least privileges of the worker's role `role`, as GRANT statements, for the source
    /// and the destination database (run after setup, as the owner of bemi's objects). The
    /// role itself needs `LOGIN REPLICATION`; it needs no privilege on the tracked tables
    /// (logical decoding reads the WAL) and no superuser.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidIdentifier`] when `role` is empty or contains NUL.
    pub fn worker_grants_sql(&self, role: &str) -> Result<WorkerGrants> {
        let role = crate::quote_ident(role)?;
        let changes = &self.options.changes_table;
        let stored = stored_changes_table(changes);
        let changes_schema = crate::quote_ident(changes.schema())?;
        let source = format!(
            "GRANT USAGE ON SCHEMA bemi TO {role};\n\
             GRANT SELECT ON bemi.column_policies, bemi.schema_versions, bemi.erasure_requests TO {role};\n\
             GRANT SELECT, INSERT ON bemi.slot_incarnations TO {role};\n\
             GRANT SELECT, INSERT ON bemi.trail_gaps TO {role};\n\
             GRANT USAGE ON SEQUENCE bemi.trail_gaps_id_seq TO {role};\n"
        );
        let mut destination = format!("GRANT USAGE ON SCHEMA bemi TO {role};\n");
        if changes.schema() != BEMI_SCHEMA {
            destination.push_str(&format!(
                "GRANT USAGE ON SCHEMA {changes_schema} TO {role};\n"
            ));
        }
        destination.push_str(&format!(
            "GRANT SELECT ON {changes} TO {role};\n\
             GRANT SELECT, INSERT ON {stored} TO {role};\n\
             GRANT SELECT, INSERT, UPDATE ON bemi.worker_progress TO {role};\n\
             GRANT SELECT, INSERT ON bemi.rejected TO {role};\n\
             GRANT SELECT, INSERT ON bemi.schema_history TO {role};\n\
             GRANT SELECT ON bemi.partitioned_changes TO {role};\n\
             GRANT SELECT, INSERT ON bemi.seals TO {role};\n\
             GRANT SELECT, INSERT ON bemi.erasures TO {role};\n\
             GRANT USAGE ON SEQUENCE bemi.erasures_sequence_seq TO {role};\n\
             GRANT UPDATE (\"before\", \"after\", after_changed, context, personal) ON {stored} TO {role};\n\
             GRANT EXECUTE ON FUNCTION bemi.create_change_partitions(text, timestamptz) TO {role};\n"
        ));
        Ok(WorkerGrants {
            role_sql: format!("CREATE ROLE {role} LOGIN REPLICATION PASSWORD '...';\n"),
            source,
            destination,
        })
    }
}

/// The privileges of a role that only reads the trail (`bemi-worker console`, an auditor's SQL
/// client), as GRANT statements: the `changes` view and the table behind it, the read function,
/// and what `status` reads; nothing that writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderGrants {
    /// GRANTs in the destination database (the trail).
    pub destination: String,
    /// GRANTs in the source database (the slot's incarnations and recorded gaps, for health).
    pub source: String,
}

/// The suffix of the table that stores the changes shown by the `changes` view.
pub const STORED_SUFFIX: &str = "_stored";

/// The table that stores the changes the `changes` view shows (`changes` with
/// [`STORED_SUFFIX`], in the same schema): compact images and contexts, see
/// [`Setup::destination_sql`]. The worker writes it; retention, partitions and archives work on
/// it; reads go through the view.
pub fn stored_changes_table(changes: &QualifiedName) -> QualifiedName {
    QualifiedName::new(
        changes.schema(),
        format!("{}{STORED_SUFFIX}", changes.name()),
    )
    .unwrap_or_else(|_| changes.clone())
}

/// Creates the replication slot `slot` (pgoutput) unless it exists, and records the new slot in
/// `bemi.slot_incarnations`: a slot created again (after a restore from a base backup, a failover
/// without slots, a teardown and setup) starts a new incarnation, whose commit positions may
/// repeat those of an earlier one. The worker keys its progress and change ids by incarnation,
/// so nothing is skipped and nothing collides. One transaction of its own.
pub fn create_slot_sql(slot: &str) -> String {
    let slot = quote_literal(slot);
    // The slot is created by a plain SELECT: called from PL/pgSQL, slot creation that has to
    // wait for running transactions failed now and then with "snapshot reference ... is not
    // owned by resource owner". One transaction, so a created slot always has its incarnation.
    format!(
        "BEGIN;\n\
         SELECT pg_catalog.set_config('bemi.slot_created', 'on', true),\n       \
                pg_catalog.pg_create_logical_replication_slot({slot}, 'pgoutput')\n\
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {slot});\n\
         DO $bemi$\n\
         BEGIN\n    \
             IF pg_catalog.current_setting('bemi.slot_created', true) = 'on' THEN\n        \
                 IF pg_catalog.to_regclass('bemi.slot_incarnations') IS NOT NULL THEN\n            \
                     INSERT INTO bemi.slot_incarnations (slot_name, created_lsn)\n            \
                     SELECT s.slot_name, s.confirmed_flush_lsn FROM pg_catalog.pg_replication_slots s\n            \
                     WHERE s.slot_name = {slot};\n        \
                 END IF;\n        \
                 -- The tracked tables' shapes, now in the new slot's stream.\n        \
                 IF pg_catalog.to_regprocedure('bemi.record_schema(oid, text)') IS NOT NULL THEN\n            \
                     BEGIN\n                \
                         PERFORM bemi.record_schema(t.relid, 'slot created') FROM bemi.tracked_tables t;\n            \
                     EXCEPTION WHEN insufficient_privilege THEN\n                \
                         RAISE NOTICE 'bemi could not record the tracked tables'' shapes for the new slot (%): run bemi-worker setup', SQLERRM;\n            \
                     END;\n        \
                 END IF;\n    \
             END IF;\n\
         END\n\
         $bemi$;\n\
         COMMIT;\n"
    )
}

/// The rule choosing a table's key, shared by setup's recorded shapes and the worker's catalog:
/// the primary key, else the replica identity index, else the smallest unique index on plain
/// NOT NULL columns; key columns only (INCLUDE columns are not part of a key). One row
/// (`columns` int2[], `key_count`) for the relation `relation`, an SQL expression of type `oid`.
#[doc(hidden)]
pub fn key_index_sql(relation: &str) -> String {
    format!(
        "SELECT i.indkey::int2[] AS columns, i.indnkeyatts AS key_count \
         FROM pg_catalog.pg_index i \
         WHERE i.indrelid = {relation} AND i.indisvalid \
           AND (i.indisprimary OR i.indisreplident \
                OR (i.indisunique AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute x \
                        WHERE x.attrelid = i.indrelid \
                          AND x.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
                          AND NOT x.attnotnull))) \
         ORDER BY CASE WHEN i.indisprimary THEN 0 WHEN i.indisreplident THEN 1 ELSE 2 END, \
                  i.indnkeyatts, i.indexrelid \
         LIMIT 1"
    )
}

/// The statements giving the worker's role its least privileges (see
/// [`Setup::worker_grants_sql`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerGrants {
    /// Creating the role (its password left for the DBA to fill in).
    pub role_sql: String,
    /// GRANTs in the source database.
    pub source: String,
    /// GRANTs in the destination database.
    pub destination: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_names() {
        assert!(Setup::new(SetupOptions::default().publication("")).is_err());
        assert!(Setup::new(SetupOptions::default().slot("a\0")).is_err());
        assert!(Setup::new(SetupOptions::default().schemas([""])).is_err());
    }

    #[test]
    fn slot_sql_quotes_the_name() {
        let setup = Setup::new(SetupOptions::default().slot("it's")).unwrap();
        assert!(setup.create_slot_sql().contains("'it''s'"));
        assert!(setup.drop_slot_sql().contains("'it''s'"));
    }
}
