//! Reaps every child process nobody else waits for.
//!
//! Piper makes itself a *child subreaper* (Linux `PR_SET_CHILD_SUBREAPER`)
//! so that what a step orphans is re-parented to Piper, not to PID 1, and
//! can be ended with the step (see `process.rs`). The price: every orphan
//! of every descendant becomes our child — a daemon a step left behind,
//! `git maintenance run --detach` after each fetch — and a child that exits
//! stays a zombie until its parent waits for it. Left alone they pile up
//! until PIDs run out in a long `piper watch` or `piperd`.
//!
//! So this module waits for every child that is not *owned*: a child Piper
//! spawned itself is waited for by whoever spawned it (tokio's or std's
//! `Child`), and taking its exit status here would break that wait. Spawns
//! go through [`spawn_owned`], which registers the pid; a pass of
//! [`reap_orphans`] does nothing while a spawn is between `fork` and
//! registration, so an unregistered child seen by a pass is always an orphan.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Registry {
    /// Pids of children spawned through `spawn_owned` and not yet waited for.
    owned: HashSet<u32>,
    /// Spawns between their start and the registration of their pid.
    spawning: usize,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding it leaves consistent data: keep going.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered child: dropping it (after the child was waited for) lets
/// the reaper treat that pid as anyone's again.
#[must_use = "drop the guard only after the child was waited for"]
pub struct Owned(Option<u32>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            registry().owned.remove(&pid);
        }
    }
}

/// Spawns a child through `spawn` (any `Command::spawn`) and registers its
/// pid, so [`reap_orphans`] never takes its exit status from its owner.
pub fn spawn_owned<C>(
    spawn: impl FnOnce() -> std::io::Result<C>,
    pid: impl FnOnce(&C) -> Option<u32>,
) -> std::io::Result<(C, Owned)> {
    registry().spawning += 1;
    let spawned = spawn();
    let mut reg = registry();
    reg.spawning -= 1;
    let child = spawned?;
    let pid = pid(&child);
    if let Some(pid) = pid {
        reg.owned.insert(pid);
    }
    Ok((child, Owned(pid)))
}

/// Waits (without blocking) for every exited child that is not owned.
/// Returns false when a spawn was in flight and the pass was skipped.
pub fn reap_orphans() -> bool {
    let reg = registry();
    if reg.spawning > 0 {
        return false;
    }
    for pid in children() {
        if reg.owned.contains(&pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on one pid with WNOHANG writes only to `status`;
        // a child still running is left alone (it returns 0).
        unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    }
    true
}

/// The pids of our children, from `/proc/self/task/*/children` (an orphan
/// is re-parented to one of our threads).
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// The least time between two passes: how long an orphan may stay a
/// zombie after the previous pass.
const PASS_INTERVAL: Duration = Duration::from_millis(50);

/// Makes this process a child subreaper and, inside a tokio runtime, starts
/// the task that reaps orphans after SIGCHLD (at most once per
/// [`PASS_INTERVAL`]; and every few seconds, in case a signal was coalesced
/// while a spawn was in flight). Idempotent.
pub fn start() {
    static SUBREAPER: std::sync::Once = std::sync::Once::new();
    SUBREAPER.call_once(|| {
        #[cfg(target_os = "linux")]
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag
        // and touches no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    });
    // One reaper task; it clears the flag when its runtime drops it, so a
    // later runtime starts its own.
    static RUNNING: AtomicBool = AtomicBool::new(false);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if RUNNING.swap(true, Ordering::SeqCst) {
        return;
    }
    struct ClearOnDrop;
    impl Drop for ClearOnDrop {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::SeqCst);
        }
    }
    runtime.spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let _running = ClearOnDrop;
        let mut sigchld = signal(SignalKind::child()).ok();
        // A pass after a SIGCHLD (or every 5 s), not one at start: a run
        // has no orphans yet, and the scan of /proc was ~10 syscalls of
        // every `piper exec`. (A zombie inherited across exec is reaped by
        // the first pass.) At most one pass per PASS_INTERVAL: the signals
        // of a burst of steps ending wait and are answered by one pass (a
        // pass per step was a tenth of a 1000-step build's main thread).
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            while !reap_orphans() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(PASS_INTERVAL).await;
        }
    });
}
