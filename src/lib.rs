//! tursync keeps a plain SQLite file as a working copy of a remote libSQL database.
//!
//! Data flows one way through the modules: [`remote`] talks Hrana to the server, [`schema`]
//! reads what a database holds, [`clone`] copies a database (remote or local) into a
//! [`clone::Sink`] — a local SQLite file or SQL text ([`sink`]). See
//! `docs/ARCHITECTURE.md` for the map.

mod change_buffer;
pub mod changeset;
pub mod clone;
pub mod conflict;
pub mod diff;
mod durable;
mod in_flight;
pub mod leaf_sums;
pub mod merge;
mod migration;
pub mod mirror;
pub mod orphans;
pub mod page_sums;
pub mod pages;
pub mod progress;
pub mod protocol;
pub mod pull;
pub mod push;
pub mod remote;
pub mod report;
pub mod schema;
pub mod shared_pages;
pub mod sink;
pub mod spot_check;
pub mod sql;
pub mod status;
pub mod sync;
mod test_hook;
pub mod touched;
pub mod turso_pages;
mod unchanged;
mod unsettled;
pub mod value;
pub mod verify;
mod vfs;
pub mod watch;
mod whole_table;
pub mod workspace;

pub use conflict::{Conflict, ConflictKind, Outcome};
pub use value::Value;

/// Everything that can go wrong in the library. The CLI adds context and picks the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error("local database: {0}")]
    Local(#[from] rusqlite::Error),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A state file of ours (`.tursync/*.json`) or JSON output could not be written or read.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Something failed while `step` was being done to `object` (a table, a file): the error,
    /// with where it happened, as a path in an I/O error says which file.
    #[error("{step} {object}: {source}")]
    During {
        step: &'static str,
        object: String,
        #[source]
        source: Box<Error>,
    },
    /// No working copy here, or its state is missing, damaged or someone else's; the message
    /// says what to do.
    #[error("{0}")]
    Workspace(String),
    /// Another connection or tursync command held a lock for too long; try again later.
    #[error("{0}")]
    Busy(String),
    /// Something tursync cannot do safely (a kind of table, a schema change, a name); the
    /// message says what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// The arguments name something that is not there.
    #[error("{0}")]
    BadArgument(String),
    /// A database or the server holds or answered something tursync does not expect: damage,
    /// a change behind its back, or a bug. What was being done was rolled back.
    #[error("{0}")]
    Unexpected(String),
    /// The base is not what the remote was at the last sync (a damaged page of `base.db`, say),
    /// so a diff or a merge against it would be wrong; the message names
    /// `tursync verify --repair`, which makes it the remote's copy again.
    #[error("{0}")]
    DamagedBase(String),
}

impl Error {
    /// The error under any [`Error::During`] context.
    pub fn root(&self) -> &Error {
        match self {
            Error::During { source, .. } => source.root(),
            e => e,
        }
    }
}

/// Adds the step and the object to an error: `diff.during("diffing table", "\"t\"")`.
pub(crate) trait Context<T> {
    fn during(self, step: &'static str, object: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn during(self, step: &'static str, object: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error::During {
            step,
            object: object.to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<E: Into<Error>> From<schema::LoadError<E>> for Error {
    fn from(e: schema::LoadError<E>) -> Error {
        match e {
            schema::LoadError::Source(e) => e.into(),
            schema::LoadError::Schema(e) => e.into(),
        }
    }
}

/// A push transaction is retried as a whole when the remote failure inside passes.
impl remote::Transient for Error {
    fn remote(&self) -> Option<&remote::RemoteError> {
        match self.root() {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }

    fn gave_up(self, after: std::time::Duration, attempts: u32) -> Self {
        match self {
            Error::Remote(e) => Error::Remote(e.gave_up(after, attempts)),
            Error::During {
                step,
                object,
                source,
            } => Error::During {
                step,
                object,
                source: Box::new(source.gave_up(after, attempts)),
            },
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
