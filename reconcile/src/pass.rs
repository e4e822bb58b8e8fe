//! What one pass is given (its triggers) and what it gives back (its output, which names
//! the loop's next [`Action`], or an error).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// What the loop should do after a successful pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run again after this delay, unless a trigger runs a pass sooner.
    Requeue(Duration),
    /// Run again only on the next trigger (interval tick, file change, manual trigger).
    AwaitTrigger,
}

/// One reason a pass runs. A pass usually has one; triggers that arrive while a pass runs
/// (or while the loop waits out a backoff) are coalesced into the next pass's set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// The first pass after [`Controller::run`](crate::Controller::run) starts.
    Startup,
    /// The periodic interval elapsed without a pass.
    Interval,
    /// A watched file was written, replaced, truncated or deleted by someone else.
    FileChanged(PathBuf),
    /// A [`TriggerHandle::trigger`] call.
    Manual,
    /// The delay of an [`Action::Requeue`] elapsed.
    Requeue,
    /// The backoff delay after a failed pass elapsed.
    Retry,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Startup => f.write_str("startup"),
            Trigger::Interval => f.write_str("interval"),
            Trigger::FileChanged(path) => write!(f, "file:{}", path.display()),
            Trigger::Manual => f.write_str("manual"),
            Trigger::Requeue => f.write_str("requeue"),
            Trigger::Retry => f.write_str("retry"),
        }
    }
}

/// What the reconciler is told about the pass it runs.
///
/// Invariant: `triggers` is non-empty, sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassContext {
    /// 1 for the first pass, counting up.
    pub pass: u64,
    /// Why this pass runs.
    pub triggers: Vec<Trigger>,
    /// Failed passes (errors or timeouts) in a row before this one.
    pub consecutive_failures: u32,
}

impl PassContext {
    /// The watched files whose change caused this pass.
    pub fn changed_paths(&self) -> impl Iterator<Item = &Path> {
        self.triggers.iter().filter_map(|t| match t {
            Trigger::FileChanged(p) => Some(p.as_path()),
            _ => None,
        })
    }

    /// Whether `trigger` is among the reasons for this pass.
    pub fn has(&self, trigger: &Trigger) -> bool {
        self.triggers.contains(trigger)
    }
}

impl fmt::Display for PassContext {
    /// `pass 3 (interval, file:/x/auth.json)` — for log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pass {} (", self.pass)?;
        for (i, t) in self.triggers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{t}")?;
        }
        f.write_str(")")
    }
}

/// What a successful pass returns: whatever the reconciler reports (the loop hands it to the
/// [`Observer`](crate::Observer)), naming what the loop does next.
pub trait Outcome {
    /// When the next pass runs, as far as this pass is concerned.
    fn action(&self) -> Action;
}

/// A reconciler with nothing to report returns the action alone.
impl Outcome for Action {
    fn action(&self) -> Action {
        *self
    }
}

/// Why a pass did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure<E> {
    /// The reconciler returned an error.
    #[error("{0}")]
    Failed(E),
    /// The pass outlived the pass timeout and was cancelled (its future dropped).
    #[error("pass cancelled after the {0:?} pass timeout")]
    Timeout(Duration),
}

impl<E> Failure<E> {
    /// The reason of [`Failure::Failed`] (a caller with a finer one asks the inner error).
    pub const FAILED_REASON: &'static str = "reconcile_failed";
    /// The reason of [`Failure::Timeout`].
    pub const TIMEOUT_REASON: &'static str = "pass_timeout";
    /// Every reason [`Failure::reason`] returns, for metrics that export each label value
    /// from start-up.
    pub const ALL_REASONS: [&'static str; 2] = [Self::FAILED_REASON, Self::TIMEOUT_REASON];

    /// A short, fixed label for metrics. For `Failed`, ask the inner error for a finer one.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Failed(_) => Self::FAILED_REASON,
            Failure::Timeout(_) => Self::TIMEOUT_REASON,
        }
    }
}

/// A reconciler: called once per pass, it returns a future that does the pass.
///
/// Implemented for every `FnMut(PassContext) -> impl Future<Output = Result<T, E>>` where
/// `T` is an [`Outcome`] (an [`Action`], or a report that names one), so
/// a closure capturing an `Arc<State>` is a reconciler:
/// `move |ctx| { let s = state.clone(); async move { s.pass(ctx).await } }`.
/// The future is dropped, not polled to the end, when the pass times out or the loop is
/// cancelled; a pass must therefore leave nothing half-done at an `.await` point.
pub trait Reconcile {
    /// What a successful pass reports.
    type Output: Outcome;
    /// The reconciler's error.
    type Error;
    /// The future of one pass.
    type Future: Future<Output = Result<Self::Output, Self::Error>>;
    /// Start one pass.
    fn reconcile(&mut self, ctx: PassContext) -> Self::Future;
}

impl<F, Fut, T, E> Reconcile for F
where
    F: FnMut(PassContext) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Outcome,
{
    type Output = T;
    type Error = E;
    type Future = Fut;

    fn reconcile(&mut self, ctx: PassContext) -> Fut {
        self(ctx)
    }
}

/// Asks the loop for a pass from outside (a signal handler, an HTTP "sync now", a test).
///
/// Cloneable; triggers coalesce like every other trigger and respect the backoff after a
/// failure. Keeping a handle alive does not keep the loop running.
#[derive(Debug, Clone)]
pub struct TriggerHandle {
    pub(crate) notify: Arc<Notify>,
}

impl TriggerHandle {
    /// Request a pass ([`Trigger::Manual`]).
    pub fn trigger(&self) {
        // `notify_one` stores a permit when the loop is not waiting, so no request is lost,
        // and many requests before the loop looks collapse into one.
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_displays_its_triggers_for_logs() {
        let ctx = PassContext {
            pass: 3,
            triggers: vec![
                Trigger::Interval,
                Trigger::FileChanged(PathBuf::from("/x/auth.json")),
            ],
            consecutive_failures: 0,
        };
        assert_eq!(ctx.to_string(), "pass 3 (interval, file:/x/auth.json)");
        assert_eq!(
            ctx.changed_paths().collect::<Vec<_>>(),
            [Path::new("/x/auth.json")]
        );
        assert!(ctx.has(&Trigger::Interval));
        assert!(!ctx.has(&Trigger::Startup));
    }

    #[test]
    fn pass_error_reasons_are_labels() {
        let failed: Failure<std::io::Error> = Failure::Failed(std::io::Error::other("boom"));
        assert_eq!(failed.reason(), "reconcile_failed");
        assert_eq!(failed.to_string(), "boom");
        let timeout: Failure<std::io::Error> = Failure::Timeout(Duration::from_secs(300));
        assert_eq!(timeout.reason(), "pass_timeout");
    }

    /// The index of `f`'s variant. Exhaustive on purpose: a new variant does not compile
    /// until it has an arm here (the next index, with `VARIANTS` raised) and a sample below.
    fn variant(f: &Failure<()>) -> usize {
        match f {
            Failure::Failed(()) => 0,
            Failure::Timeout(_) => 1,
        }
    }
    const VARIANTS: usize = 2;

    #[test]
    fn all_reasons_lists_the_reason_of_every_variant() {
        let samples = [
            Failure::Failed(()),
            Failure::Timeout(Duration::from_secs(1)),
        ];
        let variants: Vec<usize> = samples.iter().map(variant).collect();
        assert_eq!(variants, (0..VARIANTS).collect::<Vec<_>>());
        let reasons: Vec<&str> = samples.iter().map(Failure::reason).collect();
        assert_eq!(reasons, Failure::<()>::ALL_REASONS);
        assert_eq!(reasons, ["reconcile_failed", "pass_timeout"]);
    }
}
