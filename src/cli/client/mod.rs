//! The CLI's remote commands: a thin client of piperd's HTTP API (the same
//! API the web UI and scripts use). `--follow` streams the build log and
//! exits with the build's status, like a local run.

use std::io::Write;
use std::time::Duration;

use crate::agent::api::{
    AgentList, Build, BuildDetail, BuildList, BuildRequest, BuildSummary, History, SearchResults,
};

use crate::cli::args::{
    BuildsArgs, Connection, ExportArgs, HistoryArgs, LogsArgs, LogsCommand, OneBuildArgs,
    RemoteArgs, SearchArgs, SubmitArgs,
};
use crate::cli::error::{Error, Result};

mod follow;
mod http;
mod send;

use follow::*;
use http::*;
use send::*;

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

/// Runs one remote command on a runtime of its own.
fn block_on(command: impl std::future::Future<Output = Result<i32>>) -> Result<i32> {
    runtime()?.block_on(command)
}

/// Prints the API's JSON answer as it came, for `--json`.
fn print_json(text: &str) -> Result<i32> {
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(0)
}

/// `piper submit`: the commit (this repository's, or `--repo`'s), sent
/// as a bundle when piperd is elsewhere; then, with `--follow`, its log.
pub fn submit(args: &SubmitArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        let (repo, git_ref) = match &args.repo {
            Some(repo) => (repo.clone(), args.git_ref.clone()),
            None => {
                let (root, git_ref) = local_repository(&args.git_ref, args.working_tree)?;
                if args.send || !client.is_on_this_machine() {
                    send_commit(&client, &root, &git_ref).await?
                } else {
                    (root.to_string_lossy().into_owned(), git_ref)
                }
            }
        };
        let mut vars = std::collections::BTreeMap::new();
        for kv in &args.env {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(Error::BadEnvOverride { value: kv.clone() });
            };
            vars.insert(k.to_string(), v.to_string());
        }
        let body = BuildRequest {
            repo,
            pipeline: args.pipeline.clone(),
            git_ref: Some(git_ref),
            env: vars,
            secret_env: Default::default(),
            requested_by: Some(std::env::var("USER").unwrap_or_else(|_| "cli".into())),
            args: args.args.clone(),
        };
        let (build, text) = client
            .typed::<Build>(client.http.post(client.url("/builds")).json(&body))
            .await?;
        if args.remote.json && !args.follow {
            return print_json(&text);
        }
        let id = build.id;
        eprintln!(
            "submitted build {id} ({} #{})",
            clean(&build.repo),
            build.number
        );
        if args.follow {
            return follow_rendered(&client, id, true).await;
        }
        Ok(0)
    })
}

/// `piper builds`: newest first, as a table.
pub fn builds(args: &BuildsArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
        for (key, value) in [
            ("repo", &args.repo),
            ("status", &args.status),
            ("pipeline", &args.pipeline),
        ] {
            if let Some(v) = value {
                query.push((key, v.clone()));
            }
        }
        let (list, text) = client
            .typed::<BuildList>(client.http.get(client.url("/builds")).query(&query))
            .await?;
        if args.remote.json {
            return print_json(&text);
        }
        let rows: Vec<Vec<String>> = list.builds.iter().map(build_row).collect();
        let headers = ["ID", "STATUS", "PIPELINE", "SHA", "VERSION", "REPO"];
        let _ = std::io::stdout().write_all(table(&headers, &[0], &rows).as_bytes());
        Ok(0)
    })
}

fn build_row(summary: &BuildSummary) -> Vec<String> {
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
}

/// `piper show`: a build and its steps.
pub fn show(args: &OneBuildArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        let path = format!("/builds/{}", args.build);
        let (detail, text) = client
            .typed::<BuildDetail>(client.http.get(client.url(&path)))
            .await?;
        if args.remote.json {
            return print_json(&text);
        }
        let mut out = std::io::stdout();
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
    })
}

/// `piper logs`: rendered as `piper exec` shows a build, or a step's (or
/// the whole) raw log; `--follow` until the build ends.
pub fn logs(args: &LogsArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        match &args.command {
            Some(LogsCommand::Export(export)) => return export_log(export).await,
            Some(LogsCommand::Search(search)) => return search_logs(search).await,
            None => {}
        }
        // Required by clap unless there is a subcommand.
        let Some(build) = args.build else {
            return Err(remote_error("name the build: piper logs BUILD"));
        };
        let step = args.step.as_deref();
        if !args.raw && step.is_none() {
            return follow_rendered(&client, build, args.follow).await;
        }
        if args.follow {
            return follow_build(&client, build, step).await;
        }
        let mut offset = 0i64;
        loop {
            let (data, next, _) = read_log(&client, build, step, offset).await?;
            if data.is_empty() {
                return Ok(0);
            }
            let _ = std::io::stdout().write_all(&data);
            offset = next;
        }
    })
}

/// `piper logs export`: the build's log as NDJSON records on stdout, as
/// piperd streams them (`GET /builds/{id}/log/export`).
async fn export_log(args: &ExportArgs) -> Result<i32> {
    let client = Client::new(&args.connection)?;
    let format = if args.bulk { "bulk" } else { "ndjson" };
    let request = (client.http)
        .get(client.url(&format!("/builds/{}/log/export", args.build)))
        .query(&[("format", format)]);
    let mut response = client.send(request).await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(bytes) =
        (response.chunk().await).map_err(|e| remote_error(format!("the export broke off: {e}")))?
    {
        if let Err(e) = stdout.write_all(&bytes) {
            // A closed pipe (`| head`) ends the export quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(remote_error(format!("cannot write the export: {e}")));
        }
    }
    let _ = stdout.flush();
    Ok(0)
}

/// `piper logs search`: the matching lines, one per line as
/// `build 12 #3 ci failed  test:42: the line`, or the API's JSON.
async fn search_logs(args: &SearchArgs) -> Result<i32> {
    let client = Client::new(&args.remote.connection)?;
    let mut query: Vec<(&str, String)> =
        vec![("q", args.text.clone()), ("limit", args.limit.to_string())];
    let filters = [
        ("repo", &args.repo),
        ("pipeline", &args.pipeline),
        ("step", &args.step),
        ("status", &args.status),
        ("branch", &args.branch),
    ];
    for (name, value) in filters {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if let Some(since) = args.since {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        query.push(("since", now.saturating_sub(since).as_millis().to_string()));
    }
    let request = client.http.get(client.url("/search")).query(&query);
    let found: SearchResults = client.get(request).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&found).unwrap_or_default());
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    for hit in &found.hits {
        let _ = writeln!(
            out,
            "build {} #{} {} {}  {}:{}: {}",
            hit.build,
            hit.number,
            hit.pipeline,
            hit.status,
            hit.step,
            hit.line,
            clean(&hit.text)
        );
    }
    if found.truncated {
        eprintln!(
            "piper: more lines match than --limit {}: narrow the search",
            args.limit
        );
    } else if found.hits.is_empty() {
        eprintln!("piper: no stored log holds `{}`", args.text);
    }
    Ok(0)
}

/// `piper history`: a table of the steps over the last builds, then the
/// flaky ones; or the API's JSON.
pub fn history(args: &HistoryArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        let repo = match &args.repo {
            Some(repo) => repo.clone(),
            None => local_repository("HEAD", false)?
                .0
                .to_string_lossy()
                .into_owned(),
        };
        let mut query = vec![("repo", repo), ("builds", args.builds.to_string())];
        if let Some(pipeline) = &args.pipeline {
            query.push(("pipeline", pipeline.clone()));
        }
        let request = client.http.get(client.url("/history")).query(&query);
        let history: History = client.get(request).await?;
        if args.remote.json {
            println!("{}", serde_json::to_string(&history).unwrap_or_default());
        } else {
            print!("{}", history_table(&history));
        }
        Ok(0)
    })
}

/// `piper history` as text.
fn history_table(history: &History) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ms = |v: Option<u64>| {
        v.map_or("-".to_string(), |ms| {
            crate::duration::format(Duration::from_millis(ms))
        })
    };
    let width = (history.steps.iter().map(|s| s.step.len()).max())
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:>4}  {:>8}  {:>8}  {:>6}  failures",
        "step", "runs", "p50", "p95", "trend"
    );
    for step in &history.steps {
        let trend = step.trend.map_or("-".to_string(), |t| format!("{t:.2}x"));
        let _ = writeln!(
            out,
            "{:width$}  {:>4}  {:>8}  {:>8}  {:>6}  {} ({:.0}%)",
            clean(&step.step),
            step.runs.len(),
            ms(step.p50_ms),
            ms(step.p95_ms),
            trend,
            step.failures,
            step.failure_rate * 100.0
        );
    }
    if history.steps.is_empty() {
        let _ = writeln!(out, "(no finished builds of {})", clean(&history.repo));
    }
    for flaky in &history.flaky {
        let short = &flaky.sha[..flaky.sha.len().min(10)];
        let ids = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "flaky: {} on {short}: failed in build {}, passed in build {}",
            clean(&flaky.step),
            ids(&flaky.failed),
            ids(&flaky.passed)
        );
    }
    out
}

/// `piper cancel`.
pub fn cancel(args: &OneBuildArgs) -> Result<i32> {
    build_action(args, "cancel", |build, b| {
        format!("build {build}: {}", b.status.as_str())
    })
}

/// `piper retrigger`.
pub fn retrigger(args: &OneBuildArgs) -> Result<i32> {
    build_action(args, "retrigger", |build, b| {
        format!("submitted build {} (retrigger of build {build})", b.id)
    })
}

/// POSTs `/builds/{id}/{action}` and says what came of it.
fn build_action(args: &OneBuildArgs, action: &str, said: fn(i64, &Build) -> String) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.remote.connection)?;
        let path = format!("/builds/{}/{action}", args.build);
        let (b, text) = client
            .typed::<Build>(client.http.post(client.url(&path)))
            .await?;
        if args.remote.json {
            return print_json(&text);
        }
        eprintln!("{}", said(args.build, &b));
        Ok(0)
    })
}

/// `piper agents`: the agents sharing the database, as a table.
pub fn agents(args: &RemoteArgs) -> Result<i32> {
    block_on(async {
        let client = Client::new(&args.connection)?;
        let (list, text) = client
            .typed::<AgentList>(client.http.get(client.url("/agents")))
            .await?;
        if args.json {
            return print_json(&text);
        }
        let rows: Vec<Vec<String>> = list.agents.iter().map(agent_row).collect();
        let headers = [
            "NAME", "STATE", "SEEN", "RUNNING", "WORKERS", "ADDRESS", "LABELS",
        ];
        let _ = std::io::stdout().write_all(table(&headers, &[3, 4], &rows).as_bytes());
        Ok(0)
    })
}

fn agent_row(a: &crate::agent::store::AgentInfo) -> Vec<String> {
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
