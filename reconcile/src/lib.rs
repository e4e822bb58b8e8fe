//! A level-triggered reconcile loop: merged triggers, coalesced passes, backoff, timeouts, cancellation.
//!
//! The idea of kube-runtime's controller, cut to size and free of any domain. A *reconciler*
//! is an async function called once per *pass*; each pass looks at the world afresh and makes
//! it right, so it never needs to know what changed — triggers only decide **when** a pass
//! runs:
//!
//! - start-up (the first pass runs immediately);
//! - an interval, measured from the end of the previous pass;
//! - a change of a watched file (inotify on its directory, debounced, our own writes ignored
//!   through [`SelfWrites`]);
//! - a [`TriggerHandle`];
//! - the pass's own [`Action::Requeue`] delay, or the backoff delay after a failure.
//!
//! Passes never overlap: triggers that arrive during a pass coalesce into one follow-up pass.
//! A failed pass ([`Failure::Failed`]) or one that outlives the pass timeout
//! ([`Failure::Timeout`], its future dropped) is retried after an exponential, jittered
//! backoff that resets on success; while backing off, other triggers wait for the retry
//! deadline instead of bypassing it. Cancelling the [`CancellationToken`] drops any pass in
//! flight and ends [`Controller::run`]. All timing uses `tokio::time`, so the loop can be
//! tested with paused time. An [`Observer`] sees every pass — with what the reconciler
//! reported ([`Outcome`]) — for metrics and health.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use reconcile::{Action, Controller, PassContext};
//! use tokio_util::sync::CancellationToken;
//!
//! struct State { passes: AtomicU32, stop: CancellationToken }
//!
//! impl State {
//!     async fn pass(&self, ctx: PassContext) -> Result<Action, std::io::Error> {
//!         println!("{ctx}"); // "pass 1 (startup)"
//!         if self.passes.fetch_add(1, Ordering::SeqCst) == 2 {
//!             self.stop.cancel();
//!         }
//!         Ok(Action::Requeue(Duration::from_millis(1)))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let stop = CancellationToken::new();
//! let state = Arc::new(State { passes: AtomicU32::new(0), stop: stop.clone() });
//! let controller = Controller::new({
//!     let state = Arc::clone(&state);
//!     move |ctx| {
//!         let state = Arc::clone(&state);
//!         async move { state.pass(ctx).await }
//!     }
//! })
//! .interval(Duration::from_secs(60))
//! .pass_timeout(Duration::from_secs(300));
//! controller.run(stop).await;
//! assert_eq!(state.passes.load(Ordering::SeqCst), 3);
//! # }
//! ```

mod backoff;
mod controller;
mod files;
mod observer;
mod pass;

pub use backoff::BackoffConfig;
pub use controller::{Controller, DEFAULT_PASS_TIMEOUT};
pub use files::{FileIdentity, SelfWrites};
pub use observer::{EndedPass, Observer};
pub use pass::{Action, Failure, Outcome, PassContext, Reconcile, Trigger, TriggerHandle};
pub use tokio_util::sync::CancellationToken;
