//! What a remote speaks besides Hrana's SQL, found out once and kept in
//! `.tursync/protocol.json`: sqld's replication log (gRPC, read into the mirror), Turso Sync
//! (`/pull-updates` pages and a `/v2/pipeline` without streams), or SQL only.
//!
//! The answer is probed again when the remote answers otherwise than it says: a server
//! recorded as Turso Sync that keeps streams, one recorded as sqld that refuses them, or one
//! recorded as serving the log after a pull found it does not (`sync.json`'s `sql_path`).
//! `TURSYNC_PROTOCOL=log|turso-sync|sql` overrides it without probing or recording.

use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::mirror::Mirror;
use crate::remote::replication::{Hello, LogError, LogSource, ReplicationLog};
use crate::remote::turso_sync::{TursoSync, TursoSyncError};
use crate::remote::Remote;
use crate::turso_pages::TursoPages;
use crate::{Error, Result};

const FILE: &str = "protocol.json";
/// The environment variable that overrides the probe.
pub const ENV: &str = "TURSYNC_PROTOCOL";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// sqld's replication log, over gRPC-web on the Hrana port.
    Log,
    /// Turso Sync: `/pull-updates` and a pipeline without streams.
    TursoSync,
    /// Hrana's SQL only.
    Sql,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Log => "log",
            Protocol::TursoSync => "turso-sync",
            Protocol::Sql => "sql",
        }
    }

    /// Where the mirror is read from on a remote that speaks this: Turso Sync's pages, else
    /// sqld's log (a server probed as SQL only is asked all the same, and its refusal is the
    /// reason recorded for reading over SQL).
    pub fn mirror_source<'r>(self, remote: &'r Remote, mirror: Mirror) -> Box<dyn LogSource + 'r> {
        match self {
            Protocol::TursoSync => Box::new(TursoPages::new(remote, mirror)),
            Protocol::Log | Protocol::Sql => Box::new(ReplicationLog::new(remote)),
        }
    }

    fn parse(text: &str) -> Option<Protocol> {
        match text.trim() {
            "log" => Some(Protocol::Log),
            "turso-sync" => Some(Protocol::TursoSync),
            "sql" => Some(Protocol::Sql),
            _ => None,
        }
    }
}

/// An answer: what the remote speaks, and why tursync thinks so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    pub protocol: Protocol,
    pub reason: String,
    /// Set from `TURSYNC_PROTOCOL`, not probed (and never recorded).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

/// What `TURSYNC_PROTOCOL` asks for, if it is set; an error naming the accepted values if it is
/// set to anything else.
pub fn from_env() -> Result<Option<Detected>> {
    let Ok(raw) = std::env::var(ENV) else {
        return Ok(None);
    };
    match Protocol::parse(&raw) {
        Some(protocol) => Ok(Some(Detected {
            protocol,
            reason: format!("{ENV}={} is set", raw.trim()),
            forced: true,
        })),
        None => Err(Error::BadArgument(format!(
            "{ENV}={raw:?} names no protocol: use log, turso-sync or sql (or unset it to probe the server)"
        ))),
    }
}

/// Whether clones and pulls may keep the mirror, read from sqld's replication log or from
/// Turso Sync's pages, whichever the remote speaks: not when `TURSYNC_NO_LOG` is set or
/// `TURSYNC_PROTOCOL=sql`.
pub fn log_allowed() -> bool {
    std::env::var_os("TURSYNC_NO_LOG").is_none()
        && std::env::var(ENV).ok().as_deref().and_then(Protocol::parse) != Some(Protocol::Sql)
}

/// What the remote speaks for a clone: `TURSYNC_PROTOCOL` if set, else a probe, recorded in the
/// state directory `dir` being built (so the commands after it need not probe again).
pub fn for_clone<'r>(dir: &Path, remote: &'r Remote) -> Result<Probed<'r>> {
    if let Some(forced) = from_env()? {
        return Ok(Probed {
            found: forced,
            said_hello: None,
        });
    }
    let probed = probe(remote)?;
    record(dir, &probed.found)?;
    Ok(probed)
}

/// What a probe found, and when it is sqld's log, the reader that said `Hello` with its
/// answer: a clone reads the log on with it instead of saying `Hello` again (a round trip).
pub struct Probed<'r> {
    pub found: Detected,
    pub said_hello: Option<(ReplicationLog<'r>, Hello)>,
}

/// Asks the server: `/pull-updates` for page 0 (Turso Sync), then the log's `Hello` (sqld).
/// A server that serves neither speaks SQL only. Failures that say nothing of the protocol
/// (the server unreachable, the token refused) are errors.
pub fn probe(remote: &Remote) -> Result<Probed<'_>> {
    let answer = |found| Probed {
        found,
        said_hello: None,
    };
    match TursoSync::new(remote).probe() {
        Ok(head) => {
            return Ok(answer(Detected {
                protocol: Protocol::TursoSync,
                reason: format!(
                    "the server answers /pull-updates (revision {}, {} pages)",
                    head.revision, head.db_size
                ),
                forced: false,
            }))
        }
        Err(TursoSyncError::Remote(e)) if e.is_transient() || is_refusal(&e) => {
            return Err(e.into())
        }
        Err(_) => {}
    }
    let mut log = ReplicationLog::new(remote);
    let reason = match log.hello() {
        Ok(hello) => {
            return Ok(Probed {
                found: Detected {
                    protocol: Protocol::Log,
                    reason: format!(
                        "the server serves the replication log (log id {})",
                        hello.log_id
                    ),
                    forced: false,
                },
                said_hello: Some((log, hello)),
            })
        }
        Err(LogError::Remote(e)) if e.is_transient() || is_refusal(&e) => return Err(e.into()),
        Err(e) => format!("the server serves neither /pull-updates nor the replication log ({e})"),
    };
    Ok(answer(Detected {
        protocol: Protocol::Sql,
        reason,
        forced: false,
    }))
}

fn is_refusal(e: &crate::remote::RemoteError) -> bool {
    use crate::remote::RemoteError as R;
    matches!(e, R::Auth { .. } | R::Certificate { .. } | R::Client { .. })
}

/// The answer recorded in the state directory `dir`, if there is one and it can be read (a
/// damaged record is probed again, not trusted).
pub fn recorded(dir: &Path) -> Option<Detected> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records `found` in the state directory `dir`, atomically.
pub fn record(dir: &Path, found: &Detected) -> Result<()> {
    crate::durable::save_json(dir, FILE, found)
}

/// Why the recorded answer no longer holds, if the remote or a pull said otherwise
/// (`log_unusable`: why the last pull found the log unusable, if it did).
fn contradicted(log_unusable: Option<&str>, remote: &Remote, found: &Detected) -> Option<String> {
    match (found.protocol, remote.streams_known()) {
        (Protocol::TursoSync, Some(true)) => {
            return Some("the server kept a stream, which Turso Sync's server does not".into())
        }
        (Protocol::Log | Protocol::Sql, Some(false)) => {
            return Some("the server refused a stream's close, as Turso Sync's server does".into())
        }
        _ => {}
    }
    if found.protocol == Protocol::Log {
        if let Some(why) = log_unusable {
            return Some(format!("a pull found the log unusable: {why}"));
        }
    }
    None
}

/// What the remote speaks: `TURSYNC_PROTOCOL` if set; else the answer recorded in the state
/// directory `dir` while nothing contradicts it; else a fresh probe, recorded. The second
/// value says why it was probed again, when it was.
pub fn detect(
    dir: &Path,
    log_unusable: Option<&str>,
    remote: &Remote,
) -> Result<(Detected, Option<String>)> {
    if let Some(forced) = from_env()? {
        return Ok((forced, None));
    }
    let again = match recorded(dir) {
        Some(found) => match contradicted(log_unusable, remote, &found) {
            None => return Ok((found, None)),
            Some(why) => Some(why),
        },
        None => None,
    };
    let found = probe(remote)?.found;
    record(dir, &found)?;
    Ok((found, again))
}
