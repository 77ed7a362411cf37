//! One-shot commands the CLI calls: setup and teardown, status, snapshot, revert.

pub(crate) mod install;
pub(crate) mod revert;
pub(crate) mod snapshot;
pub(crate) mod status;
