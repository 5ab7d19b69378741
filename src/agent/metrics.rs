//! `GET /metrics`: piperd in the Prometheus text format, through the
//! Prometheus project's own client crate (`prometheus-client`).
//!
//! Two kinds of numbers. The cluster's state (builds by status, the queue,
//! the log bytes stored, the agents and their heartbeats) is read from the
//! shared database at each scrape, so every agent reports the same values
//! (alert on `max` of them). Durations are histograms of what *this* agent
//! ran, observed from the executor's events as the recorder stores them;
//! Prometheus sums them across agents.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::store::{Store, StoreResult};

type Labels = Vec<(&'static str, String)>;
type Durations = Family<Labels, Histogram, fn() -> Histogram>;
type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The Content-Type of the text format `render` writes (OpenMetrics 1.0,
/// which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The histograms one agent fills as it runs builds; cheap to clone (the
/// families are shared).
#[derive(Clone)]
pub struct Metrics {
    build_duration: Durations,
    step_duration: Durations,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// 1 s to ~68 min, doubling.
fn build_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// 10 ms to ~44 min, times four.
fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            build_duration: Family::new_with_constructor(build_buckets),
            step_duration: Family::new_with_constructor(step_buckets),
        }
    }

    /// A build of `pipeline` this agent ran ended with `status`.
    pub fn build_finished(&self, pipeline: &str, status: &str, duration_ms: u64) {
        self.build_duration
            .get_or_create(&labels(pipeline, status))
            .observe(duration_ms as f64 / 1000.0);
    }

    /// A step of a `pipeline` build this agent ran ended with `status`.
    pub fn step_finished(&self, pipeline: &str, status: &str, duration_ms: u64) {
        self.step_duration
            .get_or_create(&labels(pipeline, status))
            .observe(duration_ms as f64 / 1000.0);
    }

    /// The scrape: the cluster's state from `store`, this agent's live
    /// followers, then the histograms.
    pub async fn render(&self, store: &Store, followers: usize) -> StoreResult<String> {
        let stats = store.cluster_stats().await?;
        let agents = store.agents().await?;
        let mut registry = Registry::default();

        let builds = Family::<Labels, Gauge>::default();
        for (pipeline, status, count) in &stats.builds {
            builds.get_or_create(&labels(pipeline, status)).set(*count);
        }
        registry.register(
            "piper_builds",
            "Builds in the database, by pipeline and status (every agent reports the same)",
            builds,
        );
        let count = |status: &str| -> i64 {
            (stats.builds.iter())
                .filter(|(_, s, _)| s == status)
                .map(|(_, _, n)| n)
                .sum()
        };
        register_gauge(
            &mut registry,
            "piper_queue_depth",
            "Builds waiting for an agent",
            count("queued"),
        );
        register_gauge(
            &mut registry,
            "piper_builds_running",
            "Builds running on some agent",
            count("running"),
        );
        let oldest = Seconds::default();
        oldest.set(stats.oldest_queued_age_ms.unwrap_or(0).max(0) as f64 / 1000.0);
        registry.register(
            "piper_oldest_queued_build_age_seconds",
            "How long the oldest queued build has waited (0 when none waits)",
            oldest,
        );
        register_gauge(
            &mut registry,
            "piper_log_stored_bytes",
            "Bytes of build logs in the database",
            stats.log_bytes,
        );
        register_gauge(
            &mut registry,
            "piper_live_followers",
            "Streams following builds live on this agent (log and update streams, waiting stream reads)",
            followers as i64,
        );

        let up = Family::<Labels, Gauge>::default();
        let heartbeat = Family::<Labels, Seconds>::default();
        for agent in &agents {
            let labels = vec![("agent", agent.name.clone()), ("id", agent.id.clone())];
            up.get_or_create(&labels)
                .set(i64::from(agent.status != "offline"));
            let age = (stats.now_ms - agent.last_seen).max(0) as f64 / 1000.0;
            heartbeat.get_or_create(&labels).set(age);
        }
        registry.register(
            "piper_agent_up",
            "1 for an agent running or draining, with a heartbeat within its lease; 0 for one stopped or silent, seen in the last hour",
            up,
        );
        registry.register(
            "piper_agent_heartbeat_age_seconds",
            "Time since the agent's last heartbeat, on the database's clock",
            heartbeat,
        );

        registry.register(
            "piper_build_duration_seconds",
            "How long this agent's builds ran, by pipeline and status",
            self.build_duration.clone(),
        );
        registry.register(
            "piper_step_duration_seconds",
            "How long the steps of this agent's builds ran, by pipeline and status",
            self.step_duration.clone(),
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String does not fail");
        Ok(text)
    }
}

fn labels(pipeline: &str, status: &str) -> Labels {
    vec![
        ("pipeline", pipeline.to_string()),
        ("status", status.to_string()),
    ]
}

fn register_gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// What the recorder of one run tells the metrics: the pipeline of each of
/// the run's builds, so a step's duration is labelled with it.
#[derive(Default)]
pub struct RunObserver {
    metrics: Option<Arc<Metrics>>,
    pipelines: std::collections::HashMap<u32, String>,
}

impl RunObserver {
    pub fn new(metrics: Arc<Metrics>) -> RunObserver {
        RunObserver {
            metrics: Some(metrics),
            pipelines: Default::default(),
        }
    }

    pub fn on(&mut self, event: &crate::event::Event) {
        use crate::event::Event;
        let Some(metrics) = &self.metrics else { return };
        match event {
            Event::BuildStarted { build, name, .. } => {
                self.pipelines.insert(*build, name.clone());
            }
            Event::StepFinished {
                build,
                status,
                duration_ms,
                ..
            } => {
                let pipeline = self.pipelines.get(build).map_or("", String::as_str);
                metrics.step_finished(pipeline, &snake_case(status), *duration_ms);
            }
            Event::BuildFinished {
                name,
                status,
                duration_ms,
                ..
            } => metrics.build_finished(name, &snake_case(status), *duration_ms),
            _ => {}
        }
    }
}

/// A status as the events and the API spell it (`timed_out`).
fn snake_case(status: &impl serde::Serialize) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
