//! Runs one command of a step under supervision, streaming its output as
//! events. See docs/architecture.md, "Process supervision".
//!
//! Every command gets its own process group. When it is cancelled (timeout,
//! Ctrl-C, fail-fast) the *group* gets SIGTERM, then SIGKILL after a grace
//! period — and when its main process exits on its own, whatever it left in
//! its group (`server &`) is ended the same way. Piper waits until the group
//! is really empty before reporting the command finished, so nothing a step
//! started outlives it. Piper makes itself a child subreaper (`reaper.rs`)
//! so orphaned grandchildren are re-parented to it and can be reaped (and
//! counted gone) even where PID 1 does not reap.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, EventSender};
use crate::spec::Command;

/// Where a step's output goes: the run's event stream, tagged with the
/// step. A runner writes to it; how events travel (a bounded channel that
/// slows a step down when the host reads slowly) is the engine's.
#[derive(Clone)]
pub struct OutputSink {
    events: EventSender,
    build: u32,
    step: String,
    /// What the step printed, kept for the cache (up to `CAPTURE_MAX`).
    capture: Option<std::sync::Arc<std::sync::Mutex<Capture>>>,
}

/// The most output kept for the cache: a step that prints more is not
/// stored (its log could not be replayed whole).
const CAPTURE_MAX: usize = 16 << 20;

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl OutputSink {
    pub(crate) fn new(events: EventSender, build: u32, step: String) -> OutputSink {
        OutputSink {
            events,
            build,
            step,
            capture: None,
        }
    }

    /// The same sink, keeping what is written when `on` (for the cache).
    #[cfg(feature = "cache")]
    pub(crate) fn capturing(&self, on: bool) -> OutputSink {
        let mut sink = self.clone();
        sink.capture = on.then(Default::default);
        sink
    }

    /// What was written, if kept whole.
    #[cfg(feature = "cache")]
    pub(crate) fn captured(&self) -> Option<Vec<u8>> {
        let capture = self.capture.as_ref()?.lock().ok()?;
        (!capture.overflowed).then(|| capture.bytes.clone())
    }

    /// The step whose output this is.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The build it is part of (as in its events).
    pub fn build(&self) -> u32 {
        self.build
    }

    /// Sends `data` as the step's output (a `StepOutput` event).
    pub async fn write(&self, data: Vec<u8>) {
        if let Some(capture) = &self.capture
            && let Ok(mut capture) = capture.lock()
        {
            if capture.bytes.len() + data.len() > CAPTURE_MAX {
                capture.overflowed = true;
                capture.bytes = Vec::new();
            } else if !capture.overflowed {
                capture.bytes.extend_from_slice(&data);
            }
        }
        let event = Event::StepOutput {
            build: self.build,
            step: self.step.clone(),
            data,
        };
        // A closed channel means the host is gone; the build is ending anyway.
        let _ = self.events.send(event).await;
    }

    /// Announces a command the step is about to run (a `StepCommand` event).
    pub async fn command(&self, command: String) {
        let event = Event::StepCommand {
            build: self.build,
            step: self.step.clone(),
            command,
        };
        let _ = self.events.send(event).await;
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// The program does not exist (recorded as exit code 127, as shells do).
    NotFound(String),
    /// It could not be started for another reason.
    SpawnFailed(String),
    /// Cancelled by its token; the group is gone.
    Canceled,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// The exit code to record: the process's, 128+N for a signal, 127 for
    /// a missing program.
    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            Exit::Signal(s) => Some(128 + s),
            Exit::NotFound(_) => Some(127),
            Exit::SpawnFailed(_) | Exit::Canceled => None,
        }
    }

    /// In words: `exited with code 2`, `command not found: cc`.
    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::NotFound(program) => format!("command not found: {program}"),
            Exit::SpawnFailed(why) => why.clone(),
            Exit::Canceled => "canceled".into(),
        }
    }
}

/// Where the build agent records the process groups it started (one file
/// per group, named by its id, holding its leader's start time), so that
/// after a crash its next run can end what the dead one left running.
static GROUP_JOURNAL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Records every process group started from now on in `dir`.
#[cfg(feature = "agent")]
pub fn journal_groups_in(dir: std::path::PathBuf) {
    let _ = std::fs::create_dir_all(&dir);
    let _ = GROUP_JOURNAL.set(dir);
}

/// The start time (clock ticks since boot) of a process, from /proc: with
/// the pid it names one process, never a later one that reused the pid.
fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(String::from)
}

fn journal_add(pgid: i32) {
    // Only piperd keeps a journal: `piper exec` reads nothing per step.
    let Some(dir) = GROUP_JOURNAL.get() else {
        return;
    };
    if let Some(started) = start_time(pgid) {
        // Written aside, then renamed: an entry exists only with its start
        // time. (`fs::write` creates the file empty first: an agent killed
        // in between left an entry that matched no process, so its restart
        // could not end that group.) No fsync: the journal is for a crash
        // of piperd, not of the machine.
        let entry = dir.join(pgid.to_string());
        let aside = dir.join(format!(".{pgid}.new"));
        if std::fs::write(&aside, started).is_ok() && std::fs::rename(&aside, &entry).is_err() {
            let _ = std::fs::remove_file(&aside);
        }
    }
}

fn journal_remove(pgid: i32) {
    if let Some(dir) = GROUP_JOURNAL.get() {
        let _ = std::fs::remove_file(dir.join(pgid.to_string()));
    }
}

/// Ends (SIGKILL) the process groups a previous run recorded in `dir`
/// whose leader is still the process it started, and forgets them all.
/// Returns how many groups were ended.
#[cfg(feature = "agent")]
pub fn end_leftover_groups(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut ended = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let recorded = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(pgid) = entry.file_name().to_string_lossy().parse::<i32>()
            && pgid > 1
            && start_time(pgid).as_deref() == Some(recorded.trim())
        {
            signal_group(pgid, libc::SIGKILL);
            ended += 1;
        }
        let _ = std::fs::remove_file(path);
    }
    ended
}

/// Words that only a shell understands: a command starting with one of them
/// always goes through `/bin/sh` (the list GNU make uses, plus a few).
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "elif",
    "else", "esac", "eval", "exec", "exit", "export", "fg", "fi", "for", "function", "getopts",
    "hash", "if", "jobs", "local", "read", "readonly", "return", "select", "set", "shift",
    "source", "then", "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until",
    "wait", "while", "[", "[[", "{", "}", "!",
];

/// A shell command that is nothing but plain words (`cargo test --lib`) runs
/// directly, as make does: the same result without starting a shell. Any
/// quoting, expansion, redirection, globbing or shell builtin keeps the shell.
pub fn simple_argv(script: &str) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !script.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let argv: Vec<String> = script.split_whitespace().map(String::from).collect();
    let first = argv.first()?;
    // `NAME=value cmd` is an assignment, and `~`-less paths are fine.
    if SHELL_WORDS.contains(&first.as_str()) || first.contains('=') {
        return None;
    }
    Some(argv)
}

/// Runs `command` in `dir` with `env` added to the inherited environment;
/// a shell command gets `args` as its positional parameters (`$1`, `"$@"`).
pub async fn run(
    command: &Command,
    args: &[String],
    dir: &Path,
    env: &[(String, String)],
    out: &OutputSink,
    cancel: &CancellationToken,
    grace: Duration,
) -> Exit {
    if !dir.is_dir() {
        return Exit::SpawnFailed(format!(
            "working directory {} does not exist",
            dir.display()
        ));
    }
    if matches!(command, Command::Argv(argv) if argv.is_empty()) {
        return Exit::SpawnFailed("an empty command (an argv list needs a program)".into());
    }
    let direct = match command {
        Command::Shell(script) => simple_argv(script),
        Command::Argv(_) => None,
    };
    let (program, mut cmd) = match (command, direct) {
        (_, Some(argv)) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            (argv[0].clone(), c)
        }
        (Command::Shell(script), None) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            // -e: a multi-line script stops at its first failing line.
            c.arg("-ec").arg(script).arg("piper").args(args);
            ("/bin/sh".to_string(), c)
        }
        (Command::Argv(argv), None) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            (argv[0].clone(), c)
        }
    };
    // One pipe for stdout and stderr keeps their relative order, as a
    // terminal shows it.
    let (reader, writer) = match std::io::pipe() {
        Ok(pair) => pair,
        Err(e) => return Exit::SpawnFailed(format!("cannot create a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Exit::SpawnFailed(format!("cannot create a pipe: {e}")),
    };
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .kill_on_drop(false);
    let spawned = crate::reaper::spawn_owned(|| cmd.spawn(), Child::id);
    // Close our copies of the write end, or the reader never sees EOF.
    drop(cmd);
    let (mut child, _owned) = match spawned {
        Ok(spawned) => spawned,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Exit::NotFound(program),
        Err(e) => return Exit::SpawnFailed(format!("cannot start {program}: {e}")),
    };
    let Some(pgid) = child.id().map(|id| id as i32) else {
        return Exit::SpawnFailed(format!("{program} exited before it could be supervised"));
    };

    journal_add(pgid);
    let reader: std::os::fd::OwnedFd = reader.into();
    // A 1 MiB pipe (Linux) lets a chatty step write ahead of us.
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe we own; failure just keeps the default size.
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    }
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader);
    let (group_gone, gone) = tokio::sync::oneshot::channel();
    let pump = tokio::spawn(pump_output(reader, out.clone(), gone));

    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::SpawnFailed("unknown exit status".into()),
            },
            Err(e) => Exit::SpawnFailed(format!("cannot wait for {program}: {e}")),
        },
        _ = cancel.cancelled() => {
            terminate_leader(pgid, &mut child, grace).await;
            Exit::Canceled
        }
    };
    end_group(pgid, grace).await;
    journal_remove(pgid);
    // Every byte the group wrote reaches the host before the step ends,
    // however slowly the host takes it; the pump bounds only its wait for
    // processes that escaped the group.
    let _ = group_gone.send(());
    let _ = pump.await;
    exit
}

/// How long a pipe still open after its group ended (a process escaped
/// into its own session) is read: it is not waited for forever.
const ESCAPED_WRITERS_GRACE: Duration = Duration::from_secs(2);

/// Forwards the step's output as events, at the pace the host takes them.
/// Until `group_gone`, it reads to EOF; then it delivers what the pipe
/// holds (all the group wrote) and gives other writers a short grace.
async fn pump_output(
    reader: std::io::Result<tokio::net::unix::pipe::Receiver>,
    out: OutputSink,
    mut group_gone: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(mut reader) = reader else { return };
    let mut buf = ReadBuffer::new();
    loop {
        // `read_buf` is cancel-safe: a read that loses the race reads nothing.
        let read = tokio::select! {
            biased;
            read = reader.read_buf(buf.space()) => read,
            _ = &mut group_gone => break,
        };
        match read {
            Ok(0) | Err(_) => return,
            // The wait here is the host's: never timed out.
            Ok(_) => out.write(buf.take()).await,
        }
    }
    let mut left = pipe_len(&reader);
    while left > 0 {
        match reader.read_buf(buf.space()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                left = left.saturating_sub(n);
                out.write(buf.take()).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + ESCAPED_WRITERS_GRACE;
    while let Ok(Ok(1..)) = tokio::time::timeout_at(deadline, reader.read_buf(buf.space())).await {
        out.write(buf.take()).await;
    }
}

/// The pump's read buffer: small for the many steps that print little,
/// doubling up to 256 KiB while reads fill it, so an output-heavy step
/// pays an event and a wakeup per large chunk. Never zeroed: a 256 KiB
/// `vec![0; _]` for every step was a memset and a heap trim per step
/// (~20 µs of a 1000-step build's each).
struct ReadBuffer {
    bytes: Vec<u8>,
}

impl ReadBuffer {
    const FIRST: usize = 8 * 1024;
    const MAX: usize = 256 * 1024;

    fn new() -> Self {
        ReadBuffer {
            bytes: Vec::with_capacity(Self::FIRST),
        }
    }

    /// Where the next read goes: the spare capacity (`read_buf` fills it).
    fn space(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// What the last read brought, as a chunk of its own; grows the buffer
    /// when the read filled it.
    fn take(&mut self) -> Vec<u8> {
        let chunk = self.bytes.clone();
        let filled = self.bytes.len() == self.bytes.capacity();
        self.bytes.clear();
        if filled && self.bytes.capacity() < Self::MAX {
            self.bytes.reserve_exact(self.bytes.capacity() * 2);
        }
        chunk
    }
}

/// Bytes waiting in the pipe (FIONREAD); 0 when it cannot tell.
fn pipe_len(reader: &tokio::net::unix::pipe::Receiver) -> usize {
    use std::os::fd::AsRawFd;
    let mut len: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `len`; the fd is ours and open.
    let r = unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut len) };
    if r == 0 { len.max(0) as usize } else { 0 }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is shared.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process (zombies included) is left in the group.
fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Reaps group members that were re-parented to us and have exited.
fn reap_group(pgid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let r = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// SIGTERM the group, wait up to `grace` for the main process, then SIGKILL.
async fn terminate_leader(pgid: i32, child: &mut Child, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

/// Ends whatever is left of the group after its main process was reaped,
/// and returns only once the group is empty (or, after SIGKILL, 5 s passed:
/// a process stuck in uninterruptible sleep cannot be waited for forever).
async fn end_group(pgid: i32, grace: Duration) {
    reap_group(pgid);
    if !group_exists(pgid) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let started = Instant::now();
    let mut killed = false;
    loop {
        reap_group(pgid);
        if !group_exists(pgid) {
            return;
        }
        let waited = started.elapsed();
        if !killed && waited >= grace {
            signal_group(pgid, libc::SIGKILL);
            killed = true;
        }
        if killed && waited >= grace + Duration::from_secs(5) {
            tracing::warn!(pgid, "process group still has members after SIGKILL");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{ReadBuffer, simple_argv};

    #[test]
    fn the_read_buffer_grows_while_reads_fill_it_and_hands_out_exact_chunks() {
        let mut buf = ReadBuffer::new();
        let mut capacity = ReadBuffer::FIRST;
        while capacity < ReadBuffer::MAX {
            // A read that fills the space: the chunk is all of it.
            buf.space().resize(capacity, b'x');
            assert_eq!(buf.take().len(), capacity);
            capacity *= 2;
            assert!(buf.space().capacity() >= capacity);
        }
        let before = buf.space().capacity();
        buf.space().resize(before, b'y');
        let _ = buf.take();
        assert_eq!(buf.space().capacity(), before, "stops growing at MAX");
        // A short read hands out just what came, and the space stays.
        buf.space().extend_from_slice(b"abc");
        let chunk = buf.take();
        assert_eq!(chunk, b"abc");
        assert_eq!(chunk.capacity(), 3);
        assert!(buf.space().is_empty());
        assert_eq!(buf.space().capacity(), before);
    }

    #[test]
    fn only_plain_words_skip_the_shell() {
        assert_eq!(
            simple_argv("cargo test --lib"),
            Some(vec!["cargo".into(), "test".into(), "--lib".into()])
        );
        assert_eq!(simple_argv("true"), Some(vec!["true".into()]));
        for needs_shell in [
            "echo $HOME",
            "a && b",
            "a | b",
            "a > f",
            "echo 'x'",
            "echo \"x\"",
            "ls *.c",
            "exit 3",
            "cd dir",
            "FOO=1 make",
            "a; b",
            "echo ~",
            "(a)",
            "a\nb",
            "",
            "trap x TERM",
            "wait",
            "[ -f x ]",
        ] {
            assert_eq!(simple_argv(needs_shell), None, "{needs_shell:?}");
        }
    }
}
