//! The UI's pages as maud templates. Live parts are marked with `data-*`
//! attributes that `assets/app.js` reads: `data-live` regions are
//! re-rendered from this same page when `/api/v1/updates` names a build
//! they show, `data-since` counts running time, `data-action` buttons call
//! the API.

use maud::{DOCTYPE, Markup, html};

use super::view::Excerpt;
use super::view::{self, AgentView, BuildList, BuildView, EventsView, Filter, StepView};

/// What the frame around every page needs.
pub struct Chrome {
    pub logged_in: bool,
    pub agent: String,
}

impl Chrome {
    pub fn anonymous() -> Chrome {
        Chrome {
            logged_in: false,
            agent: String::new(),
        }
    }
}

const STATUSES: &[&str] = &["queued", "running", "success", "failed", "canceled", "lost"];

fn layout(chrome: &Chrome, title: &str, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Piper" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    nav aria-label="Main" {
                        a class="brand" href="/" { "Piper" }
                        @for (href, label) in [("/", "Builds"), ("/search", "Search"), ("/agents", "Agents"), ("/submit", "Submit")] {
                            @if current == label {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                        span class="spacer" {}
                        @if chrome.logged_in {
                            button type="button" class="link" data-action="logout" { "Log out" }
                        } @else {
                            a href="/login" { "Log in" }
                        }
                    }
                }
                div id="notice" role="alert" aria-live="assertive" class="notice" hidden {}
                main id="main" tabindex="-1" { (body) }
                footer class="foot" { "piperd " (env!("CARGO_PKG_VERSION")) @if !chrome.agent.is_empty() { " · agent " (chrome.agent) } }
            }
        }
    }
}

fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge status-{status}")) { (status.replace('_', " ")) } }
}

fn time(ms: i64) -> Markup {
    let (text, iso) = view::timestamp(ms);
    html! { time datetime=(iso) { (text) } }
}

/// A duration; while running, `data-since` lets the script count on.
fn running_time(started: Option<i64>, finished: Option<i64>, now: i64) -> Markup {
    match (started, finished) {
        (Some(start), Some(end)) => html! { (view::duration(end - start)) },
        (Some(start), None) => {
            html! { span data-since=(start) { (view::duration(now - start)) } }
        }
        _ => html! { "–" },
    }
}

/// A ref that is a full commit id (a retrigger's) is shown short.
fn short_ref(git_ref: &str) -> String {
    if git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        git_ref[..10].to_string()
    } else {
        git_ref.to_string()
    }
}

fn short_sha(sha: &Option<String>) -> String {
    sha.as_deref()
        .map(|s| s.chars().take(10).collect())
        .unwrap_or_default()
}

pub fn builds(chrome: &Chrome, filter: &Filter, list: &BuildList) -> Markup {
    let now = view::now_ms();
    let body = html! {
        h1 { "Builds" }
        form class="filters" method="get" action="/" aria-label="Filter builds" {
            label { "Repository" input name="repo" value=(filter.repo) placeholder="any"; }
            label { "Pipeline" input name="pipeline" value=(filter.pipeline) placeholder="any"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for status in STATUSES {
                        option value=(status) selected[filter.status == *status] { (status) }
                    }
                }
            }
            label { "Agent" input name="agent" value=(filter.agent) placeholder="any"; }
            button type="submit" { "Filter" }
        }
        div id="builds" data-live="all" {
            @if list.builds.is_empty() {
                p class="empty" { "No builds" @if !filter.query().is_empty() { " match this filter" } "." }
            } @else {
                div class="table-wrap" {
                    table class="builds" {
                        caption class="sr-only" { "Builds, newest first" }
                        thead { tr {
                            th scope="col" { "Build" } th scope="col" { "Status" } th scope="col" { "Pipeline" }
                            th scope="col" { "Repository" } th scope="col" { "Commit" } th scope="col" { "Progress" }
                            th scope="col" { "Duration" } th scope="col" { "Requested by" } th scope="col" { "Agent" } th scope="col" { "Chain" }
                        } }
                        tbody {
                            @for build in &list.builds { (build_row(build, now)) }
                        }
                    }
                }
            }
            @if let Some(before) = list.next_before {
                @let query = filter.query();
                p { a rel="next" href=(format!("/?{}{}before={before}", query, if query.is_empty() { "" } else { "&" })) { "Older builds →" } }
            }
        }
    };
    layout(chrome, "Builds", "Builds", body)
}

fn build_row(build: &BuildView, now: i64) -> Markup {
    html! {
        tr data-build=(build.id) {
            th scope="row" { a href=(format!("/builds/{}", build.id)) { "#" (build.id) } }
            td { (badge(build.status.as_str())) @if let Some(w) = &build.waiting_for { " " span class="muted" { "waiting for " (w) } } }
            td { (build.pipeline) }
            td class="repo" title=(build.repo) { (build.repo) }
            td { code { (short_ref(&build.git_ref)) } @if build.sha.is_some() { " " code class="muted" { (short_sha(&build.sha)) } }
                 @if let Some(v) = &build.version { " " span class="muted" { (v) } } }
            td class="nowrap" { (progress(build)) }
            td { (running_time(build.started_at, build.finished_at, now)) }
            td { (build.requested_by) }
            td class="nowrap" { (build.agent.as_deref().unwrap_or("–")) }
            td class="nowrap" { @if let Some(parent) = build.parent_id { a href=(format!("/builds/{parent}")) { "↖ #" (parent) } } }
        }
    }
}

fn progress(build: &BuildView) -> Markup {
    let p = build.progress;
    html! {
        @if p.total > 0 {
            progress max=(p.total) value=(p.done) aria-label=(format!("{} of {} steps done", p.done, p.total)) {}
            " " span class="count" { (p.done) "/" (p.total) }
        } @else { span class="muted" { "–" } }
    }
}

pub fn build(
    chrome: &Chrome,
    build: &BuildView,
    events: &EventsView,
    triggered: &[BuildView],
    excerpt: Option<&Excerpt>,
) -> Markup {
    let now = view::now_ms();
    let watch: Vec<String> = std::iter::once(build.id)
        .chain(triggered.iter().map(|b| b.id))
        .map(|id| id.to_string())
        .collect();
    let body = html! {
        div id="build" data-live=(watch.join(" ")) data-build=(build.id) data-final=(build.is_final()) {
            div class="title-row" {
                h1 { "Build #" (build.id) " · " (build.pipeline) " " (badge(build.status.as_str())) }
                @if chrome.logged_in {
                    div class="actions" {
                        @if !build.is_final() {
                            button type="button" class="danger" data-action="cancel" data-build=(build.id) { "Cancel" }
                        }
                        button type="button" data-action="retrigger" data-build=(build.id) { "Retrigger" }
                    }
                } @else {
                    p class="muted" { a href=(format!("/login?next=/builds/{}", build.id)) { "Log in" } " to retrigger or cancel." }
                }
            }
            @if let Some(error) = &build.error {
                div class="failure" { h2 { "Error" } pre class="log" { (error) } }
            }
            @if let Some(excerpt) = excerpt {
                div class="failure" {
                    h2 { "First failure: " a href=(format!("/builds/{}/steps/{}", build.id, super::view::urlencode(&excerpt.step))) { (excerpt.step) } }
                    pre class="log" { (super::ansi::to_html(&excerpt.text)) }
                }
            }
            dl class="meta" {
                dt { "Repository" } dd { (build.repo) " " span class="muted" { "(its build " (build.number) ")" } }
                dt { "Pipeline" } dd { (build.pipeline) " · " a id="history-link" href=(format!("/history?repo={}&pipeline={}", super::view::urlencode(&build.repo), super::view::urlencode(&build.pipeline))) { "its history" } }
                dt { "Ref" } dd { code { (build.git_ref) } }
                dt { "Commit" } dd { code { (build.sha.as_deref().unwrap_or("not resolved yet")) } }
                @if let Some(v) = &build.version { dt { "Version" } dd { (v) } }
                dt { "Requested by" } dd { (build.requested_by) }
                dt { "Requested" } dd { (time(build.requested_at)) }
                @if let Some(t) = build.started_at { dt { "Started" } dd { (time(t)) } }
                dt { "Duration" } dd { (running_time(build.started_at, build.finished_at, now)) }
                dt { "Agent" } dd { (build.agent.as_deref().unwrap_or("–")) }
                dt { "Progress" } dd { (progress(build)) }
                @if let Some(w) = &build.waiting_for { dt { "Waiting for" } dd { "an agent with " (w) } }
                @if let Some(parent) = build.parent_id { dt { "Triggered by" } dd { a href=(format!("/builds/{parent}")) { "build #" (parent) } } }
                @if !triggered.is_empty() {
                    dt { "Triggered" } dd {
                        @for (i, child) in triggered.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(format!("/builds/{}", child.id)) { "#" (child.id) " " (child.pipeline) } " " (badge(child.status.as_str()))
                        }
                    }
                }
                @if !build.env.is_empty() {
                    dt { "Environment" } dd { @for (k, v) in &build.env { code { (k) "=" (v) } " " } }
                }
            }
            @if !events.planned.is_empty() {
                h2 { "Graph" }
                @if events.planned.len() <= super::graph::MAX_NODES {
                    div class="graph-wrap" { (super::graph::svg(build.id, &events.planned, &build.steps)) }
                } @else {
                    p class="muted" { "The graph of " (events.planned.len()) " steps is not drawn; see the steps below." }
                }
            }
            h2 { "Steps" }
            @if build.steps.is_empty() {
                p class="empty" { @if build.is_final() { "No steps ran." } @else { "Steps appear once the agent has read the pipeline." } }
            } @else {
                div class="table-wrap" {
                    table class="steps" {
                        thead { tr { th scope="col" { "Step" } th scope="col" { "Status" } th scope="col" { "Duration" } th scope="col" { "Why it ran" } } }
                        tbody {
                            @for step in &build.steps { (step_row(build.id, step, events, now)) }
                        }
                    }
                }
            }
        }
    };
    layout(chrome, &format!("Build #{}", build.id), "", body)
}

fn step_row(build: i64, step: &StepView, events: &EventsView, now: i64) -> Markup {
    html! {
        tr data-step=(step.name) {
            th scope="row" { a href=(format!("/builds/{build}/steps/{}", super::view::urlencode(&step.name))) { (step.name) } }
            td { (badge(&step.status))
                @if let Some(code) = step.exit_code { @if code != 0 { " " span class="muted" { "exit " (code) } } }
                @if let Some(n) = events.attempts.get(&step.name) { @if *n > 1 { " " span class="muted" { (n) " attempts" } } } }
            td { (running_time(step.started_at, step.finished_at, now)) }
            td {
                @if let Some(reasons) = events.reasons.get(&step.name) {
                    ul class="reasons" { @for r in reasons { li { (r) } } }
                } @else if step.status == "up_to_date" { span class="muted" { "nothing changed" } }
                @if let Some(message) = &step.message { div class="muted" { (message) } }
                @if let Some(warnings) = events.warnings.get(&step.name) {
                    @for w in warnings { div class="warning" { "warning: " (w) } }
                }
            }
        }
    }
}

pub fn step(chrome: &Chrome, build: &BuildView, step: &StepView) -> Markup {
    let now = view::now_ms();
    let raw = format!(
        "/api/v1/builds/{}/log?step={}&download=true",
        build.id,
        super::view::urlencode(&step.name)
    );
    let body = html! {
        p class="crumbs" { a href=(format!("/builds/{}", build.id)) { "← Build #" (build.id) " · " (build.pipeline) } }
        div id="step-head" data-live=(build.id) {
            h1 { (step.name) " " (badge(&step.status)) }
            p class="muted" { "Duration " (running_time(step.started_at, step.finished_at, now))
                @if let Some(code) = step.exit_code { " · exit code " (code) }
                @if let Some(m) = &step.message { " · " (m) } }
        }
        // Kept in view while the log scrolls (position: sticky).
        div class="log-controls" {
            div class="toolbar" role="toolbar" aria-label="Log" {
                button type="button" id="follow" aria-pressed=(if step.is_final() { "false" } else { "true" }) { "Follow" }
                button type="button" id="top" data-log-move disabled { "Top" }
                button type="button" id="earlier" data-log-move disabled { "Load earlier" }
                button type="button" id="later" data-log-move disabled { "Load later" }
                button type="button" id="bottom" data-log-move { "Bottom" }
                button type="button" id="first-error" data-log-move { "Jump to first error" }
                a href=(raw) download { "Download raw" }
            }
            div class="toolbar" {
                form id="goto" class="inline" {
                    select name="kind" aria-label="Go to a line or a byte offset" {
                        option value="line" { "Line" }
                        option value="offset" { "Byte offset" }
                    }
                    input name="where" type="number" min="0" inputmode="numeric" required aria-label="Line or byte offset to go to";
                    button type="submit" data-log-move { "Go" }
                }
                form id="find" class="inline" role="search" {
                    input name="text" type="search" required placeholder="Find in the whole log" aria-label="Text to find in the whole log";
                    button type="submit" data-log-move { "Find next" }
                }
            }
            p id="log-position" class="muted" {}
            p id="log-status" class="muted" aria-live="polite" {}
        }
        pre id="log" class="log" tabindex="0" aria-label=(format!("Log of {}", step.name))
            data-build=(build.id) data-step=(step.name) data-final=(step.is_final() || build.is_final()) {}
        noscript { p { "The log needs JavaScript to stream; " a href=(raw) { "download it" } " instead." } }
        // Deferred scripts run in order: after app.js, whose helpers it uses.
        script src="/assets/log.js" defer {}
    };
    layout(
        chrome,
        &format!("{} · build #{}", step.name, build.id),
        "",
        body,
    )
}

pub fn agents(chrome: &Chrome, agents: &[AgentView], now: i64) -> Markup {
    let body = html! {
        h1 { "Agents" }
        @if agents.is_empty() { p class="empty" { "No agents." } } @else {
            div class="table-wrap" {
                table class="agents" {
                    thead { tr { th scope="col" { "Agent" } th scope="col" { "State" } th scope="col" { "Last heartbeat" }
                        th scope="col" { "Running" } th scope="col" { "Labels" } th scope="col" { "Address" } th scope="col" { "Version" } th scope="col" { "Up since" } } }
                    tbody {
                        @for agent in agents {
                            tr {
                                th scope="row" { (agent.name) }
                                td {
                                    @match agent.status.as_str() {
                                        "online" => span class="badge status-success" { "online" },
                                        "draining" => span class="badge status-running" { "draining" },
                                        _ => span class="badge status-lost" { "offline" },
                                    }
                                    @if agent.leader { " " span class="badge" title="does the cluster's rescue and schedules" { "leader" } }
                                }
                                td { (view::age(now - agent.last_seen)) }
                                td { a href=(format!("/?agent={}&status=running", super::view::urlencode(&agent.name))) { (agent.running) " of " (agent.workers) } }
                                td { @for (k, v) in &agent.labels { code class="label" { (k) "=" (v) } " " } }
                                td { code { (agent.address) } }
                                td { (agent.version) }
                                td { (time(agent.started_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(chrome, "Agents", "Agents", body)
}

/// `/history`: each step over a pipeline's last builds — a chart of how
/// long each run took (a bar per build, coloured by how it ended), p50,
/// p95, trend and failures — then the flaky steps.
pub fn history(chrome: &Chrome, history: &crate::agent::api::History) -> Markup {
    let title = match &history.pipeline {
        Some(p) => format!("History of {p}"),
        None => "History".to_string(),
    };
    let body = html! {
        h1 { (title) }
        p class="muted" { (history.repo) " · the last " (history.builds) " finished builds" }
        @if history.steps.is_empty() { p class="empty" { "No finished builds yet." } } @else {
            div class="table-wrap" {
                table class="history" {
                    thead { tr { th scope="col" { "Step" } th scope="col" { "Runs (oldest first)" } th scope="col" { "p50" }
                        th scope="col" { "p95" } th scope="col" { "Trend" } th scope="col" { "Failures" } } }
                    tbody {
                        @for step in &history.steps {
                            tr data-step=(step.step) {
                                th scope="row" { (step.step) }
                                td { (durations_chart(step)) }
                                td { (ms_text(step.p50_ms)) }
                                td { (ms_text(step.p95_ms)) }
                                td { @if let Some(t) = step.trend { (format!("{t:.2}×")) } @else { "–" } }
                                td { (step.failures) " (" (format!("{:.0}", step.failure_rate * 100.0)) "%)" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Flaky steps" }
        @if history.flaky.is_empty() { p class="empty" id="no-flaky" { "None: no step failed and passed on the same commit." } } @else {
            ul id="flaky" {
                @for flaky in &history.flaky {
                    li {
                        strong { (flaky.step) } " on " code { (&flaky.sha[..flaky.sha.len().min(10)]) } ": failed in "
                        @for (i, id) in flaky.failed.iter().enumerate() { @if i > 0 { ", " } a href=(format!("/builds/{id}")) { "build " (id) } }
                        ", passed in "
                        @for (i, id) in flaky.passed.iter().enumerate() { @if i > 0 { ", " } a href=(format!("/builds/{id}")) { "build " (id) } }
                    }
                }
            }
        }
    };
    layout(chrome, "History", "", body)
}

fn ms_text(ms: Option<u64>) -> String {
    ms.map_or("–".into(), |ms| {
        crate::duration::format(std::time::Duration::from_millis(ms))
    })
}

/// A bar per run, as tall as it took against the longest, coloured by
/// how it ended; drawn here as SVG (no script), each bar titled.
fn durations_chart(step: &crate::agent::api::StepHistory) -> Markup {
    const W: usize = 6;
    const H: u64 = 32;
    let longest = step
        .runs
        .iter()
        .filter_map(|r| r.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    let width = (step.runs.len() * W).max(W);
    html! {
        svg class="durations" width=(width) height=(H) viewBox=(format!("0 0 {width} {H}")) role="img"
            aria-label=(format!("{}: how long each of {} runs took", step.step, step.runs.len())) {
            @for (i, run) in step.runs.iter().enumerate() {
                @let h = run.duration_ms.map_or(2, |ms| (ms * (H - 2) / longest).max(2));
                rect class=(format!("bar status-{}", run.status)) x=(i * W) y=(H - h) width=(W - 1) height=(h) {
                    title { "#" (run.number) " " (run.status) @if let Some(ms) = run.duration_ms { " " (ms_text(Some(ms))) } }
                }
            }
        }
    }
}

/// What the search page was asked: the form's values.
#[derive(Default)]
pub struct SearchForm {
    pub q: String,
    pub pipeline: String,
    pub step: String,
    pub status: String,
}

/// `/search`: the form, then the lines found (each linked to its place in
/// its step's log, the text marked), or why there are none.
pub fn search(
    chrome: &Chrome,
    form: &SearchForm,
    found: Option<Result<&crate::agent::api::SearchResults, String>>,
) -> Markup {
    let body = html! {
        h1 { "Search logs" }
        form id="search" class="filters" method="get" action="/search" role="search" {
            label { "Text " input name="q" type="search" value=(form.q) required minlength="3"
                placeholder="E0308, src/main.rs, undefined reference" autofocus; }
            label { "Pipeline " input name="pipeline" value=(form.pipeline); }
            label { "Step " input name="step" value=(form.step); }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in STATUSES {
                        option value=(status) selected[form.status == *status] { (status) }
                    }
                }
            }
            button type="submit" { "Search" }
        }
        @match found {
            None => p class="muted" { "Every finished build's log is searchable: a text of 3 characters or more, case aside." },
            Some(Err(why)) => p class="empty" role="status" { (why) },
            Some(Ok(found)) if found.hits.is_empty() => p class="empty" role="status" { "No stored log holds “" (form.q) "”." },
            Some(Ok(found)) => {
                p class="muted" role="status" {
                    (found.hits.len()) " line" @if found.hits.len() != 1 { "s" }
                    @if found.truncated { ", and more: narrow the search" }
                }
                ol class="hits" {
                    @for hit in &found.hits {
                        li class="hit" {
                            div class="hit-where" {
                                a href=(format!("/builds/{}", hit.build)) { "#" (hit.number) " " (hit.pipeline) } " "
                                (badge(&hit.status)) " "
                                a class="hit-line" href=(hit.url) { (hit.step) ":" (hit.line) }
                            }
                            pre class="hit-text" { (marked(&hit.text, &hit.matches)) }
                        }
                    }
                }
            }
        }
    };
    layout(chrome, "Search", "Search", body)
}

/// `text` with its `[start, end)` character ranges in `mark`.
fn marked(text: &str, ranges: &[[usize; 2]]) -> Markup {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    html! {
        @for [start, end] in ranges {
            @let (start, end) = ((*start).min(chars.len()), (*end).min(chars.len()));
            (chars[at.min(start)..start].iter().collect::<String>())
            mark { (chars[start..end].iter().collect::<String>()) }
            ({ at = end; "" })
        }
        (chars[at.min(chars.len())..].iter().collect::<String>())
    }
}

pub fn submit(chrome: &Chrome, repo: &str, git_ref: &str, pipeline: &str) -> Markup {
    let body = html! {
        h1 { "Submit a build" }
        form id="submit" class="stack" {
            label for="repo" { "Repository (path or git URL)" }
            input id="repo" name="repo" required value=(repo) autocomplete="off" spellcheck="false";
            label for="ref" { "Ref (branch, tag or commit)" }
            input id="ref" name="ref" required value=(git_ref) spellcheck="false";
            label for="pipeline" { "Pipeline" }
            input id="pipeline" name="pipeline" required value=(pipeline) spellcheck="false";
            label for="env" { "Environment (one NAME=value per line)" }
            textarea id="env" name="env" rows="4" spellcheck="false" {}
            button type="submit" { "Submit" }
        }
    };
    layout(chrome, "Submit", "Submit", body)
}

pub fn login(chrome: &Chrome, next: &str) -> Markup {
    let body = html! {
        h1 { "Log in" }
        p { "Log in with an API token of this agent (its data directory's " code { "token" } " file, or one from " code { "piperd token create" } ")." }
        form id="login" class="stack" data-next=(next) {
            label for="token" { "Token" }
            input id="token" name="token" type="password" required autocomplete="current-password";
            button type="submit" { "Log in" }
        }
    };
    layout(chrome, "Log in", "", body)
}

pub fn error(chrome: &Chrome, status: u16, message: &str) -> Markup {
    let body = html! {
        h1 { "Error " (status) }
        p { (message) }
        p { a href="/" { "Back to the builds" } }
    };
    layout(chrome, "Error", "", body)
}
