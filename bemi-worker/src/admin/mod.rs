//! One-shot commands the CLI calls: setup and teardown, status, snapshot, revert, and the
//! conversion of a `changes` table into time partitions.

pub(crate) mod install;
pub(crate) mod partition;
pub(crate) mod revert;
pub(crate) mod snapshot;
pub(crate) mod status;
