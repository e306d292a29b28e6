//! Bounds on what clients of a listener can hold: a fixed number of connections, each
//! with time limits, and an accept loop that backs off when the daemon is short of
//! resources. Any local user can connect to the metrics port, so no client may be able to
//! make the daemon deaf, spin, or run out of file descriptors.
//!
//! When a connection arrives and every slot is taken, the oldest connection that is not
//! in the middle of a request is closed to make room (a client that connects and says
//! nothing, or trickles a request, cannot hold a slot against one that asks); if every
//! connection is busy with a request, the new one is closed at once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// One connection's place.
#[derive(Default)]
pub struct Slot {
    busy: AtomicBool,
    close: Notify,
}

impl Slot {
    /// Marks the connection as serving a request (not to be closed for room) or not.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// Resolves when the connection must close to make room for another.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

/// The connections of one listener.
pub struct Slots {
    what: &'static str,
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Arc<Slot>>)>,
    refused: Throttled,
}

/// A connection's hold on its slot, released on drop.
pub struct Held {
    slots: Arc<Slots>,
    seq: u64,
    pub slot: Arc<Slot>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots
            .open
            .lock()
            .expect("slots lock")
            .1
            .remove(&self.seq);
    }
}

impl Slots {
    pub fn new(what: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            max,
            open: Mutex::new((0, BTreeMap::new())),
            refused: Throttled::new(Duration::from_secs(10)),
        })
    }

    /// A slot for a new connection, if one can be had (see the module documentation).
    pub fn admit(self: &Arc<Self>) -> Option<Held> {
        let mut open = self.open.lock().expect("slots lock");
        if open.1.len() >= self.max {
            // Oldest first: the map is ordered by arrival.
            let idle = open
                .1
                .iter()
                .find(|(_, s)| !s.busy.load(Ordering::Relaxed))
                .map(|(k, _)| *k);
            let Some(k) = idle else {
                self.refused.log(|held| {
                    tracing::warn!(
                        "{}: all {} connections are busy; closing a new one ({held} more since the last report)",
                        self.what,
                        self.max
                    )
                });
                return None;
            };
            let s = open.1.remove(&k).expect("found above");
            s.close.notify_one();
        }
        open.0 += 1;
        let seq = open.0;
        let slot = Arc::new(Slot::default());
        open.1.insert(seq, slot.clone());
        Some(Held {
            slots: self.clone(),
            seq,
            slot,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().expect("slots lock").1.len()
    }
}

/// A log line that is written at most once per period, with the count of those it held
/// back: a condition that repeats thousands of times a second shows as one line.
pub struct Throttled {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with how many earlier occurrences were held back, or holds this one
    /// back.
    pub fn log(&self, log: impl FnOnce(u64)) {
        let mut s = self.state.lock().expect("log lock");
        let now = Instant::now();
        if s.0.is_none_or(|t| now.duration_since(t) >= self.period) {
            let held = s.1;
            *s = (Some(now), 0);
            drop(s);
            log(held);
        } else {
            s.1 += 1;
        }
    }
}

/// Waits after a failed accept: 10 ms doubling to 1 s while failures repeat (an accept
/// that fails for want of file descriptors fails again at once; retrying in a loop would
/// spin a core and fill the log).
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Self(Duration::ZERO)
    }

    pub async fn failed(&mut self) {
        self.0 = (self.0 * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(self.0).await;
    }

    pub fn succeeded(&mut self) {
        self.0 = Duration::ZERO;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_listener_makes_room_by_closing_the_oldest_idle_connection() {
        let s = Slots::new("test", 2);
        let a = s.admit().unwrap();
        let b = s.admit().unwrap();
        a.slot.set_busy(true);
        let c = s.admit().expect("b is idle: it makes room");
        assert_eq!(s.len(), 2);
        tokio::time::timeout(Duration::from_millis(100), b.slot.closed())
            .await
            .expect("b was told to close");
        c.slot.set_busy(true);
        assert!(s.admit().is_none(), "every connection busy: refused");
        drop(a);
        assert!(s.admit().is_some());
    }

    #[test]
    fn throttled_logs_once_per_period_and_counts_the_rest() {
        let t = Throttled::new(Duration::from_secs(3600));
        let mut seen = Vec::new();
        for _ in 0..5 {
            t.log(|held| seen.push(held));
        }
        assert_eq!(seen, vec![0]);
    }
}
