//! Git hosts' webhooks: the push (and tag push) payloads of GitHub, GitLab
//! and Gitea/Forgejo, as their documentation defines them, verified the
//! way each host signs them with a per-repository secret from piperd.toml
//! (`[[webhooks]]`). The handlers in `server/webhooks.rs` turn a verified push into
//! a queued build; no API token is involved.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//!   `X-GitHub-Event`, `X-GitHub-Delivery`.
//! - Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature`
//!   (hex HMAC-SHA256 of the body), `X-Gitea-Event`, `X-Gitea-Delivery`.
//! - GitLab: `X-Gitlab-Token` (the secret itself), `X-Gitlab-Event`,
//!   `X-Gitlab-Event-UUID`.
//!
//! Every comparison is constant-time (`hmac`'s `verify_slice`, `subtle`).

use std::path::PathBuf;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Which host sent a delivery: one endpoint each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    GitHub,
    GitLab,
    /// Gitea, and Forgejo (which sends Gitea's headers and its own).
    Gitea,
}

impl Host {
    /// As people write it.
    pub fn title(self) -> &'static str {
        match self {
            Host::GitHub => "GitHub",
            Host::GitLab => "GitLab",
            Host::Gitea => "Gitea",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Host::GitHub => "github",
            Host::GitLab => "gitlab",
            Host::Gitea => "gitea",
        }
    }

    /// The header naming the event, and the one with the delivery's id
    /// (first found wins).
    fn event_headers(self) -> &'static [&'static str] {
        match self {
            Host::GitHub => &["x-github-event"],
            Host::GitLab => &["x-gitlab-event"],
            Host::Gitea => &["x-gitea-event", "x-forgejo-event"],
        }
    }

    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Host::GitHub => &["x-github-delivery"],
            Host::GitLab => &["x-gitlab-event-uuid", "idempotency-key"],
            Host::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
        }
    }

    fn signature_headers(self) -> &'static [&'static str] {
        match self {
            Host::GitHub => &["x-hub-signature-256"],
            Host::GitLab => &["x-gitlab-token"],
            Host::Gitea => &["x-gitea-signature", "x-forgejo-signature"],
        }
    }
}

/// One `[[webhooks]]` table of piperd.toml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    /// The repository as the host names it in its payloads: its clone, web
    /// or SSH URL (`.git` and a trailing `/` do not matter).
    pub url: String,
    /// The secret set on the host's webhook page...
    pub secret: Option<String>,
    /// ... or a file holding it (kept out of piperd.toml).
    pub secret_file: Option<PathBuf>,
    /// What the agent clones [default: `url`].
    pub clone: Option<String>,
    /// The pipeline a push runs, unless the hook's URL names one with
    /// `?pipeline=` [default: ci].
    pub pipeline: Option<String>,
}

/// The configured hooks, secrets read.
#[derive(Default)]
pub struct Hooks {
    entries: Vec<Hook>,
}

struct Hook {
    key: String,
    secret: Vec<u8>,
    clone: String,
    pipeline: Option<String>,
}

impl Hooks {
    /// Reads the secrets; Err names the hook and what is wrong with it.
    pub fn new(settings: &[HookSettings]) -> Result<Hooks, String> {
        let mut entries = Vec::new();
        for (i, hook) in settings.iter().enumerate() {
            let at = format!("webhooks[{}] ({})", i + 1, hook.url);
            let secret = match (&hook.secret, &hook.secret_file) {
                (Some(secret), None) => secret.clone(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| format!("{at}: cannot read secret_file {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
                _ => {
                    return Err(format!(
                        "{at}: set exactly one of `secret` and `secret_file`"
                    ));
                }
            };
            if secret.len() < 16 {
                return Err(format!(
                    "{at}: the secret is shorter than 16 characters; use a long random one (`openssl rand -hex 32`)"
                ));
            }
            entries.push(Hook {
                key: url_key(&hook.url),
                secret: secret.into_bytes(),
                clone: hook.clone.clone().unwrap_or_else(|| hook.url.clone()),
                pipeline: hook.pipeline.clone(),
            });
        }
        Ok(Hooks { entries })
    }

    fn find(&self, urls: &[String]) -> Option<&Hook> {
        let keys: Vec<String> = urls.iter().map(|u| url_key(u)).collect();
        self.entries.iter().find(|h| keys.contains(&h.key))
    }
}

/// A URL as compared: case, a trailing `/` and `.git` do not matter.
fn url_key(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').to_lowercase();
    url.strip_suffix(".git").unwrap_or(&url).to_string()
}

/// Why a delivery is refused: the HTTP status and the message.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub field: Option<String>,
    pub message: String,
}

fn refuse(status: u16, field: Option<&str>, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        field: field.map(String::from),
        message: message.into(),
    }
}

/// What a verified delivery asks for.
#[derive(Debug)]
pub enum Delivery {
    /// A push of a branch or tag: build `sha`.
    Push(Push),
    /// A delivery that builds nothing (a ping, another event, a deleted
    /// branch): why.
    Ignored(String),
}

#[derive(Debug)]
pub struct Push {
    /// What to clone.
    pub repo: String,
    /// `refs/heads/main`, `refs/tags/v1.2`.
    pub git_ref: String,
    pub sha: String,
    /// Who pushed, as the host names them.
    pub pusher: Option<String>,
    /// `[[webhooks]]`'s pipeline, if it names one.
    pub pipeline: Option<String>,
}

/// The first of `names` present with a value.
fn header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// Verifies and reads one delivery from `host`.
pub fn receive(
    hooks: &Hooks,
    host: Host,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery, Refusal> {
    let Some(event) = header(headers, host.event_headers()) else {
        let name = host.event_headers()[0];
        return Err(refuse(
            400,
            Some(name),
            format!("missing the `{name}` header"),
        ));
    };
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| refuse(400, Some("body"), format!("malformed JSON: {e}")))?;
    let urls = repository_urls(host, &payload);
    let Some(first) = urls.first() else {
        return Err(refuse(
            400,
            Some("repository"),
            "the payload names no repository URL",
        ));
    };
    // Without a configured hook there is no secret to check against.
    let Some(hook) = hooks.find(&urls) else {
        return Err(refuse(
            403,
            Some("repository"),
            format!("repository `{first}` has no `[[webhooks]]` entry in this agent's piperd.toml"),
        ));
    };
    verify(host, headers, body, &hook.secret)?;
    // GitHub and Gitea send a delivery id with every delivery: one
    // without is not theirs as sent (a replayed body with the header cut).
    if host != Host::GitLab && header(headers, host.delivery_headers()).is_none() {
        let name = host.delivery_headers()[0];
        return Err(refuse(
            400,
            Some(name),
            format!(
                "missing the `{name}` header, which {} sends with every delivery",
                host.title()
            ),
        ));
    }
    if let Some(ignored) = ignored_event(host, &event, &payload) {
        return Ok(Delivery::Ignored(ignored));
    }
    Ok(Delivery::Push(read_push(host, &payload, hook)?))
}

fn verify(host: Host, headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), Refusal> {
    let names = host.signature_headers();
    let Some(given) = header(headers, names) else {
        return Err(refuse(
            401,
            Some(names[0]),
            format!(
                "missing the `{}` header: set the webhook's secret on the host",
                names[0]
            ),
        ));
    };
    let wrong = || {
        refuse(
            401,
            Some(names[0]),
            "the signature does not match this repository's secret",
        )
    };
    if host == Host::GitLab {
        // GitLab sends the secret itself.
        return match bool::from(given.as_bytes().ct_eq(secret)) {
            true => Ok(()),
            false => Err(wrong()),
        };
    }
    let hex_digest = match host {
        Host::GitHub => given.strip_prefix("sha256=").ok_or_else(wrong)?,
        _ => given.as_str(),
    };
    let digest = hex::decode(hex_digest).map_err(|_| wrong())?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&digest).map_err(|_| wrong())
}

/// The repository's URLs as the payload gives them.
fn repository_urls(host: Host, payload: &Value) -> Vec<String> {
    let fields: &[(&str, &str)] = match host {
        Host::GitHub | Host::Gitea => &[
            ("repository", "clone_url"),
            ("repository", "html_url"),
            ("repository", "ssh_url"),
            ("repository", "git_url"),
        ],
        Host::GitLab => &[
            ("project", "git_http_url"),
            ("project", "web_url"),
            ("project", "git_ssh_url"),
            ("repository", "git_http_url"),
            ("repository", "homepage"),
            ("repository", "git_ssh_url"),
        ],
    };
    fields
        .iter()
        .filter_map(|(object, field)| payload[object][field].as_str())
        .filter(|u| !u.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Why an event builds nothing, or None for a push to build.
fn ignored_event(host: Host, event: &str, payload: &Value) -> Option<String> {
    let push = match host {
        Host::GitHub | Host::Gitea => event == "push",
        Host::GitLab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if !push {
        return Some(format!("`{event}` events build nothing (only pushes do)"));
    }
    let zero = |sha: &str| !sha.is_empty() && sha.bytes().all(|b| b == b'0');
    let after = payload["after"].as_str().unwrap_or_default();
    if payload["deleted"].as_bool() == Some(true) || zero(after) {
        return Some("a deleted branch or tag builds nothing".into());
    }
    None
}

fn read_push(host: Host, payload: &Value, hook: &Hook) -> Result<Push, Refusal> {
    let text = |field: &str| payload[field].as_str().filter(|s| !s.trim().is_empty());
    let git_ref = text("ref").ok_or_else(|| refuse(400, Some("ref"), "the push names no `ref`"))?;
    // GitLab's `checkout_sha` is the commit a tag points to.
    let sha = match host {
        Host::GitLab => text("checkout_sha").or_else(|| text("after")),
        _ => text("after"),
    }
    .ok_or_else(|| refuse(400, Some("after"), "the push names no commit (`after`)"))?;
    if !sha.bytes().all(|b| b.is_ascii_hexdigit()) || !(7..=64).contains(&sha.len()) {
        return Err(refuse(
            400,
            Some("after"),
            format!("`{sha}` is not a commit id"),
        ));
    }
    let pusher = match host {
        Host::GitHub => payload["pusher"]["name"].as_str(),
        Host::Gitea => payload["pusher"]["login"]
            .as_str()
            .or(payload["pusher"]["username"].as_str()),
        Host::GitLab => payload["user_username"]
            .as_str()
            .or(payload["user_name"].as_str()),
    };
    Ok(Push {
        repo: hook.clone.clone(),
        git_ref: git_ref.to_string(),
        sha: sha.to_string(),
        pusher: pusher.filter(|p| !p.trim().is_empty()).map(String::from),
        pipeline: hook.pipeline.clone(),
    })
}

/// The variables a pushed build gets: the ref, and the branch or tag.
pub fn push_env(git_ref: &str) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("PIPER_GIT_REF".into(), git_ref.to_string());
    if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        env.insert("PIPER_BRANCH".into(), branch.to_string());
    } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        env.insert("PIPER_TAG".into(), tag.to_string());
    }
    env
}
