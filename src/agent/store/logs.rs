//! Logs and events of builds: chunks appended under the attempt's fence,
//! read back by offset (the raw log) or by sequence (the typed stream),
//! with each chunk's line count for the log view.

use std::collections::BTreeMap;

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult, now_ms};
use super::model::*;

impl Store {
    /// Where the stored log of a build ends: the next sequence number, its
    /// length, and each step's length (an attempt after a rescue goes on
    /// from there).
    pub async fn log_end(&self, id: i64) -> StoreResult<(i64, i64, BTreeMap<String, i64>)> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT step, MAX(seq) AS last, CAST(SUM(LENGTH(data)) AS BIGINT) AS bytes \
                 FROM log_chunks WHERE build_id = $1 GROUP BY step",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            // Events share the sequence: the next one goes after both.
            let events = sqlx::query("SELECT MAX(seq) AS last FROM build_events WHERE build_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await?;
            let mut next_seq = events
                .first()
                .and_then(|row| row.try_get::<Option<i64>, _>("last").ok().flatten())
                .map_or(0, |last| last + 1);
            let mut total = 0;
            let mut steps = BTreeMap::new();
            for row in &rows {
                let last: i64 = row.try_get("last")?;
                let bytes: i64 = row.try_get("bytes")?;
                next_seq = next_seq.max(last + 1);
                total += bytes;
                steps.insert(row.try_get::<String, _>("step")?, bytes);
            }
            Ok((next_seq, total, steps))
        })
    }

    /// Appends a chunk; false when its attempt is stale (the chunk is not
    /// stored). The writer of a build (its agent) keeps the counters: `seq`
    /// orders chunks, the offsets are where the chunk starts in the build's
    /// log and in its step's log.
    pub async fn append_log(&self, chunk: NewChunk<'_>) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO log_chunks (build_id, seq, step, build_offset, step_offset, data, annotation, lines, has_error, written_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $8, $9, $10, $11 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $7 AND status = 'running')",
            )
            .bind(chunk.build_id)
            .bind(chunk.seq)
            .bind(chunk.step)
            .bind(chunk.build_offset)
            .bind(chunk.step_offset)
            .bind(chunk.data)
            .bind(chunk.attempt)
            .bind(chunk.annotation)
            .bind(memchr::memchr_iter(b'\n', chunk.data).count() as i64)
            .bind(chunk.has_error)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Appends one of the executor's events (JSON) of `attempt`, in the
    /// sequence it shares with the log chunks; false when stale.
    pub async fn append_event(
        &self,
        build_id: i64,
        attempt: i64,
        seq: i64,
        body: &str,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO build_events (build_id, seq, body) SELECT $1, $2, $3 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $4 AND status = 'running')",
            )
            .bind(build_id)
            .bind(seq)
            .bind(body)
            .bind(attempt)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Tells other agents' followers that a build's log grew (PostgreSQL).
    pub async fn notify_written(&self, build_id: i64) -> StoreResult<()> {
        match &self.backend {
            Backend::Postgres(pool) => sqlx::query("SELECT pg_notify('piper_log', $1)")
                .bind(build_id.to_string())
                .execute(pool)
                .await
                .map(|_| ()),
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// A build's events after `after` in order: stored events and output
    /// chunks (annotations left out), up to about `limit` bytes.
    pub async fn read_stream(
        &self,
        build_id: i64,
        after: i64,
        limit: usize,
        with_output: bool,
    ) -> StoreResult<Vec<(i64, StreamItem)>> {
        const BATCH: i64 = 500;
        let postgres = matches!(self.backend, Backend::Postgres(_));
        let (events, chunks) = on_backend!(self, pool => {
            // Both tables from one snapshot: read in two statements, an
            // event committed between them was skipped for good once a
            // later chunk moved the reader past it. SQLite's transaction
            // reads one snapshot; PostgreSQL's needs REPEATABLE READ.
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx).await?;
            }
            let events = sqlx::query("SELECT seq, body FROM build_events WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(build_id).bind(after).bind(BATCH).fetch_all(&mut *tx).await?;
            let chunks = if with_output {
                sqlx::query("SELECT seq, step, data FROM log_chunks WHERE build_id = $1 AND seq > $2 AND NOT annotation ORDER BY seq LIMIT $3")
                    .bind(build_id).bind(after).bind(BATCH).fetch_all(&mut *tx).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            let events = events.iter().map(|r| Ok((r.try_get::<i64, _>("seq")?, StreamItem::Event(r.try_get("body")?)))).collect::<StoreResult<Vec<_>>>()?;
            let chunks = chunks.iter().map(|r| Ok((r.try_get::<i64, _>("seq")?, StreamItem::Output { step: r.try_get("step")?, data: r.try_get("data")? }))).collect::<StoreResult<Vec<_>>>()?;
            (events, chunks)
        });
        // A full batch may stop early: keep only what both batches cover.
        let mut until = i64::MAX;
        for batch in [&events, &chunks] {
            if batch.len() as i64 == BATCH {
                until = until.min(batch.last().map_or(i64::MAX, |(seq, _)| *seq));
            }
        }
        let mut items: Vec<(i64, StreamItem)> = events
            .into_iter()
            .chain(chunks)
            .filter(|(seq, _)| *seq <= until)
            .collect();
        items.sort_by_key(|(seq, _)| *seq);
        let mut size = 0;
        let mut kept = Vec::new();
        for item in items {
            size += match &item.1 {
                StreamItem::Event(body) => body.len(),
                StreamItem::Output { data, .. } => data.len(),
            };
            kept.push(item);
            if size >= limit {
                break;
            }
        }
        Ok(kept)
    }

    /// The log (of the build, or of one step) from `offset`: at least
    /// `limit` bytes where there are that many (the last chunk read may
    /// run past it). The chunks' sizes are read first and then only the
    /// bytes wanted: a read of 1 MiB from a log of 256 KiB chunks must not
    /// fetch hundreds of chunks to return four.
    pub async fn read_log(
        &self,
        build_id: i64,
        step: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<LogSlice> {
        const BATCH: usize = 256;
        let sql = match step {
            None => {
                "SELECT seq, build_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len FROM log_chunks \
                 WHERE build_id = $1 AND build_offset + LENGTH(data) > $2 AND seq > $3 ORDER BY seq LIMIT 256"
            }
            Some(_) => {
                "SELECT seq, step_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len FROM log_chunks \
                 WHERE build_id = $1 AND step_offset + LENGTH(data) > $2 AND seq > $3 AND step = $4 ORDER BY seq LIMIT 256"
            }
        };
        let mut data = Vec::new();
        let mut next = offset;
        let mut after_seq = -1;
        loop {
            let rows: Vec<(i64, i64, i64)> = on_backend!(self, pool => {
                let mut query = sqlx::query(sql).bind(build_id).bind(offset).bind(after_seq);
                if let Some(step) = step {
                    query = query.bind(step);
                }
                let rows = query.fetch_all(pool).await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("seq")?, row.try_get("start")?, row.try_get("len")?)))
                    .collect::<StoreResult<Vec<_>>>()?
            });
            let full_batch = rows.len() == BATCH;
            // The chunks wanted: contiguous from `next`, until `limit`.
            let (mut first, mut last, mut end, mut stop) = (None, None, next, false);
            for (seq, start, len) in rows {
                after_seq = seq;
                if start > end || end - start > len {
                    stop = true; // stop at what is contiguous
                    break;
                }
                first.get_or_insert(seq);
                last = Some(seq);
                end = start + len;
                if end - offset >= limit {
                    stop = true;
                    break;
                }
            }
            if let (Some(first), Some(last)) = (first, last) {
                for (start, chunk) in self.log_chunks_in(build_id, step, first, last).await? {
                    let skip = ((next - start).max(0) as usize).min(chunk.len());
                    data.extend_from_slice(&chunk[skip..]);
                    next = start + chunk.len() as i64;
                }
            }
            if stop || !full_batch {
                break;
            }
        }
        Ok(LogSlice {
            data,
            next_offset: next,
        })
    }

    /// Up to `limit` chunks of the build's log after sequence number
    /// `after`, in order, with what a log export needs of each: its step,
    /// whether it is Piper's own line, when it was stored.
    pub async fn log_records(
        &self,
        build_id: i64,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<ExportChunk>> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT seq, step, annotation, written_at, data FROM log_chunks \
                 WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(build_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(ExportChunk {
                        seq: row.try_get("seq")?,
                        step: row.try_get("step")?,
                        annotation: row.try_get("annotation")?,
                        written_at: row.try_get("written_at")?,
                        data: row.try_get("data")?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    /// The chunks `first..=last` (by sequence number) of the log of the
    /// build (or of one step), in order: where each starts, and its bytes.
    pub async fn log_chunks_in(
        &self,
        build_id: i64,
        step: Option<&str>,
        first: i64,
        last: i64,
    ) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let sql = match step {
            None => {
                "SELECT build_offset AS start, data FROM log_chunks \
                 WHERE build_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq"
            }
            Some(_) => {
                "SELECT step_offset AS start, data FROM log_chunks \
                 WHERE build_id = $1 AND seq >= $2 AND seq <= $3 AND step = $4 ORDER BY seq"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id).bind(first).bind(last);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.try_get("start")?, row.try_get("data")?)))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    /// The chunks of the log of the build (or of one step), in order:
    /// where each starts, how long it is, how many newlines it holds
    /// (`None` for chunks stored before migration 13). No log bytes are
    /// read: this is what a line number is found with.
    pub async fn log_chunk_lines(
        &self,
        build_id: i64,
        step: Option<&str>,
    ) -> StoreResult<Vec<ChunkLines>> {
        let sql = match step {
            None => {
                "SELECT seq, build_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len, lines, has_error \
                 FROM log_chunks WHERE build_id = $1 ORDER BY seq"
            }
            Some(_) => {
                "SELECT seq, step_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len, lines, has_error \
                 FROM log_chunks WHERE build_id = $1 AND step = $2 ORDER BY seq"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok(ChunkLines {
                    seq: row.try_get("seq")?,
                    start: row.try_get("start")?,
                    len: row.try_get("len")?,
                    lines: row.try_get("lines")?,
                    has_error: row.try_get("has_error")?,
                }))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    /// The bytes of one log chunk (empty if there is none).
    pub async fn log_chunk(&self, build_id: i64, seq: i64) -> StoreResult<Vec<u8>> {
        on_backend!(self, pool => {
            let row = sqlx::query("SELECT data FROM log_chunks WHERE build_id = $1 AND seq = $2")
                .bind(build_id)
                .bind(seq)
                .fetch_optional(pool)
                .await?;
            row.map(|row| row.try_get("data")).transpose().map(Option::unwrap_or_default)
        })
    }

    /// Records the newline count of a chunk stored before it was counted.
    pub async fn set_chunk_lines(&self, build_id: i64, seq: i64, lines: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE log_chunks SET lines = $3 WHERE build_id = $1 AND seq = $2")
                .bind(build_id)
                .bind(seq)
                .bind(lines)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// How many bytes the log of the build (or of one step) holds.
    pub async fn log_length(&self, build_id: i64, step: Option<&str>) -> StoreResult<i64> {
        let sql = match step {
            None => {
                "SELECT CAST(COALESCE(MAX(build_offset + LENGTH(data)), 0) AS BIGINT) AS n \
                     FROM log_chunks WHERE build_id = $1"
            }
            Some(_) => {
                "SELECT CAST(COALESCE(MAX(step_offset + LENGTH(data)), 0) AS BIGINT) AS n \
                        FROM log_chunks WHERE build_id = $1 AND step = $2"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let row = query.fetch_one(pool).await?;
            row.try_get("n")
        })
    }
}
