//! tursync keeps a plain SQLite file as a working copy of a remote libSQL database.
//!
//! Data flows one way through the modules: [`remote`] talks Hrana to the server, [`schema`]
//! reads what a database holds, [`clone`] copies a database (remote or local) into a
//! [`clone::Sink`] — a local SQLite file ([`workspace`]) or SQL text ([`dump`]). See
//! `docs/ARCHITECTURE.md` for the map.

pub mod clone;
pub mod conflict;
pub mod diff;
pub mod dump;
pub mod merge;
pub mod pages;
pub mod progress;
pub mod pull;
pub mod push;
pub mod remote;
pub mod schema;
mod spool;
pub mod sql;
pub mod value;
pub mod verify;
pub mod watch;
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
    /// The request cannot be carried out as asked; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
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
        match self {
            Error::Remote(e) => Some(e),
            _ => None,
        }
    }

    fn gave_up(self, after: std::time::Duration, attempts: u32) -> Self {
        match self {
            Error::Remote(e) => Error::Remote(e.gave_up(after, attempts)),
            other => other,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
