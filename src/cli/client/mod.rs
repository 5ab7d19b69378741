//! The CLI's remote commands: a thin client of piperd's HTTP API (the same
//! API the web UI and scripts use). `--follow` streams the build log and
//! exits with the build's status, like a local run.

use std::io::Write;
use std::time::Duration;

use crate::agent::api::{AgentList, Build, BuildDetail, BuildList, BuildRequest};

use crate::cli::args::{Connection, RemoteArgs, RemoteCommand};
use crate::error::{Error, Result};

mod follow;
mod http;
mod send;

use follow::*;
use http::*;
use send::*;

pub fn run(args: &RemoteArgs, command: &RemoteCommand) -> Result<i32> {
    runtime()?.block_on(run_async(args, command))
}

/// Build `id` as piperd recorded it, and the agent that ran it (None when
/// it has left the agent list): what `piper exec --from-build` reproduces.
pub fn build_and_agent(
    connection: &Connection,
    id: i64,
) -> Result<(Build, Option<crate::agent::store::AgentInfo>)> {
    runtime()?.block_on(async {
        let client = Client::new(connection)?;
        let path = format!("/builds/{id}");
        let (detail, _) = client
            .typed::<BuildDetail>(client.http.get(client.url(&path)))
            .await?;
        let (agents, _) = client
            .typed::<AgentList>(client.http.get(client.url("/agents")))
            .await?;
        let build = detail.summary.build;
        let agent = (agents.agents.into_iter()).find(|a| build.agent_id.as_ref() == Some(&a.id));
        Ok((build, agent))
    })
}

async fn run_async(args: &RemoteArgs, command: &RemoteCommand) -> Result<i32> {
    let client = Client::new(&args.connection)?;
    let mut out = std::io::stdout();
    match command {
        RemoteCommand::Submit {
            pipeline,
            repo,
            git_ref,
            env,
            follow,
            working_tree,
            send,
            args: pipeline_args,
        } => {
            let (repo, git_ref) = match repo {
                Some(repo) => (repo.clone(), git_ref.clone()),
                None => {
                    let (root, git_ref) = local_repository(git_ref, *working_tree)?;
                    if *send || !client.is_on_this_machine() {
                        send_commit(&client, &root, &git_ref).await?
                    } else {
                        (root.to_string_lossy().into_owned(), git_ref)
                    }
                }
            };
            let mut vars = std::collections::BTreeMap::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(Error::BadEnvOverride { value: kv.clone() });
                };
                vars.insert(k.to_string(), v.to_string());
            }
            let body = BuildRequest {
                repo,
                pipeline: pipeline.clone(),
                git_ref: Some(git_ref),
                env: vars,
                secret_env: Default::default(),
                requested_by: Some(std::env::var("USER").unwrap_or_else(|_| "cli".into())),
                args: pipeline_args.clone(),
            };
            let (build, text) = client
                .typed::<Build>(client.http.post(client.url("/builds")).json(&body))
                .await?;
            let id = build.id;
            if args.json && !follow {
                let _ = writeln!(out, "{text}");
                return Ok(0);
            }
            eprintln!(
                "submitted build {id} ({} #{})",
                clean(&build.repo),
                build.number
            );
            if *follow {
                return follow_rendered(&client, id, true).await;
            }
            Ok(0)
        }
        RemoteCommand::Builds {
            repo,
            status,
            pipeline,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (key, value) in [("repo", repo), ("status", status), ("pipeline", pipeline)] {
                if let Some(v) = value {
                    query.push((key, v.clone()));
                }
            }
            let (list, text) = client
                .typed::<BuildList>(client.http.get(client.url("/builds")).query(&query))
                .await?;
            if args.json {
                let _ = writeln!(out, "{text}");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .builds
                .iter()
                .map(|summary| {
                    let b = &summary.build;
                    let sha = b
                        .sha
                        .as_deref()
                        .map(|s| &s[..s.len().min(9)])
                        .unwrap_or("-");
                    let status = match &summary.waiting_for {
                        Some(labels) => format!("waiting for an agent with {}", clean(labels)),
                        None => b.status.as_str().to_string(),
                    };
                    vec![
                        b.id.to_string(),
                        status,
                        clean(&b.pipeline),
                        clean(sha),
                        b.version.as_deref().map_or("-".into(), clean),
                        format!("{} #{}", clean(&b.repo), b.number),
                    ]
                })
                .collect();
            let _ = out.write_all(
                table(
                    &["ID", "STATUS", "PIPELINE", "SHA", "VERSION", "REPO"],
                    &[0],
                    &rows,
                )
                .as_bytes(),
            );
            Ok(0)
        }
        RemoteCommand::Show { build } => {
            let (detail, text) = client
                .typed::<BuildDetail>(client.http.get(client.url(&format!("/builds/{build}"))))
                .await?;
            if args.json {
                let _ = writeln!(out, "{text}");
                return Ok(0);
            }
            let b = &detail.summary.build;
            let _ = writeln!(
                out,
                "build {}: {} #{}  {}",
                b.id,
                clean(&b.repo),
                b.number,
                b.status.as_str()
            );
            let _ = writeln!(
                out,
                "  pipeline {}  ref {}  sha {}  version {}",
                clean(&b.pipeline),
                clean(&b.git_ref),
                b.sha.as_deref().map_or("-".into(), clean),
                b.version.as_deref().map_or("-".into(), clean)
            );
            if let Some(error) = &b.error {
                let _ = writeln!(out, "  error: {}", clean(error));
            }
            if let Some(labels) = &detail.summary.waiting_for {
                let _ = writeln!(out, "  waiting for an agent with {}", clean(labels));
            }
            let rows: Vec<Vec<String>> = detail
                .steps
                .iter()
                .map(|s| {
                    let code = s
                        .exit_code
                        .filter(|&c| c != 0)
                        .map(|c| format!("exit {c}"))
                        .unwrap_or_default();
                    // The same words as a local run's summary: `up to date`.
                    vec![clean(&s.name), clean(&s.status).replace('_', " "), code]
                })
                .collect();
            for line in table(&["", "", ""], &[], &rows).lines().skip(1) {
                let _ = writeln!(out, "  {}", line.trim_end());
            }
            Ok(0)
        }
        RemoteCommand::Logs {
            build,
            step,
            follow,
            raw,
        } => {
            if !*raw && step.is_none() {
                return follow_rendered(&client, *build, *follow).await;
            }
            if *follow {
                return follow_build(&client, *build, step.as_deref()).await;
            }
            let mut offset = 0i64;
            loop {
                let (data, next, _) = read_log(&client, *build, step.as_deref(), offset).await?;
                if data.is_empty() {
                    return Ok(0);
                }
                let _ = out.write_all(&data);
                offset = next;
            }
        }
        RemoteCommand::Cancel { build } => {
            let (b, text) = client
                .typed::<Build>(
                    client
                        .http
                        .post(client.url(&format!("/builds/{build}/cancel"))),
                )
                .await?;
            if args.json {
                let _ = writeln!(out, "{text}");
            } else {
                eprintln!("build {build}: {}", b.status.as_str());
            }
            Ok(0)
        }
        RemoteCommand::Retrigger { build } => {
            let (b, text) = client
                .typed::<Build>(
                    client
                        .http
                        .post(client.url(&format!("/builds/{build}/retrigger"))),
                )
                .await?;
            if args.json {
                let _ = writeln!(out, "{text}");
            } else {
                eprintln!("submitted build {} (retrigger of build {build})", b.id);
            }
            Ok(0)
        }
        RemoteCommand::Agents => {
            let (list, text) = client
                .typed::<AgentList>(client.http.get(client.url("/agents")))
                .await?;
            if args.json {
                let _ = writeln!(out, "{text}");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .agents
                .iter()
                .map(|a| {
                    let labels: Vec<String> = a
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
                        .collect();
                    // The leader does the cluster's rescue and schedules.
                    let state = if a.leader {
                        format!("{} (leader)", a.status)
                    } else {
                        a.status.clone()
                    };
                    let age = (crate::agent::store::now_ms() - a.last_seen).max(0) as u64;
                    vec![
                        clean(&a.name),
                        state,
                        format!(
                            "{} ago",
                            crate::duration::format(Duration::from_millis(age))
                        ),
                        a.running.to_string(),
                        a.workers.to_string(),
                        clean(&a.address),
                        labels.join(","),
                    ]
                })
                .collect();
            let _ = out.write_all(
                table(
                    &[
                        "NAME", "STATE", "SEEN", "RUNNING", "WORKERS", "ADDRESS", "LABELS",
                    ],
                    &[3, 4],
                    &rows,
                )
                .as_bytes(),
            );
            Ok(0)
        }
    }
}

/// Columns aligned by display width; the columns in `right` (numbers) are
/// right-aligned. Trailing spaces are trimmed.
fn table(headers: &[&str], right: &[usize], rows: &[Vec<String>]) -> String {
    use crate::cli::render::style::{pad, width};
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if right.contains(&i) {
                    format!("{}{cell}", " ".repeat(widths[i] - width(cell)))
                } else {
                    pad(cell, widths[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
