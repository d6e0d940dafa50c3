//! Whether the relay can do its job, beyond reaching Postgres: its LISTEN
//! connection is up (else streams hear of no checkpoint), and, when it
//! drives ticks, a tick succeeded recently (the ticker ticks at least once a
//! second when idle, so a long silence means it is stuck or failing).
//! `GET /health` answers 503 with these problems named.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// No successful tick for this long makes a ticking relay unhealthy.
pub const TICK_STALL: Duration = Duration::from_secs(60);

pub struct Liveness {
    drive_ticks: bool,
    listener_up: AtomicBool,
    last_tick_ok: Mutex<Instant>,
}

impl Liveness {
    /// A relay starting now: its listener is not connected yet.
    pub fn new(drive_ticks: bool) -> Liveness {
        Liveness {
            drive_ticks,
            listener_up: AtomicBool::new(false),
            last_tick_ok: Mutex::new(Instant::now()),
        }
    }

    pub fn set_listener(&self, up: bool) {
        self.listener_up.store(up, Relaxed);
    }

    pub fn tick_ok(&self) {
        *self.last_tick_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// What keeps the relay from doing its job at `now`; empty when healthy.
    pub fn problems(&self, now: Instant) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.listener_up.load(Relaxed) {
            out.push("LISTEN connection down");
        }
        let last = *self.last_tick_ok.lock().unwrap_or_else(|e| e.into_inner());
        if self.drive_ticks && now.saturating_duration_since(last) > TICK_STALL {
            out.push("no successful tick recently");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_and_ticks_decide() {
        let l = Liveness::new(true);
        let now = Instant::now();
        assert_eq!(l.problems(now), ["LISTEN connection down"]);
        l.set_listener(true);
        assert!(l.problems(now).is_empty());
        let later = now + TICK_STALL + Duration::from_secs(1);
        assert_eq!(l.problems(later), ["no successful tick recently"]);
        // A relay that does not tick is not judged by ticks.
        let quiet = Liveness::new(false);
        quiet.set_listener(true);
        assert!(quiet.problems(later).is_empty());
    }
}
