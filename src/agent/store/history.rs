//! Steps over history (issue 33): how long each step of a repository's
//! pipeline took over its last builds, how often it failed, and which
//! steps are flaky — failed and passed on the same commit (a retrigger, or
//! another build of it). Read from the `steps` rows the agents keep; the
//! figures are made in `agent/history.rs`.

use sqlx::Row;

use super::backend::{Backend, Store, StoreResult};

/// One step of one finished build, as history reads it.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub build_id: i64,
    pub number: i64,
    pub pipeline: String,
    /// The commit built (None: the checkout never got that far).
    pub sha: Option<String>,
    pub step: String,
    pub status: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Store {
    /// The steps of the last `builds` finished builds of `repo` (of
    /// `pipeline`, when given), oldest build first, each build's steps in
    /// plan order.
    pub async fn step_runs(
        &self,
        repo: &str,
        pipeline: Option<&str>,
        builds: i64,
    ) -> StoreResult<Vec<StepRun>> {
        let sql = match pipeline {
            Some(_) => {
                "SELECT b.id AS id, b.number AS number, b.pipeline AS pipeline, b.sha AS sha, \
                 s.name AS name, s.status AS status, s.started_at AS started_at, s.finished_at AS finished_at \
                 FROM steps s JOIN (SELECT id, number, pipeline, sha FROM builds \
                   WHERE repo = $1 AND status NOT IN ('queued', 'running') AND pipeline = $3 \
                   ORDER BY id DESC LIMIT $2) b ON b.id = s.build_id \
                 ORDER BY b.id, s.position"
            }
            None => {
                "SELECT b.id AS id, b.number AS number, b.pipeline AS pipeline, b.sha AS sha, \
                 s.name AS name, s.status AS status, s.started_at AS started_at, s.finished_at AS finished_at \
                 FROM steps s JOIN (SELECT id, number, pipeline, sha FROM builds \
                   WHERE repo = $1 AND status NOT IN ('queued', 'running') \
                   ORDER BY id DESC LIMIT $2) b ON b.id = s.build_id \
                 ORDER BY b.id, s.position"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(repo).bind(builds);
            if let Some(pipeline) = pipeline {
                query = query.bind(pipeline);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(StepRun {
                        build_id: r.try_get("id")?,
                        number: r.try_get("number")?,
                        pipeline: r.try_get("pipeline")?,
                        sha: r.try_get("sha")?,
                        step: r.try_get("name")?,
                        status: r.try_get("status")?,
                        started_at: r.try_get("started_at")?,
                        finished_at: r.try_get("finished_at")?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
        })
    }
}
