//! Archives of `changes` partitions: one gzip-compressed NDJSON file per partition (a change
//! per line, as `row_to_json` renders the row: every column, JSON values as JSON) and a
//! manifest beside it with the range, the row count and the file's SHA-256. `retention
//! --archive` writes and verifies one before it drops a partition; `restore-archive` checks it
//! and brings the changes back.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bemi_core::QualifiedName;
use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::{ConnectionOptions, Error, Result};

/// The format written into manifests.
pub const ARCHIVE_FORMAT: &str = "bemi-changes/ndjson+gzip/2";

/// Changes inserted per statement when restoring.
const RESTORE_BATCH: usize = 1_000;

/// What an archive file holds; written beside it as `<partition>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArchiveManifest {
    /// [`ARCHIVE_FORMAT`].
    pub format: String,
    /// The changes table the partition belonged to (`"schema"."table"`).
    pub changes_table: String,
    /// The partition's schema.
    pub partition_schema: String,
    /// The partition's name.
    pub partition: String,
    /// The partition's lower bound (`None`: `MINVALUE`, a converted table's old heap).
    pub from: Option<DateTime<Utc>>,
    /// The partition's upper bound (exclusive).
    pub to: DateTime<Utc>,
    /// How many changes the file holds.
    pub rows: u64,
    /// The data file's name, in the manifest's folder.
    pub file: String,
    /// The data file's SHA-256, in hex.
    pub sha256: String,
    /// When the archive was written.
    pub archived_at: DateTime<Utc>,
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let action = action.into();
    move |source| Error::Io { action, source }
}

/// The SHA-256 and the line count of an archive file.
fn read_back(path: &Path) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut buffer = vec![0_u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(io(format!("read {}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let file = File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut lines = 0;
    for line in BufReader::new(GzDecoder::new(file)).lines() {
        line.map_err(io(format!("decompress {}", path.display())))?;
        lines += 1;
    }
    Ok((hex::encode(hasher.finalize()), lines))
}

/// Writes the changes of `partition` (of `changes`, range `from`..`to`) into `folder`, then
/// reads the file back and checks it against what was written: returns the manifest, written
/// last (a file without its manifest is an unfinished archive).
pub(crate) async fn archive_partition(
    client: &Client,
    changes: &QualifiedName,
    partition: &QualifiedName,
    range: (Option<DateTime<Utc>>, DateTime<Utc>),
    folder: &Path,
) -> Result<ArchiveManifest> {
    std::fs::create_dir_all(folder).map_err(io(format!("create {}", folder.display())))?;
    let name = partition.name().to_owned();
    let file_name = format!("{name}.ndjson.gz");
    let path = folder.join(&file_name);
    let partial = folder.join(format!("{file_name}.partial"));
    let file = File::create(&partial).map_err(io(format!("create {}", partial.display())))?;
    let mut writer = GzEncoder::new(
        Hashing {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
        },
        Compression::default(),
    );
    let rows = client
        .query_raw(
            &format!(
                "SELECT pg_catalog.row_to_json(c)::text FROM {partition} c \
                 ORDER BY c.commit_lsn, c.sequence, c.id"
            ),
            std::iter::empty::<&str>(),
        )
        .await
        .map_err(Error::postgres(format!("read {partition}")))?;
    pin_mut!(rows);
    let mut count = 0_u64;
    while let Some(row) = rows.next().await {
        let row = row.map_err(Error::postgres(format!("read {partition}")))?;
        let line: String = row.get(0);
        writer
            .write_all(line.as_bytes())
            .and_then(|()| writer.write_all(b"\n"))
            .map_err(io(format!("write {}", partial.display())))?;
        count += 1;
    }
    let mut hashing = writer
        .finish()
        .map_err(io(format!("compress {}", partial.display())))?;
    hashing
        .flush()
        .map_err(io(format!("write {}", partial.display())))?;
    let sha256 = hex::encode(hashing.hasher.finalize());
    let file = hashing.inner.into_inner().map_err(|error| Error::Io {
        action: format!("write {}", partial.display()),
        source: error.into_error(),
    })?;
    file.sync_all()
        .map_err(io(format!("sync {}", partial.display())))?;
    std::fs::rename(&partial, &path).map_err(io(format!("rename {}", path.display())))?;
    let (read_sha256, read_rows) = read_back(&path)?;
    if read_sha256 != sha256 || read_rows != count {
        return Err(Error::Archive(format!(
            "{} reads back as {read_rows} changes with SHA-256 {read_sha256}, written as {count} \
             with {sha256}",
            path.display()
        )));
    }
    let manifest = ArchiveManifest {
        format: ARCHIVE_FORMAT.to_owned(),
        changes_table: changes.to_string(),
        partition_schema: partition.schema().to_owned(),
        partition: name.clone(),
        from: range.0,
        to: range.1,
        rows: count,
        file: file_name,
        sha256,
        archived_at: Utc::now(),
    };
    write_manifest(&folder.join(format!("{name}.manifest.json")), &manifest)?;
    Ok(manifest)
}

fn write_manifest(path: &Path, manifest: &ArchiveManifest) -> Result<()> {
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|error| Error::Archive(format!("encode the manifest: {error}")))?;
    let mut file = File::create(&partial).map_err(io(format!("create {}", partial.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("write {}", partial.display())))?;
    std::fs::rename(&partial, path).map_err(io(format!("rename {}", path.display())))
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restored {
    /// The manifest restored.
    pub manifest: ArchiveManifest,
    /// Changes inserted.
    pub inserted: u64,
    /// Changes that were stored already (skipped).
    pub already_stored: u64,
}

/// Brings the changes of an archive back: checks the file against `manifest` (SHA-256, row
/// count), creates the partition of its range if it is missing, and inserts the changes into
/// it (those already stored are skipped, so a restore can be repeated; one outside the range
/// fails the restore). The checksum shows the file is the one written, not who wrote it: keep
/// archives where only operators can write.
///
/// A restored partition is dropped again by the next `retention` run unless a legal hold
/// covers it.
///
/// # Errors
///
/// A manifest or file that cannot be read or does not match ([`Error::Archive`], [`Error::Io`]),
/// a range that overlaps another partition, and database errors.
pub async fn restore_archive(
    destination: &ConnectionOptions,
    manifest_path: &Path,
    progress: impl Fn(&str),
) -> Result<Restored> {
    let text = std::fs::read_to_string(manifest_path)
        .map_err(io(format!("read {}", manifest_path.display())))?;
    let manifest: ArchiveManifest = serde_json::from_str(&text).map_err(|error| {
        Error::Archive(format!(
            "{} is not a manifest: {error}",
            manifest_path.display()
        ))
    })?;
    if manifest.format != ARCHIVE_FORMAT {
        return Err(Error::Archive(format!(
            "unknown archive format {:?} (this worker reads {ARCHIVE_FORMAT})",
            manifest.format
        )));
    }
    // The data file sits beside its manifest: a manifest naming another path is refused.
    if manifest.file.is_empty()
        || manifest.file.contains(['/', '\\'])
        || manifest.file.starts_with('.')
    {
        return Err(Error::Archive(format!(
            "the manifest names {:?}: an archive's file is a name in the manifest's folder",
            manifest.file
        )));
    }
    let folder = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    let data = folder.join(&manifest.file);
    progress(&format!("checking {}", data.display()));
    let (sha256, rows) = read_back(&data)?;
    if sha256 != manifest.sha256 || rows != manifest.rows {
        return Err(Error::Archive(format!(
            "{} does not match its manifest: {rows} changes with SHA-256 {sha256}, the manifest \
             says {} with {}",
            data.display(),
            manifest.rows,
            manifest.sha256
        )));
    }
    let changes: QualifiedName = manifest
        .changes_table
        .parse()
        .map_err(|error| Error::Archive(format!("the manifest's changes table: {error}")))?;
    let partition = QualifiedName::new(&manifest.partition_schema, &manifest.partition)?;
    let client = destination.connect("bemi-worker restore-archive").await?;
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&partition.to_string()],
        )
        .await
        .map_err(Error::postgres("look for the partition"))?
        .get(0);
    if !exists {
        let lower = match manifest.from {
            Some(from) => format!("'{}'", from.to_rfc3339()),
            None => "MINVALUE".to_owned(),
        };
        progress(&format!("creating the partition {partition}"));
        client
            .batch_execute(&format!(
                "CREATE TABLE {partition} PARTITION OF {changes} FOR VALUES FROM ({lower}) TO ('{}')",
                manifest.to.to_rfc3339()
            ))
            .await
            .map_err(Error::postgres(format!("create the partition {partition}")))?;
    }
    let file = File::open(&data).map_err(io(format!("open {}", data.display())))?;
    // Into the partition itself: a change outside the manifest's range (an edited file) is
    // refused by the partition's bound instead of landing elsewhere in the trail.
    let insert = format!(
        "INSERT INTO {partition} SELECT * FROM pg_catalog.jsonb_populate_recordset(NULL::{changes}, $1::text::jsonb) \
         ON CONFLICT DO NOTHING"
    );
    let mut batch: Vec<String> = Vec::with_capacity(RESTORE_BATCH);
    let mut inserted = 0_u64;
    let mut seen = 0_u64;
    let mut lines = BufReader::new(GzDecoder::new(file)).lines();
    loop {
        let line = lines
            .next()
            .transpose()
            .map_err(io(format!("decompress {}", data.display())))?;
        let done = line.is_none();
        if let Some(line) = line {
            batch.push(line);
        }
        if batch.len() == RESTORE_BATCH || (done && !batch.is_empty()) {
            let array = format!("[{}]", batch.join(","));
            inserted += client
                .execute(&insert, &[&array])
                .await
                .map_err(Error::postgres(format!("restore into {changes}")))?;
            seen += batch.len() as u64;
            batch.clear();
            progress(&format!("  {seen} of {} changes", manifest.rows));
        }
        if done {
            break;
        }
    }
    Ok(Restored {
        inserted,
        already_stored: seen - inserted,
        manifest,
    })
}
