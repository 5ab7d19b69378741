//! The store's story, the same against SQLite and PostgreSQL: numbering,
//! claiming, steps, ordered log chunks read from any offset, filters,
//! finishing, and recovering builds a dead agent left running.

use std::collections::BTreeMap;

use piper::agent::store::{
    BuildFilter, BuildState, Holder, NewBuild, NewChunk, Renewal, Store, StoredStep,
};

use crate::harness::block_on;
use crate::pg::Database;

fn new_build(repo: &str, pipeline: &str) -> NewBuild {
    NewBuild {
        repo: repo.into(),
        git_ref: "main".into(),
        pipeline: pipeline.into(),
        env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        secret_env: BTreeMap::new(),
        requested_by: "test".into(),
        parent_id: None,
        sha: None,
        args: Vec::new(),
    }
}

/// A plain output chunk of `step` at `(build offset, step offset)`.
fn chunk<'a>(
    build_id: i64,
    attempt: i64,
    seq: i64,
    step: &'a str,
    (build_offset, step_offset): (i64, i64),
    data: &'a [u8],
) -> NewChunk<'a> {
    NewChunk {
        build_id,
        attempt,
        seq,
        step,
        build_offset,
        step_offset,
        data,
        annotation: false,
        has_error: false,
    }
}

fn holder(id: &str, lease_ms: i64) -> Holder {
    Holder {
        agent_id: id.into(),
        agent_name: format!("name of {id}"),
        lease_ms,
        labels: BTreeMap::new(),
    }
}

/// What a rescue by `tester` did: (id, new status) of each build.
async fn rescued(store: &Store, only: Option<&str>) -> Vec<(i64, BuildState)> {
    let rescued = store.rescue(only, "tester").await.unwrap();
    rescued.iter().map(|r| (r.id, r.status)).collect()
}

async fn story(store: Store) {
    let a1 = store
        .create_build(&new_build("/repo/a", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    let a2 = store
        .create_build(&new_build("/repo/a", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    let b1 = store
        .create_build(&new_build("/repo/b", "deploy"), BuildState::Queued, None)
        .await
        .unwrap();
    assert_eq!(
        (a1.number, a2.number, b1.number),
        (1, 2, 1),
        "numbers count per repository"
    );
    assert_eq!(a1.env["A"], "1");

    // Claims go oldest first, once each: attempt 1, with a lease.
    let claimed = store
        .claim_next(&holder("agent-1", 60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            claimed.id,
            claimed.status,
            claimed.agent.as_deref(),
            claimed.attempt
        ),
        (a1.id, BuildState::Running, Some("name of agent-1"), 1)
    );
    assert!(claimed.lease_expires_at.unwrap() > claimed.started_at.unwrap());
    // agent-2's lease is over at once: a dead agent.
    let a2_claim = store
        .claim_next(&holder("agent-2", -1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2_claim.id, a2.id);

    assert!(
        store
            .set_revision(a1.id, 1, "abc123", Some("v1.0.0"))
            .await
            .unwrap()
    );
    for (position, name) in ["lint", "test"].iter().enumerate() {
        let step = StoredStep {
            name: name.to_string(),
            status: "success".into(),
            exit_code: Some(0),
            started_at: Some(1),
            finished_at: Some(2),
            message: None,
        };
        assert!(
            store
                .upsert_step(a1.id, 1, position as i64, &step)
                .await
                .unwrap()
        );
    }
    let failed = StoredStep {
        name: "test".into(),
        status: "failed".into(),
        exit_code: Some(3),
        started_at: None,
        finished_at: Some(3),
        message: Some("boom".into()),
    };
    assert!(store.upsert_step(a1.id, 1, 1, &failed).await.unwrap());
    // A write of another attempt is rejected (fencing).
    assert!(!store.upsert_step(a1.id, 2, 1, &failed).await.unwrap());
    let steps = store.steps(a1.id).await.unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(
        (
            steps[1].status.as_str(),
            steps[1].exit_code,
            steps[1].started_at
        ),
        ("failed", Some(3), Some(1))
    );

    // Chunks in order; reads from any offset, whole build or one step.
    let chunks: [(&str, &[u8]); 3] = [("lint", b"ab"), ("test", b"\xff\x00c"), ("lint", b"de")];
    let (mut build_offset, mut offsets) = (0i64, BTreeMap::new());
    for (seq, (step, data)) in chunks.iter().enumerate() {
        let step_offset = offsets.entry(*step).or_insert(0i64);
        assert!(
            store
                .append_log(chunk(
                    a1.id,
                    1,
                    seq as i64,
                    step,
                    (build_offset, *step_offset),
                    data
                ))
                .await
                .unwrap()
        );
        build_offset += data.len() as i64;
        *step_offset += data.len() as i64;
    }
    assert!(
        !store
            .append_log(chunk(a1.id, 7, 3, "lint", (7, 2), b"zz"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.log_end(a1.id).await.unwrap(),
        (
            3,
            7,
            BTreeMap::from([("lint".into(), 4), ("test".into(), 3)])
        )
    );
    assert_eq!(store.renew(a1.id, 1, 60_000).await.unwrap(), Renewal::Held);
    assert_eq!(store.renew(a1.id, 2, 60_000).await.unwrap(), Renewal::Lost);
    let all = store.read_log(a1.id, None, 0, 1 << 20).await.unwrap();
    assert_eq!(
        (all.data.as_slice(), all.next_offset),
        (&b"ab\xff\x00cde"[..], 7)
    );
    assert_eq!(
        store.read_log(a1.id, None, 3, 1 << 20).await.unwrap().data,
        b"\x00cde"
    );
    assert_eq!(
        store
            .read_log(a1.id, Some("lint"), 1, 1 << 20)
            .await
            .unwrap()
            .data,
        b"bde"
    );
    assert!(
        store
            .read_log(a1.id, None, 7, 1 << 20)
            .await
            .unwrap()
            .data
            .is_empty()
    );

    assert!(
        store
            .finish_build(a1.id, 1, BuildState::Failed, Some("boom"))
            .await
            .unwrap()
    );
    // A finished build is not finished again (cancel racing the end).
    assert!(
        !store
            .finish_build(a1.id, 1, BuildState::Canceled, None)
            .await
            .unwrap()
    );
    let a1 = store.get_build(a1.id).await.unwrap().unwrap();
    assert_eq!(
        (a1.status, a1.sha.as_deref(), a1.error.as_deref()),
        (BuildState::Failed, Some("abc123"), Some("boom"))
    );

    let filter = |status, repo: Option<&str>| BuildFilter {
        status,
        repo: repo.map(String::from),
        limit: 10,
        ..BuildFilter::default()
    };
    assert_eq!(
        store.list_builds(&filter(None, None)).await.unwrap().len(),
        3
    );
    assert_eq!(
        store
            .list_builds(&filter(Some(BuildState::Queued), None))
            .await
            .unwrap()[0]
            .id,
        b1.id
    );
    assert_eq!(
        store
            .list_builds(&filter(None, Some("/repo/a")))
            .await
            .unwrap()
            .len(),
        2
    );
    let page = store
        .list_builds(&BuildFilter {
            before: Some(b1.id),
            limit: 1,
            ..BuildFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page[0].id, a2.id, "newest first, below the cursor");

    // agent-2 died with a2 running: its lease expired, so any agent's
    // rescue ends it (one attempt allowed) — once.
    assert_eq!(rescued(&store, None).await, [(a2.id, BuildState::Lost)]);
    assert!(rescued(&store, None).await.is_empty());
    assert_eq!(
        store.get_build(a2.id).await.unwrap().unwrap().status,
        BuildState::Lost
    );
    // With attempts left, a rescued build is queued again, and its next
    // claim is attempt 2; the stale attempt's writes are refused.
    let b1_claim = store
        .claim_next(&holder("agent-5", 60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b1_claim.id, b1.id);
    let c = store
        .create_build(&new_build("/repo/c", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    store.set_max_attempts(c.id, 2).await.unwrap();
    store.claim_next(&holder("agent-3", -1)).await.unwrap();
    assert_eq!(rescued(&store, None).await, [(c.id, BuildState::Queued)]);
    // 26.2: the rescue says why in the build's log, and what became of it.
    let log = store.read_log(c.id, None, 0, 1 << 20).await.unwrap();
    let log = String::from_utf8(log.data).unwrap();
    assert!(
        log.contains("piper: agent name of agent-3 stopped renewing the lease of attempt 1")
            && log.contains("rescued by agent tester; queued again for attempt 2 of 2"),
        "{log}"
    );
    let again = store
        .claim_next(&holder("agent-4", 60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.id, again.attempt, again.agent_id.as_deref()),
        (c.id, 2, Some("agent-4"))
    );
    assert!(
        !store
            .finish_build(c.id, 1, BuildState::Success, None)
            .await
            .unwrap()
    );
    // A cancel asked from elsewhere is seen at the renewal; an agent that
    // restarts ends its own builds at once.
    assert!(store.request_cancel(c.id).await.unwrap());
    assert_eq!(
        store.renew(c.id, 2, 60_000).await.unwrap(),
        Renewal::CancelRequested
    );
    assert_eq!(
        rescued(&store, Some("agent-4")).await,
        [(c.id, BuildState::Canceled)]
    );
    assert!(store.get_build(9_999).await.unwrap().is_none());
}

#[test]
fn store_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("piperd.db").display());
    block_on(async { story(Store::open(&url).await.unwrap()).await });
    // Opening again applies no migration twice.
    block_on(async { Store::open(&url).await.unwrap() });
}

#[test]
fn store_story_on_postgres() {
    let Some(db) = Database::create("store::store_story_on_postgres") else {
        return;
    };
    block_on(async { story(Store::open(&db.url).await.unwrap()).await });
    block_on(async { Store::open(&db.url).await.unwrap() });
}

/// A database made by the migration runner Piper had before (its own
/// `schema_migrations` table) is bridged to sqlx's migrator: nothing is
/// applied twice, and the checksums are recorded from then on.
async fn bridge_story(url: &str, backend: &str) {
    {
        let store = Store::open(url).await.unwrap();
        drop(store);
    }
    // Make it look like the old runner's database: its table, no sqlx one.
    let run = |sql: &'static str| async move {
        use sqlx::Connection;
        if backend == "sqlite" {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        }
    };
    run("DROP TABLE _sqlx_migrations").await;
    // The old runner knew migrations 1 to 10; later ones (to 16) come new.
    run("DROP TABLE sessions").await;
    if backend == "sqlite" {
        run("DROP INDEX builds_fence").await;
    } else {
        run("DROP SEQUENCE build_fence").await;
    }
    run("ALTER TABLE builds DROP COLUMN fence").await;
    run("ALTER TABLE builds DROP COLUMN renewed_at").await;
    run("ALTER TABLE builds DROP COLUMN args").await;
    run("ALTER TABLE agents DROP COLUMN lease_ms").await;
    run("ALTER TABLE agents DROP COLUMN state").await;
    run("DROP TABLE bundles").await;
    run("ALTER TABLE log_chunks DROP COLUMN lines").await;
    run("ALTER TABLE log_chunks DROP COLUMN has_error").await;
    run("ALTER TABLE log_chunks DROP COLUMN written_at").await;
    run("DROP TABLE log_search").await;
    run("DROP INDEX builds_log_indexed").await;
    run("ALTER TABLE builds DROP COLUMN log_indexed").await;
    run("ALTER TABLE builds DROP COLUMN log_index_claimed_at").await;
    run("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)").await;
    run("INSERT INTO schema_migrations (version) VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)")
        .await;
    let store = Store::open(url).await.unwrap();
    store
        .create_build(&new_build("/repo/a", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    // Opening again: the checksums match, nothing is applied.
    Store::open(url).await.unwrap();
}

#[test]
fn databases_of_the_old_migration_runner_are_bridged() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    block_on(bridge_story(&url, "sqlite"));
    if let Some(db) = Database::create("store::databases_of_the_old_migration_runner_are_bridged") {
        block_on(bridge_story(&db.url, "postgres"));
    }
}

/// A follower reads events and log chunks (two tables, one sequence) while
/// the agent writes them in order: it must see every item exactly once.
/// Read in two statements, an event committed between them was skipped
/// for good when a later chunk was seen (a followed build lost its first
/// `$ command` line under load).
async fn stream_story(store: Store) {
    const ITEMS: i64 = 600;
    let build = store
        .create_build(&new_build("/repo/s", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    let claimed = store
        .claim_next(&holder("agent-1", 60_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, build.id);
    let writer = async {
        for seq in 0..ITEMS {
            let landed = if seq % 2 == 0 {
                store.append_event(build.id, 1, seq, "{}").await.unwrap()
            } else {
                let at = seq / 2;
                (store.append_log(chunk(build.id, 1, seq, "s", (at, at), b"x")))
                    .await
                    .unwrap()
            };
            assert!(landed);
        }
    };
    let reader = async {
        let (mut seen, mut after) = (Vec::new(), -1);
        // Until the last item: one skipped shows as a gap, not a hang.
        while after < ITEMS - 1 {
            let page = store
                .read_stream(build.id, after, 1 << 20, true)
                .await
                .unwrap();
            if let Some((last, _)) = page.last() {
                after = *last;
            }
            seen.extend(page.into_iter().map(|(seq, _)| seq));
            tokio::task::yield_now().await;
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    assert_eq!(seen, (0..ITEMS).collect::<Vec<_>>());
}

#[test]
fn a_stream_read_while_it_is_written_misses_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("piperd.db").display());
    block_on(async { stream_story(Store::open(&url).await.unwrap()).await });
}

#[test]
fn a_stream_read_while_it_is_written_misses_nothing_on_postgres() {
    let Some(db) = Database::create("store::a_stream_read_while_it_is_written") else {
        return;
    };
    block_on(async { stream_story(Store::open(&db.url).await.unwrap()).await });
}

/// 26.3: the claim read the 64 oldest queued builds and took the first it
/// could run: with more than 64 waiting for a label nobody has, a
/// runnable build behind them never started.
async fn waiting_story(store: Store) {
    let gpu = BTreeMap::from([("gpu".to_string(), "yes".to_string())]);
    let mut waiting = Vec::new();
    for _ in 0..500 {
        let build = store
            .create_build(&new_build("/repo/w", "train"), BuildState::Queued, None)
            .await
            .unwrap();
        waiting.push(build.id);
    }
    // Each was read by an agent without a GPU and given back.
    for _ in &waiting {
        let claimed = store.claim_next(&holder("cpu", 60_000)).await.unwrap();
        let claimed = claimed.expect("a build whose requirements are unknown yet");
        assert!(store.unclaim(claimed.id, 1, &gpu).await.unwrap());
        // 26.7: given back, it has not started (its next claim starts it).
        let back = store.get_build(claimed.id).await.unwrap().unwrap();
        assert_eq!((back.status, back.started_at), (BuildState::Queued, None));
    }
    let runnable = store
        .create_build(&new_build("/repo/r", "ci"), BuildState::Queued, None)
        .await
        .unwrap();
    let claimed = store.claim_next(&holder("cpu", 60_000)).await.unwrap();
    assert_eq!(claimed.map(|b| b.id), Some(runnable.id));
    // And an agent with the label takes the oldest waiting one.
    let mut with_gpu = holder("gpu", 60_000);
    with_gpu.labels = gpu;
    let claimed = store.claim_next(&with_gpu).await.unwrap();
    assert_eq!(claimed.map(|b| b.id), Some(waiting[0]));
}

#[test]
fn a_runnable_build_starts_however_many_wait_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("piperd.db").display());
    block_on(async { waiting_story(Store::open(&url).await.unwrap()).await });
}

#[test]
fn a_runnable_build_starts_however_many_wait_on_postgres() {
    let Some(db) = Database::create("store::a_runnable_build_starts_however_many_wait") else {
        return;
    };
    block_on(async { waiting_story(Store::open(&db.url).await.unwrap()).await });
}

/// 27.7: a build that ends keeps its secrets' names, never their values
/// (finished, canceled while queued, or lost in a rescue); one queued
/// again keeps them for its next attempt.
async fn secrets_story(store: Store) {
    let mut new = new_build("/repo/s", "deploy");
    new.secret_env = BTreeMap::from([("KEY".to_string(), "value-1".to_string())]);
    let blank = BTreeMap::from([("KEY".to_string(), String::new())]);
    let secrets = |id| {
        let store = store.clone();
        async move { store.get_build(id).await.unwrap().unwrap().secret_env }
    };
    let finished = store
        .create_build(&new, BuildState::Queued, None)
        .await
        .unwrap();
    store
        .claim_next(&holder("a", 60_000))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .finish_build(finished.id, 1, BuildState::Success, None)
            .await
            .unwrap()
    );
    assert_eq!(secrets(finished.id).await, blank);
    let canceled = store
        .create_build(&new, BuildState::Queued, None)
        .await
        .unwrap();
    assert!(store.cancel_queued(canceled.id).await.unwrap());
    assert_eq!(secrets(canceled.id).await, blank);
    let retried = store
        .create_build(&new, BuildState::Queued, None)
        .await
        .unwrap();
    store.set_max_attempts(retried.id, 2).await.unwrap();
    store
        .claim_next(&holder("dead", -1))
        .await
        .unwrap()
        .unwrap();
    store.rescue(None, "tester").await.unwrap();
    assert_eq!(
        secrets(retried.id).await,
        new.secret_env,
        "kept for attempt 2"
    );
    store
        .claim_next(&holder("dead", -1))
        .await
        .unwrap()
        .unwrap();
    store.rescue(None, "tester").await.unwrap();
    assert_eq!(secrets(retried.id).await, blank, "lost: blanked");
}

#[test]
fn secrets_are_blanked_when_a_build_ends_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("piperd.db").display());
    block_on(async { secrets_story(Store::open(&url).await.unwrap()).await });
}

#[test]
fn secrets_are_blanked_when_a_build_ends_on_postgres() {
    let Some(db) = Database::create("store::secrets_are_blanked") else {
        return;
    };
    block_on(async { secrets_story(Store::open(&db.url).await.unwrap()).await });
}
