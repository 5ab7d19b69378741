//! Which `Host` and `Origin` an agent answers to.
//!
//! **Host** (DNS rebinding): a page on `evil.example` whose name is made to
//! resolve to the agent's address reads whatever a `--public-read` agent
//! shows, from the visitor's browser, with `Host: evil.example:7117`. So a
//! request *from a browser* (one with `Origin` or `Sec-Fetch-*` headers)
//! whose `Host` is a DNS name is served only for the names the agent knows:
//! `localhost`, and those of `--public-url`. IP literals are always
//! served (rebinding needs a name), and so is any `Host` from a client that
//! is not a browser (the CLI, scripts, probes), which rebinding cannot use.
//!
//! **Origin** (cross-site writes with the session cookie): a write must come
//! from one of the agent's own origins, scheme included: `http://HOST` for
//! a `Host` that passed the check above (the agent serves plain HTTP), or a
//! `--public-url` (e.g. `https://ci.example.com` behind a TLS proxy).

use axum::http::{HeaderMap, header};

/// The names and origins an agent answers to, from `--public-url`.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Host names (lower case, without port) of the public URLs.
    names: Vec<String>,
    /// Their origins (`https://ci.example.com`, lower case, no slash).
    origins: Vec<String>,
}

impl Served {
    /// From the `--public-url`s, each an `http(s)://` URL.
    pub fn new(public_urls: &[String]) -> Result<Served, String> {
        let mut served = Served::default();
        for text in public_urls {
            let url = url::Url::parse(text)
                .map_err(|e| format!("public_url `{text}` is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("public_url `{text}` is not an http(s) URL"));
            }
            let Some(host) = url.host_str() else {
                return Err(format!("public_url `{text}` names no host"));
            };
            served
                .names
                .push(host.trim_matches(['[', ']']).to_ascii_lowercase());
            served
                .origins
                .push(url.origin().ascii_serialization().to_ascii_lowercase());
        }
        Ok(served)
    }

    /// Whether a request with these headers may be served (`Host` check).
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            // HTTP/1.0 without Host, or HTTP/2 (`:authority`): nothing to rebind.
            return true;
        };
        !from_browser(headers) || self.known_host(host)
    }

    /// Whether `origin` is one of this agent's own, for a request to `host`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        match host {
            Some(host) if self.known_host(host) => {
                origin == format!("http://{}", host.to_ascii_lowercase())
            }
            _ => false,
        }
    }

    fn known_host(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.names.contains(&name)
    }
}

/// A browser says where a request comes from; the CLI and scripts do not.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
}

/// `host` of `host:port`, `[::1]:port` or a bare name, brackets removed.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn browsers_reach_only_known_names() {
        let served = Served::new(&["https://ci.example.com".into()]).unwrap();
        let browser = |host: &str| headers(&[("host", host), ("sec-fetch-site", "same-origin")]);
        for host in [
            "127.0.0.1:7117",
            "[::1]:7117",
            "localhost:7117",
            "ci.example.com",
            "10.0.0.5:7117",
        ] {
            assert!(served.host_allowed(&browser(host)), "{host}");
        }
        assert!(!served.host_allowed(&browser("evil.example:7117")));
        // The CLI and scripts, with any name.
        assert!(served.host_allowed(&headers(&[("host", "ci.internal:7117")])));
    }

    #[test]
    fn origins_match_with_their_scheme() {
        let served = Served::new(&["https://ci.example.com".into()]).unwrap();
        assert!(served.origin_allowed("http://127.0.0.1:7117", Some("127.0.0.1:7117")));
        assert!(served.origin_allowed("https://ci.example.com", Some("ci.example.com")));
        // The scheme is part of the origin: a plain-HTTP agent's own pages
        // are not https://.
        assert!(!served.origin_allowed("https://127.0.0.1:7117", Some("127.0.0.1:7117")));
        // A name the agent does not serve, even when Host agrees.
        assert!(!served.origin_allowed("http://evil.example:7711", Some("evil.example:7711")));
        assert!(!Served::default().origin_allowed("http://a:1", None));
    }
}
