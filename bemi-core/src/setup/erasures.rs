//! The erasures carried out (destination): one row per erasure request the worker reached in
//! the stream (`bemi.erasure_requests` in the source, written by `bemi-worker erase`). The
//! worker erases the subject's personal values from every stored change when it stores the
//! request, and from every change of the subject it stores after it.
//!
//! | column | holds |
//! | --- | --- |
//! | `request` | the id of the request's own change in the `changes` table (the audited event) |
//! | `sequence` | the order in which erasures were recorded (writers catch up with new ones by it) |
//! | `database`, `request_id` | the source database and the request's id there |
//! | `schema_name`, `table_name`, `key` | the subject: a row of a table, by its stored primary key |
//! | `context_key` | the context key naming the subject (e.g. `user_id`), whose personal context values are erased too |
//! | `reason`, `requested_by`, `requested_at` | why, which database role asked, and when |
//! | `changes`, `erased_at` | how many stored changes held values erased when it was carried out, and when |

/// The erasures table, in the destination.
pub(super) const INSTALL: &str = r#"
CREATE TABLE IF NOT EXISTS bemi.erasures (
    request uuid PRIMARY KEY,
    sequence bigserial NOT NULL UNIQUE,
    database text NOT NULL,
    request_id bigint NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    key text NOT NULL,
    context_key text,
    reason text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL,
    changes integer NOT NULL DEFAULT 0,
    erased_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    UNIQUE (database, request_id)
);
"#;
