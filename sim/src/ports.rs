//! Ports for servers another process will bind: chosen outside the kernel's ephemeral range.
//!
//! A port from `bind("127.0.0.1:0")` is free only until the listener is dropped, and it comes
//! from the ephemeral range that every outgoing connection also takes its local port from: a
//! test that probes a server a thousand times can take the very port handed to a process
//! starting a moment later ("Address already in use"). Ports from below that range are never
//! taken by an outgoing connection, and this process hands each out once.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Where ports are looked for: below Linux's default ephemeral range (32768–60999), above the
/// ports services usually own.
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Every port this process has handed out.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that is free now, outside the ephemeral range, and handed out by no
/// earlier call of this process. Panics when the whole range is taken (a test machine that
/// broken has nothing to test on).
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let span = u32::from(RANGE.end - RANGE.start);
    // Start at a point of the range that differs between processes, so two test binaries
    // run at once do not walk the range in step.
    let start = (std::process::id().wrapping_mul(7919)) % span;
    for step in 0..span {
        let port = RANGE.start + ((start + step) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {RANGE:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_free_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(RANGE.contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let taken = free_port();
        let _holder = TcpListener::bind(("127.0.0.1", taken)).unwrap();
        for _ in 0..20 {
            assert_ne!(free_port(), taken);
        }
    }
}
