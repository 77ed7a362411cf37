//! One block checked against the stored changes: its seal's lists read and checked, then the
//! changes of its range (and of the gap before it) compared with them as `COPY` streams them,
//! each line hashed and merged with the sealed ids, nothing kept but what does not match.

use std::ops::Bound;

use futures_util::StreamExt;
use uuid::Uuid;

use super::Finding;
use super::chain::{self, Previous, SealHeader, SealLists};
use crate::seal::encoding::{Leaf, Lines, copy_query};
use crate::{Error, Result};

/// A block to check, with what the chain around it says.
#[derive(Debug)]
pub(super) struct Job<'a> {
    /// Its place in the chain (findings are reported in that order).
    pub(super) index: usize,
    pub(super) seal: &'a SealHeader,
    pub(super) previous: Previous,
    /// Where the changes to compare start: just after the block before, so that changes
    /// between blocks are seen too.
    pub(super) lower: Bound<Uuid>,
    /// Where they end: its last change, or just before the next block when no job reads the
    /// gap before that one.
    pub(super) upper: Bound<Uuid>,
    /// Whether all its changes are older than what retention dropped: its seal is checked,
    /// its changes are not.
    pub(super) expired: bool,
    /// Whether it straddles what retention dropped: it may have lost changes.
    pub(super) straddles: bool,
}

/// What checking one block found.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) index: usize,
    pub(super) findings: Vec<Finding>,
    /// Whether its changes were compared.
    pub(super) compared: bool,
    /// Whether its seal held and it expired.
    pub(super) expired: bool,
    pub(super) intact: u64,
}

/// Checks `job`'s block of `database` in `stored`, on `transaction`.
pub(super) async fn check(
    transaction: &tokio_postgres::Transaction<'_>,
    stored: &str,
    database: &str,
    job: &Job<'_>,
) -> Result<Outcome> {
    let lists = chain::lists(transaction, database, job.seal.block).await?;
    let (broken, trusted) = chain::check(database, job.seal, Some(&lists), job.previous);
    let mut outcome = Outcome {
        index: job.index,
        findings: broken.into_iter().collect(),
        ..Outcome::default()
    };
    if !trusted {
        // Its list of changes cannot be trusted: the broken seal is the finding.
        return Ok(outcome);
    }
    if job.expired {
        outcome.expired = true;
        return Ok(outcome);
    }
    outcome.compared = true;
    let query = copy_query(stored, database, job.lower, job.upper, None, false);
    let stream = transaction
        .copy_out(&query)
        .await
        .map_err(Error::postgres("read the changes to verify"))?;
    let mut stream = std::pin::pin!(stream);
    let mut merge = Merge::new(database, job, &lists);
    let mut lines = Lines::default();
    let mut unreadable = 0_usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::postgres("read the changes to verify"))?;
        lines.feed(&chunk, |line| match Leaf::identify(line) {
            Some((id, hash)) => merge.found(id, hash),
            None => unreadable += 1,
        });
    }
    if lines.is_partial() || unreadable > 0 {
        return Err(Error::Protocol(format!(
            "COPY of the changes to verify gave {unreadable} unreadable lines"
        )));
    }
    merge.finish();
    outcome.intact = merge.intact;
    outcome.findings.extend(merge.findings);
    Ok(outcome)
}

/// The sealed changes of a block merged with the stored ones, both in id order.
struct Merge<'a> {
    database: &'a str,
    job: &'a Job<'a>,
    sealed: std::iter::Peekable<
        std::iter::Zip<std::slice::Iter<'a, Uuid>, std::slice::Iter<'a, [u8; 32]>>,
    >,
    intact: u64,
    findings: Vec<Finding>,
}

impl<'a> Merge<'a> {
    fn new(database: &'a str, job: &'a Job<'a>, lists: &'a SealLists) -> Self {
        Self {
            database,
            job,
            sealed: lists.ids.iter().zip(lists.leaves.iter()).peekable(),
            intact: 0,
            findings: Vec::new(),
        }
    }

    /// The next stored change: `id` with leaf `hash`.
    fn found(&mut self, id: Uuid, hash: [u8; 32]) {
        while let Some((sealed, _)) = self.sealed.peek() {
            if **sealed >= id {
                break;
            }
            let sealed = **sealed;
            self.missing(sealed);
            self.sealed.next();
        }
        match self.sealed.peek() {
            Some((sealed, leaf)) if **sealed == id => {
                if **leaf == hash {
                    self.intact += 1;
                } else {
                    self.findings.push(Finding::Edited {
                        database: self.database.to_owned(),
                        block: self.job.seal.block,
                        id,
                    });
                }
                self.sealed.next();
            }
            _ => self.findings.push(Finding::Inserted {
                database: self.database.to_owned(),
                block: (self.job.seal.first_id..=self.job.seal.last_id)
                    .contains(&id)
                    .then_some(self.job.seal.block),
                id,
            }),
        }
    }

    /// The stored changes ended: every sealed change not seen is missing.
    fn finish(&mut self) {
        while let Some((sealed, _)) = self.sealed.next() {
            self.missing(*sealed);
        }
    }

    fn missing(&mut self, id: Uuid) {
        if !self.job.straddles {
            self.findings.push(Finding::Deleted {
                database: self.database.to_owned(),
                block: self.job.seal.block,
                id,
            });
        }
    }
}
