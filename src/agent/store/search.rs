//! Search over every stored log (migration 16): the lines of finished
//! builds' logs go into `log_search` (SQLite: FTS5 with trigrams;
//! PostgreSQL: a `pg_trgm` index), and a substring of 3 or more
//! characters finds them, case aside, filtered by repository, pipeline,
//! step, status, branch and time. Indexing is the agents' background work
//! (`agent/search_index.rs`), in short transactions, never part of a
//! running build's log writes.

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult, now_ms};
use super::model::BuildState;
use crate::agent::log_split::LineSplitter;

/// Lines put in the index per transaction: short enough that a build's
/// log writer (SQLite has one writer at a time) waits milliseconds.
const BATCH: usize = 1000;

/// The most of a line the index keeps (a minified bundle's one line must
/// not be a megabyte of index).
const LINE_MAX: usize = 4096;

/// A claim on a build's indexing older than this was left by an agent
/// that died: taken again.
const CLAIM_STALE_MS: i64 = 10 * 60 * 1000;

/// What a search asks for.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// The text, found anywhere in a line, case aside (3 characters or more).
    pub text: String,
    pub repo: Option<String>,
    pub pipeline: Option<String>,
    pub step: Option<String>,
    pub status: Option<BuildState>,
    /// The build's ref (`main`, `refs/tags/v1`), as submitted.
    pub branch: Option<String>,
    /// Builds requested at or after this (Unix ms).
    pub since: Option<i64>,
    /// Builds requested before this (Unix ms).
    pub until: Option<i64>,
    pub limit: i64,
}

/// One line that matched.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub build_id: i64,
    pub number: i64,
    pub repo: String,
    pub pipeline: String,
    pub git_ref: String,
    pub status: String,
    pub requested_at: i64,
    pub step: String,
    /// From 1 within the step's log.
    pub line: i64,
    /// The line as indexed (at most 4 KiB of it).
    pub text: String,
}

impl Store {
    /// Finished builds whose logs are not in the index yet (or whose
    /// indexing agent died), oldest first; at most `limit`.
    pub async fn unindexed_builds(&self, limit: i64) -> StoreResult<Vec<i64>> {
        let stale = now_ms() - CLAIM_STALE_MS;
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT id FROM builds WHERE status NOT IN ('queued', 'running') \
                 AND (log_indexed = 0 OR (log_indexed = 1 AND log_index_claimed_at < $1)) \
                 ORDER BY id LIMIT $2",
            )
            .bind(stale)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| r.try_get("id")).collect::<StoreResult<Vec<i64>>>()
        })
    }

    /// Puts the log of finished build `id` in the index; false when another
    /// agent has it (claimed, or done). Lines go in by batches, each its
    /// own transaction; a claim taken again starts over.
    pub async fn index_log(&self, id: i64) -> StoreResult<bool> {
        let now = now_ms();
        const FRESH: &str = "UPDATE builds SET log_indexed = 1, log_index_claimed_at = $2 WHERE id = $1 \
             AND status NOT IN ('queued', 'running') AND log_indexed = 0";
        const STALE: &str = "UPDATE builds SET log_indexed = 1, log_index_claimed_at = $2 WHERE id = $1 \
             AND status NOT IN ('queued', 'running') AND log_indexed = 1 AND log_index_claimed_at < $3";
        let (fresh, retaken) = on_backend!(self, pool => {
            let fresh = sqlx::query(FRESH).bind(id).bind(now)
                .execute(pool).await?.rows_affected() == 1;
            let retaken = !fresh && sqlx::query(STALE).bind(id).bind(now).bind(now - CLAIM_STALE_MS)
                .execute(pool).await?.rows_affected() == 1;
            (fresh, retaken)
        });
        if !fresh && !retaken {
            return Ok(false);
        }
        // What a dead agent put in is taken out (SQLite's FTS5 scans for
        // it: only then).
        if retaken {
            on_backend!(self, pool => {
                sqlx::query("DELETE FROM log_search WHERE build_id = $1")
                    .bind(id)
                    .execute(pool)
                    .await?;
            });
        }
        let mut lines = LineSplitter::default();
        let mut batch: Vec<(String, i64, String)> = Vec::with_capacity(BATCH);
        let mut after = -1;
        loop {
            let chunks = self.log_records(id, after, 64).await?;
            let Some(last) = chunks.last() else { break };
            after = last.seq;
            for chunk in &chunks {
                lines.push(&chunk.step, chunk.annotation, 0, &chunk.data, |line| {
                    batch.push((
                        line.step.to_string(),
                        line.number as i64,
                        indexed_text(line.text),
                    ));
                });
                if batch.len() >= BATCH {
                    self.insert_lines(id, &mut batch).await?;
                }
            }
        }
        lines.finish(|line| {
            batch.push((
                line.step.to_string(),
                line.number as i64,
                indexed_text(line.text),
            ));
        });
        self.insert_lines(id, &mut batch).await?;
        on_backend!(self, pool => {
            sqlx::query("UPDATE builds SET log_indexed = 2 WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(true)
    }

    /// One transaction of lines, emptying `batch`.
    async fn insert_lines(
        &self,
        id: i64,
        batch: &mut Vec<(String, i64, String)>,
    ) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            for (step, line, text) in batch.drain(..) {
                sqlx::query("INSERT INTO log_search (text, build_id, step, line) VALUES ($1, $2, $3, $4)")
                    .bind(text)
                    .bind(id)
                    .bind(step)
                    .bind(line)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The lines holding `filter.text`, newest build first, then by step
    /// and line; at most `filter.limit`.
    pub async fn search_logs(&self, filter: &SearchFilter) -> StoreResult<Vec<SearchHit>> {
        // Each backend's index answers its own form: pg_trgm's GIN index
        // an ILIKE; FTS5's trigram index a MATCH of a quoted phrase, which
        // is a substring search (a LIKE with ESCAPE is not offered to
        // FTS5's index and would read every line).
        let (condition, pattern) = match self.backend {
            Backend::Postgres(_) => (
                "s.text ILIKE $1 ESCAPE '\\'",
                format!("%{}%", escape_like(&filter.text)),
            ),
            Backend::Sqlite(_) => (
                "s.text MATCH $1",
                format!("\"{}\"", filter.text.replace('"', "\"\"")),
            ),
        };
        let mut sql = format!(
            "SELECT s.build_id AS build_id, s.step AS step, s.line AS line, s.text AS text, \
             b.number AS number, b.repo AS repo, b.pipeline AS pipeline, b.git_ref AS git_ref, \
             b.status AS status, b.requested_at AS requested_at \
             FROM log_search s JOIN builds b ON b.id = s.build_id \
             WHERE {condition}"
        );
        let mut texts: Vec<String> = vec![pattern];
        let mut numbers: Vec<i64> = Vec::new();
        let text_filters = [
            ("b.repo", &filter.repo),
            ("b.pipeline", &filter.pipeline),
            ("s.step", &filter.step),
            ("b.git_ref", &filter.branch),
        ];
        for (column, value) in text_filters {
            if let Some(value) = value {
                texts.push(value.clone());
                sql += &format!(" AND {column} = ${}", texts.len());
            }
        }
        if let Some(status) = filter.status {
            texts.push(status.as_str().to_string());
            sql += &format!(" AND b.status = ${}", texts.len());
        }
        for (op, value) in [(">=", filter.since), ("<", filter.until)] {
            if let Some(value) = value {
                numbers.push(value);
                sql += &format!(" AND b.requested_at {op} ${}", texts.len() + numbers.len());
            }
        }
        numbers.push(filter.limit);
        sql += &format!(
            " ORDER BY s.build_id DESC, s.step, s.line LIMIT ${}",
            texts.len() + numbers.len()
        );
        on_backend!(self, pool => {
            // Built above from column names and numbered placeholders
            // only: every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for text in &texts {
                query = query.bind(text);
            }
            for number in &numbers {
                query = query.bind(number);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(SearchHit {
                        build_id: r.try_get("build_id")?,
                        number: r.try_get("number")?,
                        repo: r.try_get("repo")?,
                        pipeline: r.try_get("pipeline")?,
                        git_ref: r.try_get("git_ref")?,
                        status: r.try_get("status")?,
                        requested_at: r.try_get("requested_at")?,
                        step: r.try_get("step")?,
                        line: r.try_get("line")?,
                        text: r.try_get("text")?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
        })
    }
}

/// A line as the index keeps it: UTF-8 (invalid bytes replaced), no NUL
/// (PostgreSQL's text cannot hold one), at most [`LINE_MAX`] bytes.
fn indexed_text(text: &[u8]) -> String {
    let text = &text[..text.len().min(LINE_MAX)];
    let mut text = String::from_utf8_lossy(text).into_owned();
    if text.contains('\0') {
        text = text.replace('\0', "\u{fffd}");
    }
    text
}

/// `text` matched literally by ILIKE with `ESCAPE '\'`.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_the_text_literally() {
        assert_eq!(escape_like(r"100%_done\n"), r"100\%\_done\\n");
    }

    #[test]
    fn indexed_lines_are_text_without_nul_and_bounded() {
        assert_eq!(indexed_text(b"a\0b\xff"), "a\u{fffd}b\u{fffd}");
        assert_eq!(indexed_text(&[b'x'; 10_000]).len(), LINE_MAX);
    }
}
