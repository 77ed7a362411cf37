//! Where changes come from: the `pgoutput` decoder and the catalog of the replicated relations.

pub(crate) mod catalog;
pub(crate) mod lost_slot;
pub mod pgoutput;
pub(crate) mod preflight;
pub(crate) mod recorded_shape;
pub(crate) mod xid;
