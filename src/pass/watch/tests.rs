//! The cursor, the paging and the state machine of the watch (§6.6), on plain values with
//! paused time.

use super::*;

const SETTINGS: WatchSettings = WatchSettings {
    interval: Duration::from_secs(1),
    resync: Duration::from_secs(300),
    poll: Duration::from_secs(10),
};

fn event(id: u64, deployment: Option<&str>) -> Event {
    Event {
        id,
        parent_id: None,
        timestamp: 1_700_000_000 + id as i64,
        action: Some("create".to_owned()),
        object_type: Some(if deployment.is_some() { "vm" } else { "lock" }.to_owned()),
        object_name: None,
        deployment: deployment.map(str::to_owned),
        instance: None,
    }
}

/// Events `from..=to`, newest first, as the director sends them.
fn page(from: u64, to: u64) -> Vec<Event> {
    (from..=to).rev().map(|id| event(id, Some("d"))).collect()
}

fn at(id: u64) -> Position {
    Position::At(Cursor {
        id,
        timestamp: 1_700_000_000 + id as i64,
    })
}

fn ids(read: &Read) -> Vec<u64> {
    match read {
        Read::New { events, .. } => events.iter().map(|e| e.id).collect(),
        other => panic!("expected new events, got {other:?}"),
    }
}

#[test]
fn the_first_read_only_finds_the_newest_event() {
    let mut pager = Pager::new(Position::Unread);
    assert_eq!(pager.query(), EventsQuery::default());
    let read = pager.take(page(1, 50)).unwrap();
    assert_eq!(
        read,
        Read::New {
            events: Vec::new(),
            position: at(50)
        }
    );
}

#[test]
fn an_empty_log_is_empty_and_then_every_event_is_new() {
    let read = Pager::new(Position::Unread).take(Vec::new()).unwrap();
    assert_eq!(
        read,
        Read::New {
            events: Vec::new(),
            position: Position::Empty
        }
    );
    let mut pager = Pager::new(Position::Empty);
    assert_eq!(pager.query().after_time, None);
    let read = pager.take(page(1, 3)).unwrap();
    assert_eq!(ids(&read), [3, 2, 1]);
    assert!(matches!(read, Read::New { position, .. } if position == at(3)));
}

#[test]
fn only_events_newer_than_the_cursor_are_new() {
    let mut pager = Pager::new(at(40));
    let query = pager.query();
    assert_eq!(query.before_id, None);
    assert_eq!(
        query.after_time,
        Some(1_700_000_040 - TIME_SLACK_SECS),
        "the pages start a minute before the cursor's second"
    );
    let read = pager.take(page(30, 45)).unwrap();
    assert_eq!(ids(&read), [45, 44, 43, 42, 41]);
    assert!(matches!(read, Read::New { position, .. } if position == at(45)));
}

#[test]
fn nothing_new_keeps_the_cursor() {
    assert_eq!(
        Pager::new(at(40)).take(page(30, 40)).unwrap(),
        Read::New {
            events: Vec::new(),
            position: at(40)
        }
    );
    assert_eq!(
        Pager::new(at(40)).take(Vec::new()).unwrap(),
        Read::New {
            events: Vec::new(),
            position: at(40)
        },
        "nothing in the minute before the cursor: nothing was added"
    );
}

#[test]
fn full_pages_are_followed_back_with_before_id_until_the_cursor() {
    let cursor = 1000;
    let newest = cursor + 450;
    let mut pager = Pager::new(at(cursor));
    let mut queries = Vec::new();
    let read = loop {
        let query = pager.query();
        queries.push(query.before_id);
        // What the director answers: the 200 newest below `before_id`, newest first.
        let top = query.before_id.map_or(newest, |b| b - 1);
        let answer = page(top.saturating_sub(PAGE_CAP as u64 - 1), top);
        if let Some(read) = pager.take(answer) {
            break read;
        }
    };
    assert_eq!(queries, [None, Some(newest - 199), Some(newest - 399)]);
    let got = ids(&read);
    assert_eq!(got.len(), 450);
    assert_eq!(got.first(), Some(&newest));
    assert_eq!(got.last(), Some(&(cursor + 1)));
    assert!(matches!(read, Read::New { position, .. } if position == at(newest)));
}

#[test]
fn too_many_pages_is_a_gap() {
    let mut pager = Pager::new(at(1));
    let mut top = 100_000;
    let read = loop {
        if let Some(read) = pager.take(page(top - 199, top)) {
            break read;
        }
        top -= 200;
    };
    assert!(
        matches!(read, Read::Gap { newest, .. } if newest.id == 100_000),
        "{read:?}"
    );
    assert_eq!(100_000 - top, 200 * (MAX_PAGES as u64 - 1));
}

#[test]
fn a_log_that_no_longer_reaches_the_cursor_is_a_gap() {
    // Cleaned up: the log starts well above the cursor and holds fewer than a page.
    let read = Pager::new(at(10)).take(page(500, 520)).unwrap();
    assert!(matches!(read, Read::Gap { newest, .. } if newest.id == 520));
}

#[test]
fn a_newest_id_below_the_cursor_is_a_restored_director() {
    let read = Pager::new(at(500)).take(page(1, 120)).unwrap();
    assert!(matches!(
        read,
        Read::Restored { newest, cursor } if newest.id == 120 && cursor.id == 500
    ));
}

#[test]
fn pages_out_of_order_or_repeating_an_event_are_read_once_in_order() {
    let mut answer = page(5, 12);
    answer.reverse();
    answer.push(event(11, Some("d")));
    let read = Pager::new(at(8)).take(answer).unwrap();
    assert_eq!(ids(&read), [12, 11, 10, 9]);
}

fn new_events(events: Vec<Event>, newest: u64) -> Read {
    Read::New {
        events,
        position: at(newest),
    }
}

/// A watch through start-up: the first read, the first full pass.
fn started(now: Instant) -> Watch {
    let mut watch = Watch::new(SETTINGS);
    watch.absorb(new_events(Vec::new(), 10), now);
    watch.listed(BTreeSet::new());
    watch.full_pass_done(now, false);
    watch
}

#[tokio::test(start_paused = true)]
async fn start_up_is_unproven_with_a_full_pass_due() {
    let watch = Watch::new(SETTINGS);
    assert_eq!(watch.state().0, WatchState::Unproven);
    assert_eq!(watch.full_due(Instant::now()), Some(FullReason::Startup));
    assert_eq!(
        watch.next_tick_in(Instant::now(), Instant::now()),
        Duration::ZERO
    );
}

#[tokio::test(start_paused = true)]
async fn a_written_log_is_healthy_and_resyncs_on_its_interval() {
    let start = Instant::now();
    let mut watch = started(start);
    assert_eq!(watch.state().0, WatchState::Healthy);
    assert_eq!(watch.full_due(start), None);
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.resync));
    assert_eq!(watch.next_tick_in(start, start), SETTINGS.interval);
    // The interval runs from the read that began the tick: a tick whose pass took 300 ms
    // reads again 700 ms after it ended, one whose pass outlasted the interval at once.
    let read_at = Instant::now();
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(
        watch.next_tick_in(read_at, Instant::now()),
        SETTINGS.interval - Duration::from_millis(300)
    );
    tokio::time::advance(SETTINGS.interval).await;
    assert_eq!(watch.next_tick_in(read_at, Instant::now()), Duration::ZERO);
    tokio::time::advance(
        SETTINGS.resync
            - Duration::from_millis(500)
            - SETTINGS.interval
            - Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        watch.next_tick_in(Instant::now(), Instant::now()),
        Duration::from_millis(500),
        "the tick before a resync comes when the resync is due"
    );
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(watch.full_due(Instant::now()), Some(FullReason::Resync));
    assert_eq!(
        watch.state_change().map(|(s, _)| s),
        Some(WatchState::Healthy)
    );
    assert_eq!(watch.state_change(), None, "a state is reported once");
    assert_eq!(watch.status().cursor, Some(10));
}

#[tokio::test(start_paused = true)]
async fn an_empty_log_stays_unproven_and_polls_full_passes() {
    let start = Instant::now();
    let mut watch = Watch::new(SETTINGS);
    watch.absorb(
        Read::New {
            events: Vec::new(),
            position: Position::Empty,
        },
        start,
    );
    watch.listed(BTreeSet::new());
    watch.full_pass_done(start, false);
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Unproven);
    assert!(reason.contains("record_events"), "{reason}");
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.poll));
}

#[tokio::test(start_paused = true)]
async fn events_naming_deployments_make_them_dirty_until_fetched() {
    let start = Instant::now();
    let mut watch = started(start);
    tokio::time::advance(Duration::from_secs(1)).await;
    let first = Instant::now();
    let absorbed = watch.absorb(
        new_events(
            vec![event(13, Some("b")), event(12, None), event(11, Some("a"))],
            13,
        ),
        first,
    );
    assert_eq!((absorbed.events, absorbed.dirtied), (3, 2));
    assert_eq!(watch.dirty(), ["a", "b"]);
    tokio::time::advance(Duration::from_secs(1)).await;
    let absorbed = watch.absorb(new_events(vec![event(14, Some("a"))], 14), Instant::now());
    assert_eq!(absorbed.dirtied, 0, "already dirty");
    assert_eq!(
        watch.dirty_since("a"),
        Some(first),
        "dirty since its first event"
    );
    watch.fetched(&["a".to_owned()]);
    assert_eq!(watch.dirty(), ["b"]);
    assert_eq!(watch.status().last_event_id, Some(14));
    assert_eq!(watch.position(), at(14));
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_is_failing_until_a_read_succeeds() {
    let start = Instant::now();
    let mut watch = started(start);
    watch.state_change();
    watch.read_failed("reading the event log failed: 403".to_owned());
    assert_eq!(
        watch.state_change(),
        Some((
            WatchState::Failing,
            "reading the event log failed: 403".to_owned()
        ))
    );
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.poll));
    assert_eq!(watch.position(), at(10), "the cursor is kept");
    watch.absorb(new_events(Vec::new(), 10), Instant::now());
    assert_eq!(
        watch.state_change().map(|(s, _)| s),
        Some(WatchState::Healthy)
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_no_event_announced_makes_the_watch_blind() {
    let start = Instant::now();
    let mut watch = started(start);
    watch.absorb(new_events(vec![event(11, Some("a"))], 11), start);
    // The full pass finds `a` (announced) and `b` (not) changed.
    watch.listed(BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    watch.full_pass_done(start, false);
    assert_eq!(watch.dirty_len(), 0, "a full pass fetched every deployment");
    assert_eq!(
        watch.state().0,
        WatchState::Healthy,
        "judged by the next read"
    );
    let absorbed = watch.absorb(new_events(Vec::new(), 11), start);
    assert_eq!(absorbed.unannounced, 1);
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Blind);
    assert!(reason.contains("(e.g. b)"), "{reason}");
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.poll));
    assert!(
        reason.contains("waiting for an event that names a deployment, newer than event 11"),
        "{reason}"
    );
}

/// A watch that went blind at event 11: its full pass found `b` changed unannounced.
fn blind_at_11(now: Instant) -> Watch {
    let mut watch = started(now);
    watch.absorb(new_events(vec![event(11, Some("a"))], 11), now);
    watch.listed(BTreeSet::from(["b".to_owned()]));
    watch.full_pass_done(now, false);
    watch.absorb(new_events(Vec::new(), 11), now);
    assert_eq!(watch.state().0, WatchState::Blind);
    watch
}

/// One full pass on the schedule of `watch`'s state, finding `changed`, and the read that
/// judges it.
async fn full_pass(watch: &mut Watch, changed: &[&str], then: Read) -> Absorbed {
    tokio::time::advance(SETTINGS.poll).await;
    assert_eq!(
        watch.full_due(Instant::now()),
        Some(FullReason::Poll),
        "a full pass every poll interval"
    );
    watch.listed(changed.iter().map(|d| (*d).to_owned()).collect());
    watch.full_pass_done(Instant::now(), false);
    watch.absorb(then, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn a_quiet_full_pass_while_blind_stays_blind() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    watch.state_change();
    // A director that stopped recording: every full pass is quiet, and proves nothing.
    for _ in 0..3 {
        let absorbed = full_pass(&mut watch, &[], new_events(Vec::new(), 11)).await;
        assert_eq!(absorbed.unannounced, 0);
        assert_eq!(watch.state().0, WatchState::Blind);
        assert_eq!(watch.state_change(), None, "still blind: nothing to report");
        assert_eq!(
            watch.next_full_at(),
            Some(Instant::now() + SETTINGS.poll),
            "and full passes keep coming every poll interval, not every resync"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_naming_no_deployment_is_no_proof() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    let absorbed = watch.absorb(new_events(vec![event(12, None)], 12), start);
    assert_eq!(absorbed.proof, None);
    full_pass(&mut watch, &[], new_events(Vec::new(), 12)).await;
    assert_eq!(watch.state().0, WatchState::Blind);
}

#[tokio::test(start_paused = true)]
async fn blind_ends_after_a_new_event_and_a_full_pass_that_finds_every_change_announced() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    watch.state_change();
    let absorbed = watch.absorb(
        new_events(vec![event(13, Some("c")), event(12, None)], 13),
        start,
    );
    assert_eq!(absorbed.proof, Some((13, "c".to_owned())));
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Blind, "the proof alone is not enough");
    assert!(
        reason.contains(
            "event 13 (deployment c) shows the log is written again: the next full pass decides"
        ),
        "{reason}"
    );
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.poll));
    // The next full pass finds `c`, which its event announced: the log is whole again.
    let absorbed = full_pass(&mut watch, &["c"], new_events(Vec::new(), 13)).await;
    assert_eq!(absorbed.unannounced, 0);
    assert_eq!(
        watch.state_change(),
        Some((
            WatchState::Healthy,
            "the event log answers and is being written".to_owned()
        ))
    );
    assert_eq!(
        watch.next_full_at(),
        Some(Instant::now() + SETTINGS.resync),
        "healthy: full passes every resync"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_pass_after_the_proof_that_finds_an_unannounced_change_starts_over() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    watch.absorb(new_events(vec![event(12, Some("c"))], 12), start);
    let absorbed = full_pass(&mut watch, &["d"], new_events(Vec::new(), 12)).await;
    assert_eq!(absorbed.unannounced, 1);
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Blind);
    assert!(reason.contains("(e.g. d)"), "{reason}");
    assert!(reason.contains("newer than event 12"), "{reason}");
    // The old proof is spent: a quiet full pass keeps it blind.
    full_pass(&mut watch, &[], new_events(Vec::new(), 12)).await;
    assert_eq!(watch.state().0, WatchState::Blind);
}

#[tokio::test(start_paused = true)]
async fn a_proof_read_after_the_listing_waits_for_the_next_full_pass() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    // The proof comes in the read that judges a listing made before it.
    let absorbed = full_pass(&mut watch, &[], new_events(vec![event(12, Some("c"))], 12)).await;
    assert_eq!(absorbed.proof, Some((12, "c".to_owned())));
    assert_eq!(watch.state().0, WatchState::Blind);
    full_pass(&mut watch, &["c"], new_events(Vec::new(), 12)).await;
    assert_eq!(watch.state().0, WatchState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn failing_while_blind_shows_failing_then_blind_again() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    watch.state_change();
    watch.read_failed("reading the event log failed: 500".to_owned());
    assert_eq!(
        watch.state_change().map(|(s, _)| s),
        Some(WatchState::Failing)
    );
    watch.absorb(new_events(Vec::new(), 11), start);
    let (state, reason) = watch.state_change().expect("a change of state");
    assert_eq!(
        state,
        WatchState::Blind,
        "an answer ends failing, not blind"
    );
    assert!(reason.contains("newer than event 11"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_restore_while_blind_moves_the_mark_and_its_listing_is_not_judged() {
    let start = Instant::now();
    let mut watch = blind_at_11(start);
    watch.absorb(new_events(vec![event(12, Some("c"))], 12), start);
    let newest = Cursor {
        id: 5,
        timestamp: 0,
    };
    watch.absorb(
        Read::Restored {
            newest,
            cursor: Cursor {
                id: 12,
                timestamp: 0,
            },
        },
        start,
    );
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Blind);
    assert!(
        reason.contains("newer than event 5"),
        "the proof read before the restore is spent, the mark starts over: {reason}"
    );
    // The listing the restore asked for finds changes no event of the new log announced:
    // the log could not say, so it is not held against it.
    watch.listed(BTreeSet::from(["x".to_owned()]));
    watch.full_pass_done(start, false);
    let absorbed = watch.absorb(new_events(vec![event(6, Some("y"))], 6), start);
    assert_eq!(absorbed.unannounced, 0);
    assert_eq!(absorbed.proof, Some((6, "y".to_owned())));
    full_pass(&mut watch, &["y"], new_events(Vec::new(), 6)).await;
    assert_eq!(watch.state().0, WatchState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_gap_s_listing_does_not_make_the_watch_blind() {
    let start = Instant::now();
    let mut watch = started(start);
    watch.absorb(
        Read::Gap {
            newest: Cursor {
                id: 5000,
                timestamp: 0,
            },
            why: "more new events than the watch reads between two polls",
        },
        start,
    );
    // The skipped events announced these changes; the watch never read them.
    watch.listed(BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    watch.full_pass_done(start, false);
    let absorbed = watch.absorb(new_events(Vec::new(), 5000), start);
    assert_eq!(absorbed.unannounced, 0);
    assert_eq!(watch.state().0, WatchState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn healthy_says_the_log_is_written_only_once_a_newer_event_was_read() {
    let start = Instant::now();
    let mut watch = started(start);
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Healthy, "the log holds events");
    assert_eq!(
        reason,
        "the event log answers and holds events; none newer than the cursor has been read yet"
    );
    watch.absorb(new_events(Vec::new(), 10), start);
    assert!(!watch.state().1.contains("being written"));
    watch.absorb(new_events(vec![event(11, None)], 11), start);
    assert_eq!(
        watch.state().1,
        "the event log answers and is being written"
    );
}

#[tokio::test(start_paused = true)]
async fn unproven_ends_when_the_log_holds_an_event() {
    let start = Instant::now();
    let mut watch = Watch::new(SETTINGS);
    let (state, reason) = watch.state();
    assert_eq!(state, WatchState::Unproven);
    assert_eq!(reason, "the event log has not been read yet");
    watch.absorb(
        Read::New {
            events: Vec::new(),
            position: Position::Empty,
        },
        start,
    );
    watch.listed(BTreeSet::new());
    watch.full_pass_done(start, false);
    assert_eq!(watch.state().0, WatchState::Unproven);
    // The quiet full passes of an empty log keep it unproven.
    full_pass(
        &mut watch,
        &[],
        Read::New {
            events: Vec::new(),
            position: Position::Empty,
        },
    )
    .await;
    assert_eq!(watch.state().0, WatchState::Unproven);
    watch.absorb(new_events(vec![event(1, Some("a"))], 1), Instant::now());
    assert_eq!(
        watch.state(),
        (
            WatchState::Healthy,
            "the event log answers and is being written".to_owned()
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_whose_events_follow_the_listing_is_announced() {
    let start = Instant::now();
    let mut watch = started(start);
    watch.listed(BTreeSet::from(["c".to_owned()]));
    watch.full_pass_done(start, false);
    let absorbed = watch.absorb(new_events(vec![event(11, Some("c"))], 11), start);
    assert_eq!(absorbed.unannounced, 0);
    assert_eq!(watch.state().0, WatchState::Healthy);
    assert_eq!(watch.dirty(), ["c"]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_log_cannot_be_caught_not_announcing() {
    let start = Instant::now();
    let mut watch = Watch::new(SETTINGS);
    let empty = || Read::New {
        events: Vec::new(),
        position: Position::Empty,
    };
    watch.absorb(empty(), start);
    watch.listed(BTreeSet::from(["a".to_owned()]));
    watch.full_pass_done(start, false);
    watch.absorb(empty(), start);
    assert_eq!(watch.state().0, WatchState::Unproven);
}

#[tokio::test(start_paused = true)]
async fn a_restore_or_a_gap_forces_a_full_pass() {
    let start = Instant::now();
    let mut watch = started(start);
    let cursor = Cursor {
        id: 10,
        timestamp: 0,
    };
    let newest = Cursor {
        id: 3,
        timestamp: 0,
    };
    watch.absorb(Read::Restored { newest, cursor }, start);
    let Some(FullReason::Log(why)) = watch.full_due(start) else {
        panic!("a full pass is due")
    };
    assert!(why.contains("restored"), "{why}");
    assert_eq!(
        watch.position(),
        Position::At(newest),
        "the cursor starts over"
    );
    watch.listed(BTreeSet::new());
    watch.full_pass_done(start, false);
    assert_eq!(watch.full_due(start), None);

    watch.absorb(
        Read::Gap {
            newest: Cursor {
                id: 5000,
                timestamp: 0,
            },
            why: "more new events than the watch reads between two polls",
        },
        start,
    );
    assert!(matches!(watch.full_due(start), Some(FullReason::Log(_))));
    assert_eq!(watch.status().cursor, Some(5000));
}

#[tokio::test(start_paused = true)]
async fn a_failed_full_pass_is_retried_and_a_success_ends_the_retries() {
    let start = Instant::now();
    let mut watch = started(start);
    tokio::time::advance(SETTINGS.resync).await;
    assert_eq!(watch.full_due(Instant::now()), Some(FullReason::Resync));
    watch.full_pass_failed();
    assert_eq!(watch.full_due(Instant::now()), Some(FullReason::Retry));
    watch.full_pass_done(Instant::now(), false);
    assert_eq!(watch.full_due(Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn held_removals_are_confirmed_by_full_passes_every_poll_interval() {
    let start = Instant::now();
    let mut watch = started(start);
    watch.held(true);
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.poll));
    watch.full_pass_done(start, false);
    assert_eq!(watch.next_full_at(), Some(start + SETTINGS.resync));
}

#[tokio::test(start_paused = true)]
async fn a_cursor_found_after_a_listing_forces_another_listing() {
    let start = Instant::now();
    let mut watch = Watch::new(SETTINGS);
    watch.read_failed("reading the event log failed: connection refused".to_owned());
    watch.listed(BTreeSet::new());
    watch.full_pass_done(start, false);
    assert_eq!(watch.full_due(start), None);
    watch.absorb(new_events(Vec::new(), 77), start);
    assert!(
        matches!(watch.full_due(start), Some(FullReason::Log(_))),
        "changes between the listing and the cursor are known to neither"
    );
}

#[test]
fn changed_compares_deployments_as_sets_of_vms() {
    let vm = |id: &str| Vm {
        agent_id: Some(id.to_owned()),
        permanent_nats_credentials: false,
    };
    let before = View::from([
        ("a".to_owned(), vec![vm("1"), vm("2")]),
        ("b".to_owned(), vec![vm("3")]),
        ("gone".to_owned(), vec![vm("4")]),
    ]);
    let after = View::from([
        ("a".to_owned(), vec![vm("2"), vm("1")]),
        ("b".to_owned(), vec![vm("3"), vm("5")]),
        ("new".to_owned(), vec![vm("6")]),
    ]);
    assert_eq!(
        changed(&before, &after),
        BTreeSet::from(["b".to_owned(), "gone".to_owned(), "new".to_owned()])
    );
    let mut permanent = after.clone();
    permanent.get_mut("a").unwrap()[0].permanent_nats_credentials = true;
    assert_eq!(
        changed(&after, &permanent),
        BTreeSet::from(["a".to_owned()])
    );
}
