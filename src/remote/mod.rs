//! A Hrana-over-HTTP client for sqld and Turso Cloud.
//!
//! Everything goes through `POST /v3/pipeline` (falling back to `/v2/pipeline` on servers
//! without v3): many statements in one HTTP request, each with its own result and
//! `affected_row_count`. A [`Stream`] keeps the baton between requests so a transaction can
//! span several of them. Results are read whole into memory, which is bounded because the
//! server refuses responses over 10 MB; callers size their pages to stay under that.
//!
//! Reads are retried here when the network or the server fails in a way that passes
//! ([`retry`]); push retries whole transactions through [`Remote::retrying`].

mod batonless;
pub mod proto;
pub mod replication;
pub mod retry;
mod tls;
pub mod turso_sync;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use retry::{Transient, DEFAULT_RETRY_FOR};

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
    #[error("the connection to {url} broke off: {reason}")]
    Dropped { url: String, reason: String },
    #[error("cannot send a request to {url}: {reason}")]
    Client { url: String, reason: String },
    #[error("TLS certificate error for {url}: {detail}")]
    Certificate { url: String, detail: String },
    #[error("the server is overloaded or unavailable: HTTP {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("gave up after retrying for {after}s ({attempts} attempts; --retry-for sets how long): {last}")]
    GaveUp {
        after: u64,
        attempts: u32,
        last: Box<RemoteError>,
    },
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
    #[error("the remote changed while a transaction was being prepared ({0}); it was not committed and is tried again")]
    Raced(String),
    /// A check a transaction ran before its `COMMIT` found what it must not (orphans a push
    /// would leave, say): nothing was committed. The caller reads what the check found.
    #[error("a check of the transaction failed before its COMMIT ({0}); nothing was committed")]
    Check(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("the remote holds an infinite REAL value, which Hrana over JSON cannot carry")]
    NonFinite,
}

impl RemoteError {
    /// Whether trying again later may succeed: the server is overloaded, restarting or
    /// unreachable for now, or the connection broke. A stream that expired, or a write lock
    /// another (abandoned) transaction still holds, passes too.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Unreachable { .. }
            | RemoteError::Dropped { .. }
            | RemoteError::Unavailable { .. }
            | RemoteError::StreamExpired
            | RemoteError::Raced(_) => true,
            RemoteError::Sql { code, message } => {
                matches!(
                    code.as_deref(),
                    Some("SQLITE_BUSY" | "TRANSACTION_TIMEOUT" | "STREAM_EXPIRED")
                ) || message.contains("database is locked")
            }
            RemoteError::GaveUp { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            RemoteError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

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

    /// The host and port requests go to.
    fn host_port(&self) -> (String, u16) {
        let url = url::Url::parse(&self.base).ok();
        let host = url
            .as_ref()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
            .unwrap_or_default();
        let port = url.and_then(|u| u.port_or_known_default()).unwrap_or(443);
        (host, port)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// Called before each wait between two attempts, with the error and the wait.
pub type RetryNotice = Arc<dyn Fn(&RemoteError, Duration) + Send + Sync>;

/// A connection to one remote database. Cheap to clone and shareable across threads: clones
/// share one connection pool.
#[derive(Clone)]
pub struct Remote {
    endpoint: Endpoint,
    token: Option<Arc<str>>,
    agent: ureq::Agent,
    v2_only: Arc<AtomicBool>,
    /// Whether the server keeps streams (batons, `close`): [`STREAMS_UNKNOWN`] until a request
    /// tells.
    streams: Arc<AtomicU8>,
    /// Set once the server answered anything: from then on a refused connection is a server
    /// restarting, not a wrong URL.
    reached: Arc<AtomicBool>,
    retry_for: Duration,
    on_retry: Option<RetryNotice>,
    /// Set when the user asked to stop: waits end and nothing more is retried.
    cancel: Option<Arc<AtomicBool>>,
    proxy: Option<ureq::Proxy>,
    /// Why the proxy the environment names cannot be used; every request fails with it.
    proxy_error: Option<Arc<str>>,
    /// Where the trusted roots came from, for certificate errors.
    trust: Arc<str>,
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
        let https = endpoint.base.starts_with("https:");
        let (roots, trust) = if https {
            tls::roots()
        } else {
            (ureq::tls::RootCerts::WebPki, String::new())
        };
        let (proxy, proxy_error) = match proxy_from_env(https) {
            Ok(p) => (p, None),
            Err(e) => (None, Some(Arc::from(e))),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_recv_body(Some(RESPONSE_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("tursync/", env!("CARGO_PKG_VERSION")))
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .proxy(proxy.clone())
            .build()
            .into();
        Remote {
            endpoint,
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
            agent,
            v2_only: Arc::new(AtomicBool::new(false)),
            streams: Arc::new(AtomicU8::new(streams_from_env())),
            reached: Arc::new(AtomicBool::new(false)),
            retry_for: DEFAULT_RETRY_FOR,
            on_retry: None,
            cancel: None,
            proxy,
            proxy_error,
            trust: Arc::from(trust),
        }
    }

    /// How long one operation keeps being retried before the command gives up.
    pub fn with_retry_for(mut self, limit: Duration) -> Remote {
        self.retry_for = limit;
        self
    }

    /// Tells `notice` about each retry before waiting for it.
    pub fn on_retry(mut self, notice: RetryNotice) -> Remote {
        self.on_retry = Some(notice);
        self
    }

    /// Stops waiting and retrying once `flag` is set (the user asked to stop).
    pub fn cancel_on(mut self, flag: Arc<AtomicBool>) -> Remote {
        self.cancel = Some(flag);
        self
    }

    /// Runs `attempt` until it succeeds, fails in a way that will not pass, or has been failing
    /// for longer than `--retry-for`. Only for work that is safe to repeat from the start.
    pub fn retrying<T, E: Transient>(
        &self,
        mut attempt: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut backoff = retry::Backoff::new();
        loop {
            let err = match attempt() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(remote_err) = err.remote().filter(|e| e.is_transient()) else {
                return Err(err);
            };
            let first_contact = matches!(remote_err, RemoteError::Unreachable { .. })
                && !self.reached.load(Ordering::Relaxed);
            let limit = if first_contact {
                self.retry_for.min(retry::FIRST_CONTACT)
            } else {
                self.retry_for
            };
            let Some(delay) = backoff.next(remote_err, limit) else {
                if first_contact {
                    return Err(err);
                }
                return Err(err.gave_up(limit, backoff.attempts()));
            };
            if let Some(notice) = &self.on_retry {
                notice(remote_err, delay);
            }
            if !self.sleep(delay) {
                return Err(err);
            }
        }
    }

    /// Sleeps, waking early (and returning false) when the user asks to stop.
    fn sleep(&self, delay: Duration) -> bool {
        let until = std::time::Instant::now() + delay;
        loop {
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return false;
            }
            let now = std::time::Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
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
            deferred: None,
        }
    }

    /// A stream whose transactions are kept on this side and sent whole at their `COMMIT`
    /// ([`batonless`]) on every server: reads before the first write cost one request, the
    /// writes and `COMMIT` one more. Push runs on it.
    pub fn batch_stream(&self) -> Stream<'_> {
        Stream {
            deferred: Some(batonless::Deferred::default()),
            ..self.stream()
        }
    }

    /// Takes it that the server keeps streams (sqld) or not (Turso Sync's server, which also
    /// has no `/v3`), as the protocol recorded in the state directory says, so no request is
    /// spent finding out. `TURSYNC_PROTOCOL` wins. An answer that says otherwise corrects it: a
    /// baton handed out means streams, a `close` refused means none.
    pub fn presume_streams(self, keeps: bool) -> Remote {
        let _ = self.streams.compare_exchange(
            STREAMS_UNKNOWN,
            if keeps { STREAMS_YES } else { STREAMS_NO },
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if !keeps {
            self.v2_only.store(true, Ordering::Relaxed);
        }
        self
    }

    /// Whether the server keeps streams between requests (sqld) or takes only `execute` and
    /// `batch` requests without a baton (Turso Sync's server). Asked once per process, with a
    /// harmless `SELECT 1` and `close`, unless a request already told, or `TURSYNC_PROTOCOL`
    /// names a protocol.
    pub fn has_streams(&self) -> Result<bool, RemoteError> {
        match self.streams.load(Ordering::Relaxed) {
            STREAMS_YES => return Ok(true),
            STREAMS_NO => return Ok(false),
            _ => {}
        }
        let reqs = [
            StreamRequest::Execute {
                stmt: Stmt {
                    sql: "SELECT 1".into(),
                    args: vec![],
                    want_rows: false,
                },
            },
            StreamRequest::Close,
        ];
        self.retrying(|| self.pipeline(&reqs))?;
        Ok(self.streams.load(Ordering::Relaxed) != STREAMS_NO)
    }

    /// Whether the server keeps streams, if a request has told yet.
    pub fn streams_known(&self) -> Option<bool> {
        match self.streams.load(Ordering::Relaxed) {
            STREAMS_YES => Some(true),
            STREAMS_NO => Some(false),
            _ => None,
        }
    }

    /// Runs statements on a fresh stream in one HTTP request and closes it. Each statement gets
    /// its own result; a failing statement does not stop the others (they are not in a
    /// transaction). Every caller only reads, so the request is retried as a whole.
    pub fn execute_many(
        &self,
        stmts: Vec<Stmt>,
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let mut reqs: Vec<StreamRequest> = stmts
            .into_iter()
            .map(|stmt| StreamRequest::Execute { stmt })
            .collect();
        reqs.push(StreamRequest::Close);
        let mut results = self.retrying(|| self.pipeline(&reqs))?;
        results.pop();
        Ok(results)
    }

    /// Requests that open no transaction, in one HTTP request without a baton, each with its
    /// result (a `close` among them answered here when the server keeps no streams). A server
    /// that refuses `close` as a request it does not know is one without streams: noted, and
    /// the requests are sent again without it.
    fn pipeline(
        &self,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let streams = self.streams.load(Ordering::Relaxed);
        if streams == STREAMS_NO {
            let kept: Vec<StreamRequest> = requests
                .iter()
                .filter(|r| !matches!(r, StreamRequest::Close))
                .cloned()
                .collect();
            let mut answers = if kept.is_empty() {
                Vec::new()
            } else {
                self.stream().send_raw(&kept)?
            }
            .into_iter();
            return Ok(requests
                .iter()
                .map(|r| match r {
                    StreamRequest::Close => Ok(StmtResult::default()),
                    _ => answers
                        .next()
                        .unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into()))),
                })
                .collect());
        }
        let has_close = requests.iter().any(|r| matches!(r, StreamRequest::Close));
        match self.stream().send_raw(requests) {
            Err(RemoteError::Http {
                status: 500,
                message,
            }) if has_close && message.contains("unknown variant `close`") => {
                self.streams.store(STREAMS_NO, Ordering::Relaxed);
                self.pipeline(requests)
            }
            Ok(answers) => {
                if has_close {
                    self.streams.store(STREAMS_YES, Ordering::Relaxed);
                }
                Ok(answers)
            }
            Err(e) => Err(e),
        }
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

    /// Where the remote's replication log is now (`None` from a server that does not say):
    /// one `SELECT 1`, the cheapest answer that carries it. Pulls compare it with the last
    /// sync's to tell that nothing moved.
    pub fn replication_index(&self) -> Result<Option<u64>, RemoteError> {
        Ok(self.query("SELECT 1", vec![])?.replication_index())
    }

    fn post_as<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        body: &[u8],
    ) -> Result<T, RemoteError> {
        let v2 = self.v2_only.load(Ordering::Relaxed);
        let (status, bytes, after) = self.post_raw(base, if v2 { "v2" } else { "v3" }, body)?;
        let (status, bytes, after) = if status == 404 && !v2 {
            // An older server: Hrana 2 speaks the same JSON for everything tursync sends.
            self.v2_only.store(true, Ordering::Relaxed);
            self.post_raw(base, "v2", body)?
        } else {
            (status, bytes, after)
        };
        if matches!(status, 429 | 502 | 503 | 504) {
            return Err(RemoteError::Unavailable {
                status,
                retry_after: after,
            });
        }
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

    /// One HTTP request: the status, the body, and the `Retry-After` the server sent.
    fn post_raw(
        &self,
        base: &str,
        version: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, Option<Duration>), RemoteError> {
        let mut resp = self
            .post_to(&format!("{base}/{version}/pipeline"))?
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| self.network_error(e))?;
        self.reached.store(true, Ordering::Relaxed);
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.network_error(e))?;
        Ok((status, bytes, after))
    }

    /// One gRPC-web request of the replication log ([`replication`]), with the same agent,
    /// token, proxy and TLS as Hrana. The session token, when there is one, goes in
    /// `x-session-token`. The body is left to the caller to stream; `body_timeout` bounds how
    /// long it may take to arrive, and `quiet`, when given, how long the server may send nothing:
    /// before the answer's head and between any two reads of it.
    pub(crate) fn post_grpc(
        &self,
        path: &str,
        body: &[u8],
        session: Option<&str>,
        body_timeout: Duration,
        quiet: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, RemoteError> {
        let mut req = self
            .post_to(&format!("{}/{path}", self.endpoint.base))?
            .header("Content-Type", "application/grpc-web+proto")
            .header("Accept", "application/grpc-web+proto")
            .header("x-grpc-web", "1");
        if let Some(s) = session {
            req = req.header("x-session-token", s);
        }
        let mut config = req.config().timeout_recv_body(Some(body_timeout));
        if let Some(quiet) = quiet {
            config = config
                .timeout_recv_response(Some(quiet))
                .timeout_per_read(Some(quiet));
        }
        let resp = config
            .build()
            .send(body)
            .map_err(|e| self.network_error(e))?;
        self.reached.store(true, Ordering::Relaxed);
        Ok(resp)
    }

    /// A POST to `url` with the agent (proxy, TLS, pool) and the token of every request, or
    /// the proxy setting's error.
    fn post_to(
        &self,
        url: &str,
    ) -> Result<ureq::RequestBuilder<ureq::typestate::WithBody>, RemoteError> {
        if let Some(e) = &self.proxy_error {
            return Err(RemoteError::Client {
                url: self.endpoint.to_string(),
                reason: e.to_string(),
            });
        }
        let req = self.agent.post(url);
        Ok(match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        })
    }

    /// One POST of `body` to `path` below the endpoint, with the agent, token, proxy and TLS of
    /// every request; the answer's body is left to the caller to stream within `body_timeout`.
    pub(crate) fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        body_timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, RemoteError> {
        let resp = self
            .post_to(&format!("{}/{path}", self.endpoint.base))?
            .header("Content-Type", content_type)
            .config()
            .timeout_recv_body(Some(body_timeout))
            .build()
            .send(body)
            .map_err(|e| self.network_error(e))?;
        self.reached.store(true, Ordering::Relaxed);
        Ok(resp)
    }

    /// The error for an HTTP status other than 200, as every request maps it: overloaded
    /// (retried), authentication, permission, or anything else.
    pub(crate) fn status_error(&self, status: u16, body: &[u8]) -> RemoteError {
        if matches!(status, 429 | 502 | 503 | 504) {
            return RemoteError::Unavailable {
                status,
                retry_after: None,
            };
        }
        self.http_error(status, body)
    }

    /// Sorts a failure below HTTP: the server could not be reached (retried), the connection
    /// broke mid-request (retried), a certificate was refused (explained), or anything else.
    fn network_error(&self, e: ureq::Error) -> RemoteError {
        use std::io::ErrorKind as K;
        let url = self.endpoint.to_string();
        if let Some(problem) = tls::certificate_error(&e) {
            let (host, port) = self.endpoint.host_port();
            let detail = tls::explain(&problem, &host, port, self.proxy.as_ref(), &self.trust);
            return RemoteError::Certificate {
                url,
                detail: self.scrub(&detail),
            };
        }
        let reason = self.scrub(&e.to_string());
        match &e {
            ureq::Error::Io(io) if io.kind() == K::ConnectionRefused => {
                RemoteError::Unreachable { url, reason }
            }
            ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::ConnectProxyFailed(_)
            | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                RemoteError::Unreachable { url, reason }
            }
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled => RemoteError::Dropped { url, reason },
            _ => RemoteError::Client { url, reason },
        }
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

/// The proxy the environment names for this scheme, as curl and most HTTP clients read it:
/// `HTTPS_PROXY` for https URLs, `HTTP_PROXY` for http ones (either case), `ALL_PROXY` for both,
/// and `NO_PROXY` (comma-separated hosts, `.domain` or `*.domain` suffixes, `*`) to bypass it.
/// A proxy URL that cannot be parsed is an error (going around the proxy instead could send
/// traffic where it must not go); the error names the variable, never its value, which may hold
/// a password.
fn proxy_from_env(https: bool) -> Result<Option<ureq::Proxy>, String> {
    let names: &[&str] = if https {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let Some((name, raw)) = names.iter().find_map(|n| {
        let v = std::env::var(n).ok()?;
        (!v.trim().is_empty()).then_some((n, v))
    }) else {
        return Ok(None);
    };
    let bad = || format!("{name} is set but is not a proxy URL (http://host:port)");
    let parsed = ureq::Proxy::new(raw.trim()).map_err(|_| bad())?;
    let mut builder = ureq::Proxy::builder(parsed.protocol())
        .host(parsed.host())
        .port(parsed.port());
    if let Some(u) = parsed.username() {
        builder = builder.username(u);
    }
    if let Some(p) = parsed.password() {
        builder = builder.password(p);
    }
    let bypass = std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .unwrap_or_default();
    for entry in bypass.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        builder = builder.no_proxy(entry);
    }
    builder.build().map(Some).map_err(|_| bad())
}

/// A Hrana stream: requests sent through it share one server-side connection, so a
/// transaction opened by one request is still open for the next. The server drops a stream
/// after about 10 s without a request.
pub struct Stream<'r> {
    remote: &'r Remote,
    baton: Option<String>,
    base_url: Option<String>,
    /// On a server without streams, the transaction kept on this side
    /// ([`batonless::Deferred`]).
    deferred: Option<batonless::Deferred>,
}

impl Stream<'_> {
    /// Sends requests in one HTTP round trip and returns one result per request, in order. On a
    /// server without streams a transaction is kept here and sent whole, as one batch, at its
    /// `COMMIT` ([`batonless`]).
    pub fn send(
        &mut self,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        if self.deferred.is_none() && self.baton.is_none() && !self.remote.has_streams()? {
            self.deferred = Some(batonless::Deferred::default());
        }
        match self.deferred.as_mut() {
            Some(d) => d.send(self.remote, requests),
            None => self.send_raw(requests),
        }
    }

    /// The row counts the next writes sent through this stream must change, in order (0: not
    /// counted). Only a server without streams needs them: a write is answered there before it
    /// runs, with this count, and the count is checked when the transaction commits.
    pub fn expect_changes(&mut self, counts: &[usize]) {
        if let Some(d) = self.deferred.as_mut() {
            d.expect(counts);
        }
    }

    /// The index of the last commit before this stream's transaction, on a server without
    /// streams once it committed (see [`batonless`]).
    pub fn began_at(&self) -> Option<u64> {
        self.deferred.as_ref().and_then(|d| d.began_at)
    }

    /// Keeps `read`, to run after the transaction's writes: it commits only if `read` returns
    /// none but the `allowed` rows, and fails with [`RemoteError::Check`] otherwise. Only on a
    /// [`Remote::batch_stream`], where the transaction is one batch.
    pub fn check(&mut self, read: Stmt, allowed: Vec<Vec<Value>>) -> Result<(), RemoteError> {
        match self.deferred.as_mut() {
            Some(d) => d.check(self.remote, read, allowed),
            None => Err(RemoteError::Protocol(
                "a check was asked of a stream that sends its statements at once".into(),
            )),
        }
    }

    /// HTTP requests this stream sent.
    pub fn requests(&self) -> u64 {
        self.deferred.as_ref().map_or(0, |d| d.requests)
    }

    fn send_raw(
        &mut self,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        self.exchange(requests)
    }

    /// Sends requests in one HTTP request on this stream and returns each one's result, read as
    /// `R` (an empty one for a response without a result, as `close` has).
    fn exchange<R: serde::de::DeserializeOwned + Default>(
        &mut self,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<R, RemoteError>>, RemoteError> {
        let body = serde_json::to_vec(&PipelineReq {
            baton: self.baton.as_deref(),
            requests,
        })
        .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let base = self
            .base_url
            .clone()
            .unwrap_or_else(|| self.remote.endpoint.base.clone());
        let resp: PipelineResp<R> = self.remote.post_as(&base, &body)?;
        if resp.baton.is_some() {
            // Only a server that keeps streams hands out batons.
            self.remote.streams.store(STREAMS_YES, Ordering::Relaxed);
        }
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

const STREAMS_UNKNOWN: u8 = 0;
const STREAMS_YES: u8 = 1;
const STREAMS_NO: u8 = 2;

/// What `TURSYNC_PROTOCOL` says of streams: Turso Sync's server keeps none, sqld's log and plain
/// SQL mean sqld (or Turso Cloud's Hrana), which keeps them.
fn streams_from_env() -> u8 {
    match std::env::var("TURSYNC_PROTOCOL")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("turso-sync") => STREAMS_NO,
        Some("log") => STREAMS_YES,
        _ => STREAMS_UNKNOWN,
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
