//! The cluster's shared state: agents (registration, heartbeats, state),
//! the leader row and the schedule's slots, the statistics /metrics
//! reports, and bundles of commits sent over the API.

use std::collections::BTreeMap;

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult};
use super::model::*;

impl Store {
    /// Records this agent as started (or restarted).
    pub async fn register_agent(
        &self,
        id: &str,
        name: &str,
        address: &str,
        workers: i64,
        labels: &BTreeMap<String, String>,
        lease_ms: i64,
    ) -> StoreResult<()> {
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO agents (id, name, address, workers, labels, version, started_at, last_seen, lease_ms, state) \
             VALUES ($1, $2, $3, $4, $5, $6, {now}, {now}, $7, 'running') \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address, \
             workers = excluded.workers, labels = excluded.labels, version = excluded.version, \
             started_at = excluded.started_at, last_seen = excluded.last_seen, \
             lease_ms = excluded.lease_ms, state = excluded.state"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .bind(name)
                .bind(address)
                .bind(workers)
                .bind(&labels)
                .bind(env!("CARGO_PKG_VERSION"))
                .bind(lease_ms)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Records that an agent drains (`draining`: stopping, its running
    /// builds finish) or has stopped (`stopped`: offline at once).
    pub async fn set_agent_state(&self, id: &str, state: &str) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE agents SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    pub async fn heartbeat(&self, id: &str) -> StoreResult<()> {
        let sql = format!(
            "UPDATE agents SET last_seen = {} WHERE id = $1",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).execute(pool).await.map(|_| ())
        })
    }

    /// Builds by pipeline and status, the queue's oldest, the log bytes
    /// stored: what `/metrics` reports of the cluster.
    pub async fn cluster_stats(&self) -> StoreResult<ClusterStats> {
        let now = self.now_sql();
        let totals = format!(
            "SELECT {now} AS now, \
             (SELECT {now} - MIN(requested_at) FROM builds WHERE status = 'queued') AS oldest, \
             (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks) AS log_bytes"
        );
        let by_status = "SELECT pipeline, status, COUNT(*) AS n FROM builds GROUP BY pipeline, status ORDER BY pipeline, status";
        on_backend!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(totals.as_str())).fetch_one(pool).await?;
            let mut stats = ClusterStats {
                now_ms: row.try_get("now")?,
                oldest_queued_age_ms: row.try_get("oldest")?,
                log_bytes: row.try_get("log_bytes")?,
                builds: Vec::new(),
            };
            for row in sqlx::query(by_status).fetch_all(pool).await? {
                stats.builds.push((row.try_get("pipeline")?, row.try_get("status")?, row.try_get("n")?));
            }
            Ok(stats)
        })
    }

    /// Agents seen in the last hour (older ones age out of the list), on
    /// the database's clock.
    pub async fn agents(&self) -> StoreResult<Vec<AgentInfo>> {
        let now = self.now_sql();
        let sql = format!(
            "SELECT a.id, a.name, a.address, a.workers, a.labels, a.version, a.started_at, a.last_seen, \
             a.lease_ms, a.state, {now} AS now, \
             (SELECT COUNT(*) FROM builds b WHERE b.agent_id = a.id AND b.status = 'running') AS running, \
             (SELECT COUNT(*) FROM cluster_leader l WHERE l.agent_id = a.id AND l.expires_at > {now}) AS leads \
             FROM agents a WHERE a.last_seen > {now} - 3600000 ORDER BY a.name, a.id"
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let labels: String = row.try_get("labels")?;
                    let last_seen: i64 = row.try_get("last_seen")?;
                    let now: i64 = row.try_get("now")?;
                    let lease_ms: i64 = row.try_get("lease_ms")?;
                    let state: String = row.try_get("state")?;
                    let alive = state != "stopped" && now - last_seen < lease_ms;
                    let status = match (alive, state.as_str()) {
                        (false, _) => "offline",
                        (true, "draining") => "draining",
                        (true, _) => "online",
                    };
                    Ok(AgentInfo {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        address: row.try_get("address")?,
                        workers: row.try_get("workers")?,
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        version: row.try_get("version")?,
                        started_at: row.try_get("started_at")?,
                        last_seen,
                        online: status == "online",
                        status: status.into(),
                        leader: alive && row.try_get::<i64, _>("leads")? > 0,
                        running: row.try_get("running")?,
                    })
                })
                .collect()
        })
    }

    /// Takes or keeps the cluster's leadership for `lease_ms`: true when
    /// this agent holds it (it held it already, or the holder's lease ran
    /// out — one conditional statement, so two agents never both win).
    pub async fn lead(&self, agent_id: &str, lease_ms: i64) -> StoreResult<bool> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO cluster_leader (name, agent_id, expires_at) VALUES ('cluster', $1, {now} + $2) \
             ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, expires_at = excluded.expires_at \
             WHERE cluster_leader.agent_id = excluded.agent_id OR cluster_leader.expires_at < {now}"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(agent_id)
                .bind(lease_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// The last minute whose schedules the leaders queued.
    pub async fn scheduled_until(&self) -> StoreResult<Option<i64>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT scheduled_until FROM cluster_leader WHERE name = 'cluster'")
                .fetch_all(pool)
                .await?;
            Ok(rows.first().and_then(|row| row.try_get::<Option<i64>, _>("scheduled_until").ok().flatten()))
        })
    }

    /// Records that schedules were queued up to `minute` (by the leader).
    pub async fn set_scheduled_until(&self, agent_id: &str, minute: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE cluster_leader SET scheduled_until = $1 WHERE name = 'cluster' AND agent_id = $2")
                .bind(minute)
                .bind(agent_id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Every repository a build was checked out from (its commit was
    /// recorded): the scheduler's worklist. A string that never cloned —
    /// a typo, a fuzzer's — is not a repository to poll.
    pub async fn known_repos(&self) -> StoreResult<Vec<String>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT DISTINCT repo FROM builds WHERE sha IS NOT NULL ORDER BY repo").fetch_all(pool).await?;
            rows.iter().map(|row| row.try_get("repo")).collect()
        })
    }

    /// Takes the slot of a scheduled run; false when an agent already did.
    pub async fn claim_schedule_slot(
        &self,
        repo: &str,
        pipeline: &str,
        minute: i64,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("INSERT INTO schedule_runs (repo, pipeline, minute) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(repo)
                .bind(pipeline)
                .bind(minute)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// Keeps a git bundle under its digest (once: the same bytes again
    /// change nothing).
    pub async fn put_bundle(&self, digest: &str, data: &[u8]) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO bundles (digest, data, created_at) VALUES ($1, $2, {}) \
             ON CONFLICT (digest) DO NOTHING",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(digest)
                .bind(data)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The bundle kept under `digest`.
    pub async fn bundle(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT data FROM bundles WHERE digest = $1")
                .bind(digest)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("data")).transpose()
        })
    }

    /// Deletes bundles older than `age_ms` that no queued or running build
    /// names (a retrigger of an older build then says its bundle is gone).
    pub async fn prune_bundles(&self, age_ms: i64) -> StoreResult<u64> {
        let sql = format!(
            "DELETE FROM bundles WHERE created_at < {} - $1 AND NOT EXISTS ( \
             SELECT 1 FROM builds WHERE builds.repo = 'bundle:' || bundles.digest \
             AND builds.status IN ('queued', 'running'))",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(age_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }
}
