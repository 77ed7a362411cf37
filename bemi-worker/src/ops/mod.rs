//! Operating a running worker: Prometheus metrics and health over HTTP ([`serve`]), and the
//! slot's lag and retained WAL polled from the source ([`watch_slot`]).

mod http;
mod slot_watch;

pub use http::{Readiness, serve};
pub use slot_watch::watch_slot;
