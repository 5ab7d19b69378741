//! A build's steps: their states as the recorder writes them (fenced by
//! the attempt), read back, and the progress the build list shows.

use std::collections::BTreeMap;

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult};
use super::model::*;

impl Store {
    /// Stores a step's state for `attempt`; false when the attempt is stale.
    pub async fn upsert_step(
        &self,
        build_id: i64,
        attempt: i64,
        position: i64,
        step: &StoredStep,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO steps (build_id, name, position, status, exit_code, started_at, finished_at, message) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $9 AND status = 'running') \
                 ON CONFLICT (build_id, name) DO UPDATE SET status = excluded.status, \
                 exit_code = excluded.exit_code, started_at = COALESCE(excluded.started_at, steps.started_at), \
                 finished_at = excluded.finished_at, message = excluded.message",
            )
            .bind(build_id)
            .bind(&step.name)
            .bind(position)
            .bind(&step.status)
            .bind(step.exit_code)
            .bind(step.started_at)
            .bind(step.finished_at)
            .bind(&step.message)
            .bind(attempt)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    pub async fn steps(&self, build_id: i64) -> StoreResult<Vec<StoredStep>> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT name, status, exit_code, started_at, finished_at, message FROM steps \
                 WHERE build_id = $1 ORDER BY position",
            )
            .bind(build_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredStep {
                        name: row.try_get("name")?,
                        status: row.try_get("status")?,
                        exit_code: row.try_get("exit_code")?,
                        started_at: row.try_get("started_at")?,
                        finished_at: row.try_get("finished_at")?,
                        message: row.try_get("message")?,
                    })
                })
                .collect()
        })
    }

    /// Steps finished and planned, per build: the progress lists show.
    pub async fn step_progress(&self, ids: &[i64]) -> StoreResult<BTreeMap<i64, (i64, i64)>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        // Ids are numbers: listing them inline is safe and works on both.
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT build_id, CAST(COUNT(*) AS BIGINT) AS total, \
             CAST(SUM(CASE WHEN status IN ('pending', 'running', 'queued') THEN 0 ELSE 1 END) AS BIGINT) AS done \
             FROM steps WHERE build_id IN ({}) GROUP BY build_id",
            list.join(", ")
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let id: i64 = row.try_get("build_id")?;
                    let total: i64 = row.try_get("total")?;
                    let done: i64 = row.try_get("done")?;
                    Ok((id, (done, total)))
                })
                .collect()
        })
    }
}
