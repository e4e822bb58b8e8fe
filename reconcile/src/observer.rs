//! Hooks through which the owner of the loop sees every pass (for metrics, health and status).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pass::{Failure, PassContext};

/// What happened in one pass, handed to [`Observer::on_pass_end`]: `T` is what the reconciler
/// reported, `E` its error.
///
/// Invariant: `consecutive_failures` is 0 exactly when `result` is `Ok`.
#[derive(Debug)]
pub struct EndedPass<'a, T, E> {
    /// The context the pass was started with.
    pub context: &'a PassContext,
    /// When the pass started (tokio clock).
    pub started_at: Instant,
    /// How long the pass ran (up to the pass timeout).
    pub duration: Duration,
    /// What the reconciler reported, or why the pass failed.
    pub result: Result<&'a T, &'a Failure<E>>,
    /// Failed passes in a row, this one included.
    pub consecutive_failures: u32,
    /// When the next pass is due as things stand, or `None` when only a future file change or
    /// manual trigger will start one. A trigger can still make it sooner, except while in
    /// backoff.
    pub next_pass_at: Option<Instant>,
}

impl<T, E> EndedPass<'_, T, E> {
    /// Time from now until the next scheduled pass (zero if it is due now).
    pub fn next_pass_in(&self) -> Option<Duration> {
        self.next_pass_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// Callbacks around every pass. Both default to doing nothing.
///
/// They run on the loop's task between passes, so they must be quick and must not block:
/// update counters or a status struct behind a short lock, nothing more.
pub trait Observer<T, E>: Send + Sync {
    /// A pass is about to start.
    fn on_pass_start(&self, _ctx: &PassContext) {}
    /// A pass ended: it returned, failed or timed out. Not called for a pass cut short by
    /// cancellation of the whole loop.
    fn on_pass_end(&self, _ended: &EndedPass<'_, T, E>) {}
}

/// The observer that observes nothing.
impl<T, E> Observer<T, E> for () {}

impl<T, E, O: Observer<T, E> + ?Sized> Observer<T, E> for Arc<O> {
    fn on_pass_start(&self, ctx: &PassContext) {
        (**self).on_pass_start(ctx);
    }
    fn on_pass_end(&self, ended: &EndedPass<'_, T, E>) {
        (**self).on_pass_end(ended);
    }
}
