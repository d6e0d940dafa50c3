//! Which standby serves reads, decided from what the gate last saw of each:
//! pure functions, no I/O.
//!
//! A standby's lag is measured in checkpoints, not bytes: the time since the
//! primary announced the oldest checkpoint the standby does not show yet
//! (zero when it shows the latest). That is the delay a client reading from
//! it would see, and it does not grow on an idle primary the way
//! `now() - pg_last_xact_replay_timestamp()` does.

use crate::listener::Announced;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The gate's view of one standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The last poll answered.
    pub up: bool,
    /// Highest checkpoint known to be visible there.
    pub visible: u64,
    pub in_rotation: bool,
}

/// Primary announcements not yet visible everywhere, oldest first.
#[derive(Debug, Default)]
pub struct History(VecDeque<Announced>);

/// Announcements kept at most (a standby gone for long is down, not lagging).
const MAX_HISTORY: usize = 4096;

impl History {
    pub fn push(&mut self, a: Announced) {
        if self.0.back().is_none_or(|b| a.checkpoint > b.checkpoint) {
            self.0.push_back(a);
            if self.0.len() > MAX_HISTORY {
                self.0.pop_front();
            }
        }
    }

    /// Forgets announcements at or below `checkpoint` (visible everywhere that matters).
    pub fn prune(&mut self, checkpoint: u64) {
        while self.0.front().is_some_and(|a| a.checkpoint <= checkpoint) {
            self.0.pop_front();
        }
    }

    /// How long a standby showing `visible` has been behind at `now`.
    pub fn lag(&self, visible: u64, now: Instant) -> Duration {
        self.0
            .iter()
            .find(|a| a.checkpoint > visible)
            .map_or(Duration::ZERO, |a| now.saturating_duration_since(a.at))
    }

    /// Announcements in `(after, upto]`, oldest first.
    pub fn covered(&self, after: u64, upto: u64) -> impl Iterator<Item = &Announced> {
        self.0
            .iter()
            .filter(move |a| a.checkpoint > after && a.checkpoint <= upto)
    }
}

/// Whether a standby serves reads now: it must answer and trail by at most
/// `max_lag`; once out, it comes back only at half that, so a standby
/// hovering around the bound does not flap.
pub fn in_rotation(was: bool, up: bool, lag: Duration, max_lag: Duration) -> bool {
    up && if was {
        lag <= max_lag
    } else {
        lag <= max_lag / 2
    }
}

/// The standby reads go to (`None`: the primary). The current one stays
/// while in rotation. Another is taken only if it shows every checkpoint
/// streams were already told of (`published`), so that no stream asks a
/// standby for a checkpoint it has not replayed; the primary has them all.
pub fn choose(current: Option<usize>, views: &[View], published: u64) -> Option<usize> {
    if let Some(i) = current {
        if views.get(i).is_some_and(|v| v.in_rotation) {
            return Some(i);
        }
    }
    views
        .iter()
        .position(|v| v.in_rotation && v.visible >= published)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(visible: u64, in_rotation: bool) -> View {
        View {
            up: true,
            visible,
            in_rotation,
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_checkpoint_not_shown() {
        let t0 = Instant::now();
        let mut h = History::default();
        for (cp, ms) in [(10, 0), (12, 100), (12, 150), (15, 300)] {
            h.push(Announced {
                checkpoint: cp,
                at: t0 + Duration::from_millis(ms),
            });
        }
        let now = t0 + Duration::from_millis(1000);
        assert_eq!(h.lag(15, now), Duration::ZERO);
        assert_eq!(h.lag(12, now), Duration::from_millis(700));
        assert_eq!(h.lag(11, now), Duration::from_millis(900));
        assert_eq!(h.lag(0, now), Duration::from_millis(1000));
        assert_eq!(
            h.covered(10, 15).map(|a| a.checkpoint).collect::<Vec<_>>(),
            [12, 15]
        );
        h.prune(12);
        assert_eq!(h.lag(0, now), Duration::from_millis(700));
    }

    #[test]
    fn rotation_has_hysteresis() {
        let max = Duration::from_secs(4);
        assert!(in_rotation(true, true, Duration::from_secs(3), max));
        assert!(!in_rotation(true, true, Duration::from_secs(5), max));
        assert!(!in_rotation(false, true, Duration::from_secs(3), max));
        assert!(in_rotation(false, true, Duration::from_secs(2), max));
        assert!(!in_rotation(true, false, Duration::ZERO, max));
    }

    #[test]
    fn choice_sticks_and_never_goes_behind_what_streams_were_told() {
        // The current standby stays while in rotation, even if another is ahead.
        assert_eq!(choose(Some(1), &[view(9, true), view(5, true)], 5), Some(1));
        // Out of rotation: the first one that has everything published.
        assert_eq!(
            choose(Some(0), &[view(9, false), view(5, true), view(8, true)], 7),
            Some(2)
        );
        // None has it: the primary, until one catches up.
        assert_eq!(choose(Some(0), &[view(9, false), view(5, true)], 7), None);
        assert_eq!(choose(None, &[view(9, false), view(7, true)], 7), Some(1));
        assert_eq!(choose(None, &[], 0), None);
    }
}
