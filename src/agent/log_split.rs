//! A stored log's chunks, in the order they were stored, as lines: per
//! step, numbered from 1 as the web UI numbers them, a line that spans
//! chunks whole, what is left without a final newline at the end. What
//! the log export (`log_export.rs`) and the search index
//! (`search_index.rs`) both read a log as.

use std::collections::HashMap;

/// One line of a step's log.
pub(crate) struct Line<'a> {
    pub(crate) step: &'a str,
    /// From 1 within the step's log.
    pub(crate) number: u64,
    /// Piper's own line (`$ command`, retries), not the step's output.
    pub(crate) piper: bool,
    /// When the chunk that ended it was stored, in Unix milliseconds.
    pub(crate) at: i64,
    /// Without its newline (nor a `\r` before it).
    pub(crate) text: &'a [u8],
}

#[derive(Default)]
pub(crate) struct LineSplitter {
    steps: HashMap<String, Open>,
}

#[derive(Default)]
struct Open {
    partial: Vec<u8>,
    piper: bool,
    lines: u64,
    /// When the open line's last bytes were stored.
    at: i64,
}

impl LineSplitter {
    /// The lines a chunk of `step` ends, each given to `each`.
    /// `annotation`: the chunk is Piper's own line.
    pub(crate) fn push(
        &mut self,
        step: &str,
        annotation: bool,
        at: i64,
        data: &[u8],
        mut each: impl FnMut(Line<'_>),
    ) {
        let open = self.steps.entry(step.to_string()).or_default();
        let mut rest = data;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            open.lines += 1;
            let piper = std::mem::take(&mut open.piper) | annotation;
            let text = if open.partial.is_empty() {
                &rest[..end]
            } else {
                open.partial.extend_from_slice(&rest[..end]);
                &open.partial[..]
            };
            each(line(step, open.lines, piper, at, text));
            open.partial.clear();
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            open.partial.extend_from_slice(rest);
            open.piper |= annotation;
            open.at = at;
        }
    }

    /// The open lines (a log that does not end with a newline), in order
    /// of step name, each timed when its last bytes were stored.
    pub(crate) fn finish(self, mut each: impl FnMut(Line<'_>)) {
        let mut steps: Vec<_> = self.steps.into_iter().collect();
        steps.sort_by(|a, b| a.0.cmp(&b.0));
        for (step, open) in &steps {
            if !open.partial.is_empty() {
                each(line(
                    step,
                    open.lines + 1,
                    open.piper,
                    open.at,
                    &open.partial,
                ));
            }
        }
    }
}

fn line<'a>(step: &'a str, number: u64, piper: bool, at: i64, text: &'a [u8]) -> Line<'a> {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    Line {
        step,
        number,
        piper,
        at,
        text,
    }
}
