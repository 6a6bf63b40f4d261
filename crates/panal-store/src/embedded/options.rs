//! Tuning knobs of the embedded engine, with defaults fit for a single-machine control plane.

use std::time::Duration;

/// Options for [`super::EmbeddedStore::open_with`]. Start from `EmbeddedOptions::default()` and
/// set the fields you need (the struct may grow, so it cannot be built with a literal).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EmbeddedOptions {
    /// How many of the newest revisions keep their watch history; watching from an older
    /// revision fails with [`crate::StoreError::Compacted`]. At least 1.
    pub history_revisions: u64,
    /// How often the writer looks for expired leases when no writes arrive.
    pub lease_check_interval: Duration,
    /// How many committed batches the live watch channel buffers per watcher. A watcher that
    /// falls further behind catches up from the history log (or gets `Compacted`).
    pub watch_buffer: usize,
    /// The most write requests folded into one redb transaction (one fsync).
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_revisions: 100_000,
            lease_check_interval: Duration::from_millis(100),
            watch_buffer: 1024,
            max_batch: 1024,
        }
    }
}

impl EmbeddedOptions {
    /// Sets [`Self::history_revisions`].
    pub fn history_revisions(mut self, n: u64) -> Self {
        self.history_revisions = n;
        self
    }

    /// Sets [`Self::lease_check_interval`].
    pub fn lease_check_interval(mut self, d: Duration) -> Self {
        self.lease_check_interval = d;
        self
    }

    /// Sets [`Self::watch_buffer`].
    pub fn watch_buffer(mut self, n: usize) -> Self {
        self.watch_buffer = n;
        self
    }

    /// Sets [`Self::max_batch`].
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Clamps values that would make the engine misbehave (zero sizes, zero intervals).
    pub(super) fn sanitized(mut self) -> Self {
        self.history_revisions = self.history_revisions.max(1);
        self.lease_check_interval = self.lease_check_interval.max(Duration::from_millis(10));
        self.watch_buffer = self.watch_buffer.max(1);
        self.max_batch = self.max_batch.max(1);
        self
    }
}
