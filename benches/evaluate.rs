//! In-process evaluation benchmark: a fresh Lua state, evaluating a
//! piper.lua and validating it into a graph, timed over repeated runs.
//! `cargo bench --bench evaluate -- path/to/piper.lua` prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .expect("usage: cargo bench --bench evaluate -- PATH/piper.lua");
    // The API with the configuration cache off: every load evaluates.
    let engine = piper::Engine::new().with_config_cache(false);
    let runs = 20;
    let mut times = Vec::with_capacity(runs);
    let mut steps = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let project = engine.load_file(&path).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        steps = project.steps().len();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{{\"steps\":{steps},\"runs\":{runs},\"median_ms\":{:.3},\"min_ms\":{:.3}}}",
        times[runs / 2],
        times[0]
    );
}
