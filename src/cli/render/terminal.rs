//! The terminal host: step output on stdout, each line prefixed with its
//! step (or grouped per step when it ends); a live status line of running
//! steps and the end-of-build summary on stderr.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use super::sink::Render;
use super::style;
use crate::duration;
use crate::event::{BuildStatus, Event, PlannedStepInfo, StepStatus, TriggeredBy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// Every line as it comes, prefixed with its step's name.
    Prefixed,
    /// Each step's output in one block when the step ends.
    Grouped,
}

/// Lines of a failed step shown again in the summary.
const TAIL_LINES: usize = 15;
const TAIL_BYTES: usize = 4096;

/// Above this many steps the summary lists only the ones that did not succeed.
const FULL_SUMMARY_MAX: usize = 30;
const PREFIX_WIDTH_MAX: usize = 24;

/// Keeps the last `TAIL_BYTES` of `tail` followed by `first` and `second`.
fn remember_tail(tail: &mut VecDeque<u8>, first: &[u8], second: &[u8]) {
    let from_second = second.len().min(TAIL_BYTES);
    let from_first = (TAIL_BYTES - from_second).min(first.len());
    tail.extend(&first[first.len() - from_first..]);
    tail.extend(&second[second.len() - from_second..]);
    let excess = tail.len().saturating_sub(TAIL_BYTES);
    tail.drain(..excess);
}

/// Writes each `\n`-terminated line of `block` behind `prefix` (a `\r`
/// before the newline dropped).
fn write_prefixed_lines(out: &mut impl Write, prefix: &[u8], block: &[u8]) {
    let mut start = 0;
    for newline in memchr::memchr_iter(b'\n', block) {
        let line = &block[start..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let _ = out.write_all(prefix);
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
        start = newline + 1;
    }
}

struct StepView {
    color: anstyle::Style,
    started: Option<Instant>,
    /// Made when the step first prints: most steps of a large up-to-date
    /// build never do, and a thousand empty buffers cost page faults.
    io: Option<Box<StepIo>>,
}

impl StepView {
    fn io(&mut self) -> &mut StepIo {
        self.io.get_or_insert_with(Default::default)
    }
}

/// A step's output buffers.
#[derive(Default)]
struct StepIo {
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
    /// Grouped mode: everything so far.
    grouped: Vec<u8>,
    /// The last bytes of its output, for the failure summary. Bytes, not
    /// lines: output-heavy steps must not cost an allocation per line.
    tail: VecDeque<u8>,
    /// `name | `, coloured; made when the step first prints.
    prefix: Vec<u8>,
}

struct Row {
    step: String,
    status: StepStatus,
    exit_code: Option<i32>,
    duration_ms: u64,
    message: Option<String>,
}

pub struct Terminal<O: Write + Send, E: Write + Send> {
    out: O,
    err: E,
    mode: OutputMode,
    explain: bool,
    color: bool,
    status_line: bool,
    status_shown: bool,
    width: usize,
    steps: HashMap<String, StepView>,
    order: Vec<String>,
    /// Finished steps of each build still running (watch runs services
    /// beside the main build, so two builds can be live at once).
    rows: HashMap<u32, Vec<Row>>,
    build_started: Instant,
    spinner: usize,
    /// `piper watch`: Some(clear the screen before each rerun).
    watch: Option<bool>,
    /// Warnings of each live build, repeated after its summary.
    warnings: HashMap<u32, Vec<String>>,
}

impl<O: Write + Send, E: Write + Send> Terminal<O, E> {
    // ---- what each event shows (`Render::event` picks)

    fn warn_all(&mut self, warnings: &[String]) {
        for warning in warnings {
            self.clear_status();
            let label = self.paint(style::WARNING, "warning:");
            let _ = writeln!(self.err, "{label} {warning}");
        }
    }

    /// A build begins: its steps get a colour and a place in the order,
    /// and the prefixes a width that fits them all.
    fn build_started(&mut self, build: u32, steps: &[PlannedStepInfo]) {
        if self.rows.is_empty() {
            // No other build is live: start from a clean slate.
            self.steps.clear();
            self.order.clear();
            self.width = 0;
            self.build_started = Instant::now();
        }
        self.rows.insert(build, Vec::with_capacity(steps.len()));
        self.steps.reserve(steps.len());
        let width = steps
            .iter()
            .map(|s| style::width(&s.name))
            .max()
            .unwrap_or(0)
            .max(self.width)
            .min(PREFIX_WIDTH_MAX);
        if width != self.width {
            self.width = width;
            // Made again, at the new width, when next needed.
            for io in self.steps.values_mut().filter_map(|v| v.io.as_mut()) {
                io.prefix.clear();
            }
        }
        for s in steps {
            if self.steps.contains_key(&s.name) {
                continue;
            }
            let color = style::PALETTE[self.order.len() % style::PALETTE.len()];
            self.order.push(s.name.clone());
            let view = StepView {
                color,
                started: None,
                io: None,
            };
            self.steps.insert(s.name.clone(), view);
        }
    }

    /// The heading of a build that another one's end chained.
    fn chained(&mut self, build: u32, name: &str, by: &TriggeredBy) {
        self.clear_status();
        let on = match by.on {
            crate::spec::TriggerOn::Success => "succeeded",
            crate::spec::TriggerOn::Failure => "failed",
            crate::spec::TriggerOn::Always => "finished",
        };
        let text = format!("▶ {name} (build {build}): {} {on}, chaining", by.pipeline);
        let _ = writeln!(self.err, "\n{}", self.paint(style::BOLD, &text));
    }

    fn step_started(&mut self, step: &str, reasons: &[String]) {
        if let Some(v) = self.steps.get_mut(step) {
            v.started = Some(Instant::now());
        }
        if self.explain && !reasons.is_empty() {
            let text = format!("runs because {}", reasons.join("; "));
            self.step_note(step, style::CYAN, &text);
        }
    }

    fn step_command(&mut self, step: &str, command: &str) {
        let line = format!("$ {command}");
        if self.mode == OutputMode::Prefixed {
            self.step_note(step, style::DIM, &line);
        } else if let Some(v) = self.steps.get_mut(step) {
            let grouped = &mut v.io().grouped;
            grouped.extend_from_slice(line.as_bytes());
            grouped.push(b'\n');
        }
    }

    /// A line of Piper's own about a step, in its place among the step's
    /// output.
    fn step_note(&mut self, step: &str, color: anstyle::Style, text: &str) {
        self.clear_status();
        let painted = self.paint(color, text);
        self.write_line(step, painted.as_bytes());
    }

    /// What the end of a step says: why it did not run (with `--explain`),
    /// or how it failed.
    fn explain_finished(&mut self, step: &str, status: StepStatus, message: Option<&str>) {
        if let Some(v) = self.steps.get_mut(step) {
            v.started = None;
        }
        if status == StepStatus::Fetched
            && let Some(message) = message
        {
            self.step_note(step, style::CYAN, message);
        }
        let unchanged = crate::executor::OUTPUTS_UNCHANGED;
        if self.explain && status == StepStatus::Success && message == Some(unchanged) {
            self.step_note(step, style::CYAN, unchanged);
        }
        if self.explain && status == StepStatus::UpToDate {
            let text = "up to date: inputs, command, variables and dependencies unchanged";
            self.step_note(step, style::CYAN, text);
        }
        if matches!(
            status,
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::AllowedFailure
        ) {
            let text = message.unwrap_or(status.label());
            self.step_note(step, style::RED, &format!("✗ {text}"));
        }
    }

    fn watch_changed(&mut self, paths: &[String], rerun: &[String]) {
        self.clear_status();
        if self.watch == Some(true) {
            let _ = self.err.write_all(b"\x1b[2J\x1b[H");
        }
        let mut shown: Vec<&str> = paths.iter().take(5).map(String::as_str).collect();
        let more = paths.len().saturating_sub(shown.len());
        let more_text = format!("+{more}");
        if more > 0 {
            shown.push(&more_text);
        }
        let target = if rerun.is_empty() {
            "everything".to_string()
        } else {
            rerun.join(", ")
        };
        let text = format!(
            "── {} · changed: {} · rerunning: {target} ──",
            clock(),
            shown.join(", ")
        );
        let _ = writeln!(self.err, "\n{}", self.paint(style::SEPARATOR, &text));
    }

    fn config_error(&mut self, message: &str) {
        self.clear_status();
        let label = self.paint(style::FAILURE, "error:");
        let _ = writeln!(self.err, "{label} {message}");
        if self.watch.is_some() {
            let text = self.paint(style::DIM, "waiting for a fix… (Ctrl-C to stop)");
            let _ = writeln!(self.err, "{text}");
        }
    }

    /// `color`: ANSI colours; `status_line`: stderr is a terminal that can
    /// show a redrawn line of running steps.
    pub fn new(
        out: O,
        err: E,
        mode: OutputMode,
        explain: bool,
        color: bool,
        status_line: bool,
    ) -> Self {
        Terminal {
            out,
            err,
            mode,
            explain,
            color,
            status_line,
            status_shown: false,
            width: 0,
            steps: HashMap::new(),
            order: Vec::new(),
            rows: HashMap::new(),
            build_started: Instant::now(),
            spinner: 0,
            watch: None,
            warnings: HashMap::new(),
        }
    }

    /// Renders for `piper watch`: separators between runs, a hint when idle.
    pub fn watching(&mut self, clear: bool) {
        self.watch = Some(clear);
    }

    fn paint(&self, style: anstyle::Style, text: &str) -> String {
        style::paint(self.color, style, text)
    }

    fn make_prefix(&self, step: &str, color: anstyle::Style) -> String {
        let name = if style::width(step) > PREFIX_WIDTH_MAX {
            format!("{}…", style::truncate(step, PREFIX_WIDTH_MAX - 1))
        } else {
            step.to_string()
        };
        let padded = style::pad(&name, self.width);
        format!(
            "{} {} ",
            self.paint(color, &padded),
            self.paint(style::DIM, "|")
        )
    }

    fn clear_status(&mut self) {
        if self.status_shown {
            let _ = self.err.write_all(b"\r\x1b[2K");
            self.status_shown = false;
        }
    }

    /// Makes `step`'s prefix if it has none yet.
    fn ensure_prefix(&mut self, step: &str) {
        if let Some(view) = self.steps.get(step)
            && view.io.as_ref().is_none_or(|io| io.prefix.is_empty())
        {
            let prefix = self.make_prefix(step, view.color).into_bytes();
            if let Some(view) = self.steps.get_mut(step) {
                view.io().prefix = prefix;
            }
        }
    }

    fn write_line(&mut self, step: &str, line: &[u8]) {
        self.ensure_prefix(step);
        if let Some(io) = self.steps.get(step).and_then(|v| v.io.as_ref()) {
            let _ = self.out.write_all(&io.prefix);
        }
        let _ = self.out.write_all(line);
        let _ = self.out.write_all(b"\n");
    }

    fn remember(&mut self, step: &str, line: &[u8]) {
        if let Some(view) = self.steps.get_mut(step) {
            remember_tail(&mut view.io().tail, line, b"\n");
        }
    }

    /// Output of a step: complete lines are printed now, a trailing partial
    /// line waits for the rest. One lookup and one tail update per chunk, not
    /// per line: output-heavy steps print millions of lines. Only the line
    /// the previous chunk left open is copied; the rest is printed from
    /// `data` itself.
    fn output(&mut self, step: &str, data: &[u8]) {
        if self.mode == OutputMode::Prefixed {
            self.clear_status();
            self.ensure_prefix(step);
        }
        let Some(view) = self.steps.get_mut(step) else {
            return;
        };
        let view = view.io();
        if self.mode == OutputMode::Grouped {
            view.grouped.extend_from_slice(data);
        }
        let Some(last_newline) = memchr::memrchr(b'\n', data) else {
            view.partial.extend_from_slice(data);
            return;
        };
        let (complete, rest) = data.split_at(last_newline + 1);
        let first_newline = memchr::memchr(b'\n', complete).unwrap_or(last_newline);
        let (head, body) = complete.split_at(first_newline + 1);
        let mut opened = std::mem::take(&mut view.partial);
        opened.extend_from_slice(head);
        remember_tail(&mut view.tail, &opened, body);
        if self.mode == OutputMode::Prefixed {
            write_prefixed_lines(&mut self.out, &view.prefix, &opened);
            write_prefixed_lines(&mut self.out, &view.prefix, body);
        }
        // The open line's buffer is kept for the next one.
        opened.clear();
        opened.extend_from_slice(rest);
        view.partial = opened;
    }

    /// A step ended: print what is left of its output.
    fn flush_step(&mut self, step: &str) {
        let Some(view) = self.steps.get_mut(step).and_then(|v| v.io.as_mut()) else {
            return;
        };
        let partial = std::mem::take(&mut view.partial);
        let grouped = std::mem::take(&mut view.grouped);
        if !partial.is_empty() {
            self.remember(step, &partial);
        }
        match self.mode {
            OutputMode::Prefixed if !partial.is_empty() => {
                self.clear_status();
                self.write_line(step, &partial);
            }
            OutputMode::Grouped if !grouped.is_empty() => {
                self.clear_status();
                let body = grouped.strip_suffix(b"\n").unwrap_or(&grouped);
                for line in body.split(|&b| b == b'\n') {
                    self.write_line(step, line.strip_suffix(b"\r").unwrap_or(line));
                }
            }
            _ => {}
        }
    }

    fn status_text(&self, status: StepStatus) -> String {
        let code = match status {
            StepStatus::Success
            | StepStatus::DryRun
            | StepStatus::UpToDate
            | StepStatus::Fetched => style::GREEN,
            StepStatus::Failed | StepStatus::TimedOut => style::RED,
            StepStatus::AllowedFailure | StepStatus::Skipped => style::YELLOW,
            StepStatus::Blocked | StepStatus::Canceled => style::DIM,
        };
        self.paint(code, status.label())
    }

    fn summary(&mut self, build: u32, name: &str, status: BuildStatus, duration_ms: u64) {
        self.clear_status();
        let headline = match status {
            BuildStatus::Success => self.paint(style::SUCCESS, &format!("{name} succeeded")),
            BuildStatus::Failed => self.paint(style::FAILURE, &format!("{name} failed")),
            BuildStatus::Canceled => self.paint(style::WARNING, &format!("{name} interrupted")),
        };
        let took = duration::format(Duration::from_millis(duration_ms));
        let mut text = String::new();
        let mut rows = self.rows.remove(&build).unwrap_or_default();
        // Services run beside watch's builds; they are not this build's work.
        rows.retain(|r| r.message.as_deref() != Some(crate::executor::SERVICE_APART));
        let shown: Vec<&Row> = if rows.len() <= FULL_SUMMARY_MAX {
            rows.iter().collect()
        } else {
            rows.iter()
                .filter(|r| {
                    !matches!(
                        r.status,
                        StepStatus::Success | StepStatus::UpToDate | StepStatus::Fetched
                    )
                })
                .collect()
        };
        let width = shown
            .iter()
            .map(|r| style::width(&r.step))
            .max()
            .unwrap_or(0);
        let label_width = shown
            .iter()
            .map(|r| r.status.label().len())
            .max()
            .unwrap_or(0);
        for row in &shown {
            let label = format!("{:<label_width$}", row.status.label());
            let painted = self
                .status_text(row.status)
                .replace(row.status.label(), &label);
            let mut line = format!("  {}  {painted}", style::pad(&row.step, width));
            if row.duration_ms > 0 || row.status == StepStatus::Success {
                line.push_str(&format!(
                    " {:>7}",
                    duration::format(Duration::from_millis(row.duration_ms))
                ));
            }
            if let Some(code) = row.exit_code.filter(|&c| c != 0) {
                line.push_str(&format!("  exit {code}"));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        if rows.len() > shown.len() {
            let ok = rows.len() - shown.len();
            text.push_str(&format!("  … and {ok} more steps ok or up to date\n"));
        }
        let plural = if rows.len() == 1 { "" } else { "s" };
        let _ = writeln!(
            self.err,
            "{headline} in {took} ({} step{plural})",
            rows.len()
        );
        let _ = self.err.write_all(text.as_bytes());
        let failed = rows.iter().find(|r| r.status.is_failure());
        if let Some(row) = failed {
            let reason = row
                .message
                .clone()
                .unwrap_or_else(|| row.status.label().to_string());
            let _ = writeln!(
                self.err,
                "{} {}: {reason}",
                self.paint(style::FAILURE, "first failure:"),
                row.step
            );
            if let Some(view) = self.steps.get(&row.step).and_then(|v| v.io.as_ref())
                && !view.tail.is_empty()
            {
                let _ = writeln!(self.err, "  last lines of {}:", row.step);
                let (a, b) = view.tail.as_slices();
                let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                // The first line may be cut by the byte limit: drop it.
                let from = lines
                    .len()
                    .saturating_sub(TAIL_LINES)
                    .max(usize::from(view.tail.len() == TAIL_BYTES));
                for line in &lines[from.min(lines.len())..] {
                    let _ = writeln!(self.err, "  {} {line}", self.paint(style::DIM, "│"));
                }
            }
        }
        for warning in self.warnings.remove(&build).unwrap_or_default() {
            let _ = writeln!(
                self.err,
                "{} {warning}",
                self.paint(style::WARNING, "warning:")
            );
        }
    }

    fn draw_status(&mut self) {
        if !self.status_line {
            return;
        }
        let running: Vec<(&String, Instant)> = self
            .order
            .iter()
            .filter_map(|name| {
                self.steps
                    .get(name)
                    .and_then(|v| v.started)
                    .map(|t| (name, t))
            })
            .collect();
        if running.is_empty() {
            self.clear_status();
            return;
        }
        const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
        self.spinner = (self.spinner + 1) % FRAMES.len();
        let names: Vec<String> = running
            .iter()
            .take(4)
            .map(|(n, t)| format!("{n} {}", duration::format(t.elapsed())))
            .collect();
        let more = if running.len() > 4 {
            format!(" +{}", running.len() - 4)
        } else {
            String::new()
        };
        let done: usize = self.rows.values().map(Vec::len).sum();
        let total = self.order.len();
        let line = format!(
            "{} {}/{} done · running: {}{more} · {}",
            FRAMES[self.spinner],
            done,
            total,
            names.join(", "),
            duration::format(self.build_started.elapsed())
        );
        let line = style::truncate(&line, style::terminal_width().saturating_sub(1));
        let _ = write!(self.err, "\r\x1b[2K{}", self.paint(style::DIM, line));
        self.status_shown = true;
    }
}

/// Local wall-clock time, HH:MM:SS, for watch separators.
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = now as libc::time_t;
    // SAFETY: localtime_r writes only into the tm we own.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

impl<O: Write + Send, E: Write + Send> Render for Terminal<O, E> {
    fn event(&mut self, event: &Event) {
        match event {
            Event::BuildStarted {
                build,
                name,
                steps,
                triggered_by,
                warnings,
                ..
            } => {
                self.warn_all(warnings);
                self.build_started(*build, steps);
                if let Some(by) = triggered_by {
                    self.chained(*build, name, by);
                }
            }
            Event::StepQueued { .. } => {}
            Event::StepStarted { step, reasons, .. } => self.step_started(step, reasons),
            Event::StepCommand { step, command, .. } => self.step_command(step, command),
            Event::StepOutput { step, data, .. } => self.output(step, data),
            Event::StepRetrying {
                step,
                attempt,
                reason,
                ..
            } => {
                self.flush_step(step);
                let text = format!("attempt {attempt} failed ({reason}); retrying");
                self.step_note(step, style::YELLOW, &text);
            }
            Event::StepFinished {
                build,
                step,
                status,
                exit_code,
                duration_ms,
                message,
                ..
            } => {
                self.flush_step(step);
                self.explain_finished(step, *status, message.as_deref());
                // The summary reads the message of a failure or a skip only.
                let done = matches!(
                    status,
                    StepStatus::Success | StepStatus::UpToDate | StepStatus::Fetched
                );
                self.rows.entry(*build).or_default().push(Row {
                    step: step.clone(),
                    status: *status,
                    exit_code: *exit_code,
                    duration_ms: *duration_ms,
                    message: message.clone().filter(|_| !done),
                });
            }
            Event::StepWarning {
                build,
                step,
                message,
            } => {
                self.flush_step(step);
                self.step_note(step, style::YELLOW, &format!("warning: {message}"));
                self.warnings
                    .entry(*build)
                    .or_default()
                    .push(format!("{step}: {message}"));
            }
            Event::WatchIdle => {
                self.clear_status();
                let text = self.paint(style::DIM, "watching for changes… (Ctrl-C to stop)");
                let _ = writeln!(self.err, "{text}");
            }
            Event::WatchChanged { paths, rerun } => self.watch_changed(paths, rerun),
            Event::ConfigError { message } => self.config_error(message),
            Event::BuildFinished {
                build,
                name,
                status,
                duration_ms,
                ..
            } => {
                let _ = self.out.flush();
                self.summary(*build, name, *status, *duration_ms);
            }
        }
    }

    fn tick(&mut self) {
        self.draw_status();
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
        self.draw_status();
        let _ = self.err.flush();
    }
}

#[cfg(test)]
#[path = "terminal_tests.rs"]
mod tests;
