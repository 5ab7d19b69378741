//! Self-fencing: an agent that cannot renew a build's lease ends that
//! build's steps before the lease can expire on the database's clock, so
//! that another agent's rescue never runs a step while this one's still
//! runs — as holders of Chubby, etcd or ZooKeeper leases stop acting on a
//! lease they cannot renew.
//!
//! The arithmetic: a renewal (or the claim) that started at `t` on this
//! machine's monotonic clock ran its `UPDATE` at some moment after `t`, so
//! the database's lease ends no earlier than `t + lease` (given clocks that
//! run at the same rate: the one assumption, bounded drift). At
//! `t + lease - margin` without a newer successful renewal, the agent gives
//! the attempt up: it ends the build's process groups and writes nothing
//! more for it but the reason (see `worker.rs`). The guard process
//! (`guard.rs`) is told the same deadline and enforces it when piperd
//! itself cannot (stopped, wedged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::guard::{Guard, boottime_ms};

/// The margin kept between the self-fence and the lease's end on the
/// database: a fifth of the lease, at least 200 ms and at most 5 s. It
/// covers the time to end the steps and the clocks' drift over one lease.
pub fn margin_for(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// Checks that `heartbeat` leaves room for a missed renewal before the
/// self-fence: at most half of `lease - margin`.
pub fn check_timing(lease: Duration, heartbeat: Duration) -> Result<(), String> {
    let margin = margin_for(lease);
    let usable = lease.saturating_sub(margin);
    if heartbeat.is_zero() || heartbeat * 2 > usable {
        return Err(format!(
            "a heartbeat of {} is too slow for a lease of {}: an agent ends its builds {} after their last renewal (the lease less a margin of {}), so renew at least twice in that time (--heartbeat at most {})",
            crate::duration::format(heartbeat),
            crate::duration::format(lease),
            crate::duration::format(usable),
            crate::duration::format(margin),
            crate::duration::format(usable / 2),
        ));
    }
    Ok(())
}

/// When each held build's lease was last renewed, and the guard to tell.
pub struct Fence {
    lease_ms: i64,
    margin_ms: i64,
    /// Build id → when its last successful renewal (or claim) started,
    /// on `CLOCK_BOOTTIME`.
    renewed: Mutex<HashMap<i64, i64>>,
    guard: Option<Guard>,
}

impl Fence {
    pub fn new(lease: Duration, guard: Option<Guard>) -> Fence {
        Fence {
            lease_ms: lease.as_millis() as i64,
            margin_ms: margin_for(lease).as_millis() as i64,
            renewed: Mutex::default(),
            guard,
        }
    }

    /// Now, on the clock deadlines are kept on: take it *before* the claim
    /// or renewal whose success you will record.
    pub fn now() -> i64 {
        boottime_ms()
    }

    /// A claim or renewal of `id` that started at `started` succeeded.
    pub fn renewed(&self, id: i64, started: i64) {
        let mut renewed = self.renewed.lock().unwrap();
        let at = renewed.entry(id).or_insert(started);
        *at = (*at).max(started);
        self.tell_guard(&renewed);
    }

    /// `id` is no longer held here (it ended, or was given up).
    pub fn forget(&self, id: i64) {
        let mut renewed = self.renewed.lock().unwrap();
        if renewed.remove(&id).is_some() {
            self.tell_guard(&renewed);
        }
    }

    /// The builds whose self-fence is due at `now`, with when their last
    /// renewal started; they are forgotten (each is given up once).
    pub fn overdue(&self, now: i64) -> Vec<(i64, i64)> {
        let mut renewed = self.renewed.lock().unwrap();
        let due: Vec<(i64, i64)> = renewed
            .iter()
            .filter(|(_, at)| now >= **at + self.lease_ms - self.margin_ms)
            .map(|(id, at)| (*id, *at))
            .collect();
        for (id, _) in &due {
            renewed.remove(id);
        }
        if !due.is_empty() {
            self.tell_guard(&renewed);
        }
        due
    }

    /// How long until the next self-fence is due (None: nothing held).
    pub fn next_due_in(&self, now: i64) -> Option<Duration> {
        let renewed = self.renewed.lock().unwrap();
        self.deadline(&renewed)
            .map(|at| Duration::from_millis((at - now).max(0) as u64))
    }

    fn deadline(&self, renewed: &HashMap<i64, i64>) -> Option<i64> {
        renewed
            .values()
            .min()
            .map(|oldest| oldest + self.lease_ms - self.margin_ms)
    }

    fn tell_guard(&self, renewed: &HashMap<i64, i64>) {
        if let Some(guard) = &self.guard {
            guard.set_deadline(self.deadline(renewed));
        }
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    pub fn margin_ms(&self) -> i64 {
        self.margin_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_fifth_of_the_lease_within_bounds() {
        assert_eq!(margin_for(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(
            margin_for(Duration::from_secs(3)),
            Duration::from_millis(600)
        );
        assert_eq!(
            margin_for(Duration::from_millis(500)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn a_heartbeat_must_fit_twice_before_the_fence() {
        assert!(check_timing(Duration::from_secs(30), Duration::from_secs(10)).is_ok());
        assert!(check_timing(Duration::from_secs(3), Duration::from_secs(1)).is_ok());
        let error = check_timing(Duration::from_secs(3), Duration::from_secs(2)).unwrap_err();
        assert!(error.contains("--heartbeat at most 1.2s"), "{error}");
    }

    #[test]
    fn a_build_is_due_at_its_renewal_plus_lease_less_margin() {
        let fence = Fence::new(Duration::from_secs(10), None);
        fence.renewed(1, 1_000);
        fence.renewed(2, 3_000);
        assert_eq!(fence.next_due_in(1_000), Some(Duration::from_secs(8)));
        assert!(fence.overdue(8_999).is_empty());
        assert_eq!(fence.overdue(9_000), vec![(1, 1_000)]);
        // Given up once; the other is due later, unless renewed meanwhile.
        assert!(fence.overdue(9_500).is_empty());
        fence.renewed(2, 9_000);
        assert!(fence.overdue(12_000).is_empty());
        fence.forget(2);
        assert_eq!(fence.next_due_in(12_000), None);
    }
}
