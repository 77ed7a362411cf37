//! Which stored row versions the worker wrote: the ids of the transactions in which it stored or
//! rewrote changes, so that its sealer seals those row versions and no other.
//!
//! A row that a role allowed to write the changes table inserts (or rewrites) between storing
//! and sealing, or ahead of the worker with an id the worker has not reached, carries another
//! transaction id in its `xmin`: the sealer leaves it unsealed and says so, and `verify` names it
//! as inserted. Changes stored before the worker's session started (below its stored progress)
//! are sealed as found, as are those below a batch before which PostgreSQL itself may have moved
//! rows on the worker's behalf (out of the default partition, in a subtransaction whose id the
//! worker cannot learn).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

/// How many transactions are kept at most: past it (a sealer that has failed for hours), what
/// was written so far is sealed as found, with a warning, rather than memory growing on.
#[cfg(not(test))]
const MOST_TRANSACTIONS: usize = 1_000_000;
#[cfg(test)]
const MOST_TRANSACTIONS: usize = 4;

/// The transactions of one worker session that wrote stored changes, shared by its writers and
/// its sealer.
#[derive(Debug)]
pub(crate) struct Written {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Changes with lower ids are sealed as found.
    inherited_below: Uuid,
    /// Each transaction (its 32-bit id, as `xmin` shows it) and the highest change id it wrote:
    /// once the sealer is past that id, nothing it wrote is left to seal.
    transactions: HashMap<u32, Uuid>,
    /// The sealer stopped for good (the destination has no seals): nothing more is recorded.
    closed: bool,
}

/// What the sealer reads of [`Written`] for one pass.
#[derive(Debug)]
pub(crate) struct Writers {
    inherited_below: Uuid,
    transactions: HashSet<u32>,
}

impl Writers {
    /// Whether the row version of change `id` with `xmin` is one the worker wrote (or one
    /// inherited from before its session).
    pub(crate) fn wrote(&self, id: Uuid, xmin: u32) -> bool {
        id < self.inherited_below || self.transactions.contains(&xmin)
    }
}

impl Written {
    /// A session's record; changes with ids below `inherited_below` were stored before it.
    pub(crate) fn new(inherited_below: Uuid) -> Self {
        Self {
            state: Mutex::new(State {
                inherited_below,
                transactions: HashMap::new(),
                closed: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes with ids below `id` are to be sealed as found from now on.
    pub(crate) fn inherit_below(&self, id: Uuid) {
        let mut state = self.state();
        state.inherited_below = state.inherited_below.max(id);
    }

    /// The transaction `xid` wrote stored changes, the highest of them `highest` (`Uuid::max()`
    /// when it only rewrote older ones). Called before it commits.
    pub(crate) fn record(&self, xid: u32, highest: Uuid) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        if state.transactions.len() >= MOST_TRANSACTIONS {
            let below = state
                .transactions
                .values()
                .copied()
                .filter(|highest| *highest != Uuid::max())
                .chain([highest])
                .max()
                .unwrap_or(highest);
            tracing::warn!(
                transactions = state.transactions.len(),
                "the sealer is far behind: the changes stored so far will be sealed as found"
            );
            let above = Uuid::from_u128(below.as_u128().saturating_add(1));
            state.inherited_below = state.inherited_below.max(above);
            state.transactions.clear();
        }
        let entry = state.transactions.entry(xid).or_insert(highest);
        *entry = (*entry).max(highest);
    }

    /// The writers as of now. Read after the rows to seal were read: a transaction visible to
    /// that read committed after it was recorded, so it is among them.
    pub(crate) fn writers(&self) -> Writers {
        let state = self.state();
        Writers {
            inherited_below: state.inherited_below,
            transactions: state.transactions.keys().copied().collect(),
        }
    }

    /// The sealer stopped for good: forget everything, record nothing more.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.transactions.clear();
    }

    /// Everything up to `sealed` is sealed: transactions that wrote nothing above it are done.
    pub(crate) fn forget_sealed(&self, sealed: Uuid) {
        self.state()
            .transactions
            .retain(|_, highest| *highest > sealed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_the_workers_when_inherited_or_written_by_one_of_its_transactions() {
        let id = |n: u128| Uuid::from_u128(n);
        let written = Written::new(id(10));
        written.record(700, id(20));
        written.record(700, id(15));
        written.record(701, Uuid::max());
        let writers = written.writers();
        assert!(writers.wrote(id(5), 1), "inherited");
        assert!(writers.wrote(id(12), 700));
        assert!(!writers.wrote(id(12), 999), "another transaction's row");
        written.forget_sealed(id(20));
        let writers = written.writers();
        assert!(!writers.wrote(id(30), 700), "forgotten once sealed past");
        assert!(writers.wrote(id(30), 701), "an erasure's rewrite stays");
        written.inherit_below(id(40));
        written.inherit_below(id(35));
        assert!(written.writers().wrote(id(39), 999));
        // Too many transactions waiting for the sealer: what they wrote is inherited.
        for xid in 800..805 {
            written.record(xid, id(u128::from(xid)));
        }
        let writers = written.writers();
        assert!(
            writers.wrote(id(803), 1),
            "inherited once the record was full"
        );
        assert!(writers.wrote(id(900), 804), "the newest is still known");
        assert!(!writers.wrote(id(900), 999));
        written.close();
        written.record(702, id(5_000));
        assert!(
            !written.writers().wrote(id(5_000), 702),
            "closed: nothing recorded"
        );
    }
}
