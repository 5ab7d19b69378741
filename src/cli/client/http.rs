//! The HTTP side of the remote commands: where the agent is (flag, config,
//! the local agent's files), the client (rustls, the token), and the
//! API's errors as the CLI's.

use crate::agent::api::ErrorBody;

use crate::cli::args::Connection;
use crate::cli::error::{Error, Result};

pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) token: Option<String>,
}

pub(super) fn remote_error(message: impl Into<String>) -> Error {
    Error::Remote {
        message: message.into(),
    }
}

/// A file piperd keeps in its data directory (same machine as the agent),
/// trimmed; `None` when it is not there or not readable.
pub(super) fn agent_file(data: &std::path::Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(data.join(name)).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

impl Client {
    /// Flag, then environment, then `config.toml` (`PIPER_CONFIG` names
    /// another file), then what piperd wrote in its data directory on this
    /// machine, then the defaults.
    pub(super) fn new(args: &Connection) -> Result<Client> {
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

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Whether piperd is on this machine: its URL's host is a loopback
    /// address or `localhost` (it can then read this machine's paths).
    pub(super) fn is_on_this_machine(&self) -> bool {
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

    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
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
    pub(super) async fn typed<T: serde::de::DeserializeOwned>(
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

    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        Ok(self.typed(request).await?.0)
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
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
            // reqwest's own text for a builder error is only "builder error".
            crate::cache::error_chain(&e)
        ))
    })
}

/// A stored string as it may be printed: control characters (an escape
/// sequence in a step name, a newline in a message) are shown escaped, so
/// what the agent stored cannot repaint or forge the terminal.
pub(super) fn clean(text: &str) -> String {
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
