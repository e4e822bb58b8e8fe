//! The loop: decides when a pass runs, runs one at a time, bounds it, and schedules the next.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffConfig};
use crate::files::{FileWatch, SelfWrites};
use crate::observer::{EndedPass, Observer};
use crate::pass::{Action, Failure, Outcome, PassContext, Reconcile, Trigger, TriggerHandle};

/// Default bound on one pass: five minutes is far longer than a healthy pass should take, yet
/// a pass stuck on an unresponsive dependency is abandoned and retried rather than left to
/// stall the loop for good.
pub const DEFAULT_PASS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The window that gathers a burst of file events into one trigger: an editor's or an atomic
/// writer's several events for one change make one pass, and a pass starts soon after.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A level-triggered control loop around one reconciler; configure it, then [`run`](Self::run).
///
/// Scheduling rules:
/// - The first pass runs at start-up, immediately.
/// - Passes never overlap. Triggers arriving during a pass are collected and start exactly
///   one follow-up pass when it ends.
/// - After a success, the next pass runs at the earliest of: the requeue delay
///   ([`Action::Requeue`]), the interval (measured from the end of the pass), or any file
///   change / manual trigger.
/// - After a failure (error or timeout), the next pass runs at the retry deadline (the next
///   backoff step) — not sooner: triggers arriving meanwhile are merged into that pass
///   instead. A storm of file changes during a director
///   outage thus cannot bypass the backoff.
pub struct Controller<R: Reconcile> {
    reconciler: R,
    interval: Option<Duration>,
    watch_paths: Vec<PathBuf>,
    self_writes: SelfWrites,
    backoff: BackoffConfig,
    pass_timeout: Duration,
    observer: Box<dyn Observer<R::Output, R::Error>>,
    manual: Arc<Notify>,
}

impl<R: Reconcile> fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("interval", &self.interval)
            .field("watch_paths", &self.watch_paths)
            .field("backoff", &self.backoff)
            .field("pass_timeout", &self.pass_timeout)
            .finish_non_exhaustive()
    }
}

impl<R> Controller<R>
where
    R: Reconcile,
    R::Error: fmt::Display + 'static,
{
    /// A loop around `reconciler` with no interval, no watched files, the default backoff
    /// (1 s doubling to 60 s, jittered) and a 5 min pass timeout.
    pub fn new(reconciler: R) -> Self {
        Self {
            reconciler,
            interval: None,
            watch_paths: Vec::new(),
            self_writes: SelfWrites::new(),
            backoff: BackoffConfig::default(),
            pass_timeout: DEFAULT_PASS_TIMEOUT,
            observer: Box::new(()),
            manual: Arc::new(Notify::new()),
        }
    }

    /// Run a pass when `interval` has passed since the end of the last one.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Run a pass when one of `paths` changes on disk. Adds to earlier calls.
    ///
    /// The loop watches the files' parent directories (inotify, non-recursive) so that writes,
    /// truncations, atomic renames over the file, deletions and re-creations are all seen;
    /// events for other names in those directories and mere reads are ignored. A burst of
    /// events within 200 ms makes one trigger, carrying every
    /// changed path. A file whose directory does not exist when the loop starts is skipped
    /// with a warning (its changes then wait for the interval). For a symlink whose relative
    /// target runs through another entry of the same directory (a Kubernetes ConfigMap volume),
    /// replacing that entry counts as a change of the file. Own writes: see
    /// [`self_writes`](Self::self_writes).
    pub fn watch_files<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.watch_paths.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Ignore changes of watched files that are our own writes recorded in `self_writes`
    /// (see [`SelfWrites`]): when a batch of events ends, a path whose current identity
    /// equals one recorded there is dropped from the batch.
    pub fn self_writes(mut self, self_writes: SelfWrites) -> Self {
        self.self_writes = self_writes;
        self
    }

    /// How retry delays grow after failures.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Cancel (drop) a pass that runs longer than this; it counts as a failure.
    pub fn pass_timeout(mut self, timeout: Duration) -> Self {
        self.pass_timeout = timeout;
        self
    }

    /// Be told about every pass (metrics, health, status).
    pub fn observer(mut self, observer: impl Observer<R::Output, R::Error> + 'static) -> Self {
        self.observer = Box::new(observer);
        self
    }

    /// A handle to request passes from outside; may be taken before or after `run` starts.
    pub fn trigger_handle(&self) -> TriggerHandle {
        TriggerHandle {
            notify: Arc::clone(&self.manual),
        }
    }

    /// Run passes until `cancel` fires; then drop any pass in flight and return.
    pub async fn run(self, cancel: CancellationToken) {
        let Self {
            mut reconciler,
            interval,
            watch_paths,
            self_writes,
            backoff,
            pass_timeout,
            observer,
            manual,
        } = self;
        let mut watch = if watch_paths.is_empty() {
            None
        } else {
            FileWatch::start(&watch_paths, self_writes, DEBOUNCE)
        };
        let mut backoff = Backoff::new(backoff);
        let mut schedule = Schedule::starting();
        let mut failures: u32 = 0;
        let mut pass: u64 = 0;

        loop {
            // Idle: wait until a pass is due, collecting triggers.
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                let due = schedule.due();
                if due.is_some_and(|due| due <= Instant::now()) {
                    break;
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    () = sleep_until(due) => {}
                    paths = next_change(&mut watch) => schedule.add_changes(paths),
                    () = manual.notified() => schedule.add(Trigger::Manual),
                }
            }

            pass += 1;
            let ctx = PassContext {
                pass,
                triggers: schedule.take_for_pass(Instant::now()),
                consecutive_failures: failures,
            };
            tracing::debug!(%ctx, "pass starting");
            observer.on_pass_start(&ctx);
            let started_at = Instant::now();

            // Running: the pass future lives only in this block, so a timed-out pass is
            // dropped before anything else happens.
            let result = {
                let pass_future =
                    tokio::time::timeout(pass_timeout, reconciler.reconcile(ctx.clone()));
                tokio::pin!(pass_future);
                loop {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => {
                            tracing::debug!(%ctx, "loop cancelled; abandoning the pass in flight");
                            return;
                        }
                        result = &mut pass_future => break result,
                        paths = next_change(&mut watch) => schedule.add_changes(paths),
                        () = manual.notified() => schedule.add(Trigger::Manual),
                    }
                }
            };
            let result = match result {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(err)) => Err(Failure::Failed(err)),
                Err(_elapsed) => Err(Failure::Timeout(pass_timeout)),
            };

            let ended_at = Instant::now();
            let next_interval = interval.map(|i| ended_at + i);
            match &result {
                Ok(output) => {
                    failures = 0;
                    backoff.reset();
                    schedule.succeeded(ended_at, output.action(), next_interval);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.next_delay();
                    if let Failure::Timeout(limit) = err {
                        tracing::warn!(%ctx, ?limit, retry_in = ?delay, "pass timed out and was cancelled");
                    } else {
                        tracing::debug!(%ctx, error = %err, retry_in = ?delay, "pass failed");
                    }
                    schedule.failed(ended_at + delay, next_interval);
                }
            }
            observer.on_pass_end(&EndedPass {
                context: &ctx,
                started_at,
                duration: ended_at - started_at,
                result: result.as_ref(),
                consecutive_failures: failures,
                next_pass_at: schedule.due(),
            });
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_change(watch: &mut Option<FileWatch>) -> BTreeSet<PathBuf> {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// When the next pass is due, and why.
///
/// Invariants: `not_before` is set only between a failed pass and the next pass, and then
/// equals the instant of the `Retry` timer, so nothing runs a pass before it. `pending` holds
/// the triggers that have fired but not yet been handed to a pass.
#[derive(Debug)]
struct Schedule {
    pending: BTreeSet<Trigger>,
    /// A requeue or retry deadline, with the trigger it becomes when it fires.
    timer: Option<(Instant, Trigger)>,
    /// End of the last pass plus the interval.
    interval_at: Option<Instant>,
    not_before: Option<Instant>,
}

impl Schedule {
    fn starting() -> Self {
        Self {
            pending: BTreeSet::from([Trigger::Startup]),
            timer: None,
            interval_at: None,
            not_before: None,
        }
    }

    /// The instant the next pass should start; `None` when only a new trigger can start one.
    fn due(&self) -> Option<Instant> {
        let earliest = if self.pending.is_empty() {
            [self.timer.as_ref().map(|(at, _)| *at), self.interval_at]
                .into_iter()
                .flatten()
                .min()
        } else {
            Some(Instant::now())
        };
        match (earliest, self.not_before) {
            (Some(earliest), Some(not_before)) => Some(earliest.max(not_before)),
            (earliest, _) => earliest,
        }
    }

    fn add(&mut self, trigger: Trigger) {
        self.pending.insert(trigger);
    }

    fn add_changes(&mut self, paths: BTreeSet<PathBuf>) {
        self.pending
            .extend(paths.into_iter().map(Trigger::FileChanged));
    }

    /// Fire the timers that are due and hand every collected trigger to the pass starting
    /// now. Timers that are not due are dropped too: the pass supersedes them, and its own
    /// outcome schedules the next one.
    fn take_for_pass(&mut self, now: Instant) -> Vec<Trigger> {
        if let Some((at, trigger)) = self.timer.take()
            && at <= now
        {
            self.pending.insert(trigger);
        }
        if self.interval_at.take().is_some_and(|at| at <= now) {
            self.pending.insert(Trigger::Interval);
        }
        self.not_before = None;
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    fn succeeded(&mut self, now: Instant, action: Action, interval_at: Option<Instant>) {
        self.timer = match action {
            Action::Requeue(delay) => Some((now + delay, Trigger::Requeue)),
            Action::AwaitTrigger => None,
        };
        self.interval_at = interval_at;
        self.not_before = None;
    }

    fn failed(&mut self, retry_at: Instant, interval_at: Option<Instant>) {
        self.timer = Some((retry_at, Trigger::Retry));
        self.interval_at = interval_at;
        self.not_before = Some(retry_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, oneshot};

    const SEC: Duration = Duration::from_secs(1);
    /// Long enough that, with paused time, "nothing happened by then" means "never".
    const NEVER: Duration = Duration::from_secs(24 * 3600);

    #[derive(Debug)]
    struct Boom;
    impl fmt::Display for Boom {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("boom")
        }
    }

    /// What the fake reconciler does in one pass.
    enum Step {
        Return(Result<Action, ()>),
        /// Run for this long (tokio time), then succeed with the action.
        Take(Duration, Action),
        /// Wait until the test opens the gate, then succeed with the action.
        Gate(oneshot::Receiver<()>, Action),
        /// Never finish.
        Hang,
    }

    struct Start {
        at: Instant,
        ctx: PassContext,
    }

    /// A scripted fake reconciler that reports every pass start and counts overlap and drops.
    #[derive(Default)]
    struct Probe {
        script: Mutex<VecDeque<Step>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
        dropped_unfinished: AtomicUsize,
    }

    /// Tracks one running pass; dropping it before `finished` is set means it was cancelled.
    struct Running<'a> {
        probe: &'a Probe,
        finished: bool,
    }

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.probe.running.fetch_sub(1, Ordering::SeqCst);
            if !self.finished {
                self.probe.dropped_unfinished.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Probe {
        fn then(&self, step: Step) -> &Self {
            self.script.lock().unwrap().push_back(step);
            self
        }

        async fn pass(
            &self,
            starts: &mpsc::UnboundedSender<Start>,
            ctx: PassContext,
        ) -> Result<Action, Boom> {
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now_running, Ordering::SeqCst);
            let mut guard = Running {
                probe: self,
                finished: false,
            };
            let _ = starts.send(Start {
                at: Instant::now(),
                ctx,
            });
            let step = self.script.lock().unwrap().pop_front();
            let result = match step {
                None => Ok(Action::AwaitTrigger),
                Some(Step::Return(r)) => r.map_err(|()| Boom),
                Some(Step::Take(d, action)) => {
                    tokio::time::sleep(d).await;
                    Ok(action)
                }
                Some(Step::Gate(gate, action)) => {
                    let _ = gate.await;
                    Ok(action)
                }
                Some(Step::Hang) => std::future::pending().await,
            };
            guard.finished = true;
            result
        }
    }

    struct Harness {
        probe: Arc<Probe>,
        starts: mpsc::UnboundedReceiver<Start>,
        t0: Instant,
    }

    type TestController = Controller<
        Box<
            dyn FnMut(PassContext) -> futures::future::BoxFuture<'static, Result<Action, Boom>>
                + Send,
        >,
    >;

    fn harness() -> (Harness, TestController) {
        let probe = Arc::new(Probe::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let reconciler = {
            let probe = Arc::clone(&probe);
            Box::new(move |ctx| {
                let probe = Arc::clone(&probe);
                let tx = tx.clone();
                Box::pin(async move { probe.pass(&tx, ctx).await })
                    as futures::future::BoxFuture<'static, _>
            }) as Box<dyn FnMut(PassContext) -> _ + Send>
        };
        let controller = Controller::new(reconciler).backoff(BackoffConfig {
            jitter: false,
            ..BackoffConfig::default()
        });
        (
            Harness {
                probe,
                starts: rx,
                t0: Instant::now(),
            },
            controller,
        )
    }

    impl Harness {
        async fn next_start(&mut self) -> Start {
            tokio::time::timeout(NEVER, self.starts.recv())
                .await
                .expect("a pass starts")
                .expect("loop alive")
        }

        async fn assert_no_pass(&mut self, within: Duration) {
            if let Ok(Some(start)) = tokio::time::timeout(within, self.starts.recv()).await {
                panic!("unexpected {} at +{:?}", start.ctx, start.at - self.t0);
            }
        }

        fn since_t0(&self, start: &Start) -> Duration {
            start.at - self.t0
        }
    }

    fn spawn(controller: TestController) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(controller.run(cancel.clone()));
        (cancel, handle)
    }

    #[tokio::test(start_paused = true)]
    async fn startup_pass_is_immediate_and_await_trigger_waits_for_a_trigger() {
        let (mut h, c) = harness();
        let trigger = c.trigger_handle();
        let (_cancel, _run) = spawn(c);

        let first = h.next_start().await;
        assert_eq!(h.since_t0(&first), Duration::ZERO);
        assert_eq!(first.ctx.triggers, [Trigger::Startup]);
        assert_eq!(first.ctx.pass, 1);

        h.assert_no_pass(NEVER).await;
        trigger.trigger();
        let second = h.next_start().await;
        assert_eq!(second.ctx.triggers, [Trigger::Manual]);
        assert_eq!(second.ctx.pass, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_triggers_during_a_pass_make_exactly_one_follow_up_pass() {
        let (mut h, c) = harness();
        let (open, gate) = oneshot::channel();
        h.probe.then(Step::Gate(gate, Action::AwaitTrigger));
        let trigger = c.trigger_handle();
        let (_cancel, _run) = spawn(c);

        h.next_start().await;
        for _ in 0..10 {
            trigger.trigger();
            // Let the loop see each trigger on its own rather than as one stored permit.
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        open.send(()).expect("pass waits at the gate");

        let follow_up = h.next_start().await;
        assert_eq!(follow_up.ctx.triggers, [Trigger::Manual]);
        h.assert_no_pass(NEVER).await;
        assert_eq!(h.probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn passes_never_overlap() {
        let (mut h, c) = harness();
        for i in 0..30 {
            // Long passes that requeue sooner than they last, with triggers hammering in.
            h.probe.then(Step::Take(
                SEC * (i % 4 + 1),
                Action::Requeue(Duration::from_millis(10)),
            ));
        }
        let trigger = c.trigger_handle();
        let c = c.interval(SEC);
        let (_cancel, _run) = spawn(c);
        let hammer = tokio::spawn(async move {
            loop {
                trigger.trigger();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        for _ in 0..30 {
            h.next_start().await;
            assert_eq!(h.probe.running.load(Ordering::SeqCst), 1);
        }
        hammer.abort();
        assert_eq!(h.probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_is_honoured_and_an_earlier_trigger_wins() {
        let (mut h, c) = harness();
        h.probe
            .then(Step::Return(Ok(Action::Requeue(SEC * 10))))
            .then(Step::Return(Ok(Action::Requeue(SEC * 10))));
        let trigger = c.trigger_handle();
        let (_cancel, _run) = spawn(c);

        h.next_start().await;
        let requeued = h.next_start().await;
        assert_eq!(h.since_t0(&requeued), SEC * 10, "exactly the requeue delay");
        assert_eq!(requeued.ctx.triggers, [Trigger::Requeue]);

        tokio::time::advance(SEC * 3).await;
        trigger.trigger();
        let early = h.next_start().await;
        assert_eq!(h.since_t0(&early), SEC * 13);
        assert_eq!(early.ctx.triggers, [Trigger::Manual]);
        // That pass awaited triggers, so the superseded requeue does not fire later.
        h.assert_no_pass(NEVER).await;
    }

    #[tokio::test(start_paused = true)]
    async fn interval_passes_run_an_interval_after_the_previous_pass_ends() {
        let (mut h, c) = harness();
        for _ in 0..3 {
            h.probe.then(Step::Take(SEC * 5, Action::AwaitTrigger));
        }
        let (_cancel, _run) = spawn(c.interval(SEC * 30));

        let mut at = Vec::new();
        for _ in 0..4 {
            let start = h.next_start().await;
            if start.ctx.pass > 1 {
                assert_eq!(start.ctx.triggers, [Trigger::Interval]);
            }
            at.push(h.since_t0(&start).as_secs());
        }
        assert_eq!(at, [0, 35, 70, 105]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_caps_and_resets_after_success() {
        let (mut h, c) = harness();
        for _ in 0..9 {
            h.probe.then(Step::Return(Err(())));
        }
        h.probe
            .then(Step::Return(Ok(Action::AwaitTrigger)))
            .then(Step::Return(Err(())));
        let trigger = c.trigger_handle();
        let (_cancel, _run) = spawn(c);

        let mut last = h.next_start().await;
        let mut gaps = Vec::new();
        for failures in 1..=9u32 {
            let start = h.next_start().await;
            assert_eq!(start.ctx.triggers, [Trigger::Retry]);
            assert_eq!(start.ctx.consecutive_failures, failures);
            gaps.push((start.at - last.at).as_secs());
            last = start;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 60, 60, 60]);

        // The tenth pass succeeded; the next failure starts again from the minimum.
        trigger.trigger();
        let after_success = h.next_start().await;
        assert_eq!(after_success.ctx.consecutive_failures, 0);
        let retry = h.next_start().await;
        assert_eq!(retry.at - after_success.at, SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_backoff_stays_within_bounds() {
        let (mut h, c) = harness();
        for _ in 0..12 {
            h.probe.then(Step::Return(Err(())));
        }
        let (_cancel, _run) = spawn(c.backoff(BackoffConfig::default()));

        let mut last = h.next_start().await;
        for base in [1u64, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60] {
            let start = h.next_start().await;
            let gap = start.at - last.at;
            let low = (SEC * base as u32 / 2).max(SEC);
            assert!(
                gap >= low && gap <= SEC * base as u32,
                "gap {gap:?} outside [{low:?}, {base}s]"
            );
            last = start;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_backoff_wait_for_the_retry_deadline() {
        let (mut h, c) = harness();
        h.probe
            .then(Step::Return(Err(())))
            .then(Step::Return(Err(())));
        let trigger = c.trigger_handle();
        let (_cancel, _run) = spawn(c.interval(Duration::from_millis(500)));

        h.next_start().await; // fails at t=0: retry at 1 s
        let second = h.next_start().await; // fails at t=1 s: retry at 3 s
        assert_eq!(h.since_t0(&second), SEC);
        for _ in 0..15 {
            tokio::time::advance(Duration::from_millis(100)).await;
            trigger.trigger();
        }
        let third = h.next_start().await;
        assert_eq!(
            h.since_t0(&third),
            SEC * 3,
            "the storm did not shorten the backoff"
        );
        assert_eq!(
            third.ctx.triggers,
            [Trigger::Interval, Trigger::Manual, Trigger::Retry]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_pass_is_cancelled_at_the_timeout_and_the_loop_goes_on() {
        let (mut h, c) = harness();
        h.probe.then(Step::Hang);
        let (_cancel, _run) = spawn(c.pass_timeout(SEC * 10));

        h.next_start().await;
        let retry = h.next_start().await;
        assert_eq!(
            h.probe.dropped_unfinished.load(Ordering::SeqCst),
            1,
            "hung pass dropped"
        );
        // Timeout at 10 s, then the first backoff step of 1 s.
        assert_eq!(h.since_t0(&retry), SEC * 11);
        assert_eq!(retry.ctx.triggers, [Trigger::Retry]);
        assert_eq!(retry.ctx.consecutive_failures, 1);
        assert_eq!(h.probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_drops_the_pass_in_flight_and_run_returns_at_once() {
        let (mut h, c) = harness();
        h.probe.then(Step::Hang);
        let (cancel, run) = spawn(c);

        h.next_start().await;
        let cancelled_at = Instant::now();
        cancel.cancel();
        tokio::time::timeout(Duration::from_millis(1), run)
            .await
            .expect("run returns promptly")
            .expect("run did not panic");
        assert_eq!(Instant::now(), cancelled_at, "no time passed");
        assert_eq!(h.probe.dropped_unfinished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_while_idle_returns() {
        let (mut h, c) = harness();
        let (cancel, run) = spawn(c.interval(SEC * 60));
        h.next_start().await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_millis(1), run)
            .await
            .expect("run returns promptly")
            .expect("run did not panic");
    }

    /// Records what the observer hooks see.
    #[derive(Default)]
    struct Seen {
        starts: Mutex<Vec<u64>>,
        ends: Mutex<Vec<SeenEnd>>,
    }

    /// Pass number, result (action or error reason), consecutive failures, time to the next
    /// pass, duration.
    type SeenEnd = (
        u64,
        Result<Action, &'static str>,
        u32,
        Option<Duration>,
        Duration,
    );

    impl Observer<Action, Boom> for Seen {
        fn on_pass_start(&self, ctx: &PassContext) {
            self.starts.lock().unwrap().push(ctx.pass);
        }
        fn on_pass_end(&self, o: &EndedPass<'_, Action, Boom>) {
            self.ends.lock().unwrap().push((
                o.context.pass,
                o.result.copied().map_err(Failure::reason),
                o.consecutive_failures,
                o.next_pass_in(),
                o.duration,
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_sees_every_pass_with_its_outcome_and_next_pass() {
        let (mut h, c) = harness();
        h.probe
            .then(Step::Take(SEC * 2, Action::Requeue(SEC * 5)))
            .then(Step::Return(Err(())))
            .then(Step::Hang)
            .then(Step::Return(Ok(Action::AwaitTrigger)));
        let seen = Arc::new(Seen::default());
        let c = c
            .observer(Arc::clone(&seen))
            .pass_timeout(SEC * 10)
            .interval(SEC * 100);
        let (_cancel, _run) = spawn(c);
        for _ in 0..4 {
            h.next_start().await;
        }
        // Let the fourth pass end.
        tokio::task::yield_now().await;
        h.assert_no_pass(SEC * 50).await;

        assert_eq!(*seen.starts.lock().unwrap(), [1, 2, 3, 4]);
        let ends = seen.ends.lock().unwrap();
        assert_eq!(
            *ends,
            [
                (1, Ok(Action::Requeue(SEC * 5)), 0, Some(SEC * 5), SEC * 2),
                (2, Err("reconcile_failed"), 1, Some(SEC), Duration::ZERO),
                (3, Err("pass_timeout"), 2, Some(SEC * 2), SEC * 10),
                (
                    4,
                    Ok(Action::AwaitTrigger),
                    0,
                    Some(SEC * 100),
                    Duration::ZERO
                ),
            ]
        );
    }

    /// Real inotify, so real time: wait with deadlines, never sleep.
    #[tokio::test]
    async fn a_file_change_runs_a_pass_and_an_own_write_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = dir.path().join("auth.json");
        let subjects = dir.path().join("subjects");
        std::fs::write(&auth, "{}").expect("auth");
        std::fs::write(&subjects, "").expect("subjects");
        let self_writes = SelfWrites::new();
        let (mut h, c) = harness();
        let c = c
            .watch_files([&auth, &subjects])
            .watch_files([dir.path().join("missing-dir/file")])
            .self_writes(self_writes.clone());
        let (_cancel, _run) = spawn(c);
        async fn next(h: &mut Harness) -> Start {
            tokio::time::timeout(Duration::from_secs(10), h.starts.recv())
                .await
                .expect("a pass before the deadline")
                .expect("loop alive")
        }

        assert_eq!(next(&mut h).await.ctx.triggers, [Trigger::Startup]);
        // The loop starts watching before its first pass, so this write is seen.
        std::fs::write(&auth, "{\"edited\":true}").expect("hand edit");
        assert_eq!(
            next(&mut h).await.ctx.triggers,
            [Trigger::FileChanged(auth.clone())]
        );

        std::fs::write(&auth, "{\"ours\":true}").expect("own write");
        self_writes.record_current(&auth).expect("record");
        std::fs::write(&subjects, "C=USA").expect("subjects edit");
        // Events arrive in order: had the own write triggered, it would come first.
        assert_eq!(
            next(&mut h).await.ctx.triggers,
            [Trigger::FileChanged(subjects.clone())]
        );
    }
}
