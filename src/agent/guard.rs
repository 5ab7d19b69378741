//! The guard: a small process beside piperd that ends the agent's step
//! process groups when piperd can no longer vouch for them.
//!
//! A step must never outlive its agent, nor run on two agents at once.
//! piperd ends its steps itself when it can (cancel, shutdown, a lost or
//! unrenewable lease: `fence.rs`), but a piperd that is SIGKILLed, stopped
//! (SIGSTOP, a debugger) or wedged cannot. The guard is not stuck with it:
//! it is a process of its own (`piperd guard`, the same binary), in a
//! process group of its own so a terminal's Ctrl-C does not reach it, and
//! it reads one pipe from piperd, as containerd's shim and conmon watch
//! their parent:
//!
//! - **End of file** on the pipe: piperd has exited, however (the kernel
//!   closes the write end even after SIGKILL; the end is close-on-exec, so
//!   no step holds it open). The guard ends every group in the journal
//!   (`DATA/process-groups`) and exits.
//! - **A deadline** (`deadline MS`, on `CLOCK_BOOTTIME`): piperd writes one
//!   after each lease renewal — the moment its builds' oldest successful
//!   renewal started, plus the lease, minus the fencing margin. If that
//!   moment passes without a newer line, piperd has not renewed in time and
//!   may be stopped: the guard ends every journaled group (SIGKILL), before
//!   any lease can expire on the database's clock. `clear` says there is
//!   nothing to guard (no build held).
//!
//! The journal is the one `process.rs` keeps: a group is ended only if its
//! leader is still the process that was started (its start time matches),
//! never a later process that reused the id.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Milliseconds on `CLOCK_BOOTTIME`: monotonic, shared by every process of
/// the machine, and counting time suspended (a lease on the database keeps
/// running while the machine sleeps).
pub fn boottime_ms() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_BOOTTIME
    // exists on every Linux piperd runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}

/// piperd's end of the guard: its pipe.
pub struct Guard {
    groups: PathBuf,
    inner: Mutex<Running>,
}

struct Running {
    child: Child,
    pipe: ChildStdin,
    /// The last line sent, to send only changes (and to resend it to a
    /// guard started again).
    said: String,
}

impl Guard {
    /// Starts the guard of the groups journaled in `groups`.
    pub fn spawn(groups: &Path) -> std::io::Result<Guard> {
        let running = Self::start(groups, "clear\n")?;
        Ok(Guard {
            groups: groups.to_path_buf(),
            inner: Mutex::new(running),
        })
    }

    fn start(groups: &Path, said: &str) -> std::io::Result<Running> {
        // The binary piperd runs from, even if it was replaced on disk.
        let mut child = Command::new("/proc/self/exe")
            .arg("guard")
            .arg("--groups")
            .arg(groups)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(said.as_bytes())?;
        Ok(Running {
            child,
            pipe,
            said: said.to_string(),
        })
    }

    /// Tells the guard when to end the groups (None: nothing to guard).
    /// A guard that died is started again (and said so in the log).
    pub fn set_deadline(&self, deadline_ms: Option<i64>) {
        let line = match deadline_ms {
            Some(ms) => format!("deadline {ms}\n"),
            None => "clear\n".to_string(),
        };
        let mut running = self.inner.lock().unwrap();
        if running.said == line {
            return;
        }
        if running.pipe.write_all(line.as_bytes()).is_ok() {
            running.said = line;
            return;
        }
        let status = running.child.try_wait().ok().flatten();
        tracing::error!(
            ?status,
            "the guard process is gone: starting it again (until then, a stopped piperd's steps would not be ended)"
        );
        match Self::start(&self.groups, &line) {
            Ok(again) => *running = again,
            Err(e) => tracing::error!("cannot start the guard process again: {e}"),
        }
    }
}

/// `piperd guard --groups DIR`: the guard process itself (see the module
/// documentation). Reads its standard input until piperd goes away.
pub fn main(groups: &Path) -> i32 {
    // Only piperd's going away ends the guard, not a terminal's signals.
    // SAFETY: setting dispositions before any thread is started.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut deadline: Option<i64> = None;
    let mut pending = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let timeout = match deadline {
            Some(at) => (at - boottime_ms()).clamp(0, i32::MAX as i64) as i32,
            None => -1,
        };
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let ready = unsafe { libc::poll(&mut fd, 1, timeout) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            end_groups(groups, "the guard cannot poll its pipe");
            return 1;
        }
        if ready == 0 {
            if let Some(at) = deadline
                && boottime_ms() >= at
            {
                end_groups(
                    groups,
                    "piperd did not renew its leases in time (stopped, wedged or cut off)",
                );
                deadline = None;
            }
            continue;
        }
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
        {
            end_groups(groups, "piperd exited");
            return 0;
        }
        if n < 0 {
            continue;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line == "clear" {
                deadline = None;
            } else if let Some(ms) = line.strip_prefix("deadline ").and_then(|v| v.parse().ok()) {
                deadline = Some(ms);
            }
        }
    }
}

fn end_groups(groups: &Path, why: &str) {
    let ended = crate::process::end_leftover_groups(groups);
    if ended > 0 {
        eprintln!("piperd guard: {why}: ended {ended} step process group(s)");
    }
}
