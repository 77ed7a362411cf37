//! One-shot commands the CLI calls: setup and teardown, status, snapshot, revert, and the
//! upkeep of the `changes` table (conversion into time partitions, retention, archives).

pub(crate) mod archive;
pub(crate) mod holds;
pub(crate) mod install;
pub(crate) mod partition;
pub(crate) mod retention;
pub(crate) mod revert;
pub(crate) mod snapshot;
pub(crate) mod status;
