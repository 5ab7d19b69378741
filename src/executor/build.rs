//! A run: its builds one after another (the plan, then the triggers'
//! chained builds), each with its scheduler, and their outcome.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::error::{EXIT_INTERRUPTED, Result};
use crate::event::{BuildStatus, Event, EventSender, StepStatus, TriggeredBy};
use crate::graph::{Graph, Plan};
use crate::spec::TriggerOn;
use crate::state::State;

use super::options::*;
use super::scheduler::*;

/// The triggers of `plan` that fire after a build that ended `status`.
pub(super) fn firing(
    plan: &Plan,
    status: BuildStatus,
) -> impl Iterator<Item = &crate::graph::Trigger> {
    plan.triggers.iter().filter(move |trigger| {
        status != BuildStatus::Canceled
            && match trigger.on {
                TriggerOn::Success => status == BuildStatus::Success,
                TriggerOn::Failure => status == BuildStatus::Failed,
                TriggerOn::Always => true,
            }
    })
}

/// A step the triggering build also planned keeps the environment it had
/// there: a trigger's `env` (and the chained pipeline's own) reach only the
/// steps the chained pipeline adds. So a step both need is the same step,
/// up to date in the chained build, instead of being rebuilt back and
/// forth between the two environments.
pub(super) fn share_steps_with(chained: &mut Plan, parent: &Plan) {
    for planned in &mut chained.steps {
        if let Some(there) = parent.steps.iter().find(|p| p.step == planned.step) {
            planned.pipeline_env = there.pipeline_env.clone();
        }
    }
}

/// Plans `targets`, runs them, then the pipelines their triggers chain.
/// `interrupt` cancels everything (Ctrl-C); steps' process groups are ended
/// and waited for before this returns.
pub async fn run(
    graph: Arc<Graph>,
    targets: &[String],
    options: &Options,
    events: &EventSender,
    interrupt: &CancellationToken,
) -> Result<RunOutcome> {
    let first = graph.plan(targets)?;
    if options.reap_orphans {
        crate::reaper::start();
    }
    let mut queue: VecDeque<(Plan, Option<TriggeredBy>)> = VecDeque::from([(first, None)]);
    let mut builds = Vec::new();
    let mut next_id = options.first_build;
    // `restrict` names steps of the requested plan (what a change affected
    // and their dependents there); a chained pipeline is a plan of its own,
    // whose steps get the ordinary up-to-date check.
    // Arguments are for the pipeline they were given to (as a just recipe's
    // are for that recipe); a chained pipeline gets its trigger's env.
    let chained_options = Options {
        restrict: None,
        args: Arc::from([]),
        ..options.clone()
    };
    while let Some((plan, triggered_by)) = queue.pop_front() {
        let build_options = if triggered_by.is_none() {
            options
        } else {
            &chained_options
        };
        let outcome = run_build(
            graph.clone(),
            &plan,
            next_id,
            triggered_by,
            build_options,
            events,
            interrupt,
        )
        .await;
        next_id += 1;
        for trigger in firing(&plan, outcome.status) {
            let mut chained =
                graph.plan_with_env(std::slice::from_ref(&trigger.pipeline), &trigger.env)?;
            share_steps_with(&mut chained, &plan);
            let by = TriggeredBy {
                build: outcome.build,
                pipeline: plan.name.clone(),
                on: trigger.on,
            };
            queue.push_back((chained, Some(by)));
        }
        builds.push(outcome);
        if options.exiting {
            std::mem::forget(plan);
        }
    }
    if !options.dry_run
        && let Err(e) = State::compact(&graph.root)
    {
        tracing::warn!(
            "cannot save the build state in {}: {e}",
            State::dir(&graph.root).display()
        );
    }
    let exit_code = if interrupt.is_cancelled() {
        EXIT_INTERRUPTED
    } else {
        builds
            .iter()
            .map(|b| b.exit_code)
            .find(|&c| c != 0)
            .unwrap_or(0)
    };
    Ok(RunOutcome { builds, exit_code })
}

pub(super) async fn run_build(
    graph: Arc<Graph>,
    plan: &Plan,
    build: u32,
    triggered_by: Option<TriggeredBy>,
    options: &Options,
    events: &EventSender,
    interrupt: &CancellationToken,
) -> BuildOutcome {
    let started = Instant::now();
    let mut scheduler = Scheduler::new(graph, plan, build, options, events, interrupt);
    scheduler.announce(triggered_by).await;
    scheduler.queue_roots().await;
    loop {
        scheduler.start_ready().await;
        if scheduler.running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = scheduler.running.join_next() => joined,
            _ = interrupt.cancelled(), if !scheduler.stop => {
                scheduler.stop_starting();
                continue;
            }
        };
        match joined {
            Some(Ok(result)) => scheduler.on_finished(result).await,
            Some(Err(e)) => {
                // A panicking step task is a Piper bug; fail the build, loudly.
                tracing::error!("step task failed: {e}");
                scheduler
                    .first_failure
                    .get_or_insert((StepStatus::Failed, None));
                scheduler.stop_starting();
            }
            None => break,
        }
    }
    scheduler.finish_unstarted().await;
    let (status, exit_code) = scheduler.outcome(interrupt);
    if options.exiting {
        std::mem::forget(scheduler);
    }
    let _ = events
        .send(Event::BuildFinished {
            build,
            name: plan.name.clone(),
            status,
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code,
            chains: firing(plan, status).map(|t| t.pipeline.clone()).collect(),
        })
        .await;
    BuildOutcome {
        build,
        name: plan.name.clone(),
        status,
        exit_code,
    }
}
