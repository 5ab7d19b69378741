//! The CLI's remote commands: a thin client of piperd's HTTP API (the same
//! API the web UI and scripts use). `--follow` streams the build log and
//! exits with the build's status, like a local run.

use std::io::Write;
use std::time::Duration;

use crate::agent::api::{
    AgentList, Build, BuildDetail, BuildList, BuildRequest, BuildState, ErrorBody, StreamItem,
    StreamPage,
};

use crate::cli::args::{Connection, RemoteArgs, RemoteCommand};
use crate::error::{EXIT_INTERRUPTED, Error, Result};

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

fn remote_error(message: impl Into<String>) -> Error {
    Error::Remote {
        message: message.into(),
    }
}

/// A file piperd keeps in its data directory (same machine as the agent),
/// trimmed; `None` when it is not there or not readable.
fn agent_file(data: &std::path::Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(data.join(name)).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

impl Client {
    /// Flag, then environment, then `config.toml` (`PIPER_CONFIG` names
    /// another file), then what piperd wrote in its data directory on this
    /// machine, then the defaults.
    fn new(args: &Connection) -> Result<Client> {
        let explicit = std::env::var_os("PIPER_CONFIG").map(std::path::PathBuf::from);
        let config: crate::config_file::ClientConfig =
            crate::config_file::load(explicit.as_deref(), "config.toml")?;
        let data = args
            .data
            .clone()
            .unwrap_or_else(crate::agent::default_data_dir);
        let server = args
            .server
            .clone()
            .or(config.server)
            .or_else(|| {
                agent_file(&data, crate::agent::ADDRESS_FILE).map(|a| format!("http://{a}"))
            })
            .unwrap_or_else(|| format!("http://{}", crate::agent::DEFAULT_LISTEN));
        let base = server.trim_end_matches('/').to_string();
        let token = args
            .token
            .clone()
            .or(config.token)
            .or_else(|| agent_file(&data, "token"));
        Ok(Client {
            http: http_client(&base)?,
            base,
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Whether piperd is on this machine: its URL's host is a loopback
    /// address or `localhost` (it can then read this machine's paths).
    fn is_on_this_machine(&self) -> bool {
        let Ok(url) = url::Url::parse(&self.base) else {
            return false;
        };
        match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| remote_error(format!("cannot reach piperd at {}: {e}", self.base)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let message = match response.json::<ErrorBody>().await {
            Ok(ErrorBody {
                error,
                field: Some(field),
            }) => format!("{field}: {error}"),
            Ok(ErrorBody { error, .. }) => error,
            Err(_) => "no details".into(),
        };
        Err(remote_error(format!(
            "piperd answered {status}: {}",
            clean(&message)
        )))
    }

    /// The answer as the API's type, and its text as sent (what `--json`
    /// prints, unchanged).
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(T, String)> {
        let text = self
            .send(request)
            .await?
            .text()
            .await
            .map_err(|e| remote_error(format!("unreadable answer: {e}")))?;
        let value = serde_json::from_str(&text)
            .map_err(|e| remote_error(format!("unreadable answer: {e}")))?;
        Ok((value, text))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        Ok(self.typed(request).await?.0)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

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

/// Sends the commit `git_ref` of the repository at `root` (and the history
/// behind it) to piperd as a git bundle: (the `bundle:DIGEST` repository to
/// build, the commit). For an agent that cannot read this machine's paths.
async fn send_commit(
    client: &Client,
    root: &std::path::Path,
    git_ref: &str,
) -> Result<(String, String)> {
    let git_error =
        |args: &str, e: String| Error::io(format!("git {args}"), std::io::Error::other(e));
    let spec = format!("{git_ref}^{{commit}}");
    let sha = crate::cli::git::run(
        root,
        &["rev-parse", "--verify", "--end-of-options", &spec],
        &[],
    )
    .map_err(|e| git_error("rev-parse", e))?;
    // A bundle lists refs: a full ref name (a working tree's private ref)
    // goes as it is and stays the build's ref; anything else (HEAD, a
    // branch, a commit) as a private ref for the time it takes, and the
    // build names the commit.
    let (bundle, built_ref) = if git_ref.starts_with("refs/") {
        let bundle = crate::cli::git::bytes(root, &["bundle", "create", "--quiet", "-", git_ref]);
        (bundle, git_ref.to_string())
    } else {
        let temporary = format!("refs/piper/send/{sha}");
        crate::cli::git::run(root, &["update-ref", &temporary, &sha], &[])
            .map_err(|e| git_error("update-ref", e))?;
        let bundle =
            crate::cli::git::bytes(root, &["bundle", "create", "--quiet", "-", &temporary]);
        let _ = crate::cli::git::run(root, &["update-ref", "-d", &temporary], &[]);
        (bundle, sha.clone())
    };
    let bundle = bundle.map_err(|e| git_error("bundle create", e))?;
    eprintln!(
        "sending commit {} to piperd as a git bundle ({} KiB)",
        &sha[..sha.len().min(12)],
        bundle.len().div_ceil(1024)
    );
    let (stored, _) = client
        .typed::<crate::agent::api::BundleStored>(
            client
                .http
                .post(client.url("/bundles"))
                .header("content-type", "application/octet-stream")
                .body(bundle),
        )
        .await?;
    Ok((stored.repo, built_ref))
}

/// The project's repository, for a submit without `--repo`: refused at
/// once outside git (the agent could only fail). With `--working-tree`,
/// its ref is a commit of the working tree; else a warning says when the
/// work tree has changes the agent will not see. Returns (its root, ref).
fn local_repository(git_ref: &str, working_tree: bool) -> Result<(std::path::PathBuf, String)> {
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    let root = crate::project::Project::locate(&cwd, None)?.root;
    let git = |args: &[&str]| crate::cli::git::run(&root, args, &[]).ok();
    if git(&["rev-parse", "--is-inside-work-tree"]).as_deref() != Some("true") {
        return Err(Error::NotARepository { dir: root });
    }
    let repo = root.clone();
    if working_tree {
        return match crate::cli::working_tree::snapshot(&root)? {
            Some(snapshot) => {
                eprintln!(
                    "submitting the working tree: {} file(s) differ from HEAD, as commit {} ({})",
                    snapshot.changed,
                    &snapshot.sha[..12],
                    snapshot.git_ref
                );
                Ok((repo, snapshot.git_ref))
            }
            None => {
                eprintln!("the working tree matches HEAD: submitting HEAD");
                Ok((repo, "HEAD".into()))
            }
        };
    }
    if git_ref == "HEAD"
        && let Some(changes) = git(&["status", "--porcelain", "--untracked-files=no"])
        && !changes.is_empty()
    {
        let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "HEAD".into());
        let files = changes.lines().count();
        eprintln!(
            "warning: {files} changed file(s) are not committed: the agent builds HEAD ({head}), without them (--working-tree builds them)"
        );
    }
    Ok((repo, git_ref.to_string()))
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

/// A stored string as it may be printed: control characters (an escape
/// sequence in a step name, a newline in a message) are shown escaped, so
/// what the agent stored cannot repaint or forge the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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

/// One read of a log: its bytes, the next offset, and the build's status.
async fn read_log(
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
async fn follow_build(client: &Client, build: i64, step: Option<&str>) -> Result<i32> {
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
fn stopped_following(build: i64) -> i32 {
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
async fn follow_rendered(client: &Client, build: i64, follow: bool) -> Result<i32> {
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
async fn follow_one(
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
async fn chained_builds(
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
async fn chained_now(client: &Client, parent: i64) -> Result<Vec<i64>> {
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
fn exit_code_of(build: &BuildDetail) -> i32 {
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

/// An HTTP client for piperd at `base`; TLS is rustls with ring (Cargo.toml
/// says why not aws-lc), installed as the process's default provider
/// unless the process already has one.
///
/// Plain `http://` reads no CA certificates: a container without them (or
/// a wrong `SSL_CERT_FILE`) made building any client fail, and loading
/// them was ~150 files per command. Such a client follows redirects only
/// to `http://`; one to `https://` is reported as piperd's answer.
pub fn http_client(base: &str) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder();
    let builder = if base.starts_with("http://") {
        builder
            .tls_certs_only([])
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() == "http" && attempt.previous().len() < 10 {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
    } else {
        builder
    };
    builder.build().map_err(|e| {
        remote_error(format!(
            "cannot set up HTTPS for {base}: {}\n\
             hint: install the system's CA certificates, or point SSL_CERT_FILE or SSL_CERT_DIR at them",
            error_chain(&e)
        ))
    })
}

/// An error and its sources, `: `-separated (reqwest's own text for a
/// builder error is only "builder error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
