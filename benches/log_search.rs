//! Log search at the store level (issue 33): `BUILDS` builds each store
//! `LOG_KB` of compiler-like log through the store as an agent's log
//! writer does (64 KiB chunks), on SQLite or PostgreSQL; then
//! - the stored log throughput alone, and while the background indexer
//!   indexes other builds (what indexing costs the writers),
//! - the indexing throughput,
//! - search latency, p50 and p95 over 50 searches (rare and common text).
//!
//! Prints one JSON line.
//! `cargo bench --bench log_search -- sqlite:///tmp/x.db [BUILDS] [LOG_KB]`
//! (or a postgres:// database it may fill).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use piper::agent::store::{BuildState, Holder, NewBuild, NewChunk, SearchFilter, Store};

const CHUNK: usize = 64 * 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let url = args
        .first()
        .expect("usage: log_search URL [BUILDS] [LOG_KB]")
        .clone();
    let builds: usize = args.get(1).map_or(500, |n| n.parse().unwrap());
    let log_kb: usize = args.get(2).map_or(100, |n| n.parse().unwrap());
    let store = Store::open(&url).await.unwrap();

    // Half the builds written alone, then indexed alone.
    let half = builds / 2;
    let started = Instant::now();
    let written = write_builds(&store, 0, half, log_kb).await;
    let alone = written as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut indexed_bytes = 0;
    while let Some(id) = store.unindexed_builds(1).await.unwrap().first().copied() {
        assert!(store.index_log(id).await.unwrap());
        indexed_bytes += log_kb * 1024;
    }
    let index_rate = indexed_bytes as f64 / started.elapsed().as_secs_f64();

    // The other half written while an indexer indexes as it goes.
    let indexer = {
        let store = Store::open(&url).await.unwrap();
        tokio::spawn(async move {
            loop {
                match store.unindexed_builds(4).await.unwrap().as_slice() {
                    [] => tokio::time::sleep(Duration::from_millis(20)).await,
                    ids => {
                        for &id in ids {
                            store.index_log(id).await.unwrap();
                        }
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let written = write_builds(&store, half, builds - half, log_kb).await;
    let beside = written as f64 / started.elapsed().as_secs_f64();
    while !store.unindexed_builds(1).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    indexer.abort();

    // Searches: a text in one build, one in every build, one in none.
    let mut times = Vec::new();
    for i in 0..50 {
        let text = match i % 3 {
            0 => format!("E{:05}", (i * 7919) % builds),
            1 => "mismatched types".to_string(),
            _ => "no such text anywhere".to_string(),
        };
        let filter = SearchFilter {
            text,
            limit: 51,
            ..SearchFilter::default()
        };
        let started = Instant::now();
        store.search_logs(&filter).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: usize| times[(p * times.len()).div_ceil(100) - 1];
    println!(
        "{{\"backend\":\"{}\",\"builds\":{builds},\"log_mb\":{:.0},\"write_mb_s_alone\":{:.1},\"write_mb_s_while_indexing\":{:.1},\"index_mb_s\":{:.1},\"search_p50_ms\":{:.1},\"search_p95_ms\":{:.1}}}",
        url.split(':').next().unwrap_or(""),
        (builds * log_kb) as f64 / 1024.0,
        alone / 1e6,
        beside / 1e6,
        index_rate / 1e6,
        pct(50),
        pct(95)
    );
}

/// Builds `first..first+count`, each storing `log_kb` KiB of log; the
/// bytes stored.
async fn write_builds(store: &Store, first: usize, count: usize, log_kb: usize) -> usize {
    let holder = Holder {
        agent_id: "bench".into(),
        agent_name: "bench".into(),
        lease_ms: 60_000,
        labels: BTreeMap::new(),
    };
    let mut total = 0;
    for n in first..first + count {
        let new = NewBuild {
            repo: "/bench".into(),
            git_ref: "main".into(),
            pipeline: "ci".into(),
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            requested_by: "bench".into(),
            parent_id: None,
            sha: None,
            args: Vec::new(),
        };
        store
            .create_build(&new, BuildState::Queued, None)
            .await
            .unwrap();
        let build = store.claim_next(&holder).await.unwrap().unwrap();
        let log = log_of(n, log_kb * 1024);
        let (mut offset, mut seq) = (0, 0);
        for data in log.chunks(CHUNK) {
            let chunk = NewChunk {
                build_id: build.id,
                attempt: build.attempt,
                seq,
                step: "compile",
                build_offset: offset,
                step_offset: offset,
                data,
                annotation: false,
                has_error: false,
            };
            assert!(store.append_log(chunk).await.unwrap());
            offset += data.len() as i64;
            seq += 1;
        }
        total += log.len();
        store
            .finish_build(build.id, build.attempt, BuildState::Failed, None)
            .await
            .unwrap();
    }
    total
}

/// `size` bytes of a compiler's output, one error code unique to build `n`.
fn log_of(n: usize, size: usize) -> Vec<u8> {
    let mut log = Vec::with_capacity(size + 200);
    let mut i = 0;
    while log.len() < size {
        let line = match i % 50 {
            7 => format!("error[E{n:05}]: mismatched types in src/module_{i}.rs\n"),
            _ => format!(
                "   Compiling crate_{i} v0.{}.{} (/build/src/crate_{i}) warning: unused variable `x{i}`\n",
                i % 10,
                n % 100
            ),
        };
        log.extend_from_slice(line.as_bytes());
        i += 1;
    }
    log.truncate(size);
    log.push(b'\n');
    log
}
