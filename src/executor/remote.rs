//! A step on a remote executor (`--remote-exec`, feature `remote-cache`):
//! a step with an action key that no cache holds runs on the cluster
//! (`cache/execute.rs`) instead of here, as one attempt: its retries, its
//! timeout (the attempt's token, which cancels the remote operation; the
//! worker ends it at the action's timeout too), and
//! fail-fast are the executor's as for any step. Its outputs are written
//! from the disk cache, where the result went, and what it printed is
//! replayed; a step that fails there fails here with its exit code. A
//! cluster that cannot be reached fails the step, or with
//! `--remote-exec-fallback` lets it run here. Part of the job (`job.rs`).

#[cfg(feature = "remote-cache")]
use crate::cache::ExecError;
#[cfg(feature = "remote-cache")]
use crate::event::StepStatus;
use crate::process::OutputSink;
use tokio_util::sync::CancellationToken;

use super::job::{Attempt, StepJob};

#[cfg(feature = "remote-cache")]
impl StepJob {
    /// Whether it is to run on the cluster.
    pub(super) fn runs_remotely(&self) -> bool {
        self.remote.is_some()
    }

    /// Whether the cluster may run it, should no cache hold its results:
    /// a command step (not a Lua function) when there is one.
    pub(super) fn may_run_remotely(&self) -> bool {
        let step = &self.graph.steps[self.step];
        (self.cache.as_ref()).is_some_and(|c| c.executor().is_some())
            && matches!(step.run, crate::spec::Run::Commands(_))
            && !self.dry_run
    }

    /// One attempt on the cluster; None when it is to run here instead.
    pub(super) async fn remote_attempt(
        &self,
        out: &OutputSink,
        token: &CancellationToken,
    ) -> Option<Attempt> {
        let (key, parts) = self.remote.as_deref()?;
        let cache = self.cache.as_ref()?;
        let executor = cache.executor()?;
        if let crate::spec::Run::Commands(commands) = &self.graph.steps[self.step].run {
            for command in commands {
                out.command(command.to_string()).await;
            }
        }
        let (disk, root) = (cache.disk(), &self.graph.root);
        let done = match executor.execute(key, parts, root, disk, token).await {
            Ok(done) => done,
            Err(ExecError::Canceled) => return Some(attempt(StepStatus::Canceled, None, None)),
            Err(ExecError::TimedOut) => {
                let limit = (self.graph.steps[self.step].timeout)
                    .map(crate::duration::format)
                    .unwrap_or_default();
                let message = format!("timed out after {limit} on the cluster");
                return Some(attempt(StepStatus::TimedOut, None, Some(message)));
            }
            Err(ExecError::Unreachable(why)) if executor.falls_back() => {
                self.warn(format!("remote execution: {why}; running it here"))
                    .await;
                return None;
            }
            Err(ExecError::Unreachable(why) | ExecError::Failed(why)) => {
                let message = format!("remote execution: {why}");
                return Some(attempt(StepStatus::Failed, None, Some(message)));
            }
        };
        let ran_on = crate::event::RanOn {
            executor: executor.url().to_string(),
            worker: done.worker.clone(),
            queued_ms: done.queued.as_millis() as u64,
            ran_ms: done.ran.as_millis() as u64,
        };
        let place = match done.worker.as_str() {
            "" => format!("ran on {}", executor.url()),
            worker => format!("ran on {worker} ({})", executor.url()),
        };
        let times = format!(
            "queued {} ms, ran {} ms",
            done.queued.as_millis(),
            done.ran.as_millis()
        );
        if done.exit_code != 0 {
            out.write(done.log).await;
            let message = format!("exited with code {} ({place}; {times})", done.exit_code);
            let failed = attempt(StepStatus::Failed, Some(done.exit_code), Some(message));
            return Some(Attempt {
                ran_on: Some(ran_on),
                ..failed
            });
        }
        self.ran_remotely
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (disk, root, lookup) = (disk.clone(), root.clone(), key.clone());
        let written = tokio::task::spawn_blocking(move || {
            let entry = disk
                .get(&lookup)?
                .ok_or("its result is not in the disk cache")?;
            disk.fetch(&entry, &root)
        })
        .await
        .unwrap_or_else(|e| Err(format!("internal: {e}")));
        match written {
            Ok(fetched) => {
                if !fetched.log.is_empty() {
                    out.write(fetched.log).await;
                }
                let what = format!(
                    "{} file{}, {}",
                    fetched.files,
                    if fetched.files == 1 { "" } else { "s" },
                    crate::cache::human_bytes(fetched.bytes)
                );
                let message = format!("{place}: {times}; {what}");
                let succeeded = attempt(StepStatus::Success, Some(0), Some(message));
                Some(Attempt {
                    ran_on: Some(ran_on),
                    ..succeeded
                })
            }
            Err(e) => {
                let message = format!("remote execution: cannot write its outputs: {e}");
                Some(attempt(StepStatus::Failed, None, Some(message)))
            }
        }
    }
}

#[cfg(not(feature = "remote-cache"))]
impl StepJob {
    pub(super) fn runs_remotely(&self) -> bool {
        false
    }

    pub(super) async fn remote_attempt(
        &self,
        _out: &OutputSink,
        _token: &CancellationToken,
    ) -> Option<Attempt> {
        None
    }
}

#[cfg(feature = "remote-cache")]
fn attempt(status: StepStatus, exit_code: Option<i32>, message: Option<String>) -> Attempt {
    Attempt {
        status,
        exit_code,
        message,
        ran_on: None,
    }
}
