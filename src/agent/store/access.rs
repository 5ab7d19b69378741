//! Who may call the API: API tokens (by hash, named) and the web UI's
//! sessions.

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult};

impl Store {
    /// The name of the API token whose hash is `hash`, if any.
    pub async fn token_named(&self, hash: &str) -> StoreResult<Option<String>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT name FROM api_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("name")).transpose()
        })
    }

    /// Adds a token; false when the name is taken. With `replace`, a token
    /// of that name is replaced instead, and the same token under another
    /// name is renamed (an agent's own file token: its row is named after
    /// the agent, who may have been renamed since).
    pub async fn add_token(&self, name: &str, hash: &str, replace: bool) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO api_tokens (name, hash, created_at) VALUES ($1, $2, {}) ON CONFLICT (name) {}",
            self.now_sql(),
            if replace {
                "DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at"
            } else {
                "DO NOTHING"
            }
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            if replace {
                sqlx::query("DELETE FROM api_tokens WHERE hash = $1 AND name <> $2")
                    .bind(hash)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            let added = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(name)
                .bind(hash)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            tx.commit().await?;
            Ok(added)
        })
    }

    /// Opens a web UI session for the token `token_name`, kept by the hash
    /// of its id, valid for `lifetime_ms`. Expired sessions go on the way.
    pub async fn create_session(
        &self,
        hash: &str,
        token_name: &str,
        lifetime_ms: i64,
    ) -> StoreResult<()> {
        let now = self.now_sql();
        let expire = format!("DELETE FROM sessions WHERE expires_at < {now}");
        let insert = format!(
            "INSERT INTO sessions (hash, token_name, created_at, expires_at) \
             VALUES ($1, $2, {now}, {now} + $3)"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(expire.as_str())).execute(pool).await?;
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(hash)
                .bind(token_name)
                .bind(lifetime_ms)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The token name of a live session: not expired, and its token not
    /// revoked (revoking a token ends the sessions opened with it).
    pub async fn session_token(&self, hash: &str) -> StoreResult<Option<String>> {
        let sql = format!(
            "SELECT s.token_name FROM sessions s JOIN api_tokens t ON t.name = s.token_name \
             WHERE s.hash = $1 AND s.expires_at > {}",
            self.now_sql()
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(hash)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("token_name")).transpose()
        })
    }

    /// Ends a session (logging out).
    pub async fn delete_session(&self, hash: &str) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE hash = $1")
                .bind(hash)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// (name, created at) of every token.
    pub async fn tokens(&self) -> StoreResult<Vec<(String, i64)>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("name")?, row.try_get("created_at")?)))
                .collect()
        })
    }

    /// Revokes a token; false when there is none of that name.
    pub async fn revoke_token(&self, name: &str) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }
}
