//! How a stored change is encoded for its seal (encoding 1): the change's row as PostgreSQL's
//! `COPY` text format writes it, with the session settings that make that text canonical
//! (`TimeZone` UTC, ISO dates), over every stored column but the storage time. `json` images
//! keep the worker's exact text and `jsonb` columns come out with sorted keys and exact
//! numbers, so the same stored change always gives the same bytes, and any edit of a column
//! that matters gives others.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The encoding this module implements, recorded with each seal.
pub(crate) const ENCODING: i16 = 1;

/// The sealed columns, in encoding order: the id first (it names the change).
const COLUMNS: &str = "id, database, schema, \"table\", operation, primary_key, \
    previous_primary_key, \"before\", \"after\", after_changed, context, committed_at, queued_at, \
    transaction_id, position, commit_lsn, sequence";

/// The index of `committed_at` among [`COLUMNS`].
const COMMITTED_AT: usize = 11;

/// Settings for the transaction that reads changes to seal or verify them.
pub(crate) const SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
    SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1";

/// The `COPY` of the changes of `database` in the stored table `stored`, in id order, with ids
/// within `lower` and `upper`, at most `limit`.
pub(crate) fn copy_query(
    stored: &str,
    database: &str,
    lower: Bound<Uuid>,
    upper: Bound<Uuid>,
    limit: Option<usize>,
) -> String {
    let mut sql = format!(
        "COPY (SELECT {COLUMNS} FROM {stored} WHERE database = {}",
        bemi_core::quote_literal(database)
    );
    for (bound, inclusive, exclusive) in [(lower, ">=", ">"), (upper, "<=", "<")] {
        match bound {
            Bound::Included(id) => sql.push_str(&format!(" AND id {inclusive} '{id}'")),
            Bound::Excluded(id) => sql.push_str(&format!(" AND id {exclusive} '{id}'")),
            Bound::Unbounded => {}
        }
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    sql.push_str(") TO STDOUT");
    sql
}

/// One change as read for sealing: its id, commit time and leaf hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub(crate) id: Uuid,
    /// The commit time as `COPY` wrote it, parsed only when asked ([`Leaf::committed_at`]):
    /// `verify` reads millions of changes and needs none of them.
    committed_at: [u8; 40],
    committed_at_length: u8,
    pub(crate) hash: [u8; 32],
}

impl Leaf {
    /// The leaf of one `COPY` line (without its newline); `None` when the line is not a change
    /// row of [`COLUMNS`].
    pub(crate) fn of_line(line: &[u8]) -> Option<Self> {
        let mut fields = line.split(|byte| *byte == b'\t');
        let id = Uuid::try_parse_ascii(fields.next()?).ok()?;
        let text = fields.nth(COMMITTED_AT - 1)?;
        let mut committed_at = [0_u8; 40];
        committed_at.get_mut(..text.len())?.copy_from_slice(text);
        let mut digest = Sha256::new();
        // RFC 6962's leaf prefix, then what the bytes are.
        digest.update([0_u8]);
        digest.update(b"bemi change v1\n");
        digest.update(line);
        Some(Self {
            id,
            committed_at,
            committed_at_length: u8::try_from(text.len()).ok()?,
            hash: digest.finalize().into(),
        })
    }

    /// The change's commit time; `None` when `COPY` wrote something else than a time.
    pub(crate) fn committed_at(&self) -> Option<DateTime<Utc>> {
        let text = std::str::from_utf8(
            self.committed_at
                .get(..usize::from(self.committed_at_length))?,
        )
        .ok()?;
        DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|time| time.with_timezone(&Utc))
    }
}

/// Splits `COPY` output into lines (a row never spans a line: newlines in values are escaped).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds a chunk of output; calls `line` for each complete line. The chunk is read in place
    /// when no partial line waits (PostgreSQL sends one row per message).
    pub(crate) fn feed(&mut self, chunk: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = chunk;
        if !self.pending.is_empty() {
            let Some(end) = rest.iter().position(|byte| *byte == b'\n') else {
                self.pending.extend_from_slice(rest);
                return;
            };
            self.pending.extend_from_slice(&rest[..end]);
            line(&self.pending);
            self.pending.clear();
            rest = &rest[end + 1..];
        }
        while let Some(end) = rest.iter().position(|byte| *byte == b'\n') {
            line(&rest[..end]);
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
    }

    /// Whether output ended in the middle of a line.
    pub(crate) fn is_partial(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"00000000-01a3-801f-8000-0000009b4ef5\tapp\tpublic\tdocs\tCREATE\t\"1\"\t\\N\t{}\t{\"id\":1}\t\\N\t{\"a\": 1}\t2026-12-06 00:47:11.123456+00\t2026-12-06 00:47:11.2+00\t7\t100\t27000000\t0";

    #[test]
    fn a_line_gives_its_id_time_and_a_hash_of_every_byte() {
        let leaf = Leaf::of_line(LINE).unwrap_or_else(|| panic!("a change line"));
        assert_eq!(leaf.id.to_string(), "00000000-01a3-801f-8000-0000009b4ef5");
        assert_eq!(
            leaf.committed_at().map(|at| at.to_rfc3339()).as_deref(),
            Some("2026-12-06T00:47:11.123456+00:00")
        );
        let mut edited = LINE.to_vec();
        let at = edited.iter().position(|byte| *byte == b'1').unwrap_or(0);
        edited[at] = b'2';
        let other = Leaf::of_line(&edited).map(|leaf| leaf.hash);
        assert_ne!(other, Some(leaf.hash));
        assert_eq!(Leaf::of_line(b"not a row"), None);
    }

    #[test]
    fn bounds_become_id_comparisons() {
        let id = Uuid::nil();
        let query = copy_query(
            "bemi.changes_stored",
            "it's",
            Bound::Excluded(id),
            Bound::Included(id),
            Some(5),
        );
        assert!(query.contains("WHERE database = 'it''s' AND id > '00000000-0000-0000-0000-000000000000' AND id <= '00000000-0000-0000-0000-000000000000' ORDER BY id LIMIT 5"), "{query}");
        let open = copy_query("s", "d", Bound::Unbounded, Bound::Unbounded, None);
        assert!(
            open.ends_with("WHERE database = 'd' ORDER BY id) TO STDOUT"),
            "{open}"
        );
    }

    #[test]
    fn lines_are_cut_whatever_the_chunks() {
        let text = b"one\ntwo\nthree\n";
        for size in 1..text.len() {
            let mut lines = Lines::default();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            for chunk in text.chunks(size) {
                lines.feed(chunk, |line| seen.push(line.to_vec()));
            }
            assert!(!lines.is_partial());
            assert_eq!(seen, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        }
    }
}
