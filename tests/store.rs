//! The store's story, the same against SQLite and PostgreSQL: numbering,
//! claiming, steps, ordered log chunks read from any offset, filters,
//! finishing, and recovering builds a dead agent left running.

use std::collections::BTreeMap;

use piper::agent::store::{BuildFilter, BuildState, NewBuild, Store, StoredStep};

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
    }
}

async fn story(store: Store) {
    let a1 = store
        .create_build(&new_build("/repo/a", "ci"), BuildState::Queued)
        .await
        .unwrap();
    let a2 = store
        .create_build(&new_build("/repo/a", "ci"), BuildState::Queued)
        .await
        .unwrap();
    let b1 = store
        .create_build(&new_build("/repo/b", "deploy"), BuildState::Queued)
        .await
        .unwrap();
    assert_eq!(
        (a1.number, a2.number, b1.number),
        (1, 2, 1),
        "numbers count per repository"
    );
    assert_eq!(a1.env["A"], "1");

    // Claims go oldest first, once each.
    let claimed = store.claim_next("agent-1").await.unwrap().unwrap();
    assert_eq!(
        (claimed.id, claimed.status, claimed.agent.as_deref()),
        (a1.id, BuildState::Running, Some("agent-1"))
    );
    assert_eq!(
        store.claim_next("agent-2").await.unwrap().unwrap().id,
        a2.id
    );

    store
        .set_revision(a1.id, "abc123", Some("v1.0.0"))
        .await
        .unwrap();
    for (position, name) in ["lint", "test"].iter().enumerate() {
        let step = StoredStep {
            name: name.to_string(),
            status: "success".into(),
            exit_code: Some(0),
            started_at: Some(1),
            finished_at: Some(2),
            message: None,
        };
        store
            .upsert_step(a1.id, position as i64, &step)
            .await
            .unwrap();
    }
    let failed = StoredStep {
        name: "test".into(),
        status: "failed".into(),
        exit_code: Some(3),
        started_at: None,
        finished_at: Some(3),
        message: Some("boom".into()),
    };
    store.upsert_step(a1.id, 1, &failed).await.unwrap();
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
        store
            .append_log(a1.id, seq as i64, step, build_offset, *step_offset, data)
            .await
            .unwrap();
        build_offset += data.len() as i64;
        *step_offset += data.len() as i64;
    }
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

    store
        .finish_build(a1.id, BuildState::Failed, Some("boom"))
        .await
        .unwrap();
    // A finished build is not finished again (cancel racing the end).
    store
        .finish_build(a1.id, BuildState::Canceled, None)
        .await
        .unwrap();
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

    // agent-2 died with a2 running: its restart marks it lost.
    assert_eq!(store.mark_lost("agent-2").await.unwrap(), 1);
    assert_eq!(
        store.get_build(a2.id).await.unwrap().unwrap().status,
        BuildState::Lost
    );
    assert!(store.get_build(9_999).await.unwrap().is_none());
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
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
