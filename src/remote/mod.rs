//! A Hrana-over-HTTP client for sqld and Turso Cloud.
//!
//! Everything goes through `POST /v3/pipeline` (falling back to `/v2/pipeline` on servers
//! without v3): many statements in one HTTP request, each with its own result and
//! `affected_row_count`. A [`Stream`] keeps the baton between requests so a transaction can
//! span several of them. Results are read whole into memory, which is bounded because the
//! server refuses responses over 10 MB; callers size their pages to stay under that.

pub mod proto;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{PipelineReq, PipelineResp};
pub use proto::{Stmt, StmtResult, StreamRequest};

use crate::value::Value;

/// Failures talking to the remote, each phrased so the user knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("authentication failed: the server answered HTTP {status}{detail}. Check the token (--token or TURSO_AUTH_TOKEN)")]
    Auth { status: u16, detail: String },
    #[error("permission denied: {message}. The token is read-only; use a token with write access")]
    Permission { message: String },
    #[error("cannot reach {url}: {reason}. Is the server running and the URL right?")]
    Unreachable { url: String, reason: String },
    #[error("the server answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("the remote stream expired (idle for too long); its open transaction was rolled back by the server")]
    StreamExpired,
    #[error("the server refused a response over its size limit (RESPONSE_TOO_LARGE)")]
    ResponseTooLarge,
    #[error("SQL error on the remote: {message}")]
    Sql {
        message: String,
        code: Option<String>,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("the remote holds an infinite REAL value, which Hrana over JSON cannot carry")]
    NonFinite,
}

impl RemoteError {
    /// Whether the server failed to put a value in its answer: TEXT that is not UTF-8 (sqld
    /// answers HTTP 500 "incomplete utf-8 byte sequence" or "invalid utf-8 sequence") or an
    /// infinite REAL (JSON has no infinity). Reading the same rows with
    /// [`crate::sql::exact_select_list`] then succeeds.
    pub fn is_unencodable_value(&self) -> bool {
        match self {
            RemoteError::NonFinite => true,
            RemoteError::Http {
                status: 500,
                message,
            } => message.contains("utf-8"),
            _ => false,
        }
    }
}

/// Where the remote lives, with credentials kept apart from the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http(s)://host[:port][/path]`, never with credentials in it.
    base: String,
}

impl Endpoint {
    /// Parses `libsql://`, `https://` or `http://` URLs (and `ws(s)://`, which name the same
    /// server). An `authToken` query parameter, as some dashboards hand out, is taken out and
    /// returned apart so it is never stored or shown; user info is dropped for the same reason.
    pub fn parse(raw: &str) -> Result<(Endpoint, Option<String>), String> {
        let mut url = url::Url::parse(raw.trim()).map_err(|e| {
            format!("invalid database URL: {e} (expected libsql://, https:// or http://)")
        })?;
        let scheme = match url.scheme() {
            "libsql" | "https" | "wss" => "https",
            "http" | "ws" => "http",
            other => {
                return Err(format!(
                    "unsupported URL scheme {other:?}: use libsql://, https:// or http://"
                ))
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err("invalid database URL: it has no host".into());
        }
        // Other query parameters mean nothing to the Hrana endpoints and are dropped.
        let token = url
            .query_pairs()
            .find(|(k, _)| k == "authToken")
            .map(|(_, v)| v.into_owned());
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let rest = url.as_str().split_once("://").map(|(_, r)| r).unwrap_or("");
        let base = format!("{scheme}://{}", rest.trim_end_matches('/'));
        Ok((Endpoint { base }, token))
    }

    /// The URL as shown to users and written to the config.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// A connection to one remote database. Cheap to clone and shareable across threads: clones
/// share one connection pool.
#[derive(Clone)]
pub struct Remote {
    endpoint: Endpoint,
    token: Option<Arc<str>>,
    agent: ureq::Agent,
    v2_only: Arc<AtomicBool>,
}

/// Connect timeout: an unreachable server must be reported within seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pipeline request may take to start answering. Pages and push chunks are sized
/// to take well under a second, so this only trips on a server that hangs.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response the server would never send (it caps them at 10 MB); a guard against a broken
/// proxy feeding us without end.
const MAX_BODY: u64 = 256 << 20;

impl Remote {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Remote {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_recv_body(Some(RESPONSE_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("tursync/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Remote {
            endpoint,
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            agent,
            v2_only: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether requests carry a token (from `--token`, the environment, or the URL).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Opens a stream; nothing is sent until the first request.
    pub fn stream(&self) -> Stream<'_> {
        Stream {
            remote: self,
            baton: None,
            base_url: None,
        }
    }

    /// Runs statements on a fresh stream in one HTTP request and closes it. Each statement gets
    /// its own result; a failing statement does not stop the others (they are not in a
    /// transaction).
    pub fn execute_many(
        &self,
        stmts: Vec<Stmt>,
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let mut reqs: Vec<StreamRequest> = stmts
            .into_iter()
            .map(|stmt| StreamRequest::Execute { stmt })
            .collect();
        reqs.push(StreamRequest::Close);
        let mut results = self.stream().send(&reqs)?;
        results.pop();
        Ok(results)
    }

    /// Runs one statement on a fresh stream.
    pub fn query(&self, sql: &str, args: Vec<Value>) -> Result<StmtResult, RemoteError> {
        let stmt = Stmt {
            sql: sql.to_owned(),
            args,
            want_rows: true,
        };
        self.execute_many(vec![stmt])?
            .pop()
            .unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into())))
    }

    fn post(&self, base: &str, body: &[u8]) -> Result<PipelineResp, RemoteError> {
        let v2 = self.v2_only.load(Ordering::Relaxed);
        let (status, bytes) = self.post_raw(base, if v2 { "v2" } else { "v3" }, body)?;
        let (status, bytes) = if status == 404 && !v2 {
            // An older server: Hrana 2 speaks the same JSON for everything tursync sends.
            self.v2_only.store(true, Ordering::Relaxed);
            self.post_raw(base, "v2", body)?
        } else {
            (status, bytes)
        };
        if status != 200 {
            return Err(self.http_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            if e.to_string().contains(proto::NON_FINITE) {
                RemoteError::NonFinite
            } else {
                RemoteError::Protocol(self.scrub(&e.to_string()))
            }
        })
    }

    fn post_raw(
        &self,
        base: &str,
        version: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), RemoteError> {
        let url = format!("{base}/{version}/pipeline");
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let unreachable = |e: ureq::Error| RemoteError::Unreachable {
            url: self.endpoint.to_string(),
            reason: self.scrub(&e.to_string()),
        };
        let mut resp = req.send(body).map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(unreachable)?;
        Ok((status, bytes))
    }

    fn http_error(&self, status: u16, body: &[u8]) -> RemoteError {
        let text = String::from_utf8_lossy(body);
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let m = v.get("message").or_else(|| v.get("error"))?;
                Some(
                    m.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| m.to_string()),
                )
            })
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        let message = self.scrub(&message);
        if text.contains("STREAM_EXPIRED") {
            return RemoteError::StreamExpired;
        }
        match status {
            401 => RemoteError::Auth {
                status,
                detail: if message.is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                },
            },
            403 if message.contains("Write permission") || message.contains("ermission") => {
                RemoteError::Permission { message }
            }
            403 => RemoteError::Auth {
                status,
                detail: format!(" ({message})"),
            },
            _ => RemoteError::Http { status, message },
        }
    }

    /// Removes the token from any text that might reach the user.
    fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(t) if t.len() >= 4 => text.replace(&**t, "[token]"),
            _ => text.to_owned(),
        }
    }
}

/// A Hrana stream: requests sent through it share one server-side connection, so a
/// transaction opened by one request is still open for the next. The server drops a stream
/// after about 10 s without a request.
pub struct Stream<'r> {
    remote: &'r Remote,
    baton: Option<String>,
    base_url: Option<String>,
}

impl Stream<'_> {
    /// Sends requests in one HTTP round trip and returns one result per request, in order.
    pub fn send(
        &mut self,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let body = serde_json::to_vec(&PipelineReq {
            baton: self.baton.as_deref(),
            requests,
        })
        .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let base = self
            .base_url
            .clone()
            .unwrap_or_else(|| self.remote.endpoint.base.clone());
        let resp = self.remote.post(&base, &body)?;
        self.baton = resp.baton;
        if let Some(b) = resp.base_url {
            self.base_url = Some(b.trim_end_matches('/').to_owned());
        }
        if resp.results.len() != requests.len() {
            return Err(RemoteError::Protocol(format!(
                "sent {} requests, got {} results",
                requests.len(),
                resp.results.len()
            )));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| match (r.kind.as_str(), r.response, r.error) {
                ("ok", Some(resp), _) => Ok(resp.result.unwrap_or_default()),
                (_, _, Some(err)) => Err(self.remote.sql_error(err)),
                _ => Err(RemoteError::Protocol(format!(
                    "result of type {:?} without a body",
                    r.kind
                ))),
            })
            .collect())
    }
}

impl Remote {
    fn sql_error(&self, err: proto::ErrorBody) -> RemoteError {
        let message = self.scrub(&err.message);
        match err.code.as_deref() {
            Some("RESPONSE_TOO_LARGE") => RemoteError::ResponseTooLarge,
            Some("STREAM_EXPIRED") => RemoteError::StreamExpired,
            _ if message.contains("Write permission") => RemoteError::Permission { message },
            _ => RemoteError::Sql {
                message,
                code: err.code,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalize_and_shed_credentials() {
        let (e, t) = Endpoint::parse("libsql://db-org.turso.io?authToken=sekrit").unwrap();
        assert_eq!(e.as_str(), "https://db-org.turso.io");
        assert_eq!(t.as_deref(), Some("sekrit"));
        let (e, t) = Endpoint::parse("http://user:pw@127.0.0.1:8080/").unwrap();
        assert_eq!(e.as_str(), "http://127.0.0.1:8080");
        assert_eq!(t, None);
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
