//! SQL installed in the source database: context emission, tracking, publication.

use super::{SetupOptions, Tracked, stored_changes_table};
use crate::ident::{quote_ident, quote_literal};

/// Declarations and statements that set `payload` to the running statement's context: the
/// payload of the `/*Bemi ... Bemi*/` comment ending its text, else the transaction-local
/// `bemi.context` setting, else `''`. Inlined in the row trigger (which app roles run without
/// any privilege on schema `bemi`) and in `bemi.statement_context()` (for the event triggers).
const STATEMENT_CONTEXT_DECLARATIONS: &str = r#"    query text := pg_catalog.rtrim(pg_catalog.current_query(), E' \t\r\n;');
    found integer;
    rest text;
    next integer;
    payload text := '';
"#;
const STATEMENT_CONTEXT_STATEMENTS: &str = r#"    -- Only a comment that ends the statement's text counts (clients append it last): a
    -- `/*Bemi ... Bemi*/` inside a string literal or earlier in the text is data, not context.
    IF pg_catalog.right(query, 7) OPERATOR(pg_catalog.=) ' Bemi*/' THEN
        found := pg_catalog.strpos(query, '/*Bemi ');
        IF found OPERATOR(pg_catalog.>) 0 THEN
            -- The payload of the last /*Bemi ... Bemi*/ comment.
            rest := pg_catalog.substr(query, found OPERATOR(pg_catalog.+) 7);
            next := pg_catalog.strpos(rest, '/*Bemi ');
            WHILE next OPERATOR(pg_catalog.>) 0 LOOP
                rest := pg_catalog.substr(rest, next OPERATOR(pg_catalog.+) 7);
                next := pg_catalog.strpos(rest, '/*Bemi ');
            END LOOP;
            IF pg_catalog.length(rest) OPERATOR(pg_catalog.>=) 7 THEN
                payload := pg_catalog.left(rest, pg_catalog.length(rest) OPERATOR(pg_catalog.-) 7);
            END IF;
            -- Several statements in one query, an earlier one ending with its own comment
            -- (`A /*Bemi x Bemi*/; B /*Bemi y Bemi*/`): which statement is running cannot be
            -- told from the text, so none gets a context rather than maybe the wrong one.
            IF pg_catalog.length(query) OPERATOR(pg_catalog.>)
                    ((pg_catalog.length(rest) OPERATOR(pg_catalog.+) found) OPERATOR(pg_catalog.+) 6)
                AND (pg_catalog.left(query, pg_catalog.length(query) OPERATOR(pg_catalog.-) pg_catalog.length(rest))
                    OPERATOR(pg_catalog.~) ' Bemi\*/[[:space:]]*;') THEN
                payload := '{"_bemi":{"ambiguous_context":"several statements with context comments in one query"}}';
            END IF;
        END IF;
    END IF;
    IF payload OPERATOR(pg_catalog.=) '' THEN
        payload := COALESCE(pg_catalog.current_setting('bemi.context', true), '');
    END IF;
"#;

/// `bemi.statement_context()` and `bemi.emit_statement_context()`, for the event triggers, and
/// the statement trigger's function.
/// The trigger function has no `SET search_path` clause: it runs with the rights
/// of the statement's author (so a search path cannot grant anything), and names every function
/// and operator with its schema. Measured per single-row INSERT (server CPU, PostgreSQL 15, this
/// project's 2-core machine): plain 3.4 µs; untagged +1.9 µs; tagged +5 µs. A `WHEN` clause on
/// the trigger, which PostgreSQL deserialises and compiles for every statement, cost more than
/// entering PL/pgSQL: +6.5 µs untagged, +14.5 µs tagged with this body.
const EMIT_CONTEXT: &str = r#"
CREATE OR REPLACE FUNCTION bemi.statement_context() RETURNS text
LANGUAGE plpgsql STABLE AS $bemi$
DECLARE
@CONTEXT_DECLARATIONS@BEGIN
@CONTEXT_STATEMENTS@    RETURN payload;
END
$bemi$;

CREATE OR REPLACE FUNCTION bemi.emit_statement_context() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    payload text := bemi.statement_context();
BEGIN
    IF payload <> '' THEN
        PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi', payload);
        PERFORM pg_catalog.set_config('bemi.context_active', 'on', true);
    ELSIF pg_catalog.current_setting('bemi.context_active', true) = 'on' THEN
        -- An earlier statement of this transaction had a context: clear it for this one.
        PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi', '');
        PERFORM pg_catalog.set_config('bemi.context_active', 'off', true);
    END IF;
END
$bemi$;

CREATE OR REPLACE FUNCTION bemi.emit_context() RETURNS trigger
LANGUAGE plpgsql AS $bemi$
DECLARE
@CONTEXT_DECLARATIONS@    emitted pg_catalog.pg_lsn;
    ignored text;
BEGIN
@CONTEXT_STATEMENTS@    IF payload OPERATOR(pg_catalog.<>) '' THEN
        emitted := pg_catalog.pg_logical_emit_message(true, '_bemi', payload);
        IF pg_catalog.current_setting('bemi.context_active', true) IS DISTINCT FROM 'on' THEN
            ignored := pg_catalog.set_config('bemi.context_active', 'on', true);
        END IF;
    ELSIF pg_catalog.current_setting('bemi.context_active', true) OPERATOR(pg_catalog.=) 'on' THEN
        -- An earlier statement of this transaction had a context: clear it for this one.
        emitted := pg_catalog.pg_logical_emit_message(true, '_bemi', '');
        ignored := pg_catalog.set_config('bemi.context_active', 'off', true);
    END IF;
    RETURN NULL;
END
$bemi$;
"#;

const IS_EXCLUDED: &str = r#"
CREATE OR REPLACE FUNCTION bemi.is_excluded(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $bemi$
    SELECT COALESCE((
        SELECT n.nspname IN ('bemi', 'pg_catalog', 'information_schema', 'pg_toast')
            OR n.nspname LIKE 'pg\_temp\_%'
            OR n.nspname LIKE 'pg\_toast\_temp\_%'
            OR c.relpersistence <> 'p'
            -- The table of stored changes and its partitions (created later, by the worker).
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_partition_ancestors(c.oid) a
                       WHERE a.relid = pg_catalog.to_regclass(@CHANGES_TABLE@))
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = rel
    ), true)
$bemi$;
"#;

const TRACK_TABLE: &str = r#"
CREATE OR REPLACE FUNCTION bemi.track_table(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    rel record;
BEGIN
    SELECT c.relkind, c.relreplident INTO rel FROM pg_catalog.pg_class c WHERE c.oid = target;
    IF rel.relkind IS NULL OR rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'bemi can only track tables, and % is not one', target;
    END IF;
    IF bemi.is_excluded(target) THEN
        RAISE EXCEPTION 'bemi does not track %: it is a system, temporary or unlogged table, or bemi''s own', target;
    END IF;
    -- Forget tables that were dropped, so a reused OID starts afresh.
    DELETE FROM bemi.tracked_tables t
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.relid);
    INSERT INTO bemi.tracked_tables (relid, previous_replica_identity, previous_identity_index)
    SELECT target, rel.relreplident,
        (SELECT i.indexrelid FROM pg_catalog.pg_index i WHERE i.indrelid = target AND i.indisreplident)
    ON CONFLICT (relid) DO NOTHING;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = target AND t.tgname = '_bemi_context'
    ) THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER _bemi_context BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION bemi.emit_context()',
            target);
    END IF;
    -- ALWAYS: the trigger also fires under session_replication_role = replica, which would
    -- otherwise let a later untagged statement inherit the previous statement's context.
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = target AND t.tgname = '_bemi_context' AND t.tgenabled <> 'A'
    ) THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER _bemi_context', target);
    END IF;
    IF rel.relreplident <> 'f' THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY FULL', target);
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
        WHERE p.pubname = @PUBLICATION@ AND pr.prrelid = target
    ) THEN
        EXECUTE pg_catalog.format('ALTER PUBLICATION %I ADD TABLE %s', @PUBLICATION@, target);
    END IF;
    -- The table's shape from here on, in the stream (see RECORD_SCHEMA).
    PERFORM bemi.record_schema(target, 'track');
END
$bemi$;
"#;

/// Records a tracked table's shape in `bemi.schema_versions`, a published table: the row travels
/// in the WAL at the position of the change of shape, so the worker renders every change with
/// the key its table had then, however late it reads it (after a rename, a new key, a drop).
/// The key is chosen as the worker chooses it: the primary key, else the replica identity
/// index, else the smallest unique index on plain NOT NULL columns; key columns only.
/// Each column also records how its values become JSON (`kind`: a built-in type's OID after
/// resolving domains, `[` + delimiter + the element's kind for arrays), so values of an enum or
/// domain dropped before the worker reads the change keep their JSON type.
const RECORD_SCHEMA: &str = r#"
CREATE OR REPLACE FUNCTION bemi.value_kind(type_id oid, depth integer DEFAULT 0) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $bemi$
    SELECT CASE
        WHEN t.oid IS NULL OR depth > 16 THEN '25'
        WHEN t.typtype = 'd' AND t.typbasetype <> 0 THEN bemi.value_kind(t.typbasetype, depth + 1)
        WHEN t.typcategory = 'A' AND t.typelem <> 0
            THEN '[' || e.typdelim::text || bemi.value_kind(t.typelem, depth + 1)
        ELSE t.oid::text
    END
    FROM (SELECT type_id AS id) x
    LEFT JOIN pg_catalog.pg_type t ON t.oid = x.id
    LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
$bemi$;

-- The text of the DDL statement running (without bemi's context comment, capped at 64 KiB),
-- or NULL when setup was told not to keep statements. Called from the event triggers.
CREATE OR REPLACE FUNCTION bemi.ddl_statement() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $bemi$
    SELECT CASE WHEN length(s.text) > 65536 THEN left(s.text, 65536) || ' ...(cut)' ELSE s.text END
    FROM (SELECT pg_catalog.regexp_replace(pg_catalog.current_query(),
                 '[[:space:]]*/[*]Bemi .* Bemi[*]/[[:space:];]*$', '') AS text) s
    WHERE @RECORD_DDL_STATEMENTS@
$bemi$;

CREATE OR REPLACE FUNCTION bemi.record_schema(rel oid, command text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $bemi$
    INSERT INTO bemi.schema_versions (relid, schema_name, table_name, key, columns, command,
                                      partition_root, replica_identity, statement)
    SELECT c.oid, n.nspname, c.relname,
        COALESCE((
            SELECT pg_catalog.jsonb_agg(a.attname ORDER BY pg_catalog.array_position(k.columns, a.attnum))
            FROM (@KEY_INDEX@) k
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.columns[0:k.key_count - 1])
        ), '[]'),
        COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
                       'kind', bemi.value_kind(a.atttypid))
                   ORDER BY a.attnum)
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        ), '[]'),
        command,
        COALESCE((
            SELECT pg_catalog.jsonb_build_object('schema', rn.nspname, 'table', r.relname)
            FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
            WHERE r.oid = pg_catalog.pg_partition_root(c.oid) AND r.oid <> c.oid
        ), 'false'),
        CASE c.relreplident WHEN 'd' THEN 'default' WHEN 'f' THEN 'full' WHEN 'i' THEN 'index'
            ELSE 'nothing' END,
        -- Recorded by the event trigger (not by setup or a new slot): the statement's text.
        CASE WHEN pg_catalog.current_setting('bemi.recording_ddl', true) = 'on'
            THEN bemi.ddl_statement() END
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$bemi$;
"#;

/// Event-trigger functions recording the shape of tracked tables after DDL, and their drops.
const RECORD_DDL: &str = r#"
CREATE OR REPLACE FUNCTION bemi.record_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    changed record;
    part oid;
    by_schema boolean := EXISTS (SELECT 1 FROM bemi.tracked_schemas);
    in_tracked_schema boolean;
    ignored text;
BEGIN
    -- The DDL this function runs itself (tracking a table alters it) is not recorded again.
    IF pg_catalog.current_setting('bemi.recording_ddl', true) = 'on' THEN
        RETURN;
    END IF;
    ignored := pg_catalog.set_config('bemi.recording_ddl', 'on', true);
    -- The shapes recorded below carry the statement's context: the trail shows who changed
    -- a table.
    PERFORM bemi.emit_statement_context();
    -- One record per table and statement, under the statement's command (a CREATE TABLE also
    -- reports its index and sequence; an ALTER TABLE, each subcommand).
    FOR changed IN
        SELECT DISTINCT COALESCE(
                   (SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = d.objid),
                   d.objid) AS relid,
               TG_TAG AS command_tag
        FROM pg_catalog.pg_event_trigger_ddl_commands() d
        WHERE d.classid = 'pg_catalog.pg_class'::regclass
    LOOP
        in_tracked_schema := EXISTS (
            SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = changed.relid AND c.relkind IN ('r', 'p')
              AND n.nspname IN (SELECT s.schema_name FROM bemi.tracked_schemas s));
        IF EXISTS (SELECT 1 FROM bemi.tracked_tables t WHERE t.relid = changed.relid) THEN
            IF bemi.is_excluded(changed.relid) OR (by_schema AND NOT in_tracked_schema) THEN
                -- Made unlogged, or moved out of the tracked schemas: no longer tracked, and
                -- the trail says so.
                PERFORM bemi.untrack_table(changed.relid);
                PERFORM bemi.record_schema(changed.relid, changed.command_tag || ' (untracked)');
            ELSE
                PERFORM bemi.record_schema(changed.relid, changed.command_tag);
                -- A partitioned table's change (attach, detach, rename) can change under
                -- which table its partitions, current and just detached, are reported.
                FOR part IN
                    SELECT t.relid FROM bemi.tracked_tables t
                    WHERE t.relid <> changed.relid
                      AND EXISTS (SELECT 1 FROM pg_catalog.pg_class pc
                                  WHERE pc.oid = changed.relid AND pc.relkind = 'p')
                      AND (t.relid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(changed.relid) p)
                           OR (SELECT v.partition_root FROM bemi.schema_versions v
                               WHERE v.relid = t.relid ORDER BY v.id DESC LIMIT 1)
                              = (SELECT pg_catalog.jsonb_build_object('schema', rn.nspname, 'table', r.relname)
                                 FROM pg_catalog.pg_class r
                                 JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
                                 WHERE r.oid = changed.relid))
                LOOP
                    PERFORM bemi.record_schema(part, changed.command_tag);
                END LOOP;
            END IF;
        ELSIF in_tracked_schema AND NOT bemi.is_excluded(changed.relid) THEN
            -- Made logged, moved into a tracked schema, created there: tracked from now on,
            -- and the trail says by which statement.
            PERFORM bemi.track_table(changed.relid::regclass);
            PERFORM bemi.record_schema(changed.relid, changed.command_tag);
        END IF;
    END LOOP;
    ignored := pg_catalog.set_config('bemi.recording_ddl', 'off', true);
END
$bemi$;

CREATE OR REPLACE FUNCTION bemi.record_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    dropped record;
    first boolean := true;
BEGIN
    FOR dropped IN
        SELECT o.objid, o.schema_name, o.object_name
        FROM pg_catalog.pg_event_trigger_dropped_objects() o
        WHERE o.object_type = 'table' AND o.objid IN (SELECT t.relid FROM bemi.tracked_tables t)
    LOOP
        -- The drop is recorded with the statement's context (sql_drop fires before
        -- ddl_command_end, where record_ddl emits it).
        IF first THEN
            PERFORM bemi.emit_statement_context();
            first := false;
        END IF;
        INSERT INTO bemi.schema_versions (relid, schema_name, table_name, key, columns, command,
                                          dropped, statement)
        VALUES (dropped.objid, dropped.schema_name, dropped.object_name, '[]', '[]',
                TG_TAG, true, bemi.ddl_statement());
        DELETE FROM bemi.tracked_tables t WHERE t.relid = dropped.objid;
    END LOOP;
    -- Columns dropped by another statement than ALTER TABLE (which record_ddl records), e.g.
    -- DROP TYPE ... CASCADE: the table's shape changed, so it is recorded again.
    IF TG_TAG <> 'ALTER TABLE' THEN
        FOR dropped IN
            SELECT DISTINCT o.objid
            FROM pg_catalog.pg_event_trigger_dropped_objects() o
            WHERE o.object_type = 'table column'
              AND o.objid IN (SELECT t.relid FROM bemi.tracked_tables t)
              AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = o.objid)
        LOOP
            IF first THEN
                PERFORM bemi.emit_statement_context();
                first := false;
            END IF;
            PERFORM pg_catalog.set_config('bemi.recording_ddl', 'on', true);
            PERFORM bemi.record_schema(dropped.objid, TG_TAG);
            PERFORM pg_catalog.set_config('bemi.recording_ddl', 'off', true);
        END LOOP;
    END IF;
END
$bemi$;
"#;

const CREATE_RECORD_EVENT_TRIGGERS: &str = r#"
DO $bemi$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = '_bemi_record_ddl') THEN
        CREATE EVENT TRIGGER _bemi_record_ddl ON ddl_command_end
            EXECUTE FUNCTION bemi.record_ddl();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = '_bemi_record_drop') THEN
        CREATE EVENT TRIGGER _bemi_record_drop ON sql_drop
            EXECUTE FUNCTION bemi.record_drop();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'bemi could not create its DDL event triggers (%): the worker reads keys from the catalog when it processes a change, which is wrong for changes made before a later schema change; run the setup as a superuser', SQLERRM;
END
$bemi$;
"#;

const UNTRACK_TABLE: &str = r#"
CREATE OR REPLACE FUNCTION bemi.untrack_table(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    tracked record;
    index_name name;
    identity text;
BEGIN
    SELECT t.previous_replica_identity, t.previous_identity_index INTO tracked
    FROM bemi.tracked_tables t WHERE t.relid = rel;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = rel) THEN
        EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS _bemi_context ON %s', rel::regclass);
        IF EXISTS (
            SELECT 1 FROM pg_catalog.pg_publication_rel pr
            JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
            WHERE p.pubname = @PUBLICATION@ AND pr.prrelid = rel
        ) THEN
            EXECUTE pg_catalog.format('ALTER PUBLICATION %I DROP TABLE %s', @PUBLICATION@, rel::regclass);
        END IF;
        identity := CASE tracked.previous_replica_identity
            WHEN 'd' THEN 'DEFAULT'
            WHEN 'n' THEN 'NOTHING'
            WHEN 'i' THEN 'INDEX'
        END;
        IF identity = 'INDEX' THEN
            SELECT c.relname INTO index_name FROM pg_catalog.pg_class c
            WHERE c.oid = tracked.previous_identity_index;
            identity := CASE WHEN index_name IS NULL THEN 'DEFAULT'
                ELSE pg_catalog.format('USING INDEX %I', index_name) END;
        END IF;
        IF identity IS NOT NULL THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s REPLICA IDENTITY %s', rel::regclass, identity);
        END IF;
    END IF;
    DELETE FROM bemi.tracked_tables t WHERE t.relid = rel;
END
$bemi$;
"#;

const SYNC_TRACKING: &str = r#"
CREATE OR REPLACE FUNCTION bemi.sync_tracking(schemas name[], tables regclass[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    wanted oid[];
    rel oid;
BEGIN
    DELETE FROM bemi.tracked_tables t
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.relid);
    DELETE FROM bemi.tracked_schemas s WHERE NOT (s.schema_name = ANY (schemas));
    INSERT INTO bemi.tracked_schemas (schema_name)
    SELECT DISTINCT s FROM pg_catalog.unnest(schemas) AS s
    ON CONFLICT (schema_name) DO NOTHING;
    FOREACH rel IN ARRAY tables LOOP
        IF bemi.is_excluded(rel) THEN
            RAISE NOTICE 'bemi does not track %: it is a system, temporary or unlogged table, or bemi''s own', rel::regclass;
        END IF;
    END LOOP;
    SELECT COALESCE(pg_catalog.array_agg(c.oid ORDER BY c.oid), '{}') INTO wanted
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND (n.nspname = ANY (schemas) OR c.oid = ANY (tables::oid[]))
      AND NOT bemi.is_excluded(c.oid);
    FOR rel IN SELECT t.relid FROM bemi.tracked_tables t WHERE NOT (t.relid = ANY (wanted)) LOOP
        PERFORM bemi.untrack_table(rel);
    END LOOP;
    FOREACH rel IN ARRAY wanted LOOP
        PERFORM bemi.track_table(rel::regclass);
    END LOOP;
END
$bemi$;
"#;

const TRACK_NEW_TABLES: &str = r#"
CREATE OR REPLACE FUNCTION bemi.track_new_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $bemi$
DECLARE
    created record;
BEGIN
    FOR created IN
        SELECT DISTINCT d.objid, d.command_tag
        FROM pg_catalog.pg_event_trigger_ddl_commands() d
        WHERE d.object_type = 'table'
          AND d.schema_name IN (SELECT s.schema_name FROM bemi.tracked_schemas s)
    LOOP
        IF NOT bemi.is_excluded(created.objid) THEN
            PERFORM bemi.track_table(created.objid::regclass);
            -- The rows the statement itself wrote were not published yet: recorded as the
            -- statement's CREATE changes.
            IF created.command_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
                -- With the statement's context.
                PERFORM bemi.emit_statement_context();
                PERFORM bemi.emit_rows(created.objid::regclass, true);
            END IF;
        END IF;
    END LOOP;
END
$bemi$;
"#;

const CREATE_EVENT_TRIGGER: &str = r#"
DO $bemi$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = '_bemi_track_new_tables'
    ) THEN
        CREATE EVENT TRIGGER _bemi_track_new_tables ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
            EXECUTE FUNCTION bemi.track_new_tables();
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'bemi could not create event trigger _bemi_track_new_tables (%): tables created later are not tracked automatically; run the setup again after creating tables, or run it as a superuser', SQLERRM;
END
$bemi$;
"#;

const CREATE_PUBLICATION: &str = r#"
DO $bemi$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = @PUBLICATION@) THEN
        EXECUTE pg_catalog.format(
            'CREATE PUBLICATION %I WITH (publish = %L)',
            @PUBLICATION@, 'insert, update, delete, truncate');
    END IF;
END
$bemi$;
"#;

/// Records every row of a table as `_bemi_snapshot` / `_bemi_snapshot_row` logical messages, for
/// `bemi-worker snapshot`. Locking the table in SHARE mode first (it waits for writers to
/// finish and blocks new ones until the caller's transaction ends) makes the rows read exactly
/// the state after every change committed before the messages and before every change after
/// them: the snapshot is consistent with the stream.
const SNAPSHOT_TABLE: &str = r#"
CREATE OR REPLACE FUNCTION bemi.emit_rows(target regclass, created boolean) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $bemi$
DECLARE
    header text;
    value_list text;
    emitted bigint;
BEGIN
    SELECT pg_catalog.json_build_object(
               'relation', c.oid::bigint,
               'created', created,
               'schema', n.nspname,
               'table', c.relname,
               'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, a.atttypid::bigint) ORDER BY a.attnum)
                           FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''))::text,
           (SELECT pg_catalog.string_agg(pg_catalog.format('%I::text', a.attname), ', ' ORDER BY a.attnum)
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
      INTO header, value_list
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    -- The proof first: the worker trusts the messages below only after it (see PROOF_TABLE).
    INSERT INTO bemi.message_proofs (kind) VALUES ('snapshot') ON CONFLICT DO NOTHING;
    PERFORM pg_catalog.pg_logical_emit_message(true, '_bemi_snapshot', header);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.count(pg_catalog.pg_logical_emit_message(true, %L, '
        'pg_catalog.array_to_json(ARRAY[%s]::text[])::text)) FROM ONLY %s',
        '_bemi_snapshot_row', COALESCE(value_list, ''), target)
      INTO emitted;
    RETURN emitted;
END
$bemi$;

CREATE OR REPLACE FUNCTION bemi.snapshot_table(target regclass) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $bemi$
BEGIN
    EXECUTE pg_catalog.format('LOCK TABLE %s IN SHARE MODE', target);
    RETURN bemi.emit_rows(target, false);
END
$bemi$;
"#;

/// bemi's own tables that travel in the stream: the proof table, whose inserts come ahead of the
/// messages they vouch for, the column policies, whose changes the worker applies from
/// their position on (and records, like any change: who changed a redaction is audit data), and
/// the erasure requests, which the worker carries out in the destination where the stream
/// reaches them (and records too: an erasure is itself audit data).
const PUBLISH_BEMI_TABLES: &str = r#"
DO $bemi$
DECLARE
    own regclass;
BEGIN
    FOREACH own IN ARRAY ARRAY['bemi.message_proofs'::regclass, 'bemi.column_policies'::regclass,
                               'bemi.schema_versions'::regclass,
                               'bemi.erasure_requests'::regclass] LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_publication_rel pr
            JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
            WHERE p.pubname = @PUBLICATION@ AND pr.prrelid = own
        ) THEN
            EXECUTE pg_catalog.format('ALTER PUBLICATION %I ADD TABLE %s', @PUBLICATION@, own);
        END IF;
    END LOOP;
END
$bemi$;
"#;

const TEARDOWN: &str = r#"
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
DROP EVENT TRIGGER IF EXISTS _bemi_track_new_tables;
DROP EVENT TRIGGER IF EXISTS _bemi_record_ddl;
DROP EVENT TRIGGER IF EXISTS _bemi_record_drop;
DO $bemi$
DECLARE
    rel oid;
    leftover record;
BEGIN
    IF pg_catalog.to_regclass('bemi.tracked_tables') IS NOT NULL
        AND pg_catalog.to_regprocedure('bemi.untrack_table(oid)') IS NOT NULL
    THEN
        FOR rel IN SELECT t.relid FROM bemi.tracked_tables t LOOP
            PERFORM bemi.untrack_table(rel);
        END LOOP;
    END IF;
    -- Triggers whose bookkeeping is gone.
    FOR leftover IN
        SELECT t.tgname, t.tgrelid FROM pg_catalog.pg_trigger t
        WHERE t.tgfoid = pg_catalog.to_regprocedure('bemi.emit_context()')
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', leftover.tgname, leftover.tgrelid::regclass);
    END LOOP;
END
$bemi$;
DROP PUBLICATION IF EXISTS @PUBLICATION_IDENT@;
DROP FUNCTION IF EXISTS bemi.track_new_tables();
DROP FUNCTION IF EXISTS bemi.sync_tracking(name[], regclass[]);
DROP FUNCTION IF EXISTS bemi.track_table(regclass);
DROP FUNCTION IF EXISTS bemi.untrack_table(oid);
DROP FUNCTION IF EXISTS bemi.is_excluded(oid);
DROP FUNCTION IF EXISTS bemi.emit_context();
DROP FUNCTION IF EXISTS bemi.emit_statement_context();
DROP FUNCTION IF EXISTS bemi.statement_context();
DROP FUNCTION IF EXISTS bemi.snapshot_table(regclass);
DROP FUNCTION IF EXISTS bemi.emit_rows(regclass, boolean);
DROP TABLE IF EXISTS bemi.tracked_tables;
DROP TABLE IF EXISTS bemi.tracked_schemas;
DROP TABLE IF EXISTS bemi.column_policies;
DROP TABLE IF EXISTS bemi.erasure_requests;
DROP TABLE IF EXISTS bemi.message_proofs;
DROP TABLE IF EXISTS bemi.slot_incarnations;
DROP TABLE IF EXISTS bemi.trail_gaps;
DROP FUNCTION IF EXISTS bemi.record_ddl();
DROP FUNCTION IF EXISTS bemi.record_drop();
DROP FUNCTION IF EXISTS bemi.record_schema(oid, text);
DROP FUNCTION IF EXISTS bemi.value_kind(oid, integer);
DROP FUNCTION IF EXISTS bemi.ddl_statement();
DROP TABLE IF EXISTS bemi.schema_versions;
DO $bemi$
BEGIN
    DROP SCHEMA IF EXISTS bemi;
EXCEPTION WHEN dependent_objects_still_exist THEN
    NULL; -- the changes table or other objects live there: keep the schema
END
$bemi$;
"#;

/// The install script for the source database.
pub(super) fn install(options: &SetupOptions) -> String {
    let publication = quote_literal(&options.publication);
    let substitute = |template: &str| {
        template
            .replace("@PUBLICATION@", &publication)
            .replace(
                "@CHANGES_TABLE@",
                &stored_changes_table(&options.changes_table).regclass_literal(),
            )
            .replace(
                "@RECORD_DDL_STATEMENTS@",
                if options.records_ddl_statements() {
                    "true"
                } else {
                    "false"
                },
            )
            .replace("@KEY_INDEX@", &super::key_index_sql("c.oid"))
            .replace("@CONTEXT_DECLARATIONS@", STATEMENT_CONTEXT_DECLARATIONS)
            .replace("@CONTEXT_STATEMENTS@", STATEMENT_CONTEXT_STATEMENTS)
    };
    let (schemas, tables) = match &options.tracked {
        Tracked::Schemas(schemas) => (schemas.as_slice(), &[][..]),
        Tracked::Tables(tables) => (&[][..], tables.as_slice()),
    };
    let schemas_array = sql_array(schemas.iter().map(|schema| quote_literal(schema)), "name");
    let tables_array = sql_array(
        tables.iter().map(|table| table.regclass_literal()),
        "regclass",
    );

    let mut sql = String::new();
    sql.push_str("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n");
    sql.push_str("CREATE SCHEMA IF NOT EXISTS bemi;\n");
    sql.push_str(
        "CREATE TABLE IF NOT EXISTS bemi.tracked_schemas (schema_name name PRIMARY KEY);\n\
         CREATE TABLE IF NOT EXISTS bemi.tracked_tables (\n    \
             relid oid PRIMARY KEY,\n    \
             previous_replica_identity \"char\" NOT NULL,\n    \
             previous_identity_index oid\n\
         );\n\
         REVOKE ALL ON bemi.tracked_schemas, bemi.tracked_tables FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.column_policies (\n    \
             schema_name name NOT NULL,\n    \
             table_name name NOT NULL,\n    \
             column_name name NOT NULL,\n    \
             action text NOT NULL,\n    \
             PRIMARY KEY (schema_name, table_name, column_name, action)\n\
         );\n\
         ALTER TABLE bemi.column_policies DROP CONSTRAINT IF EXISTS column_policies_action_check;\n\
         ALTER TABLE bemi.column_policies ADD CONSTRAINT column_policies_action_check\n    \
             CHECK (action IN ('redact', 'drop', 'noise', 'personal'));\n\
         REVOKE ALL ON bemi.column_policies FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.erasure_requests (\n    \
             id bigserial PRIMARY KEY,\n    \
             schema_name name NOT NULL,\n    \
             table_name name NOT NULL,\n    \
             key text NOT NULL,\n    \
             context_key text,\n    \
             reason text NOT NULL CHECK (reason <> ''),\n    \
             requested_by name NOT NULL DEFAULT session_user,\n    \
             requested_at timestamptz NOT NULL DEFAULT pg_catalog.now()\n\
         );\n\
         REVOKE ALL ON bemi.erasure_requests FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.message_proofs (\n    \
             xid xid8 PRIMARY KEY DEFAULT pg_catalog.pg_current_xact_id(),\n    \
             kind text NOT NULL,\n    \
             created_at timestamptz NOT NULL DEFAULT pg_catalog.now()\n\
         );\n\
         REVOKE ALL ON bemi.message_proofs FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.slot_incarnations (\n    \
             slot_name name NOT NULL,\n    \
             incarnation uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),\n    \
             created_lsn pg_lsn NOT NULL,\n    \
             created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),\n    \
             PRIMARY KEY (slot_name, incarnation)\n\
         );\n\
         REVOKE ALL ON bemi.slot_incarnations FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.trail_gaps (\n    \
             id bigserial PRIMARY KEY,\n    \
             slot_name name NOT NULL,\n    \
             lost_incarnation uuid,\n    \
             lost_after_lsn pg_lsn,\n    \
             lost_after timestamptz,\n    \
             resumed_incarnation uuid,\n    \
             resumed_at_lsn pg_lsn NOT NULL,\n    \
             resumed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),\n    \
             reason text NOT NULL\n\
         );\n\
         REVOKE ALL ON bemi.trail_gaps FROM PUBLIC;\n\
         CREATE TABLE IF NOT EXISTS bemi.schema_versions (\n    \
             id bigserial PRIMARY KEY,\n    \
             relid oid NOT NULL,\n    \
             schema_name name NOT NULL,\n    \
             table_name name NOT NULL,\n    \
             key jsonb NOT NULL,\n    \
             columns jsonb NOT NULL,\n    \
             command text NOT NULL,\n    \
             dropped boolean NOT NULL DEFAULT false,\n    \
             recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now()\n\
         );\n\
         ALTER TABLE bemi.schema_versions ADD COLUMN IF NOT EXISTS partition_root jsonb;\n\
         ALTER TABLE bemi.schema_versions ADD COLUMN IF NOT EXISTS replica_identity text;\n\
         ALTER TABLE bemi.schema_versions ADD COLUMN IF NOT EXISTS statement text;\n\
         ALTER TABLE bemi.schema_versions ADD COLUMN IF NOT EXISTS recorded_lsn pg_lsn\n    \
             DEFAULT pg_catalog.pg_current_wal_insert_lsn();\n\
         REVOKE ALL ON bemi.schema_versions FROM PUBLIC;\n",
    );
    for (table, rules) in &options.model_policies {
        let rules: Vec<(&str, crate::policy::ColumnAction)> = rules
            .iter()
            .map(|(column, action)| (column.as_str(), *action))
            .collect();
        sql.push_str(&crate::policy::store_table_rules_sql(table, &rules));
    }
    for template in [
        EMIT_CONTEXT,
        IS_EXCLUDED,
        RECORD_SCHEMA,
        RECORD_DDL,
        TRACK_TABLE,
        UNTRACK_TABLE,
        SYNC_TRACKING,
        TRACK_NEW_TABLES,
        SNAPSHOT_TABLE,
        CREATE_PUBLICATION,
        PUBLISH_BEMI_TABLES,
    ] {
        sql.push_str(&substitute(template));
    }
    sql.push_str(
        "REVOKE ALL ON FUNCTION bemi.track_table(regclass), bemi.untrack_table(oid), \
         bemi.sync_tracking(name[], regclass[]), bemi.track_new_tables(), \
         bemi.snapshot_table(regclass) FROM PUBLIC;\n",
    );
    // Nothing of bemi's is anyone's by default: the trigger function needs no EXECUTE privilege
    // to fire, and the worker's role gets what it reads by explicit GRANTs.
    sql.push_str(
        "REVOKE ALL ON SCHEMA bemi FROM PUBLIC;\n\
         REVOKE ALL ON ALL FUNCTIONS IN SCHEMA bemi FROM PUBLIC;\n",
    );
    if let Some(role) = options
        .owner_role
        .as_deref()
        .and_then(|role| quote_ident(role).ok())
    {
        sql.push_str(&format!(
            "ALTER TABLE bemi.column_policies OWNER TO {role};\n\
             ALTER TABLE bemi.erasure_requests OWNER TO {role};\n"
        ));
    }
    sql.push_str(CREATE_RECORD_EVENT_TRIGGERS);
    if matches!(options.tracked, Tracked::Schemas(_)) {
        sql.push_str(CREATE_EVENT_TRIGGER);
    }
    sql.push_str(&format!(
        "SELECT bemi.sync_tracking({schemas_array}, {tables_array});\n"
    ));
    sql
}

/// The teardown script for the source database.
pub(super) fn teardown(options: &SetupOptions) -> String {
    // The publication name was validated by `Setup::new`.
    let publication = quote_ident(&options.publication).unwrap_or_default();
    TEARDOWN.replace("@PUBLICATION_IDENT@", &publication)
}

fn sql_array(items: impl Iterator<Item = String>, element_type: &str) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        format!("'{{}}'::{element_type}[]")
    } else {
        format!("ARRAY[{}]::{element_type}[]", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QualifiedName;

    #[test]
    fn schemas_mode_installs_the_event_trigger() {
        let sql = install(&SetupOptions::default().schemas(["public", "it's"]));
        assert!(sql.contains("CREATE EVENT TRIGGER _bemi_track_new_tables"));
        assert!(sql.contains(
            "SELECT bemi.sync_tracking(ARRAY['public', 'it''s']::name[], '{}'::regclass[]);"
        ));
        assert!(!sql.contains('@'), "every placeholder is substituted");
    }

    #[test]
    fn tables_mode_lists_quoted_tables() {
        let tables = [
            QualifiedName::new("public", "Order Items").unwrap(),
            QualifiedName::new("sales", "my-table").unwrap(),
        ];
        let sql = install(&SetupOptions::default().tables(tables));
        assert!(!sql.contains("CREATE EVENT TRIGGER _bemi_track_new_tables"));
        assert!(sql.contains(
            r#"SELECT bemi.sync_tracking('{}'::name[], ARRAY['"public"."Order Items"', '"sales"."my-table"']::regclass[]);"#
        ));
    }

    #[test]
    fn teardown_drops_the_named_publication() {
        let sql = teardown(&SetupOptions::default().publication("audit \"pub\""));
        assert!(sql.contains(r#"DROP PUBLICATION IF EXISTS "audit ""pub""";"#));
    }
}
