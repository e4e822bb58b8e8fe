//! The watch (§6.6): what the director's event log tells a pass — *which part* of the director
//! to look at again and *when*, never *what* changed. Pure: the pages of `/events` come in as
//! values, and what comes out is which deployments are dirty, whether a full pass is due, and
//! the watch's state. The I/O is in [`super::Reconciler::tick`].
//!
//! - [`Pager`]: reading every event newer than the cursor, page by page (newest first, at
//!   most 200 a page, `before_id` to page back, `after_time` to keep the pages small).
//! - [`Watch`]: the cursor, the dirty deployments, the full-pass schedule, and the state
//!   (off, unproven, healthy, failing, blind) with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use metrics::{Label, WatchStatus};
use tokio::time::Instant;

use crate::director::{Event, EventsQuery};
use crate::vm::Vm;

/// The director as the last passes saw it: every deployment's VMs, by name. A full pass
/// replaces it; a partial pass replaces the deployments it refetched.
pub type View = BTreeMap<String, Vec<Vm>>;

/// The director answers at most this many events at a time (§2.5).
pub const PAGE_CAP: usize = 200;
/// How many pages one read may take before it gives up and asks for a full pass: 2000
/// events between two polls a second apart is a director that is better relisted.
pub const MAX_PAGES: usize = 10;
/// How far before the cursor's own second the pages start (`after_time`). The pages then
/// hold only the last minute of the log rather than its newest 200 events; the minute of slack
/// covers events whose timestamp is a little older than their id says (two director workers
/// creating events in the same second commit in either order).
pub const TIME_SLACK_SECS: i64 = 60;

/// How often the watch polls and when full passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// `intervals.watch`: between two reads of the event log.
    pub interval: Duration,
    /// `intervals.resync`: between two full passes while the watch is healthy.
    pub resync: Duration,
    /// `intervals.poll_user_sync`: between two full passes in every other state.
    pub poll: Duration,
}

/// The newest event seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub id: u64,
    pub timestamp: i64,
}

impl Cursor {
    fn of(event: &Event) -> Self {
        Cursor {
            id: event.id,
            timestamp: event.timestamp,
        }
    }
}

/// Where in the log the watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The log has not been read yet: the first read only finds its newest event (the full
    /// pass that follows lists everything before it).
    Unread,
    /// The log was empty when last read: every event that appears is new.
    Empty,
    /// The newest event seen.
    At(Cursor),
}

/// What one read of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The events newer than the cursor, newest first, and where the log now ends.
    New {
        events: Vec<Event>,
        position: Position,
    },
    /// The newest event is older than the cursor: a director restored from an older
    /// backup. Ids start over below what was seen; only a full pass can tell what changed.
    Restored { newest: Cursor, cursor: Cursor },
    /// The events since the cursor could not all be read: more than [`MAX_PAGES`] pages
    /// of them, or the log no longer reaches back to the cursor (cleaned up).
    Gap { newest: Cursor, why: &'static str },
}

/// Reading every event newer than a position, page by page. Feed each page the director
/// answered to [`Pager::take`] until it returns the [`Read`].
#[derive(Debug)]
pub struct Pager {
    from: Position,
    pages: usize,
    newest: Option<Cursor>,
    collected: Vec<Event>,
    before_id: Option<u64>,
}

impl Pager {
    pub fn new(from: Position) -> Self {
        Pager {
            from,
            pages: 0,
            newest: None,
            collected: Vec::new(),
            before_id: None,
        }
    }

    /// The query for the next page.
    pub fn query(&self) -> EventsQuery {
        EventsQuery {
            before_id: self.before_id,
            after_time: match self.from {
                Position::At(cursor) => Some(cursor.timestamp - TIME_SLACK_SECS),
                Position::Unread | Position::Empty => None,
            },
        }
    }

    /// Takes one page; `None` means: fetch the page [`Pager::query`] now names.
    pub fn take(&mut self, mut page: Vec<Event>) -> Option<Read> {
        // Newest first, as the director sends them; sorted here so that nothing below
        // depends on it.
        page.sort_unstable_by_key(|e| std::cmp::Reverse(e.id));
        page.dedup_by_key(|e| e.id);
        let first = self.pages == 0;
        self.pages += 1;
        if first {
            let Some(head) = page.first() else {
                return Some(Read::New {
                    events: Vec::new(),
                    position: match self.from {
                        // Nothing in the minute before the cursor's second, the cursor
                        // included: nothing was added since (a cleaned-up cursor would need
                        // 10 000 newer events, which the pages would show).
                        at @ Position::At(_) => at,
                        Position::Unread | Position::Empty => Position::Empty,
                    },
                });
            };
            let newest = Cursor::of(head);
            self.newest = Some(newest);
            match self.from {
                Position::Unread => {
                    return Some(Read::New {
                        events: Vec::new(),
                        position: Position::At(newest),
                    });
                }
                Position::At(cursor) if newest.id < cursor.id => {
                    return Some(Read::Restored { newest, cursor });
                }
                Position::At(_) | Position::Empty => {}
            }
        }
        let newest = self.newest.expect("set by the first, non-empty page");
        let floor = match self.from {
            Position::At(cursor) => cursor.id,
            Position::Unread | Position::Empty => 0,
        };
        let full = page.len() >= PAGE_CAP;
        let oldest = page.last().map(|e| e.id);
        let reached = oldest.is_some_and(|id| id <= floor);
        self.collected
            .extend(page.into_iter().take_while(|e| e.id > floor));
        let done = |collected: &mut Vec<Event>| Read::New {
            events: std::mem::take(collected),
            position: Position::At(newest),
        };
        if reached {
            return Some(done(&mut self.collected));
        }
        if !full {
            // The log (or the time window) ends before the cursor.
            return Some(match self.from {
                Position::Empty => done(&mut self.collected),
                _ => Read::Gap {
                    newest,
                    why: "the event log no longer reaches back to the last event read",
                },
            });
        }
        if self.pages >= MAX_PAGES {
            return Some(Read::Gap {
                newest,
                why: "more new events than the watch reads between two polls",
            });
        }
        self.before_id = oldest;
        None
    }
}

/// Why the next full pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullReason {
    Startup,
    /// The schedule of a healthy watch: `intervals.resync`.
    Resync,
    /// The schedule of every other state (and of a held removal): `poll_user_sync`.
    Poll,
    /// A previous full pass failed: it is retried.
    Retry,
    /// The log cannot say what changed (restore, gap).
    Log(String),
}

impl FullReason {
    pub fn label(&self) -> &str {
        match self {
            FullReason::Startup => "startup",
            FullReason::Resync => "resync",
            FullReason::Poll => "poll",
            FullReason::Retry => "retry",
            FullReason::Log(_) => "event log",
        }
    }
}

/// What absorbing one read did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Absorbed {
    /// Events newer than the cursor.
    pub events: usize,
    /// Deployments they made dirty that were not dirty yet.
    pub dirtied: usize,
    /// Deployments a full pass had found changed without an event, still unannounced now.
    pub unannounced: usize,
    /// While blind: the event this read found that shows the log is written again (its id
    /// and the deployment it names); the next full pass then decides.
    pub proof: Option<(u64, String)>,
}

/// Why the watch is blind, and how far the proof that it may trust the log again has come
/// (§6.6): an event naming a deployment, newer than `mark`, and then a full pass that finds
/// every change announced. Invariant: `proof`, when set, names an event with an id above
/// `mark`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blind {
    /// What the full pass found that no event announced.
    found: String,
    /// The cursor when the watch went blind (moved to the newest id by a restore, whose ids
    /// start over): the events up to it are the ones that failed to announce.
    mark: u64,
    /// The first event newer than `mark` that names a deployment, and that deployment.
    proof: Option<(u64, String)>,
}

impl Blind {
    fn reason(&self) -> String {
        match &self.proof {
            None => format!(
                "{}; the event log must show it is written again: waiting for an event that names a deployment, newer than event {}",
                self.found, self.mark
            ),
            Some((id, deployment)) => format!(
                "{}; event {id} (deployment {deployment}) shows the log is written again: the next full pass decides",
                self.found
            ),
        }
    }
}

/// The deployments a full pass found changed that no event had made dirty, judged by the
/// next read of the log (the events of a change the listing saw may follow it by a moment).
#[derive(Debug)]
struct Suspects {
    changed: BTreeSet<String>,
    /// The watch was blind and its proof had been read before this listing: a listing that
    /// finds every change announced then ends the blindness.
    after_proof: bool,
}

/// The state of the watch (§6.6), as [`Watch::state`] decides it: what the full-pass
/// schedule follows, and the `state` label of `bosh_nats_sync_watch_state` and
/// `bosh_nats_sync_watch_state_changes_total` (and of `/status`'s `watch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchState {
    /// `intervals.watch: 0`, or the watch has not reported yet: full passes every
    /// `poll_user_sync`, no event polls.
    Off,
    /// The event log answers but holds no event yet: it may not be written at all
    /// (`record_events: false`), so full passes keep running every `poll_user_sync`.
    Unproven,
    /// The log answers and is being written: full passes only every `intervals.resync`.
    Healthy,
    /// Reading the log fails (HTTP error, 401/403, no such endpoint).
    Failing,
    /// A full pass found a change that no event announced.
    Blind,
}

impl Label for WatchState {
    /// `Off` first: the state before the watch reports, which the metrics start in.
    const ALL: &'static [Self] = &[
        Self::Off,
        Self::Unproven,
        Self::Healthy,
        Self::Failing,
        Self::Blind,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Unproven => "unproven",
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Blind => "blind",
        }
    }
}

/// The watch's memory between ticks. Invariant: `dirty` holds deployments named by an event
/// read since they were last fetched, each with when the first such event was read.
#[derive(Debug)]
pub struct Watch {
    settings: WatchSettings,
    position: Position,
    dirty: BTreeMap<String, Instant>,
    /// What the last full pass found changed without an event: judged by the next read.
    suspects: Option<Suspects>,
    /// Why the last read failed, while it is the latest read.
    failing: Option<String>,
    /// Why the watch is blind, until the log proves it is written and a full pass after
    /// that proof finds every change announced.
    blind: Option<Blind>,
    /// An event newer than the cursor has been read since start-up (or since a restore):
    /// only then is the log known to be written, not merely to hold old events.
    written: bool,
    /// A full pass due regardless of the schedule.
    forced: Option<FullReason>,
    last_full: Option<(Instant, SystemTime)>,
    /// Damping held a removal on the last full pass.
    damping_held: bool,
    events_read_at: Option<SystemTime>,
    last_event_id: Option<u64>,
    reported: Option<WatchState>,
}

impl Watch {
    pub fn new(settings: WatchSettings) -> Self {
        Watch {
            settings,
            position: Position::Unread,
            dirty: BTreeMap::new(),
            suspects: None,
            failing: None,
            blind: None,
            written: false,
            forced: Some(FullReason::Startup),
            last_full: None,
            damping_held: false,
            events_read_at: None,
            last_event_id: None,
            reported: None,
        }
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// The state and its reason (§6.6).
    pub fn state(&self) -> (WatchState, String) {
        if let Some(why) = &self.failing {
            return (WatchState::Failing, why.clone());
        }
        if let Some(blind) = &self.blind {
            return (WatchState::Blind, blind.reason());
        }
        match self.position {
            Position::Unread => (
                WatchState::Unproven,
                "the event log has not been read yet".to_owned(),
            ),
            Position::Empty => (
                WatchState::Unproven,
                "the event log is empty: the director may not record events (director.events.record_events)".to_owned(),
            ),
            Position::At(_) if self.written => (
                WatchState::Healthy,
                "the event log answers and is being written".to_owned(),
            ),
            Position::At(_) => (
                WatchState::Healthy,
                "the event log answers and holds events; none newer than the cursor has been read yet".to_owned(),
            ),
        }
    }

    /// The state changed since the last call: the new state, once.
    pub fn state_change(&mut self) -> Option<(WatchState, String)> {
        let (state, reason) = self.state();
        (self.reported != Some(state)).then(|| {
            self.reported = Some(state);
            (state, reason)
        })
    }

    /// Takes what a read of the log found at `now`.
    pub fn absorb(&mut self, read: Read, now: Instant) -> Absorbed {
        self.failing = None;
        self.events_read_at = Some(SystemTime::now());
        let mut absorbed = Absorbed::default();
        match read {
            Read::New { events, position } => {
                if self.position == Position::Unread && self.last_full.is_some() {
                    // The cursor was found after a listing (the reads before it failed):
                    // what changed between the two is known to neither.
                    self.forced = Some(FullReason::Log(
                        "the event log was first read after the last full pass".to_owned(),
                    ));
                }
                absorbed.events = events.len();
                if let Some(newest) = events.first() {
                    self.last_event_id = Some(newest.id);
                    self.written = true;
                }
                if let Some(suspects) = self.suspects.take() {
                    absorbed.unannounced = self.judge(suspects, &events, position);
                }
                if let Some(blind) = self.blind.as_mut()
                    && blind.proof.is_none()
                {
                    blind.proof = events
                        .iter()
                        .filter(|e| e.id > blind.mark)
                        .find_map(|e| e.deployment.clone().map(|d| (e.id, d)));
                    absorbed.proof.clone_from(&blind.proof);
                }
                for deployment in events.into_iter().filter_map(|e| e.deployment) {
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        self.dirty.entry(deployment)
                    {
                        slot.insert(now);
                        absorbed.dirtied += 1;
                    }
                }
                self.position = position;
            }
            Read::Restored { newest, cursor } => {
                self.position = Position::At(newest);
                self.last_event_id = Some(newest.id);
                // Ids start over: what was read before says nothing of the restored log.
                self.written = false;
                if let Some(blind) = self.blind.as_mut() {
                    blind.mark = newest.id;
                    blind.proof = None;
                }
                self.forced = Some(FullReason::Log(format!(
                    "the event log's newest id {} is below the last one read, {}: the director was restored from a backup",
                    newest.id, cursor.id
                )));
            }
            Read::Gap { newest, why } => {
                self.position = Position::At(newest);
                self.last_event_id = Some(newest.id);
                self.forced = Some(FullReason::Log(why.to_owned()));
            }
        }
        absorbed
    }

    /// Judges what the last full pass found changed against the events read since the listing
    /// before it (`events`, this read's): returns how many changes no event announced. A log
    /// that is written (`position` at an event) and failed to announce a change makes the
    /// watch blind, marked at the newest event; a listing after the proof that finds every
    /// change announced ends the blindness. A quiet listing proves nothing by itself: a
    /// director that stopped recording is quiet too.
    fn judge(&mut self, suspects: Suspects, events: &[Event], position: Position) -> usize {
        let named: BTreeSet<&str> = events
            .iter()
            .filter_map(|e| e.deployment.as_deref())
            .collect();
        let unannounced: Vec<&String> = suspects
            .changed
            .iter()
            .filter(|d| !named.contains(d.as_str()))
            .collect();
        // An empty log cannot announce anything; only a log that is written can be caught
        // not announcing.
        let Position::At(cursor) = position else {
            return unannounced.len();
        };
        if let Some(first) = unannounced.first() {
            self.blind = Some(Blind {
                found: format!(
                    "a full pass found {} deployment(s) changed that no event announced (e.g. {first})",
                    unannounced.len()
                ),
                mark: cursor.id,
                proof: None,
            });
        } else if suspects.after_proof {
            self.blind = None;
        }
        unannounced.len()
    }

    /// A read of the log failed (an HTTP error, 401/403, no such endpoint, bad JSON).
    pub fn read_failed(&mut self, why: String) {
        self.failing = Some(why);
    }

    /// Whether a full pass is due at `now`, and why.
    pub fn full_due(&self, now: Instant) -> Option<FullReason> {
        if let Some(reason) = &self.forced {
            return Some(reason.clone());
        }
        let (at, reason) = self.schedule()?;
        (at <= now).then_some(reason)
    }

    /// When the schedule runs the next full pass, and which schedule it is: `resync` after
    /// the last one while healthy, `poll_user_sync` otherwise; `None` before the first full
    /// pass and while one is forced.
    fn schedule(&self) -> Option<(Instant, FullReason)> {
        if self.forced.is_some() {
            return None;
        }
        let (last, _) = self.last_full?;
        Some(match self.state().0 {
            WatchState::Healthy if !self.damping_held => {
                (last + self.settings.resync, FullReason::Resync)
            }
            _ => (last + self.settings.poll, FullReason::Poll),
        })
    }

    /// When the schedule runs the next full pass: `resync` after the last one while healthy,
    /// `poll_user_sync` otherwise; `None` while one is forced (it is due now).
    pub fn next_full_at(&self) -> Option<Instant> {
        self.schedule().map(|(at, _)| at)
    }

    /// Until the next tick: `intervals.watch` after this tick's read of the log began
    /// (`read_at`), so a pass that outlasts the interval is followed by the next read at once;
    /// sooner when a full pass is due sooner.
    pub fn next_tick_in(&self, read_at: Instant, now: Instant) -> Duration {
        let until_full = self
            .next_full_at()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        (read_at + self.settings.interval)
            .saturating_duration_since(now)
            .min(until_full)
    }

    /// The dirty deployments, to refetch.
    pub fn dirty(&self) -> Vec<String> {
        self.dirty.keys().cloned().collect()
    }

    /// How many deployments are dirty.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// When the events that made `deployment` dirty were first read.
    pub fn dirty_since(&self, deployment: &str) -> Option<Instant> {
        self.dirty.get(deployment).copied()
    }

    /// These deployments were fetched: clean until an event names them again.
    pub fn fetched<'a>(&mut self, deployments: impl IntoIterator<Item = &'a String>) {
        for deployment in deployments {
            self.dirty.remove(deployment);
        }
    }

    /// A full pass listed the director: `changed` are the deployments whose VMs differ from
    /// the view the watch had kept. Those no event had made dirty are judged by the next read
    /// — unless the log itself asked for this listing (a restore, a gap): what it could not
    /// say is not held against it. Every dirty deployment was just fetched.
    pub fn listed(&mut self, changed: BTreeSet<String>) {
        let changed: BTreeSet<String> = changed
            .into_iter()
            .filter(|d| !self.dirty.contains_key(d))
            .collect();
        self.dirty.clear();
        self.suspects = match self.forced {
            Some(FullReason::Log(_)) => None,
            _ => Some(Suspects {
                changed,
                after_proof: self.blind.as_ref().is_some_and(|b| b.proof.is_some()),
            }),
        };
    }

    /// A full pass succeeded at `now`: the schedule starts over. `held` when damping holds a
    /// removal: its confirmations then come from full passes every `poll_user_sync`, as
    /// without the watch, not from partial passes over a view that did not change.
    pub fn full_pass_done(&mut self, now: Instant, held: bool) {
        self.last_full = Some((now, SystemTime::now()));
        self.forced = None;
        self.damping_held = held;
    }

    /// Whether damping held a removal on a partial pass: full passes then come every
    /// `poll_user_sync` until it is applied or forgotten.
    pub fn held(&mut self, held: bool) {
        self.damping_held = held;
    }

    /// A full pass failed: the next tick retries it.
    pub fn full_pass_failed(&mut self) {
        if self.forced.is_none() {
            self.forced = Some(FullReason::Retry);
        }
    }

    /// What `/status` shows of a watch that has not reported: `intervals.watch` is 0, or
    /// the loop has not started it yet.
    pub fn unreported() -> WatchStatus {
        WatchStatus {
            state: WatchState::Off.as_str(),
            reason: "the watch has not reported: intervals.watch is 0, or it has not started yet"
                .to_owned(),
            cursor: None,
            events_read_at: None,
            last_event_id: None,
            last_full_pass_at: None,
            next_full_pass_at: None,
        }
    }

    /// What `/status` shows.
    pub fn status(&self) -> WatchStatus {
        let (state, reason) = self.state();
        let next_full_pass_at = match self.next_full_at() {
            None => Some(SystemTime::now()),
            Some(at) => Some(SystemTime::now() + at.saturating_duration_since(Instant::now())),
        };
        WatchStatus {
            state: state.as_str(),
            reason,
            cursor: match self.position {
                Position::At(c) => Some(c.id),
                Position::Unread | Position::Empty => None,
            },
            events_read_at: self.events_read_at,
            last_event_id: self.last_event_id,
            last_full_pass_at: self.last_full.map(|(_, at)| at),
            next_full_pass_at,
        }
    }
}

/// The deployments whose VMs differ between two views (as sets of VMs: order is not a
/// change).
pub fn changed(before: &View, after: &View) -> BTreeSet<String> {
    fn sorted(vms: &[Vm]) -> Vec<(&Option<String>, bool)> {
        let mut v: Vec<(&Option<String>, bool)> = vms
            .iter()
            .map(|vm| (&vm.agent_id, vm.permanent_nats_credentials))
            .collect();
        v.sort_unstable();
        v
    }
    let empty = Vec::new();
    before
        .keys()
        .chain(after.keys())
        .filter(|name| {
            let b = before.get(*name).unwrap_or(&empty);
            let a = after.get(*name).unwrap_or(&empty);
            sorted(b) != sorted(a)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
