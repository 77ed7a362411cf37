//! Anchors: seal hashes published outside the database, where whoever administers it cannot
//! rewrite them. The worker appends each new seal's hash to an append-only file (one JSON object
//! per line, synced before the next seal) and logs it; `verify --anchor-file` checks that every
//! anchored block is still there with the same hash. As each block's hash covers the block
//! before it, one anchored hash binds its whole chain up to it: rewriting the changes and every
//! seal consistently no longer goes unnoticed.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One anchored seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    /// The chain's source database.
    pub(crate) database: String,
    /// The block.
    pub(crate) block: i64,
    /// Its hash, lowercase hex.
    pub(crate) hash: String,
    /// The changes it seals.
    pub(crate) changes: i32,
}

/// Appends anchors to a file.
#[derive(Debug)]
pub(crate) struct AnchorFile {
    path: PathBuf,
}

impl AnchorFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Appends `anchor` as one line and syncs it to disk.
    pub(crate) fn append(&self, anchor: &Anchor) -> Result<()> {
        let io = |source| Error::Io {
            action: format!("append a seal to the anchor file {}", self.path.display()),
            source,
        };
        let mut line = serde_json::to_string(anchor)
            .map_err(|error| Error::Protocol(format!("encode an anchor: {error}")))?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)
    }
}

/// The anchors of `path`, with the numbers of the lines that are not anchors.
pub(crate) fn read(path: &Path) -> Result<(Vec<Anchor>, Vec<usize>)> {
    let io = |source| Error::Io {
        action: format!("read the anchor file {}", path.display()),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut anchors = Vec::new();
    let mut unreadable = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Anchor>(&line) {
            Ok(anchor) => anchors.push(anchor),
            Err(_) => unreadable.push(number + 1),
        }
    }
    Ok((anchors, unreadable))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_appended_and_read_back_with_unreadable_lines_named() {
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let path = folder.path().join("anchors.ndjson");
        let file = AnchorFile::new(path.clone());
        let anchor = |block| Anchor {
            database: "app \"x\"".to_owned(),
            block,
            hash: hex(&[0xab, 0x01]),
            changes: 3,
        };
        file.append(&anchor(1))
            .unwrap_or_else(|error| panic!("{error}"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut raw| raw.write_all(b"not an anchor\n"))
            .unwrap_or_else(|error| panic!("{error}"));
        file.append(&anchor(2))
            .unwrap_or_else(|error| panic!("{error}"));
        let (anchors, unreadable) = read(&path).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(anchors, vec![anchor(1), anchor(2)]);
        assert_eq!(anchors[0].hash, "ab01");
        assert_eq!(unreadable, vec![2]);
    }
}
