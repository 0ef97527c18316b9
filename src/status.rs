//! `tursync status`: the working copy and its state files, how pulls read the remote, whether
//! the remote answers and moved since the last sync, what it speaks, and what is waiting to be
//! pushed. Nothing is changed; every part that cannot be read says why instead of failing the
//! whole report.
//!
//! The report derives its `--json` shape and writes its own text ([`Status::write_text`]).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::changeset::Changeset;
use crate::diff::Filter;
use crate::protocol::{self, Detected};
use crate::remote::{Endpoint, Remote, RemoteError};
use crate::report::human_bytes;
use crate::workspace::{SyncState, Workspace};
use crate::Error;

/// Everything `status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub sqlite_version: &'static str,
    /// Always empty: SQLite is built in. Scripts that check for tools read it.
    pub external_tools_needed: Vec<String>,
    #[serde(flatten)]
    pub workspace: Files,
    /// Only with a working copy and a remote configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolShown>,
    pub remote: RemoteState,
    /// Only with a working copy.
    #[serde(flatten)]
    pub changes: Option<Changes>,
}

/// The working copy's files, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Files {
    Found(Box<WorkingCopy>),
    Missing { workspace_error: String },
}

/// The working copy, the state directory, the base, and how pulls read the remote.
#[derive(Debug, Serialize)]
pub struct WorkingCopy {
    pub working_copy: FileInfo,
    pub state_dir: String,
    pub base: FileInfo,
    pub reads: Reads,
    /// What a killed push or pull left for the next run to finish or settle: empty when
    /// nothing.
    pub interrupted: Vec<String>,
}

/// `{"path": "/w/app.db", "exists": true, "bytes": 4096, "on_disk": 4096}`: `bytes` is the
/// file's length, `on_disk` what it takes on disk (less for the mirror, a sparse file holding
/// only the pages it does not share with the base).
#[derive(Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<u64>,
}

impl FileInfo {
    fn of(p: &Path) -> FileInfo {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(p).ok();
        FileInfo {
            path: p.display().to_string(),
            exists: meta.is_some(),
            bytes: meta.as_ref().map(|m| m.len()),
            on_disk: meta.as_ref().map(|m| m.blocks() * 512),
        }
    }

    /// `/w/app.db (4.0 KiB)`, `/w/.tursync/mirror.db (84.0 MiB, 12.0 KiB on disk)`, or
    /// `/w/app.db (missing)`.
    fn describe(&self) -> String {
        match (self.bytes, self.on_disk) {
            (Some(b), Some(d)) if d < b / 2 => {
                format!(
                    "{} ({}, {} on disk)",
                    self.path,
                    human_bytes(b),
                    human_bytes(d)
                )
            }
            (Some(b), _) => format!("{} ({})", self.path, human_bytes(b)),
            (None, _) => format!("{} (missing)", self.path),
        }
    }
}

/// How pulls read the remote: from the replication log into the mirror, or over SQL, and why.
#[derive(Debug, Serialize)]
#[serde(tag = "path")]
pub enum Reads {
    /// The state files could not be read.
    #[serde(rename = "unknown")]
    Unknown { reason: String },
    #[serde(rename = "sql")]
    Sql { reason: Option<String> },
    /// From the log, into this mirror.
    #[serde(rename = "log")]
    Mirror {
        mirror: FileInfo,
        frame_no: Option<u64>,
        /// Turso Sync's revision the mirror is at (`None` on sqld's log).
        revision: Option<String>,
        streams: Streams,
    },
    /// From the log, the mirror being unusable or not there yet (`streams` then).
    #[serde(rename = "log")]
    NoMirror {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        streams: Option<Streams>,
    },
}

/// Whether a long stretch of log is read in streams, or only in batches and why.
#[derive(Debug, Serialize)]
pub struct Streams {
    pub on: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<&'static str>,
}

/// What the remote speaks ([`crate::protocol`]).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ProtocolShown {
    Known {
        name: &'static str,
        reason: String,
        forced: bool,
        probed_again_because: Option<String>,
    },
    Unknown {
        name: &'static str,
        reason: String,
    },
}

/// The remote: whether it answered, and whether it moved since the last sync.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RemoteState {
    Configured {
        url: String,
        /// `set` or `not set`: the token itself is never shown.
        token: &'static str,
        /// `ok`, `auth_failed`, `unreachable`, `certificate` or `error`.
        state: &'static str,
        error: Option<String>,
        latency_ms: u64,
        moved_since_sync: Option<Moved>,
    },
    /// No URL or token could be found (`state` is `not_configured`).
    NotConfigured { state: &'static str, error: String },
}

/// Whether the remote's replication index moved since the last sync.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Moved {
    Known(bool),
    /// The recorded index could not be read: `unknown: <why>`.
    Unknown(String),
}

/// What is waiting to be pushed, or why it could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Changes {
    Read {
        changes: usize,
        tables: Vec<TableCounts>,
        schema_changes: Vec<String>,
        #[serde(skip)]
        changeset: Changeset,
    },
    Failed {
        changes_error: String,
    },
}

/// `{"table": "t", "inserted": 1, "updated": 0, "deleted": 2}`.
#[derive(Debug, Serialize)]
pub struct TableCounts {
    pub table: String,
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
}

impl Status {
    /// Reads the status of the working copy `ws` (or why there is none) and of the remote it
    /// syncs with (or why none is configured: the message of the error that says so).
    pub fn read(
        ws: &Result<Workspace, Error>,
        remote: Result<(Endpoint, Remote), String>,
    ) -> Status {
        let workspace = match ws {
            Ok(ws) => Files::Found(Box::new(WorkingCopy {
                working_copy: FileInfo::of(&ws.db_path()),
                state_dir: ws.state_dir().display().to_string(),
                base: FileInfo::of(&ws.base_path()),
                reads: reads(ws),
                interrupted: ws.interrupted(),
            })),
            Err(e) => Files::Missing {
                workspace_error: e.to_string(),
            },
        };
        let (remote, protocol) = match remote {
            Ok((endpoint, remote)) => {
                let (state, reachable) = remote_state(ws.as_ref().ok(), &endpoint, &remote);
                let protocol = ws.as_ref().ok().map(|ws| shown(ws, &remote, reachable));
                (state, protocol)
            }
            Err(error) => (
                RemoteState::NotConfigured {
                    state: "not_configured",
                    error,
                },
                None,
            ),
        };
        let changes = ws
            .as_ref()
            .ok()
            .map(|ws| match ws.diff(&Filter::default()) {
                Ok(cs) => Changes::Read {
                    changes: cs.change_count(),
                    tables: cs
                        .tables
                        .iter()
                        .filter(|t| !t.changes.is_empty())
                        .map(|t| {
                            let (inserted, updated, deleted) = t.counts();
                            TableCounts {
                                table: t.table.name.clone(),
                                inserted,
                                updated,
                                deleted,
                            }
                        })
                        .collect(),
                    schema_changes: cs.schema.iter().map(|c| c.describe()).collect(),
                    changeset: cs,
                },
                Err(e) => Changes::Failed {
                    changes_error: e.to_string(),
                },
            });
        Status {
            sqlite_version: rusqlite::version(),
            external_tools_needed: Vec::new(),
            workspace,
            protocol,
            remote,
            changes,
        }
    }

    /// Whether the remote answered: `status` fails otherwise.
    pub fn remote_ok(&self) -> bool {
        matches!(self.remote, RemoteState::Configured { state: "ok", .. })
    }

    /// The status for a person, a line per item with its name in a column; the changes as
    /// [`Changeset::write_summary`] shows them, in `color` when asked.
    pub fn write_text(&self, out: &mut dyn Write, color: bool) -> std::io::Result<()> {
        match &self.workspace {
            Files::Missing { workspace_error } => {
                writeln!(out, "working copy   none: {workspace_error}")?
            }
            Files::Found(found) => {
                let WorkingCopy {
                    working_copy,
                    state_dir,
                    base,
                    reads,
                    interrupted,
                } = &**found;
                writeln!(out, "working copy   {}", working_copy.describe())?;
                for what in interrupted {
                    writeln!(out, "interrupted    {what}")?;
                }
                writeln!(out, "state dir      {state_dir}")?;
                writeln!(out, "base snapshot  {}", base.describe())?;
                let streams = match reads {
                    Reads::Mirror {
                        mirror,
                        frame_no,
                        revision,
                        streams,
                    } => {
                        if let Some(revision) = revision {
                            writeln!(
                                out,
                                "pulls read     Turso Sync's pages: mirror {} at revision {revision}",
                                mirror.describe()
                            )?;
                        } else {
                            let frame =
                                frame_no.map_or_else(|| "null".to_owned(), |f| f.to_string());
                            writeln!(
                                out,
                                "pulls read     the replication log: mirror {} at frame {frame}",
                                mirror.describe()
                            )?;
                        }
                        Some(streams)
                    }
                    Reads::Sql { reason } => {
                        let reason = reason.as_deref().unwrap_or("?");
                        writeln!(out, "pulls read     rows over SQL, because {reason}")?;
                        None
                    }
                    Reads::Unknown { reason } => {
                        writeln!(out, "pulls read     unknown: {reason}")?;
                        None
                    }
                    Reads::NoMirror { reason, streams } => {
                        writeln!(out, "pulls read     the replication log ({reason})")?;
                        streams.as_ref()
                    }
                };
                if let Some(off) = streams.and_then(|s| s.off.as_deref()) {
                    writeln!(out, "log streams    not used, because {off}; batches read the log until the next init or a new log id")?;
                }
            }
        }
        match &self.remote {
            RemoteState::NotConfigured { error, .. } => {
                writeln!(out, "remote         not configured: {error}")?
            }
            RemoteState::Configured {
                url,
                token,
                state,
                error,
                latency_ms,
                moved_since_sync,
            } => {
                writeln!(out, "remote         {url} (token {token})")?;
                if *state == "ok" {
                    let token = if *token == "set" {
                        "token accepted"
                    } else {
                        "no token needed"
                    };
                    writeln!(
                        out,
                        "connection     ok: reachable, {token} ({latency_ms} ms)"
                    )?;
                } else {
                    let error = error.as_deref().unwrap_or(state);
                    writeln!(out, "connection     FAILED: {error}")?;
                }
                match moved_since_sync {
                    Some(Moved::Known(true)) => writeln!(
                        out,
                        "remote         changed since the last sync: run `tursync pull`"
                    )?,
                    Some(Moved::Known(false)) => {
                        writeln!(out, "remote         unchanged since the last sync")?
                    }
                    Some(Moved::Unknown(why)) => {
                        writeln!(out, "remote         changed since the last sync? {why}")?
                    }
                    None if *state == "ok" => {
                        writeln!(out, "remote         may have changed since the last sync")?
                    }
                    None => {}
                }
            }
        }
        if let Some(protocol) = &self.protocol {
            let (name, reason, again) = match protocol {
                ProtocolShown::Known {
                    name,
                    reason,
                    probed_again_because,
                    ..
                } => (*name, reason, probed_again_because.as_deref()),
                ProtocolShown::Unknown { name, reason } => (*name, reason, None),
            };
            let what = match name {
                "log" => "sqld's replication log",
                "turso-sync" => "Turso Sync (/pull-updates pages, a pipeline without streams)",
                "sql" => "SQL only",
                _ => "unknown",
            };
            writeln!(out, "protocol       {what}: {reason}")?;
            if let Some(why) = again {
                writeln!(out, "protocol       probed again, because {why}")?;
            }
        }
        writeln!(
            out,
            "external tools none needed (SQLite {} is built in)",
            self.sqlite_version
        )?;
        match &self.changes {
            Some(Changes::Read { changeset, .. }) => changeset.write_summary(out, color),
            Some(Changes::Failed { changes_error }) => {
                writeln!(out, "changes        cannot diff: {changes_error}")
            }
            None => Ok(()),
        }
    }
}

/// Asks the remote for its replication index: whether it answers, how fast, and whether it
/// moved since the last sync of `ws`. Returns whether it answered.
fn remote_state(
    ws: Option<&Workspace>,
    endpoint: &Endpoint,
    remote: &Remote,
) -> (RemoteState, bool) {
    let started = Instant::now();
    let mut moved = None;
    let (state, error) = match remote.replication_index() {
        Ok(index) => {
            if let (Some(ws), Some(now)) = (ws, index) {
                moved = match ws.sync_state().map(|s| s.replication_index) {
                    Ok(Some(known)) => Some(Moved::Known(now != known)),
                    Ok(None) => None,
                    Err(e) => Some(Moved::Unknown(format!("unknown: {e}"))),
                };
            }
            ("ok", None)
        }
        Err(e @ RemoteError::Auth { .. }) => ("auth_failed", Some(e.to_string())),
        Err(
            e @ (RemoteError::Unreachable { .. }
            | RemoteError::Dropped { .. }
            | RemoteError::GaveUp { .. }),
        ) => ("unreachable", Some(e.to_string())),
        Err(e @ RemoteError::Certificate { .. }) => ("certificate", Some(e.to_string())),
        Err(e) => ("error", Some(e.to_string())),
    };
    let shown = RemoteState::Configured {
        url: endpoint.to_string(),
        token: if remote.has_token() { "set" } else { "not set" },
        state,
        error,
        latency_ms: started.elapsed().as_millis() as u64,
        moved_since_sync: moved,
    };
    (shown, state == "ok")
}

/// What the remote speaks: probed when nothing is recorded or the record no longer holds, and
/// only when the remote answers (`reachable`); else as recorded.
fn shown(ws: &Workspace, remote: &Remote, reachable: bool) -> ProtocolShown {
    let known = |d: Detected, again: Option<String>| ProtocolShown::Known {
        name: d.protocol.as_str(),
        reason: d.reason,
        forced: d.forced,
        probed_again_because: again,
    };
    let unknown = |reason: String| ProtocolShown::Unknown {
        name: "unknown",
        reason,
    };
    if !reachable {
        return match protocol::recorded(&ws.state_dir()) {
            Some(d) => known(d, None),
            None => unknown("not probed yet: the remote did not answer".into()),
        };
    }
    let log_unusable = ws.sync_state().ok().and_then(|s| s.sql_path);
    match protocol::detect(&ws.state_dir(), log_unusable.as_deref(), remote) {
        Ok((d, again)) => known(d, again),
        Err(e) => unknown(e.to_string()),
    }
}

/// How pulls read the remote.
fn reads(ws: &Workspace) -> Reads {
    let mirror = ws.mirror();
    match (ws.sync_state(), mirror.health()) {
        (Err(e), _) | (_, Err(e)) => Reads::Unknown {
            reason: e.to_string(),
        },
        (Ok(sync), _) if sync.sql_path.is_some() => Reads::Sql {
            reason: sync.sql_path,
        },
        (Ok(sync), Ok(Some(Ok(m)))) => Reads::Mirror {
            mirror: FileInfo::of(&mirror.db_path()),
            frame_no: m.frame_no,
            revision: m.revision,
            streams: streams(&sync),
        },
        // Partial, or its files disagree: not valid, whatever its size.
        (Ok(_), Ok(Some(Err(why)))) => Reads::NoMirror {
            reason: format!("the mirror is not usable ({why}): the next pull drops it and reads the replication log again"),
            streams: None,
        },
        (Ok(sync), Ok(None)) => Reads::NoMirror {
            reason: "no mirror yet: the next pull reads the replication log".into(),
            streams: Some(streams(&sync)),
        },
    }
}

fn streams(sync: &SyncState) -> Streams {
    match &sync.streams_off {
        None => Streams {
            on: true,
            off: None,
            until: None,
        },
        Some(off) => Streams {
            on: false,
            off: Some(off.reason.clone()),
            until: Some("the next init, or a new log id"),
        },
    }
}
