//! Following builds: the raw log of a step, or the typed stream rendered
//! as a local run is (chained builds followed too), and the exit code a
//! build's end gives.

use std::io::Write;
use std::time::Duration;

use crate::agent::api::{BuildDetail, BuildList, BuildState, StreamItem, StreamPage};

use crate::cli::error::Result;
use crate::error::EXIT_INTERRUPTED;

use super::http::*;

/// One read of a log: its bytes, the next offset, and the build's status.
pub(super) async fn read_log(
    client: &Client,
    build: i64,
    step: Option<&str>,
    offset: i64,
) -> Result<(Vec<u8>, i64, String)> {
    let mut query = vec![("offset", offset.to_string())];
    if let Some(step) = step {
        query.push(("step", step.to_string()));
    }
    let response = client
        .send(
            client
                .http
                .get(client.url(&format!("/builds/{build}/log")))
                .query(&query),
        )
        .await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let next = header("x-piper-next-offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(offset);
    let status = header("x-piper-build-status").unwrap_or_default();
    let data = response
        .bytes()
        .await
        .map_err(|e| remote_error(format!("cannot read the log: {e}")))?;
    Ok((data.to_vec(), next, status))
}

/// Streams the log until the build ends; exits like a local run would.
pub(super) async fn follow_build(client: &Client, build: i64, step: Option<&str>) -> Result<i32> {
    let mut out = std::io::stdout();
    let mut offset = 0;
    loop {
        let (data, next, status) = read_log(client, build, step, offset).await?;
        if !data.is_empty() {
            let _ = out.write_all(&data);
            let _ = out.flush();
            offset = next;
            continue;
        }
        if !matches!(status.as_str(), "queued" | "running" | "") {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(stopped_following(build)),
        }
    }
    let b: BuildDetail = client
        .get(client.http.get(client.url(&format!("/builds/{build}"))))
        .await?;
    eprintln!("build {build} {}", b.summary.build.status.as_str());
    Ok(exit_code_of(&b))
}

/// Ctrl-C while following: only the following stops; says how to stop
/// the build too.
pub(super) fn stopped_following(build: i64) -> i32 {
    eprintln!(
        "\npiper: stopped following; build {build} goes on on the agent (stop it with `piper cancel {build}`)"
    );
    EXIT_INTERRUPTED
}

/// Renders a build's typed event stream with the terminal host `piper
/// exec` uses — prefixes, colours on a terminal, status line, summary with
/// the first failure's last lines — and exits as a local run of it would.
/// With `follow`, until the build and the builds it chains have ended (a
/// build's `build_finished` names the pipelines it chains, so the follower
/// knows to wait for them); else what is stored now. Lines of the build
/// itself (checkout, config errors) go to stderr as they come.
pub(super) async fn follow_rendered(client: &Client, build: i64, follow: bool) -> Result<i32> {
    use std::io::IsTerminal;
    let color = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let status_line =
        std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
    let terminal = crate::cli::render::Terminal::new(
        std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout()),
        std::io::stderr(),
        crate::cli::render::OutputMode::Prefixed,
        false,
        color,
        status_line,
    );
    let (tx, rx) = crate::event::channel();
    let host = tokio::spawn(crate::cli::render::drive(rx, Box::new(terminal)));
    let mut queue = std::collections::VecDeque::from([build]);
    let mut followed = Vec::new();
    let mut interrupted = None;
    while let Some(id) = queue.pop_front() {
        match follow_one(client, id, follow, &tx).await? {
            None => {
                interrupted = Some(id);
                break;
            }
            Some(chains) => {
                followed.push(id);
                if !chains.is_empty() {
                    queue.extend(chained_builds(client, id, chains.len(), follow).await?);
                }
            }
        }
    }
    drop(tx);
    let _ = host.await;
    if let Some(id) = interrupted {
        return Ok(stopped_following(id));
    }
    let mut exit = 0;
    for id in followed {
        let b: BuildDetail = client
            .get(client.http.get(client.url(&format!("/builds/{id}"))))
            .await?;
        if let Some(error) = &b.summary.build.error {
            eprintln!("build {id}: {}", clean(error));
        }
        if !b.summary.build.status.is_final() {
            // Shown so far, without `--follow`: nothing has failed yet.
            continue;
        }
        if exit == 0 {
            exit = exit_code_of(&b);
        }
    }
    Ok(exit)
}

/// Feeds one build's stream to the renderer. `None` when Ctrl-C stopped
/// the following, else the pipelines the build chains.
pub(super) async fn follow_one(
    client: &Client,
    build: i64,
    follow: bool,
    tx: &crate::event::EventSender,
) -> Result<Option<Vec<String>>> {
    use base64::Engine;
    let mut after: i64 = -1;
    let mut current = 1u32;
    let mut chains = Vec::new();
    loop {
        let request = client.get::<StreamPage>(
            client
                .http
                .get(client.url(&format!("/builds/{build}/stream")))
                .query(&[("after", after.to_string()), ("wait", follow.to_string())]),
        );
        let page = tokio::select! {
            page = request => page?,
            _ = tokio::signal::ctrl_c() => return Ok(None),
        };
        let empty = page.items.is_empty();
        for item in page.items {
            match item {
                StreamItem::Output { output, .. } => {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&output.data)
                        .unwrap_or_default();
                    if output.step.is_empty() {
                        let _ = std::io::stderr().write_all(&data);
                        continue;
                    }
                    let _ = tx
                        .send(crate::event::Event::StepOutput {
                            build: current,
                            step: output.step,
                            data,
                        })
                        .await;
                }
                StreamItem::Event {
                    event: Some(event), ..
                } => {
                    match &event {
                        crate::event::Event::BuildStarted { build, .. } => current = *build,
                        crate::event::Event::BuildFinished {
                            build, chains: c, ..
                        } if *build == current => chains = c.clone(),
                        _ => {}
                    }
                    let _ = tx.send(event).await;
                }
                // An event of a newer agent this version cannot show.
                StreamItem::Event { event: None, .. } => {}
            }
        }
        after = page.next;
        if empty {
            if page.status.is_final() || !follow {
                return Ok(Some(chains));
            }
            // The agent waited already (long poll); a short pause guards
            // against an agent that answers at once.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(None),
            }
        }
    }
}

/// The builds `parent` chained, oldest first. Following, waits (up to
/// 30 s) for all `expected` of them: they are created as they start, just
/// after the parent ended. It waits on the agent's update stream (`GET
/// /updates`, one event per build written), listing again when told, not
/// on a timer.
pub(super) async fn chained_builds(
    client: &Client,
    parent: i64,
    expected: usize,
    follow: bool,
) -> Result<Vec<i64>> {
    let ids = chained_now(client, parent).await?;
    if ids.len() >= expected || !follow {
        return Ok(ids);
    }
    use futures_util::StreamExt;
    let mut updates = client
        .send(client.http.get(client.url("/updates")))
        .await?
        .bytes_stream();
    // What was created before the subscription: listed once more.
    let mut ids = chained_now(client, parent).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut pending = Vec::new();
    while ids.len() < expected {
        tokio::select! {
            chunk = updates.next() => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    // One or more whole events (each ends with a blank line).
                    if let Some(end) = memchr::memmem::rfind(&pending, b"\n\n") {
                        pending.drain(..end + 2);
                        ids = chained_now(client, parent).await?;
                    }
                }
                // The stream ended or broke: what is there is all.
                _ => return chained_now(client, parent).await,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(ids)
}

/// The builds `parent` chained so far, oldest first.
pub(super) async fn chained_now(client: &Client, parent: i64) -> Result<Vec<i64>> {
    let list: BuildList = client
        .get(
            client
                .http
                .get(client.url("/builds"))
                .query(&[("parent", parent.to_string()), ("limit", "500".into())]),
        )
        .await?;
    // Retriggers are children too; chained builds say where from.
    let mut ids: Vec<i64> = list
        .builds
        .iter()
        .filter(|b| b.build.requested_by.starts_with("chained from build"))
        .map(|b| b.build.id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The exit status a local run of the same build would have had: 0, the
/// first failing step's code, 124 for a timeout, 130 when canceled, 1
/// for a failure without a code.
pub(super) fn exit_code_of(build: &BuildDetail) -> i32 {
    match build.summary.build.status {
        BuildState::Success => 0,
        BuildState::Canceled => EXIT_INTERRUPTED,
        _ => build
            .steps
            .iter()
            .find_map(|s| match s.status.as_str() {
                "timed_out" => Some(crate::error::EXIT_TIMEOUT),
                "failed" => s
                    .exit_code
                    .map(|c| c as i32)
                    .filter(|&c| c != 0)
                    .or(Some(1)),
                _ => None,
            })
            .unwrap_or(1),
    }
}
