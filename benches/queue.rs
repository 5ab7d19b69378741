//! Queue throughput at the store level: `AGENTS` agents (tasks, each with
//! its own pool, as separate processes would have) claim and finish
//! `BUILDS` queued builds on PostgreSQL, no steps. Prints one JSON line.
//! `cargo bench --bench queue -- postgres://...` (a database it may fill).

use std::collections::BTreeMap;
use std::time::Instant;

use piper::agent::store::{BuildState, Holder, NewBuild, Store};

const AGENTS: usize = 4;
const BUILDS: usize = 4000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args()
        .skip(1)
        .find(|a| a.starts_with("postgres"))
        .expect("usage: cargo bench --bench queue -- postgres://...");
    let store = Store::open(&url).await.unwrap();
    let new = NewBuild {
        repo: "/bench".into(),
        git_ref: "HEAD".into(),
        pipeline: "noop".into(),
        env: BTreeMap::new(),
        secret_env: BTreeMap::new(),
        requested_by: "bench".into(),
        parent_id: None,
        sha: None,
        args: Vec::new(),
    };
    for _ in 0..BUILDS {
        store
            .create_build(&new, BuildState::Queued, None)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let url = url.clone();
        agents.push(tokio::spawn(async move {
            let store = Store::open(&url).await.unwrap();
            let holder = Holder {
                agent_id: format!("bench-{i}"),
                agent_name: format!("bench-{i}"),
                lease_ms: 30_000,
                labels: BTreeMap::new(),
            };
            let mut done = 0;
            while let Some(build) = store.claim_next(&holder).await.unwrap() {
                store
                    .finish_build(build.id, build.attempt, BuildState::Success, None)
                    .await
                    .unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for agent in agents {
        total += agent.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(total, BUILDS, "each build claimed once");
    println!(
        "{{\"agents\":{AGENTS},\"builds\":{total},\"seconds\":{secs:.3},\"per_second\":{:.0}}}",
        total as f64 / secs
    );
}
