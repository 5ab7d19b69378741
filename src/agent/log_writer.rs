//! How a build's log and final state reach the store when the store does
//! not always answer (a database restart, a full disk): every write is
//! retried with backoff until it lands — the executor waits meanwhile, as
//! its event channel is bounded — and only a shutdown past its grace
//! period gives up. What is given up is never silent: the next chunk that
//! lands starts with `[piper: N bytes of log lost]`, and the build ends
//! `failed` saying so. (buildkite-agent retries its chunk uploads the
//! same way.)
//!
//! Secret values (`secret_env` of the submit) are masked as `***` before
//! anything is stored, across chunk boundaries: the tail of a chunk that
//! could be the start of a secret waits for the next chunk.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::log_lines::Pattern;
use super::store::{NewChunk, Store, StoreResult};

/// Values shorter than this are not masked: masking `1` or `on` everywhere
/// would destroy the log and hide nothing.
pub const SECRET_MIN_LEN: usize = 4;
const MASK: &[u8] = b"***";

/// Retries `op` with backoff (0.1 s doubling to 5 s) until it succeeds or
/// `abandon` fires; then the last error.
pub async fn with_retry<T, F, Fut>(
    what: &str,
    abandon: &CancellationToken,
    mut op: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut wait = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match op().await {
            Ok(value) => {
                if warned {
                    tracing::info!("{what}: the store answers again");
                }
                return Ok(value);
            }
            Err(e) if !abandon.is_cancelled() => {
                if !warned {
                    tracing::warn!("{what}: {e}; retrying until the store answers");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = abandon.cancelled() => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// Masks secret values in a stream of chunks.
#[derive(Default)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    /// All secrets at once, leftmost-longest: a secret containing another
    /// is masked whole. None without secrets.
    matcher: Option<aho_corasick::AhoCorasick>,
    longest: usize,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= SECRET_MIN_LEN)
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort();
        secrets.dedup();
        let matcher = (!secrets.is_empty()).then(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&secrets)
                .expect("literal patterns build")
        });
        let longest = secrets.iter().map(Vec::len).max().unwrap_or(0);
        Redactor {
            secrets,
            matcher,
            longest,
        }
    }

    /// `pending` (held back last time) and `data`, masked; what could
    /// still be the start of a secret stays in `pending` unless `last`.
    pub fn redact(&self, pending: &mut Vec<u8>, data: &[u8], last: bool) -> Vec<u8> {
        let mut buf = std::mem::take(pending);
        buf.extend_from_slice(data);
        let Some(matcher) = &self.matcher else {
            return buf;
        };
        // Where the bytes that may begin a secret (one the next chunk could
        // complete) start, from `at` on: they wait, unless this is the end.
        let hold = |at: usize| -> usize {
            if last {
                return buf.len();
            }
            let from = at.max(buf.len().saturating_sub(self.longest - 1));
            (from..buf.len())
                .find(|&p| {
                    let rest = &buf[p..];
                    (self.secrets.iter()).any(|s| s.len() > rest.len() && s.starts_with(rest))
                })
                .unwrap_or(buf.len())
        };
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        for m in matcher.find_iter(&buf) {
            // A secret that only the next chunk can complete, begun before
            // this match, wins over it (it may contain it).
            if m.start() > hold(at) {
                break;
            }
            out.extend_from_slice(&buf[at..m.start()]);
            out.extend_from_slice(MASK);
            at = m.end();
        }
        let keep = hold(at);
        out.extend_from_slice(&buf[at..keep]);
        *pending = buf[keep..].to_vec();
        out
    }
}

/// How many of a step's last bytes are kept to find an error word that
/// began in its previous chunk: the longest word, and the colour escape
/// before it that `Pattern::error` looks behind.
const TAIL: usize = 32;

/// Whether an error word ends in `data`, which follows `tail` (the step's
/// previous bytes; updated to end with `data`'s). The chunk is searched in
/// place: only its first bytes are joined to the tail, for a word that
/// began before it.
fn error_ends_in(tail: &mut Vec<u8>, data: &[u8]) -> bool {
    static ERROR: std::sync::OnceLock<Pattern> = std::sync::OnceLock::new();
    let error = ERROR.get_or_init(Pattern::error);
    let kept = tail.len();
    tail.extend_from_slice(&data[..data.len().min(2 * TAIL)]);
    // A word starting in the chunk's first TAIL bytes ends in the joined
    // part; one starting later has its look-behind in the chunk.
    let found =
        error.matches(tail, 0, kept) || (data.len() > 2 * TAIL && error.matches(data, TAIL, 0));
    if data.len() >= TAIL {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - TAIL..]);
    } else {
        let cut = tail.len().saturating_sub(TAIL);
        tail.drain(..cut);
    }
    found
}

/// Appends log chunks with the counters the store's readers rely on
/// (sequence, build offset, step offset), contiguous whatever happens.
pub struct LogWriter {
    store: Store,
    abandon: CancellationToken,
    redactor: Redactor,
    /// The attempt each build's chunks carry (fencing).
    attempts: HashMap<i64, i64>,
    /// Canceled when a chunk is rejected as stale: the run must stop.
    on_fenced: CancellationToken,
    seq: HashMap<i64, i64>,
    build_offset: HashMap<i64, i64>,
    step_offset: HashMap<(i64, String), i64>,
    pending: HashMap<(i64, String), Vec<u8>>,
    /// The last bytes each step wrote: an error word may begin in one
    /// chunk and end in the next (`NewChunk::has_error`).
    tails: HashMap<(i64, String), Vec<u8>>,
    /// Bytes given up per build (only after `abandon`).
    lost: HashMap<i64, u64>,
    /// Where a stored write is announced (live followers on this agent),
    /// and when each build was last announced to other agents.
    announce: Option<tokio::sync::broadcast::Sender<i64>>,
    notified: HashMap<i64, std::time::Instant>,
}

impl LogWriter {
    pub fn new(
        store: Store,
        abandon: CancellationToken,
        redactor: Redactor,
        on_fenced: CancellationToken,
    ) -> LogWriter {
        LogWriter {
            store,
            abandon,
            redactor,
            attempts: HashMap::new(),
            on_fenced,
            seq: HashMap::new(),
            build_offset: HashMap::new(),
            step_offset: HashMap::new(),
            pending: HashMap::new(),
            tails: HashMap::new(),
            lost: HashMap::new(),
            announce: None,
            notified: HashMap::new(),
        }
    }

    /// The next announcement of `build` reaches other agents whatever the
    /// throttle: it says the build ended.
    pub fn notified_at_end(&mut self, build: i64) {
        self.notified.remove(&build);
    }

    /// Announces every stored write of a build on `sender`.
    pub fn announce_to(&mut self, sender: tokio::sync::broadcast::Sender<i64>) {
        self.announce = Some(sender);
    }

    /// Tells live followers that `build` grew: on this agent at once, on
    /// the others (PostgreSQL `NOTIFY piper_log`) at most every 50 ms.
    pub async fn written(&mut self, build: i64) {
        if let Some(sender) = &self.announce {
            let _ = sender.send(build);
        }
        if self.store.is_postgres() {
            let now = std::time::Instant::now();
            let due = self
                .notified
                .get(&build)
                .is_none_or(|last| now.duration_since(*last) >= Duration::from_millis(50));
            if due {
                self.notified.insert(build, now);
                let _ = self.store.notify_written(build).await;
            }
        }
    }

    /// Chunks of `build` carry `attempt`.
    pub fn hold(&mut self, build: i64, attempt: i64) {
        self.attempts.insert(build, attempt);
    }

    /// Goes on after what is stored already (`Store::log_end`).
    pub fn continue_after(
        &mut self,
        build: i64,
        end: (i64, i64, std::collections::BTreeMap<String, i64>),
    ) {
        let (next_seq, length, steps) = end;
        self.seq.insert(build, next_seq);
        self.build_offset.insert(build, length);
        for (step, bytes) in steps {
            self.step_offset.insert((build, step), bytes);
        }
    }

    /// Writes `data`, masked, to the log of `build` (and `step`).
    pub async fn write(&mut self, build: i64, step: &str, data: &[u8]) {
        let key = (build, step.to_string());
        let pending = self.pending.entry(key).or_default();
        let masked = self.redactor.redact(pending, data, false);
        self.append(build, step, masked, false).await;
    }

    /// Writes a line that repeats an event for readers of the raw log
    /// (`$ command`); event streams leave it out.
    pub async fn annotate(&mut self, build: i64, step: &str, line: &str) {
        self.finish_step(build, step).await;
        let masked = self.redactor.redact(&mut Vec::new(), line.as_bytes(), true);
        self.append(build, step, masked, true).await;
    }

    /// Stores an executor event (JSON, masked) in the sequence the log
    /// chunks use, so readers get both in one order.
    pub async fn event(&mut self, build: i64, body: &str) {
        if self.attempts.get(&build) == Some(&-1) {
            return;
        }
        let body = self.redactor.redact(&mut Vec::new(), body.as_bytes(), true);
        let body = String::from_utf8_lossy(&body).into_owned();
        let attempt = self.attempts.get(&build).copied().unwrap_or(0);
        let seq = *self.seq.entry(build).or_insert(0);
        let store = &self.store;
        match with_retry(
            &format!("storing an event of build {build}"),
            &self.abandon,
            || store.append_event(build, attempt, seq, &body),
        )
        .await
        {
            Ok(true) => {
                self.seq.insert(build, seq + 1);
                self.written(build).await;
            }
            Ok(false) => {
                tracing::warn!(
                    build,
                    attempt,
                    "an event was rejected: this attempt no longer holds the build; stopping it"
                );
                self.attempts.insert(build, -1);
                self.on_fenced.cancel();
            }
            Err(e) => tracing::error!("{e}; an event is missing from the stream"),
        }
    }

    /// Writes what a step's stream held back (its output is over).
    pub async fn finish_step(&mut self, build: i64, step: &str) {
        if let Some(mut pending) = self.pending.remove(&(build, step.to_string())) {
            let rest = self.redactor.redact(&mut pending, &[], true);
            self.append(build, step, rest, false).await;
        }
    }

    /// Writes everything held back, for every step.
    pub async fn finish_all(&mut self) {
        let keys: Vec<(i64, String)> = self.pending.keys().cloned().collect();
        for (build, step) in keys {
            self.finish_step(build, &step).await;
        }
    }

    /// Bytes of `build`'s log that could not be stored.
    pub fn lost(&self, build: i64) -> u64 {
        self.lost.get(&build).copied().unwrap_or(0)
    }

    async fn append(&mut self, build: i64, step: &str, mut data: Vec<u8>, annotation: bool) {
        if data.is_empty() {
            return;
        }
        if let Some(lost) = self.lost.get(&build).filter(|&&n| n > 0) {
            let mut marked = format!("[piper: {lost} bytes of log lost]\n").into_bytes();
            marked.extend_from_slice(&data);
            data = marked;
        }
        let seq = *self.seq.entry(build).or_insert(0);
        let build_offset = *self.build_offset.entry(build).or_insert(0);
        let step_offset = *self
            .step_offset
            .entry((build, step.to_string()))
            .or_insert(0);
        if self.attempts.get(&build) == Some(&-1) {
            return;
        }
        let attempt = self.attempts.get(&build).copied().unwrap_or(0);
        let tail = self.tails.entry((build, step.to_string())).or_default();
        let has_error = error_ends_in(tail, &data);
        let chunk = NewChunk {
            build_id: build,
            attempt,
            seq,
            step,
            build_offset,
            step_offset,
            data: &data,
            annotation,
            has_error,
        };
        let store = &self.store;
        let stored = with_retry(
            &format!("storing the log of build {build}"),
            &self.abandon,
            || store.append_log(chunk),
        )
        .await;
        match stored {
            Ok(false) => {
                // Stale: another attempt holds the build; stop this one and
                // write nothing more for it.
                tracing::warn!(
                    build,
                    attempt,
                    "a log chunk was rejected: this attempt no longer holds the build; stopping it"
                );
                self.attempts.insert(build, -1);
                self.on_fenced.cancel();
            }
            Ok(true) => {
                self.written(build).await;
                self.lost.remove(&build);
                self.seq.insert(build, seq + 1);
                self.build_offset
                    .insert(build, build_offset + data.len() as i64);
                self.step_offset
                    .insert((build, step.to_string()), step_offset + data.len() as i64);
            }
            Err(e) => {
                tracing::error!("{e}; giving up on {} bytes", data.len());
                *self.lost.entry(build).or_insert(0) += data.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks per chunk, for one step's chunks in order.
    fn marks(chunks: &[&[u8]]) -> Vec<bool> {
        let mut tail = Vec::new();
        chunks.iter().map(|c| error_ends_in(&mut tail, c)).collect()
    }

    #[test]
    fn a_chunk_is_marked_where_an_error_word_ends_also_across_chunks() {
        let filler = [b'.'; 100];
        assert_eq!(
            marks(&[b"ok\n", b"error: x\n", b"fine\n"]),
            [false, true, false]
        );
        // Begun in one chunk, ended in the next (also after a colour).
        assert_eq!(marks(&[b"ok\nerr", b"or: x\n"]), [false, true]);
        assert_eq!(
            marks(&[b"\x1b[1;3", b"1mFAIL", b"ED\n"]),
            [false, false, true]
        );
        // Deep in a long chunk, and not a word.
        let long = [&filler[..], b" panicked at", &filler[..]].concat();
        assert_eq!(marks(&[&long[..]]), [true]);
        let long = [&filler[..], b" terrors", &filler[..]].concat();
        assert_eq!(marks(&[&filler[..], &long[..]]), [false, false]);
    }

    fn redact_in_chunks(redactor: &Redactor, chunks: &[&str]) -> String {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(redactor.redact(&mut pending, chunk.as_bytes(), false));
        }
        out.extend(redactor.redact(&mut pending, b"", true));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn secrets_are_masked_even_across_chunks() {
        let secrets = ["s3cr3t-value".to_string(), "abc".to_string()];
        let r = Redactor::new(&secrets);
        assert_eq!(
            redact_in_chunks(&r, &["token=s3cr3t-value\n"]),
            "token=***\n"
        );
        assert_eq!(
            redact_in_chunks(&r, &["token=s3cr", "3t-val", "ue and more"]),
            "token=*** and more"
        );
        // Too short to mask; a prefix at the very end is flushed as is.
        assert_eq!(redact_in_chunks(&r, &["abc s3cr"]), "abc s3cr");
        assert_eq!(redact_in_chunks(&Redactor::default(), &["a", "b"]), "ab");
        // A secret that contains another, cut by a chunk's edge after the
        // inner one: masked whole, the inner one not shown on its own.
        let nested = ["alpha-inner-omega".to_string(), "inner".to_string()];
        let r = Redactor::new(&nested);
        assert_eq!(
            redact_in_chunks(&r, &["say alpha-inner-om", "ega done; inner"]),
            "say *** done; ***"
        );
        assert_eq!(
            redact_in_chunks(&r, &["alpha-inner-", "x and inner-"]),
            "alpha-***-x and ***-"
        );
    }
}
