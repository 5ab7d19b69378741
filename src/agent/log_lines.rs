//! Lines of a stored log, found without reading the whole log: the web
//! UI's log view shows a window of a log that may be hundreds of megabytes
//! and goes to a line number, a byte offset, a match or the first error
//! (`GET /api/v1/builds/{id}/log/locate`).
//!
//! Each stored chunk carries its newline count (migration 13), so a line
//! number is a sum over the chunks' counts plus one chunk read; a search
//! reads the log page by page from where it starts and stops at the first
//! hit. The first error reads only from the chunks its writer marked as
//! ending an error word (migration 14) on. Sits on the store; the
//! server's handler is its only caller (and the writer, for the marks).

use memchr::{memchr_iter, memrchr};
use regex::bytes::{Regex, RegexBuilder};

use super::store::{ChunkLines, Store, StoreResult};

/// How much of the log one search step reads.
const PAGE: i64 = 1024 * 1024;

/// A line longer than this is searched in pieces (a match across a piece's
/// edge can be missed: such a line is not text a person reads).
const LONGEST_LINE: usize = 4 * 1024 * 1024;

/// Where the lines of one log (a build's or one step's) are.
pub struct LineIndex {
    build: i64,
    chunks: Vec<ChunkLines>,
    /// Newlines before each chunk.
    before: Vec<i64>,
    newlines: i64,
    length: i64,
    /// Whether the log's last byte is a newline (its last line closed).
    closed: bool,
}

impl LineIndex {
    /// Reads the chunks' counts; chunks stored before they were counted
    /// are counted now, and the count is stored for next time.
    pub async fn load(store: &Store, build: i64, step: Option<&str>) -> StoreResult<LineIndex> {
        let mut chunks = store.log_chunk_lines(build, step).await?;
        for chunk in chunks.iter_mut().filter(|c| c.lines.is_none()) {
            let data = store.log_chunk(build, chunk.seq).await?;
            let lines = memchr_iter(b'\n', &data).count() as i64;
            store.set_chunk_lines(build, chunk.seq, lines).await?;
            chunk.lines = Some(lines);
        }
        let mut before = Vec::with_capacity(chunks.len());
        let mut newlines = 0;
        for chunk in &chunks {
            before.push(newlines);
            newlines += chunk.lines.unwrap_or(0);
        }
        let length = chunks.last().map_or(0, |c| c.start + c.len);
        let closed = match chunks.last() {
            Some(last) => store.log_chunk(build, last.seq).await?.last() == Some(&b'\n'),
            None => true,
        };
        Ok(LineIndex {
            build,
            chunks,
            before,
            newlines,
            length,
            closed,
        })
    }

    /// The log's length in bytes.
    pub fn length(&self) -> i64 {
        self.length
    }

    /// How many lines the log has (a last line without its newline
    /// counts).
    pub fn lines(&self) -> i64 {
        let ends_open = self.length > 0 && !self.ends_with_newline();
        self.newlines + i64::from(ends_open)
    }

    fn ends_with_newline(&self) -> bool {
        self.closed
    }

    /// The (1-based) number of the line holding byte `offset`; an offset
    /// at or past the end is the last line.
    pub async fn line_of(&self, store: &Store, offset: i64) -> StoreResult<i64> {
        if offset >= self.length {
            return Ok(self.lines().max(1));
        }
        let i = self.chunks.partition_point(|c| c.start + c.len <= offset);
        let Some(chunk) = self.chunks.get(i) else {
            return Ok(self.lines().max(1));
        };
        let data = store.log_chunk(self.build, chunk.seq).await?;
        let within = ((offset - chunk.start).max(0) as usize).min(data.len());
        Ok(self.before[i] + memchr_iter(b'\n', &data[..within]).count() as i64 + 1)
    }

    /// The offset of the first byte of line `line` (1-based; past the end:
    /// the last line).
    pub async fn line_start(&self, store: &Store, line: i64) -> StoreResult<i64> {
        let line = line.clamp(1, self.lines().max(1));
        // The (line - 1)th newline ends the line before.
        let wanted = line - 1;
        if wanted == 0 {
            return Ok(0);
        }
        let i = self.before.partition_point(|&b| b < wanted) - 1;
        let chunk = &self.chunks[i];
        let data = store.log_chunk(self.build, chunk.seq).await?;
        let nth = (wanted - self.before[i] - 1) as usize;
        match memchr_iter(b'\n', &data).nth(nth) {
            Some(at) => Ok(chunk.start + at as i64 + 1),
            None => Ok(chunk.start + data.len() as i64),
        }
    }
}

/// What a search looks for in a log.
pub struct Pattern {
    regex: Regex,
    /// Only matches that are whole words count (see `is_word_at`).
    words: bool,
    /// Stored chunks say whether a match ends in them
    /// (`NewChunk::has_error`): a search skips the others.
    marked: bool,
}

impl Pattern {
    /// What "the first error" of a log is: a line with one of these words
    /// (case aside), also right after a colour escape (`\e[31merror`).
    /// The regex is the bare words, so that it runs on its literal
    /// prefilter (a leading class in it halved the speed); the word's
    /// edges are checked on each candidate.
    pub fn error() -> Pattern {
        // Longer words first: the first alternative that matches wins.
        let regex = RegexBuilder::new("errors|error|failure|failed|fatal|panicked|exception")
            .case_insensitive(true)
            .unicode(false)
            .build()
            .expect("the error pattern is valid");
        Pattern {
            regex,
            words: true,
            marked: true,
        }
    }

    /// `text` as typed, case aside.
    pub fn text(text: &str) -> Result<Pattern, regex::Error> {
        let regex = RegexBuilder::new(&regex::escape(text))
            .case_insensitive(true)
            .unicode(!text.is_ascii())
            .build()?;
        Ok(Pattern {
            regex,
            words: false,
            marked: false,
        })
    }

    /// Whether a match in `haystack` starts at or after `start` and ends
    /// after `end`. A match at the haystack's end counts whatever follows
    /// (a chunk's next bytes are not known yet).
    pub fn matches(&self, haystack: &[u8], start: usize, end: usize) -> bool {
        self.regex.find_iter(haystack).any(|m| {
            m.start() >= start
                && m.end() > end
                && (!self.words || is_word_at(haystack, m.start(), m.end()))
        })
    }

    /// Where the first match in `haystack` starts.
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        let mut matches = self.regex.find_iter(haystack);
        if !self.words {
            return matches.next().map(|m| m.start());
        }
        matches
            .find(|m| is_word_at(haystack, m.start(), m.end()))
            .map(|m| m.start())
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `haystack[start..end]` stands as a word: nothing word-like
/// after it, and before it a line's start, a non-word byte, or the end of
/// a colour escape (`\e[1;31m`), which ends in a letter.
fn is_word_at(haystack: &[u8], start: usize, end: usize) -> bool {
    if haystack.get(end).is_some_and(|&b| is_word_byte(b)) {
        return false;
    }
    let Some(&before) = start.checked_sub(1).and_then(|i| haystack.get(i)) else {
        return true;
    };
    if !is_word_byte(before) {
        return true;
    }
    if before != b'm' {
        return false;
    }
    let params = haystack[..start - 1]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    let open = start - 1 - params;
    open >= 2 && haystack[open - 2..open] == *b"\x1b["
}

/// The offset of the start of the first line at or after `from` (a line's
/// start) in which `pattern` matches, reading about a page of chunks at a
/// time (by their sequence numbers, from the index: no offset scan). For
/// a pattern the chunks are marked for, the chunks before the next marked
/// one are not read: the search goes on from the start of the line that
/// holds the marked chunk's first byte.
pub async fn find(
    store: &Store,
    index: &LineIndex,
    step: Option<&str>,
    from: i64,
    pattern: &Pattern,
) -> StoreResult<Option<i64>> {
    let chunks = &index.chunks;
    let mut from = from;
    let mut next = chunks.partition_point(|c| c.start + c.len <= from);
    let mut buffer: Vec<u8> = Vec::new();
    let mut buffer_start = from;
    // The unsearched line carried in `buffer` has bytes of a marked chunk:
    // it cannot be skipped.
    let mut carried_marked = false;
    while next < chunks.len() {
        if pattern.marked && !carried_marked {
            match skip_to_marked(store, index, next).await? {
                Skip::Nothing => {}
                Skip::ToEnd => return Ok(None),
                Skip::To { chunk, line_start } => {
                    next = chunk;
                    from = line_start;
                    buffer.clear();
                    buffer_start = line_start;
                }
            }
        }
        let first = next;
        let mut bytes = 0;
        while next < chunks.len() && bytes < PAGE {
            bytes += chunks[next].len;
            next += 1;
        }
        let read = store
            .log_chunks_in(index.build, step, chunks[first].seq, chunks[next - 1].seq)
            .await?;
        for (start, data) in read {
            let skip = ((from - start).max(0) as usize).min(data.len());
            buffer.extend_from_slice(&data[skip..]);
        }
        let done = next == chunks.len();
        // Whole lines only, so that a match is never cut by a page's edge.
        let searchable = if done || buffer.len() > LONGEST_LINE {
            buffer.len()
        } else {
            memrchr(b'\n', &buffer).map_or(0, |at| at + 1)
        };
        if let Some(hit) = pattern.find(&buffer[..searchable]) {
            let line = memrchr(b'\n', &buffer[..hit]).map_or(0, |at| at + 1);
            return Ok(Some(buffer_start + line as i64));
        }
        buffer.drain(..searchable);
        buffer_start += searchable as i64;
        carried_marked = !buffer.is_empty()
            && (carried_marked
                || chunks[first..next]
                    .iter()
                    .any(|c| c.has_error != Some(false)));
    }
    Ok(None)
}

/// Where a search for a marked pattern goes on from chunk `next`.
enum Skip {
    /// Read on: `next` may hold a match, or the line it is in began before.
    Nothing,
    /// No chunk from `next` on holds a match.
    ToEnd,
    /// Read from `line_start`, in chunk `chunk` (a later one than `next`).
    To { chunk: usize, line_start: i64 },
}

async fn skip_to_marked(store: &Store, index: &LineIndex, next: usize) -> StoreResult<Skip> {
    let chunks = &index.chunks;
    // A chunk stored before chunks were marked may hold anything.
    let Some(marked) = (next..chunks.len()).find(|&i| chunks[i].has_error != Some(false)) else {
        return Ok(Skip::ToEnd);
    };
    // The line holding the marked chunk's first byte starts after the last
    // newline before it; from a chunk before `next`, read on as it is.
    let Some(with_newline) = (next..marked).rev().find(|&i| chunks[i].lines != Some(0)) else {
        return Ok(Skip::Nothing);
    };
    let chunk = &chunks[with_newline];
    let data = store.log_chunk(index.build, chunk.seq).await?;
    let line_start = chunk.start + memrchr(b'\n', &data).map_or(0, |at| at + 1) as i64;
    Ok(Skip::To {
        chunk: with_newline,
        line_start,
    })
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn an_error_is_a_word_also_after_a_colour() {
        let error = Pattern::error();
        for (text, at) in [
            (&b"ok\nerror: boom"[..], Some(3)),
            (b"Build FAILED.", Some(6)),
            (b"\x1b[1;31merror\x1b[0m", Some(7)),
            (b"\x1b[31mERRORS", Some(5)),
            (b"terrors and errorless", None),
            (b"no_error here", None),
            (b"panicked at src/lib.rs", Some(0)),
            (b"form error", Some(5)),
        ] {
            assert_eq!(error.find(text), at, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(Pattern::text("NeEdLe").unwrap().find(b"a needle"), Some(2));
    }
}
