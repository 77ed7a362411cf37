//! How a stored change is encoded for its seal: the change's row as PostgreSQL's `COPY` text
//! format writes it, with the session settings that make that text canonical (`TimeZone` UTC,
//! ISO dates), over every stored column but the storage time. `json` images keep the worker's
//! exact text and `jsonb` columns come out with sorted keys and exact numbers, so the same
//! stored change always gives the same bytes, and any edit of a column that matters gives
//! others.
//!
//! - A change without personal values (`personal` is NULL) is encoding 1: its leaf hashes the
//!   line of the other columns as it is.
//! - A change with personal values is encoding 2: in the line, each personal value's text is
//!   replaced by its commitment (computed from the value and its salt, or read from the marker
//!   that erasure left), and the list of places and keys is appended. The value itself is not
//!   covered, its commitment is: erasing it leaves the leaf as it was.
//!
//! Blocks sealed since personal values exist record encoding 2; `verify` reads both.

use std::borrow::Cow;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The encoding this module writes, recorded with each seal.
pub(crate) const ENCODING: i16 = 2;

/// The encodings this module reads (encoding 2 is encoding 1 for changes without personal
/// values, the only ones blocks of encoding 1 hold).
pub(crate) const KNOWN_ENCODINGS: [i16; 2] = [1, 2];

/// The sealed columns, in encoding order: the id first (it names the change).
const COLUMNS: &str = "id, database, schema, \"table\", operation, primary_key, \
    previous_primary_key, \"before\", \"after\", after_changed, context, committed_at, queued_at, \
    transaction_id, position, commit_lsn, sequence, personal";

/// The index of `committed_at` among [`COLUMNS`].
const COMMITTED_AT: usize = 11;

/// How many [`COLUMNS`] there are.
const COLUMN_COUNT: usize = 18;

/// Settings for the transaction that reads changes to seal or verify them: the ones that make
/// the text canonical, then plans that walk the indexes. Every read there is a range of ids or
/// a key; left alone, the planner reads a block's range with a bitmap scan and sorts its whole
/// rows (two fifths of PostgreSQL's work in `verify`, measured), and counts the few changes
/// after the last seal with a scan of the table when its statistics are stale.
pub(crate) const SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
    SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; \
    SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; \
    SET LOCAL enable_seqscan = off";

/// The `COPY` of the changes of `database` in the stored table `stored`, in id order, with ids
/// within `lower` and `upper`, at most `limit`; with `with_xmin`, each line ends with one more
/// field, the row version's `xmin` (see [`split_xmin`]).
pub(crate) fn copy_query(
    stored: &str,
    database: &str,
    lower: Bound<Uuid>,
    upper: Bound<Uuid>,
    limit: Option<usize>,
    with_xmin: bool,
) -> String {
    let xmin = if with_xmin { ", xmin" } else { "" };
    let mut sql = format!(
        "COPY (SELECT {COLUMNS}{xmin} FROM {stored} WHERE database = {}",
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

/// A line of a `COPY` with `xmin` cut into the change's line and the `xmin`; `None` when its last
/// field is not a transaction id.
pub(crate) fn split_xmin(line: &[u8]) -> Option<(&[u8], u32)> {
    let tab = memchr::memrchr(b'\t', line)?;
    let xmin = std::str::from_utf8(&line[tab + 1..]).ok()?.parse().ok()?;
    Some((&line[..tab], xmin))
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
        let (id, hash) = Self::identify(line)?;
        // From the end: the columns after it are short, the images before it are not.
        let text = line
            .rsplit(|byte| *byte == b'\t')
            .nth(COLUMN_COUNT - 1 - COMMITTED_AT)?;
        let mut committed_at = [0_u8; 40];
        committed_at.get_mut(..text.len())?.copy_from_slice(text);
        Some(Self {
            id,
            committed_at,
            committed_at_length: u8::try_from(text.len()).ok()?,
            hash,
        })
    }

    /// The id and leaf hash of one `COPY` line, without its commit time (what `verify` needs);
    /// `None` when the line does not start with a change id.
    pub(crate) fn identify(line: &[u8]) -> Option<(Uuid, [u8; 32])> {
        if line.get(36) != Some(&b'\t') {
            return None;
        }
        let id = Uuid::try_parse_ascii(line.get(..36)?).ok()?;
        let last_tab = memchr::memrchr(b'\t', line)?;
        let (rest, personal) = (&line[..last_tab], &line[last_tab + 1..]);
        let mut digest = Sha256::new();
        // RFC 6962's leaf prefix, then what the bytes are.
        digest.update([0_u8]);
        if personal == b"\\N" {
            digest.update(b"bemi change v1\n");
            digest.update(rest);
        } else if let Some(committed) = committed_line(rest, personal) {
            digest.update(b"bemi change v2\n");
            digest.update(committed);
        } else {
            // Personal values that do not match their change: a leaf of its own, which stays
            // the same for the same bytes (and differs from the leaf sealed if it was altered).
            digest.update(b"bemi change v2 unreadable\n");
            digest.update(line);
        }
        Some((id, digest.finalize().into()))
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

/// The committed form of a change with personal values (encoding 2): `rest` (the line's other
/// columns) with each personal value replaced by its commitment as a JSON string, then a
/// newline and the list of places and keys. `None` when the list or a value cannot be read.
fn committed_line(rest: &[u8], personal: &[u8]) -> Option<Vec<u8>> {
    use crate::erasure::personal::{commitment_of, from_stored, sealed_list, splice, value_ranges};
    use crate::erasure::{PersonalValue, Place};

    let values = from_stored(std::str::from_utf8(&unescape(personal)?).ok()?)?;
    let fields: Vec<&[u8]> = rest.split(|byte| *byte == b'\t').collect();
    let mut replaced: Vec<(usize, Vec<u8>)> = Vec::with_capacity(4);
    for (place, index) in [
        (Place::Before, BEFORE),
        (Place::After, BEFORE + 1),
        (Place::AfterChanged, BEFORE + 2),
        (Place::Context, BEFORE + 3),
    ] {
        if !values.iter().any(|value| value.place == place) {
            continue;
        }
        let bytes = unescape(fields.get(index)?)?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let here: Vec<&PersonalValue> =
            values.iter().filter(|value| value.place == place).collect();
        let keys: Vec<&str> = here.iter().map(|value| value.key.as_str()).collect();
        let ranges = value_ranges(text, &keys)?;
        let mut commitments = Vec::with_capacity(here.len());
        for (value, range) in here.iter().zip(&ranges) {
            let committed = commitment_of(value, text.get(range.clone())?)?;
            let mut quoted = [b'"'; 66];
            hex::encode_to_slice(committed, &mut quoted[1..65]).ok()?;
            commitments.push(quoted);
        }
        let quoted: Vec<&str> = commitments
            .iter()
            .map(|quoted| std::str::from_utf8(quoted).ok())
            .collect::<Option<_>>()?;
        let spliced = splice(text, ranges.into_iter().zip(quoted).collect())?;
        replaced.push((index, escape(&spliced).into_owned()));
    }
    let mut out = Vec::with_capacity(rest.len() + 64 * values.len());
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match replaced.iter().find(|(at, _)| *at == index) {
            Some((_, text)) => out.extend_from_slice(text),
            None => out.extend_from_slice(field),
        }
    }
    out.push(b'\n');
    out.extend_from_slice(sealed_list(&values).as_bytes());
    Some(out)
}

/// The index of `before` among [`COLUMNS`] (`after`, `after_changed` and `context` follow).
const BEFORE: usize = 7;

/// A `COPY` text field's value (borrowed when it holds no escape); `None` for NULL (`\N`) or an
/// escape `COPY` does not write.
fn unescape(field: &[u8]) -> Option<Cow<'_, [u8]>> {
    if field == b"\\N" {
        return None;
    }
    if memchr::memchr(b'\\', field).is_none() {
        return Some(Cow::Borrowed(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'v' => 0x0b,
            _ => return None,
        });
    }
    Some(Cow::Owned(out))
}

/// Text escaped so that it holds no tab or newline (a field of a committed line); borrowed when
/// nothing needs escaping.
fn escape(text: &str) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if memchr::memchr3(b'\\', b'\t', b'\n', bytes).is_none()
        && memchr::memchr(b'\r', bytes).is_none()
    {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    for &byte in bytes {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
    Cow::Owned(out)
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
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.pending.extend_from_slice(rest);
                return;
            };
            self.pending.extend_from_slice(&rest[..end]);
            line(&self.pending);
            self.pending.clear();
            rest = &rest[end + 1..];
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
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

    const LINE: &[u8] = b"00000000-01a3-801f-8000-0000009b4ef5\tapp\tpublic\tdocs\tCREATE\t\"1\"\t\\N\t{}\t{\"id\":1}\t\\N\t{\"a\": 1}\t2026-12-06 00:47:11.123456+00\t2026-12-06 00:47:11.2+00\t7\t100\t27000000\t0\t\\N";

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

    /// A line of a change whose `after` holds `email` (personal, with `values`' salt) and whose
    /// context holds `ip`, with `after` and `context` as given.
    fn personal_line(
        after: &str,
        context: &str,
        values: &[crate::erasure::PersonalValue],
    ) -> Vec<u8> {
        let personal = crate::erasure::personal::to_stored(values).unwrap_or_default();
        let mut line =
            b"00000000-01a3-801f-8000-0000009b4ef5\tapp\tpublic\tusers\tCREATE\t1\t\\N\t{}\t"
                .to_vec();
        line.extend_from_slice(&escape(after));
        line.extend(b"\t\\N\t");
        line.extend_from_slice(&escape(context));
        line.extend(
            b"\t2026-12-06 00:47:11.123456+00\t2026-12-06 00:47:11.2+00\t7\t100\t27000000\t0\t",
        );
        line.extend_from_slice(&escape(&personal));
        line
    }

    #[test]
    fn erasing_a_personal_value_keeps_the_leaf_and_editing_one_does_not() {
        use crate::erasure::{PersonalValue, Place, Texts, erase_values};
        let after = "{\"id\":1,\"email\":\"ann@x.org\",\"note\":\"a\\tb\"}";
        let context = r#"{"ip": "10.0.0.1", "user_id": 1}"#;
        let mut values = vec![
            PersonalValue::fresh(Place::After, "email"),
            PersonalValue::fresh(Place::Context, "ip"),
        ];
        let leaf = |after: &str, context: &str, values: &[PersonalValue]| {
            Leaf::of_line(&personal_line(after, context, values)).map(|leaf| leaf.hash)
        };
        let sealed = leaf(after, context, &values);
        assert!(sealed.is_some());
        let mut texts = Texts {
            after: Some(after.to_owned()),
            context: Some(context.to_owned()),
            ..Texts::default()
        };
        assert_eq!(erase_values(&mut texts, &mut values, |_| true), 2);
        let (erased_after, erased_context) = (
            texts.after.clone().unwrap_or_default(),
            texts.context.clone().unwrap_or_default(),
        );
        assert!(!erased_after.contains("ann@x.org") && !erased_context.contains("10.0.0.1"));
        assert_eq!(leaf(&erased_after, &erased_context, &values), sealed);
        // Another value, another salt, a forged marker, a dropped entry: another leaf.
        let mut fresh = vec![
            PersonalValue::fresh(Place::After, "email"),
            PersonalValue::fresh(Place::Context, "ip"),
        ];
        assert_ne!(leaf(&after.replace("ann", "bob"), context, &fresh), sealed);
        fresh[0].salt = values[0].salt;
        assert_ne!(leaf(after, context, &fresh), sealed);
        let at = erased_after.find("\"bemi_erased\": \"").unwrap_or(0) + 16;
        let mut forged = erased_after.clone();
        let flipped = if &forged[at..=at] == "0" { "1" } else { "0" };
        forged.replace_range(at..=at, flipped);
        assert_ne!(leaf(&forged, &erased_context, &values), sealed);
        assert_ne!(leaf(&erased_after, &erased_context, &values[..1]), sealed);
        // A change without personal values is hashed as encoding 1 was.
        let plain = LINE.strip_suffix(b"\t\\N").unwrap_or_default();
        let mut digest = Sha256::new();
        digest.update([0_u8]);
        digest.update(b"bemi change v1\n");
        digest.update(plain);
        let v1: [u8; 32] = digest.finalize().into();
        assert_eq!(Leaf::of_line(LINE).map(|leaf| leaf.hash), Some(v1));
    }

    #[test]
    fn copy_fields_unescape_and_escape_back() {
        let field = b"a\\\\b\\tc\\nd\\re\\bf";
        let text = unescape(field).map(Cow::into_owned).unwrap_or_default();
        assert_eq!(text, b"a\\b\tc\nd\re\x08f");
        assert!(matches!(unescape(b"plain"), Some(Cow::Borrowed(b"plain"))));
        assert_eq!(unescape(b"\\N"), None);
        assert_eq!(unescape(b"bad\\q"), None);
        assert_eq!(&*escape("a\\b\tc\nd\re"), b"a\\\\b\\tc\\nd\\re");
        assert!(matches!(escape("plain"), Cow::Borrowed(b"plain")));
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
            false,
        );
        assert!(query.contains("WHERE database = 'it''s' AND id > '00000000-0000-0000-0000-000000000000' AND id <= '00000000-0000-0000-0000-000000000000' ORDER BY id LIMIT 5"), "{query}");
        let open = copy_query("s", "d", Bound::Unbounded, Bound::Unbounded, None, false);
        assert!(
            open.ends_with("WHERE database = 'd' ORDER BY id) TO STDOUT"),
            "{open}"
        );
    }

    #[test]
    fn a_line_with_xmin_gives_the_change_and_the_transaction() {
        let mut line = LINE.to_vec();
        line.extend(b"\t4294967295");
        assert_eq!(split_xmin(&line), Some((LINE, u32::MAX)));
        assert_eq!(
            split_xmin(LINE),
            None,
            "a line without xmin ends with personal (NULL)"
        );
        let with = copy_query("s", "d", Bound::Unbounded, Bound::Unbounded, None, true);
        assert!(with.contains(", personal, xmin FROM s"), "{with}");
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
