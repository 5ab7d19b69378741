//! A step and the cache (feature `cache`): before a stale step runs its
//! results are looked for (the disk cache, then the remote one behind it)
//! and fetched instead; after it succeeds they are stored. Anything wrong
//! with a cache is a warning, never a failed step. Part of the job
//! (`job.rs` calls `from_cache` and `store`).

use std::time::Instant;

#[cfg(feature = "remote-cache")]
use crate::cache::Cache;
use crate::cache::{ActionKey, Entry, Fetched};
use crate::event::{Event, StepStatus};
use crate::fingerprint;
use crate::process::OutputSink;
use crate::state::StepRecord;

use super::job::{Attempt, StepJob, StepResult};

/// What a remote executor needs to run a step.
#[cfg(feature = "remote-cache")]
type Parts = crate::cache::ActionParts;
#[cfg(not(feature = "remote-cache"))]
type Parts = ();

/// What the cache had for a step that would run.
enum Cached {
    /// Its outputs are written and its log read: it need not run.
    Fetched(Box<(StepRecord, Fetched)>),
    /// It runs; with a key, what it makes is stored after a success.
    Miss(Option<ActionKey>),
    /// `--cache-verify`: the cache has its results, and it runs anyway to
    /// compare what it makes with them.
    Verify(ActionKey, Box<Entry>),
    /// No cache has them: it runs on the remote executor.
    #[cfg(feature = "remote-cache")]
    Remote(Box<(ActionKey, crate::cache::ActionParts)>),
}

/// A step the cache did not spare: what it runs with, and what to do
/// after it succeeds.
pub(super) struct Missed {
    /// Its output, kept when there is something to store.
    pub(super) out: OutputSink,
    key: Option<ActionKey>,
    /// The cached results to compare with (`--cache-verify`).
    verify: Option<Box<Entry>>,
    /// The action to run on the remote executor.
    #[cfg(feature = "remote-cache")]
    pub(super) remote: Option<Box<(ActionKey, crate::cache::ActionParts)>>,
}

impl StepJob {
    /// Before a stale step runs: the step's result when the cache had its
    /// results; otherwise the sink to run it with (keeping what it prints
    /// when it has a key) and the key to store its results under.
    pub(super) async fn look_in_cache(
        &self,
        out: OutputSink,
        record: Option<&StepRecord>,
        started: Instant,
    ) -> Result<StepResult, Missed> {
        match self.cached(record).await {
            Cached::Fetched(hit) => {
                let (record, fetched) = *hit;
                Ok(self.fetched(&out, record, fetched, started).await)
            }
            Cached::Miss(key) => Err(Missed {
                out: out.capturing(key.is_some()),
                key,
                verify: None,
                #[cfg(feature = "remote-cache")]
                remote: None,
            }),
            Cached::Verify(key, entry) => Err(Missed {
                out,
                key: Some(key),
                verify: Some(entry),
                #[cfg(feature = "remote-cache")]
                remote: None,
            }),
            // Kept: if the cluster cannot be reached, it runs here and is
            // stored as usual.
            #[cfg(feature = "remote-cache")]
            Cached::Remote(action) => Err(Missed {
                out: out.capturing(true),
                key: Some(action.0.clone()),
                verify: None,
                remote: Some(action),
            }),
        }
    }

    /// After the step succeeded: its results stored, or (`--cache-verify`)
    /// compared with the cached ones, each difference a warning.
    pub(super) async fn after_success(&self, missed: Missed) {
        let Some(key) = &missed.key else { return };
        // The cluster stored what it ran.
        #[cfg(feature = "remote-cache")]
        if self.ran_remotely.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Some(entry) = missed.verify else {
            return self.store(&missed.out, key).await;
        };
        let Some(cache) = &self.cache else { return };
        let (disk, root) = (cache.disk().clone(), self.graph.root.clone());
        let differences = tokio::task::spawn_blocking(move || disk.differences(&entry, &root))
            .await
            .unwrap_or_default();
        for difference in differences {
            self.warn(format!(
                "cache verify: {difference}: what the cache holds for the same inputs differs, \
                 so the step reads something its inputs do not name (or is not deterministic)"
            ))
            .await;
        }
    }

    /// Before a stale step runs: its results from the cache, when it has
    /// an action key and they are there. Anything wrong with the cache is
    /// a warning and a miss: the cache never fails a build.
    async fn cached(&self, record: Option<&StepRecord>) -> Cached {
        let step = &self.graph.steps[self.step];
        let (Some(cache), Some(record)) = (&self.cache, record) else {
            return Cached::Miss(None);
        };
        if !crate::cache::cacheable(step) || self.dry_run {
            return Cached::Miss(None);
        }
        let Some((key, parts)) = self.key(record).await else {
            return Cached::Miss(None);
        };
        // Where it runs when no cache has it: the cluster, or here.
        #[cfg(feature = "remote-cache")]
        let (missed, key) = match parts {
            Some(parts) => (Cached::Remote(Box::new((key.clone(), parts))), key),
            None => (Cached::Miss(Some(key.clone())), key),
        };
        #[cfg(not(feature = "remote-cache"))]
        let missed = {
            let _: Option<Parts> = parts;
            Cached::Miss(Some(key.clone()))
        };
        if self.forced {
            return Cached::Miss(Some(key));
        }
        #[cfg(feature = "remote-cache")]
        let downloaded = self.ask_remote(cache, &key).await;
        if cache.verifies() {
            let (disk, lookup) = (cache.disk().clone(), key.clone());
            let entry = tokio::task::spawn_blocking(move || disk.get(&lookup)).await;
            return match entry {
                Ok(Ok(Some(entry))) => Cached::Verify(key, Box::new(entry)),
                _ => Cached::Miss(Some(key)),
            };
        }
        let (disk, root, lookup) = (cache.disk().clone(), self.graph.root.clone(), key.clone());
        let found = tokio::task::spawn_blocking(move || {
            let entry = disk.get(&lookup)?;
            entry.map(|entry| disk.fetch(&entry, &root)).transpose()
        })
        .await
        .unwrap_or_else(|e| Err(format!("internal: {e}")));
        match found {
            #[allow(unused_mut)] // written with a remote cache only
            Ok(Some(mut fetched)) => {
                #[cfg(feature = "remote-cache")]
                if let Some(from) = downloaded {
                    fetched.from = from;
                }
                Cached::Fetched(Box::new((record.clone(), fetched)))
            }
            Ok(None) => missed,
            Err(e) => {
                self.warn(format!("cache: {e}; running it")).await;
                missed
            }
        }
    }

    /// The step's action key: its inputs and its dependencies' outputs are
    /// read and hashed. One that cannot be read is a warning, and no key.
    /// Made here, as the up-to-date check reads its inputs here: a hop to
    /// a blocking thread per step costs more than hashing a few files.
    /// With a remote executor that may run the step, also what the
    /// cluster needs to run it.
    async fn key(&self, record: &StepRecord) -> Option<(ActionKey, Option<Parts>)> {
        #[cfg(feature = "remote-cache")]
        let made = match self.may_run_remotely() {
            true => ActionKey::with_parts(&self.graph, self.step, record, &self.env)
                .map(|(key, parts)| (key, Some(parts))),
            false => ActionKey::new(&self.graph, self.step, record, &self.env).map(|k| (k, None)),
        };
        #[cfg(not(feature = "remote-cache"))]
        let made = ActionKey::new(&self.graph, self.step, record, &self.env).map(|k| (k, None));
        match made {
            Ok(made) => Some(made),
            Err(e) => {
                self.warn(format!("cache: no action key: {e}; running it"))
                    .await;
                None
            }
        }
    }

    /// A step whose results came from the cache: its output replayed, its
    /// record kept (it is up to date next time), `fetched` with where from.
    async fn fetched(
        &self,
        out: &OutputSink,
        record: StepRecord,
        fetched: Fetched,
        started: Instant,
    ) -> StepResult {
        if !fetched.log.is_empty() {
            out.write(fetched.log).await;
        }
        let message = format!(
            "fetched from {}: {} file{}, {}, {} ms",
            fetched.from,
            fetched.files,
            if fetched.files == 1 { "" } else { "s" },
            crate::cache::human_bytes(fetched.bytes),
            fetched.took.as_millis()
        );
        let attempt = Attempt {
            status: StepStatus::Fetched,
            exit_code: Some(0),
            message: Some(message),
            ran_on: None,
        };
        self.finish_run(out, Some(record), attempt, 0, started)
            .await
    }

    /// After a success: its outputs and what it printed, under its key.
    async fn store(&self, out: &OutputSink, key: &ActionKey) {
        let step = &self.graph.steps[self.step];
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let Some(files) = fingerprint::output_files(&self.graph.root, &step.outputs) else {
            return; // a missing output: finish_run warns about it
        };
        let Some(log) = out.captured() else {
            return; // too much output to keep
        };
        let (root, stored_key, disk) = (self.graph.root.clone(), key.clone(), cache.disk().clone());
        let stored =
            tokio::task::spawn_blocking(move || disk.put(&stored_key, &root, &files, &log))
                .await
                .unwrap_or_else(|e| Err(format!("internal: {e}")));
        match stored {
            Err(e) => {
                self.warn(format!("cache: cannot store its results: {e}"))
                    .await
            }
            #[cfg(feature = "remote-cache")]
            Ok(()) => self.upload(&cache, key).await,
            #[cfg(not(feature = "remote-cache"))]
            Ok(()) => {}
        }
    }

    /// Sends what was stored to the remote cache, when it takes uploads.
    #[cfg(feature = "remote-cache")]
    async fn upload(&self, cache: &Cache, key: &ActionKey) {
        if let Some(remote) = cache.remote().filter(|r| r.uploads() && r.usable())
            && let Err(e) = remote.upload_entry(key, cache.disk()).await
        {
            self.warn(format!("remote cache: cannot upload its results: {e}"))
                .await;
        }
    }

    /// A local miss asks the remote cache, if there is one: what it has is
    /// downloaded into the disk cache, which then answers. Says where from
    /// when it came from there.
    #[cfg(feature = "remote-cache")]
    async fn ask_remote(&self, cache: &Cache, key: &ActionKey) -> Option<String> {
        let remote = cache.remote().filter(|r| r.usable())?;
        let (disk, local) = (cache.disk().clone(), key.clone());
        let here = tokio::task::spawn_blocking(move || disk.entry_bytes(&local).is_some())
            .await
            .unwrap_or(false);
        if here {
            return None;
        }
        match remote.download(key, cache.disk()).await {
            Ok(true) => Some(format!("remote cache {}", remote.url())),
            Ok(false) => None,
            Err(e) => {
                self.warn(format!("remote cache: {e}; running it")).await;
                None
            }
        }
    }

    pub(super) async fn warn(&self, message: String) {
        let step = &self.graph.steps[self.step];
        let _ = self
            .events
            .send(Event::StepWarning {
                build: self.build,
                step: step.name.clone(),
                message,
            })
            .await;
    }
}
