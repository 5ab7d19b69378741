//! The queue: builds created, listed, claimed under a lease, renewed,
//! handed back (rescued, given up, cancelled) and finished, with their
//! steps; every write of a running build fenced by its attempt.

use std::collections::BTreeMap;

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult, now_ms};
use super::model::*;

/// What a hand-back reads of a running build.
const HELD_COLUMNS: &str =
    "id, agent, attempt, max_attempts, cancel_requested, renewed_at, lease_expires_at";

struct HeldRow {
    id: i64,
    agent: String,
    attempt: i64,
    max_attempts: i64,
    cancel_requested: bool,
    renewed_at: Option<i64>,
    lease_expires_at: Option<i64>,
}

impl HeldRow {
    fn from_row<R: Row>(row: &R) -> StoreResult<HeldRow>
    where
        for<'r> &'r str: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(HeldRow {
            id: row.try_get("id")?,
            agent: row
                .try_get::<Option<String>, _>("agent")?
                .unwrap_or_else(|| "?".into()),
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            cancel_requested: row.try_get("cancel_requested")?,
            renewed_at: row.try_get("renewed_at")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
        })
    }

    /// What becomes of it, and the words for that.
    fn outcome(&self) -> (BuildState, String) {
        if self.cancel_requested {
            (
                BuildState::Canceled,
                "ended canceled: a cancel was asked for".into(),
            )
        } else if self.attempt < self.max_attempts {
            (
                BuildState::Queued,
                format!(
                    "queued again for attempt {} of {} (retry_agent_lost)",
                    self.attempt + 1,
                    self.max_attempts
                ),
            )
        } else {
            (
                BuildState::Lost,
                format!(
                    "ended lost: {} of {} attempts taken (retry_agent_lost)",
                    self.attempt, self.max_attempts
                ),
            )
        }
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC), for messages.
fn clock(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "never".into())
}

/// Hands `$held` back in transaction `$tx` (`$now`: the database clock as
/// SQL; `$blank`: its secrets blanked, as SQL): queued again, or ended
/// (its secrets blanked), fenced by its attempt, with `$cause` and
/// the outcome written into its log (the stream's next sequence number, a
/// line of the build's own). `Some(Rescued)`, or None when the row moved
/// on meanwhile.
macro_rules! hand_back {
    ($tx:ident, $now:expr, $blank:expr, $held:expr, $cause:expr) => {{
        let held: &HeldRow = $held;
        let (status, outcome) = held.outcome();
        let reason = format!("{}; {outcome}", $cause);
        let ended = (status != BuildState::Queued).then(|| reason.clone());
        let update = format!(
            "UPDATE builds SET status = $1, error = $2, lease_expires_at = NULL, \
             finished_at = CASE WHEN $1 = 'queued' THEN NULL ELSE {} END, \
             secret_env = CASE WHEN $1 = 'queued' THEN secret_env ELSE {} END \
             WHERE id = $3 AND attempt = $4 AND status = 'running'",
            $now, $blank
        );
        let moved = sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
            .bind(status.as_str())
            .bind(ended)
            .bind(held.id)
            .bind(held.attempt)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            == 1;
        if moved {
            let at = sqlx::query(
                "SELECT (SELECT COALESCE(MAX(seq), -1) FROM log_chunks WHERE build_id = $1) AS chunk, \
                        (SELECT COALESCE(MAX(seq), -1) FROM build_events WHERE build_id = $1) AS event, \
                        (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks WHERE build_id = $1) AS total, \
                        (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks WHERE build_id = $1 AND step = '') AS own",
            )
            .bind(held.id)
            .fetch_one(&mut *$tx)
            .await?;
            let seq = at.try_get::<i64, _>("chunk")?.max(at.try_get::<i64, _>("event")?) + 1;
            let line = format!("piper: {reason}\n");
            sqlx::query(
                "INSERT INTO log_chunks (build_id, seq, step, build_offset, step_offset, data, annotation, lines) \
                 VALUES ($1, $2, '', $3, $4, $5, $6, $7)",
            )
            .bind(held.id)
            .bind(seq)
            .bind(at.try_get::<i64, _>("total")?)
            .bind(at.try_get::<i64, _>("own")?)
            .bind(line.clone().into_bytes())
            .bind(false)
            .bind(line.matches('\n').count() as i64)
            .execute(&mut *$tx)
            .await?;
            Some(Rescued { id: held.id, status, reason })
        } else {
            None
        }
    }};
}

impl Store {
    /// Records a new build with the next number of its repository: queued,
    /// or (a chained build) running, held by `holder`. On PostgreSQL the
    /// commit notifies `piper_builds`, so idle agents claim it at once.
    pub async fn create_build(
        &self,
        new: &NewBuild,
        state: BuildState,
        holder: Option<&Holder>,
    ) -> StoreResult<Build> {
        self.create_build_once(new, state, holder, None)
            .await
            .map(|(build, _)| build)
    }

    /// `create_build`, once per `key`: a request repeated with the same key
    /// (a retried submit, a redelivered webhook) gets the build the first
    /// one created, and `true`.
    pub async fn create_build_once(
        &self,
        new: &NewBuild,
        state: BuildState,
        holder: Option<&Holder>,
        key: Option<&str>,
    ) -> StoreResult<(Build, bool)> {
        let env = serde_json::to_string(&new.env).unwrap_or_else(|_| "{}".into());
        let secret_env = serde_json::to_string(&new.secret_env).unwrap_or_else(|_| "{}".into());
        let args = serde_json::to_string(&new.args).unwrap_or_else(|_| "[]".into());
        let now = self.now_sql();
        let fence = self.next_fence_sql();
        // The counter row serializes concurrent submits to one repository
        // (its row lock), so numbering never fails under contention.
        let count = "INSERT INTO repo_counters (repo, last) VALUES ($1, 1) \
             ON CONFLICT (repo) DO UPDATE SET last = repo_counters.last + 1 RETURNING last";
        let insert = format!(
            "INSERT INTO builds (number, repo, git_ref, pipeline, status, env, requested_by, requested_at, \
             parent_id, secret_env, attempt, agent_id, agent, started_at, lease_expires_at, sha, \
             renewed_at, fence, args) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, {now}, $8, $9, $10, $11, $12, \
             CASE WHEN $10 > 0 THEN {now} END, CASE WHEN $10 > 0 THEN {now} + $13 END, $14, \
             CASE WHEN $10 > 0 THEN {now} END, CASE WHEN $10 > 0 THEN {fence} END, $15) \
             RETURNING {BUILD_COLUMNS}"
        );
        let attempt = i64::from(holder.is_some());
        // A transaction, all rows fetched, then COMMIT: with `fetch_one`
        // SQLite hands out the RETURNING row before the statement ends,
        // and a failing end (a full disk) went unnoticed — the caller
        // answered 201 for a row that never committed.
        let claim_key = format!(
            "INSERT INTO idempotency_keys (key, build_id, created_at) VALUES ($1, 0, {now}) \
             ON CONFLICT (key) DO NOTHING"
        );
        let select = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        on_backend!(self, pool => async {
            let mut tx = pool.begin().await?;
            if let Some(key) = key {
                // A concurrent request with the same key waits here for the
                // first one's commit (unique index), then sees its build.
                let fresh = sqlx::query(sqlx::AssertSqlSafe(claim_key.as_str()))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !fresh {
                    let rows = sqlx::query("SELECT build_id FROM idempotency_keys WHERE key = $1")
                        .bind(key)
                        .fetch_all(&mut *tx)
                        .await?;
                    let id: i64 = rows.first().ok_or(sqlx::Error::RowNotFound)?.try_get("build_id")?;
                    let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
                    return Ok((build_from_row(row)?, true));
                }
            }
            let counted = sqlx::query(count).bind(&new.repo).fetch_all(&mut *tx).await?;
            let number: i64 = counted.first().ok_or(sqlx::Error::RowNotFound)?.try_get("last")?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(number)
                .bind(&new.repo)
                .bind(&new.git_ref)
                .bind(&new.pipeline)
                .bind(state.as_str())
                .bind(&env)
                .bind(&new.requested_by)
                .bind(new.parent_id)
                .bind(&secret_env)
                .bind(attempt)
                .bind(holder.map(|h| h.agent_id.as_str()))
                .bind(holder.map(|h| h.agent_name.as_str()))
                .bind(holder.map_or(0, |h| h.lease_ms))
                .bind(new.sha.as_deref())
                .bind(&args)
                .fetch_all(&mut *tx)
                .await?;
            let build = build_from_row(rows.first().ok_or(sqlx::Error::RowNotFound)?)?;
            if let Some(key) = key {
                sqlx::query("UPDATE idempotency_keys SET build_id = $1 WHERE key = $2")
                    .bind(build.id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            if self.is_postgres() && state == BuildState::Queued {
                // The id lets other agents' followers of updates see it appear.
                sqlx::query("SELECT pg_notify('piper_builds', $1)")
                    .bind(build.id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok((build, false))
        }.await)
    }

    pub async fn get_build(&self, id: i64) -> StoreResult<Option<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        on_backend!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(build_from_row(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Newest first.
    pub async fn list_builds(&self, filter: &BuildFilter) -> StoreResult<Vec<Build>> {
        // NULL filters match everything; parameters appear in order.
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds \
             WHERE ($1 IS NULL OR repo = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR pipeline = $3) AND ($4 IS NULL OR id < $4) \
             AND ($6 IS NULL OR agent = $6) AND ($7 IS NULL OR parent_id = $7) \
             ORDER BY id DESC LIMIT $5"
        );
        let sql = match self.backend {
            // PostgreSQL needs the types of parameters compared with NULL.
            Backend::Postgres(_) => sql
                .replace("$1 IS NULL", "$1::TEXT IS NULL")
                .replace("$2 IS NULL", "$2::TEXT IS NULL")
                .replace("$3 IS NULL", "$3::TEXT IS NULL")
                .replace("$4 IS NULL", "$4::BIGINT IS NULL")
                .replace("$6 IS NULL", "$6::TEXT IS NULL")
                .replace("$7 IS NULL", "$7::BIGINT IS NULL"),
            Backend::Sqlite(_) => sql,
        };
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(filter.repo.as_deref())
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.pipeline.as_deref())
                .bind(filter.before)
                .bind(filter.limit)
                .bind(filter.agent.as_deref())
                .bind(filter.parent)
                .fetch_all(pool)
                .await?;
            rows.iter().map(build_from_row).collect()
        })
    }

    /// Takes the oldest queued build for `holder`: its next attempt, with
    /// a lease on the database's clock.
    pub async fn claim_next(&self, holder: &Holder) -> StoreResult<Option<Build>> {
        // The oldest queued build this agent can run: requirements unknown
        // (it will read them) or each met by its labels, decided in the
        // query, so builds it cannot run never hide one it can, however
        // many wait (a window of the oldest few did: 64 waiting for a label
        // nobody has stalled the queue).
        let candidate = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT id FROM builds WHERE status = 'queued' AND (requires IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM json_each(builds.requires) AS wanted WHERE NOT EXISTS ( \
                     SELECT 1 FROM json_each($1) AS has \
                     WHERE has.key = wanted.key AND has.value = wanted.value))) \
                 ORDER BY id LIMIT 1"
            }
            // Several agents: each claims a different build.
            Backend::Postgres(_) => {
                "SELECT id FROM builds WHERE status = 'queued' \
                 AND (requires IS NULL OR requires::jsonb <@ $1::jsonb) \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            }
        };
        let labels = serde_json::to_string(&holder.labels).unwrap_or_else(|_| "{}".into());
        let now = self.now_sql();
        let fence = self.next_fence_sql();
        let sql = format!(
            "UPDATE builds SET status = 'running', agent = $1, agent_id = $2, \
             started_at = COALESCE(started_at, {now}), attempt = attempt + 1, \
             lease_expires_at = {now} + $3, renewed_at = {now}, fence = {fence} \
             WHERE id = $4 AND status = 'queued' RETURNING {BUILD_COLUMNS}"
        );
        // As in `create_build`: the claim counts only once committed.
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(candidate).bind(&labels).fetch_all(&mut *tx).await?;
            let pick = rows.first().map(|row| row.try_get::<i64, _>("id")).transpose()?;
            let Some(id) = pick else {
                tx.commit().await?;
                return Ok(None);
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&holder.agent_name)
                .bind(&holder.agent_id)
                .bind(holder.lease_ms)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.first().map(build_from_row).transpose()
        })
    }

    /// Gives a claimed build back to the queue, recording what it requires
    /// (this agent read its piper.lua and does not have it): the claim does
    /// not count as an attempt, nor as the build's start.
    pub async fn unclaim(
        &self,
        id: i64,
        attempt: i64,
        requires: &BTreeMap<String, String>,
    ) -> StoreResult<bool> {
        let requires = serde_json::to_string(requires).unwrap_or_else(|_| "{}".into());
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE builds SET status = 'queued', attempt = attempt - 1, agent = NULL, agent_id = NULL, \
                 started_at = NULL, lease_expires_at = NULL, requires = $1 WHERE id = $2 AND attempt = $3 AND status = 'running'",
            )
            .bind(&requires)
            .bind(id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done && self.is_postgres() {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Extends the lease of `attempt` of a build; says whether it is still
    /// ours and whether a cancel was asked for.
    pub async fn renew(&self, id: i64, attempt: i64, lease_ms: i64) -> StoreResult<Renewal> {
        let now = self.now_sql();
        let sql = format!(
            "UPDATE builds SET lease_expires_at = {now} + $1, renewed_at = {now} \
             WHERE id = $2 AND attempt = $3 AND status = 'running' RETURNING cancel_requested"
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(lease_ms)
                .bind(id)
                .bind(attempt)
                .fetch_all(pool)
                .await?;
            Ok(match rows.first() {
                None => Renewal::Lost,
                Some(row) if row.try_get::<bool, _>("cancel_requested")? => Renewal::CancelRequested,
                Some(_) => Renewal::Held,
            })
        })
    }

    /// Ends or re-queues running builds whose lease expired (their agent
    /// died, stalled or was cut off), re-checking the lease in the same
    /// transaction so a build that just finished or was renewed is never
    /// touched. `only` limits it to one agent's builds, whatever their
    /// lease (that agent starting again). `by` names the agent rescuing.
    /// Each build's log says why (which agent, when it last renewed, when
    /// the lease expired) and what became of it.
    pub async fn rescue(&self, only: Option<&str>, by: &str) -> StoreResult<Vec<Rescued>> {
        let now = self.now_sql();
        // One agent's builds whatever their lease, or every expired one.
        let which = match self.backend {
            Backend::Postgres(_) => {
                "($1::TEXT IS NULL AND lease_expires_at < NOW_MS OR agent_id = $1)"
            }
            Backend::Sqlite(_) => "($1 IS NULL AND lease_expires_at < NOW_MS OR agent_id = $1)",
        }
        .replace("NOW_MS", now);
        let select = format!(
            "SELECT {HELD_COLUMNS}, {now} AS now FROM builds WHERE status = 'running' AND {which}{}",
            self.lock_rows()
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(only)
                .fetch_all(&mut *tx)
                .await?;
            let mut rescued = Vec::new();
            for row in &rows {
                let held = HeldRow::from_row(row)?;
                let cause = match only {
                    Some(_) => format!(
                        "agent {} started again after it stopped while running attempt {}",
                        held.agent, held.attempt
                    ),
                    None => format!(
                        "agent {} stopped renewing the lease of attempt {} (last renewed {}, expired {}, database clock); rescued by agent {by}",
                        held.agent,
                        held.attempt,
                        clock(held.renewed_at),
                        clock(held.lease_expires_at),
                    ),
                };
                if let Some(done) = hand_back!(tx, now, self.blank_secrets_sql(), &held, &cause) {
                    rescued.push(done);
                }
            }
            if self.is_postgres() && rescued.iter().any(|r| r.status == BuildState::Queued) {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rescued)
        })
    }

    /// `attempt` of build `id` is given up by the agent holding it, for
    /// `cause` (it could not renew the lease in time and ended its steps):
    /// handed back as a rescue would, saying why in its log. None when the
    /// attempt no longer holds the build (already rescued).
    pub async fn give_up(
        &self,
        id: i64,
        attempt: i64,
        cause: &str,
    ) -> StoreResult<Option<Rescued>> {
        let now = self.now_sql();
        let select = format!(
            "SELECT {HELD_COLUMNS}, {now} AS now FROM builds \
             WHERE id = $1 AND attempt = $2 AND status = 'running'{}",
            self.lock_rows()
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(id)
                .bind(attempt)
                .fetch_all(&mut *tx)
                .await?;
            let mut given = None;
            if let Some(row) = rows.first() {
                let held = HeldRow::from_row(row)?;
                given = hand_back!(tx, now, self.blank_secrets_sql(), &held, cause);
            }
            if self.is_postgres() && given.as_ref().is_some_and(|r| r.status == BuildState::Queued) {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(given)
        })
    }

    /// `secret_env` with its values blanked, as SQL: a build that ended
    /// keeps the names of its secrets (shown, and a retrigger can say which
    /// to give again), never their values.
    fn blank_secrets_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => {
                "(SELECT COALESCE(json_group_object(key, ''), '{}') FROM json_each(builds.secret_env))"
            }
            Backend::Postgres(_) => {
                "(SELECT COALESCE(jsonb_object_agg(key, ''), '{}'::jsonb)::text FROM jsonb_each_text(builds.secret_env::jsonb))"
            }
        }
    }

    /// ` FOR UPDATE` where rows read in a transaction must stay as read
    /// until it ends (PostgreSQL; SQLite's writer holds the whole file).
    fn lock_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Asks the agent running a build to cancel it (PostgreSQL: notified
    /// at once on `piper_cancel`; else at its next lease renewal). False
    /// when the build is not running.
    pub async fn request_cancel(&self, id: i64) -> StoreResult<bool> {
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE builds SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected() == 1;
            if done && self.is_postgres() {
                sqlx::query("SELECT pg_notify('piper_cancel', $1)").bind(id.to_string()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// How many attempts a build may take, once its pipeline is known.
    pub async fn set_max_attempts(&self, id: i64, max_attempts: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE builds SET max_attempts = $1 WHERE id = $2")
                .bind(max_attempts)
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Cancels a build that no agent has claimed yet; false when it is no
    /// longer queued (claimed meanwhile, or ended).
    pub async fn cancel_queued(&self, id: i64) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE builds SET status = 'canceled', finished_at = $1, secret_env = {}, \
             error = 'canceled before it started' WHERE id = $2 AND status = 'queued'",
            self.blank_secrets_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(now_ms())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Records the commit an attempt checked out; false when the attempt
    /// is stale (fenced).
    pub async fn set_revision(
        &self,
        id: i64,
        attempt: i64,
        sha: &str,
        version: Option<&str>,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE builds SET sha = $1, version = $2 WHERE id = $3 AND attempt = $4 AND status = 'running'")
                .bind(sha)
                .bind(version)
                .bind(id)
                .bind(attempt)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// Ends `attempt` of a running build. Only `running` matches (a queued
    /// build is ended by `cancel_queued`, so a cancel racing a claim never
    /// marks a build that ran as canceled), and only the current attempt
    /// (fencing): false when this attempt no longer holds the build.
    pub async fn finish_build(
        &self,
        id: i64,
        attempt: i64,
        state: BuildState,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let now = self.now_sql();
        let blank = self.blank_secrets_sql();
        let sql = format!(
            "UPDATE builds SET status = $1, error = COALESCE($2, error), finished_at = {now}, \
             lease_expires_at = NULL, secret_env = {blank} \
             WHERE id = $3 AND attempt = $4 AND status = 'running'"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(state.as_str())
                .bind(error)
                .bind(id)
                .bind(attempt)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }
}
