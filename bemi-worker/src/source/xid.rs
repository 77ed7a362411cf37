//! Transaction ids that identify a transaction forever: the stream gives 32-bit xids, which
//! wrap around every four billion transactions; stored ids are epoch-extended to 64 bits, as
//! PostgreSQL's `pg_current_xact_id()` (`xid8`) shows them.

/// Widens the stream's 32-bit xids to 64 bits, by their distance to a known full xid.
///
/// Every transaction the stream can still deliver is within 2^31 of the server's next xid
/// (wraparound protection guarantees it), so the epoch is the one that puts the xid nearest to
/// the newest full xid known; the reference then moves forward with the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XidWidener {
    reference: u64,
}

impl XidWidener {
    /// Starts from `reference`, a full xid read from the server (e.g. its snapshot's xmax).
    pub(crate) fn new(reference: u64) -> Self {
        Self { reference }
    }

    /// The full (epoch-extended) id of `xid`.
    pub(crate) fn widen(&mut self, xid: u32) -> u64 {
        let epoch = self.reference >> 32;
        let full = [epoch.checked_sub(1), Some(epoch), epoch.checked_add(1)]
            .into_iter()
            .flatten()
            .map(|epoch| (epoch << 32) | u64::from(xid))
            .min_by_key(|candidate| candidate.abs_diff(self.reference))
            .unwrap_or(u64::from(xid));
        self.reference = self.reference.max(full);
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn xids_take_the_epoch_nearest_the_reference() {
        let mut widener = XidWidener::new(3 * EPOCH + 100);
        assert_eq!(widener.widen(90), 3 * EPOCH + 90);
        assert_eq!(widener.widen(200), 3 * EPOCH + 200);
        // Just before the wrap: the previous epoch.
        assert_eq!(
            widener.widen(u32::MAX - 5),
            2 * EPOCH + u64::from(u32::MAX - 5)
        );
    }

    #[test]
    fn the_reference_follows_the_stream_across_a_wraparound() {
        let mut widener = XidWidener::new(EPOCH - 1_000);
        assert_eq!(widener.widen(u32::MAX - 10), EPOCH - 11);
        // The counter wrapped: small xids now belong to the next epoch.
        assert_eq!(widener.widen(5), EPOCH + 5);
        assert_eq!(widener.widen(3_000_000_000), 3_000_000_000);
        assert_eq!(widener.widen(10), EPOCH + 10);
    }

    #[test]
    fn epoch_zero_has_no_previous_epoch() {
        let mut widener = XidWidener::new(100);
        assert_eq!(widener.widen(50), 50);
        let mut widener = XidWidener::new(100);
        assert_eq!(widener.widen(u32::MAX), u64::from(u32::MAX));
    }
}
