//! Turso Sync's page pull, `POST /pull-updates`, as Turso's own sync engine calls it
//! (`sync/engine/src/server_proto.rs` in the turso repository).
//!
//! The request is one protobuf message; the answer is a stream of length-delimited messages:
//! a header (the server's revision, the database's size in pages, the pages' encoding, whether
//! they apply on top of the client's copy or replace it), then one `PageData` per page, the
//! newest copy of each page that changed between the client's revision and the server's
//! (every page for a client without a revision). A revision is an opaque string.
//!
//! Messages are declared by hand with `prost`'s derive, as [`super::replication`] does for the
//! gRPC log, and read off the body one at a time: memory holds one page, whatever the
//! database's size.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use prost::Message;

use super::{Remote, RemoteError, Transient};

/// `PullUpdatesReqProtoBody`.
#[derive(Clone, PartialEq, Message)]
struct PullUpdatesReq {
    /// 0: raw pages, 1: zstd (not asked for).
    #[prost(int32, tag = "1")]
    encoding: i32,
    /// Empty: the server's newest.
    #[prost(string, tag = "2")]
    server_revision: String,
    /// Empty: a client with nothing yet (all pages).
    #[prost(string, tag = "3")]
    client_revision: String,
    #[prost(uint32, tag = "4")]
    long_poll_timeout_ms: u32,
    /// A serialized RoaringBitmap of the pages wanted (0-based); empty: all of them.
    #[prost(bytes = "vec", tag = "5")]
    server_pages_selector: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    client_pages: Vec<u8>,
    #[prost(string, tag = "7")]
    server_query_selector: String,
    /// 0: pages.
    #[prost(int32, tag = "8")]
    stream_kind: i32,
}

/// `PageSetRawEncodingProto`.
#[derive(Clone, PartialEq, Message)]
struct RawEncoding {}

/// `PageSetZstdEncodingProto`.
#[derive(Clone, PartialEq, Message)]
struct ZstdEncoding {
    #[prost(int32, tag = "1")]
    level: i32,
}

/// `PullUpdatesRespProtoBody`.
#[derive(Clone, PartialEq, Message)]
struct PullUpdatesResp {
    #[prost(string, tag = "1")]
    server_revision: String,
    #[prost(uint64, tag = "2")]
    db_size: u64,
    #[prost(message, optional, tag = "3")]
    raw_encoding: Option<RawEncoding>,
    #[prost(message, optional, tag = "4")]
    zstd_encoding: Option<ZstdEncoding>,
    #[prost(int32, tag = "5")]
    stream_kind: i32,
    #[prost(int32, tag = "6")]
    apply_mode: i32,
}

/// `PageData`.
#[derive(Clone, PartialEq, Message)]
struct PageData {
    /// 0-based: page 1 of the file is 0.
    #[prost(uint64, tag = "1")]
    page_id: u64,
    #[prost(bytes = "vec", tag = "2")]
    encoded_page: Vec<u8>,
}

/// How the pages of an answer apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// On top of the client's copy at the revision it sent.
    Incremental,
    /// Instead of it: the answer is the whole database.
    ReplaceBase,
}

/// What an answer says before its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullHeader {
    /// The revision the pages bring the client to.
    pub revision: String,
    /// The database's size at that revision, in pages.
    pub db_size: u64,
    pub apply_mode: ApplyMode,
}

#[derive(Debug, thiserror::Error)]
pub enum TursoSyncError {
    #[error("the server does not serve Turso Sync's /pull-updates ({0})")]
    NotServed(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("unexpected /pull-updates answer: {0}")]
    Protocol(String),
    #[error("writing a page pulled from the remote: {0}")]
    Sink(std::io::Error),
    /// A bootstrap (or an answer that replaces the client's copy) without every page of the
    /// database: the server cannot give the whole file by pages. tursodb serves only the
    /// pages of its WAL, so a file it checkpointed (turso#5971) is not whole from them.
    #[error("Turso Sync's /pull-updates sent {got} of the database's {size} pages (the server serves only the pages still in its WAL, as after a checkpoint)")]
    Incomplete { got: u64, size: u64 },
    /// The revision the mirror is at names another history on the server now (its WAL was
    /// checkpointed and started again): pages pulled from it would not make the remote's file.
    #[error("the server no longer knows revision {revision} of the mirror ({why})")]
    Reset { revision: String, why: String },
}

impl Transient for TursoSyncError {
    fn remote(&self) -> Option<&RemoteError> {
        match self {
            TursoSyncError::Remote(e) => Some(e),
            _ => None,
        }
    }

    fn gave_up(self, after: Duration, attempts: u32) -> Self {
        match self {
            TursoSyncError::Remote(e) => TursoSyncError::Remote(e.gave_up(after, attempts)),
            other => other,
        }
    }
}

/// A page is 512 bytes to 64 KiB; a message past this is no page of a database.
const MAX_MESSAGE: u64 = (64 << 10) + 64;
/// How long a whole answer may take to arrive: a bootstrap holds the whole database.
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Turso Sync's page pull on a [`Remote`].
pub struct TursoSync<'r> {
    remote: &'r Remote,
}

impl<'r> TursoSync<'r> {
    pub fn new(remote: &'r Remote) -> TursoSync<'r> {
        TursoSync { remote }
    }

    /// Whether the server serves `/pull-updates`: asks for page 0 only (the database's first
    /// page), so the answer is small whatever the database's size. `NotServed` when it does
    /// not.
    pub fn probe(&self) -> Result<PullHeader, TursoSyncError> {
        let req = PullUpdatesReq {
            server_pages_selector: roaring_of_one(0),
            ..PullUpdatesReq::default()
        };
        self.remote
            .retrying(|| self.request(&req, &mut |_, _| Ok(())))
    }

    /// The newest copy of every page changed after revision `from` (every page when `from` is
    /// `None`: a bootstrap) up to revision `to` (the server's newest when `None`), handed to
    /// `each` one at a time as (0-based page id, page bytes), in the order the server sends
    /// them. Not retried: a retry must start again from nothing, which only the caller can do
    /// with what `each` kept (the mirror's `LogSource::retrying` rewinds its sink).
    pub fn pull(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        each: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<PullHeader, TursoSyncError> {
        let req = PullUpdatesReq {
            client_revision: from.unwrap_or_default().to_owned(),
            server_revision: to.unwrap_or_default().to_owned(),
            ..PullUpdatesReq::default()
        };
        self.request(&req, each)
    }

    fn request(
        &self,
        req: &PullUpdatesReq,
        each: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<PullHeader, TursoSyncError> {
        let resp = self.remote.post_bytes(
            "pull-updates",
            "application/protobuf",
            &req.encode_to_vec(),
            PULL_TIMEOUT,
        )?;
        let status = resp.status().as_u16();
        if matches!(status, 404 | 405) {
            return Err(TursoSyncError::NotServed(format!("HTTP {status}")));
        }
        let mut body = BufReader::with_capacity(64 << 10, resp.into_body().into_reader());
        if status != 200 {
            let mut text = Vec::new();
            let _ = body.take(4096).read_to_end(&mut text);
            return Err(self.remote.status_error(status, &text).into());
        }
        let mut buf = Vec::new();
        if !next_message(&mut body, &mut buf)? {
            return Err(TursoSyncError::Protocol("the answer is empty".into()));
        }
        let head = PullUpdatesResp::decode(&buf[..])
            .map_err(|e| TursoSyncError::Protocol(format!("header: {e}")))?;
        if head.zstd_encoding.is_some() {
            return Err(TursoSyncError::Protocol(
                "pages came zstd-compressed, which was not asked for".into(),
            ));
        }
        if head.stream_kind != 0 {
            return Err(TursoSyncError::Protocol(format!(
                "a stream of kind {} instead of pages",
                head.stream_kind
            )));
        }
        let apply_mode = match head.apply_mode {
            0 => ApplyMode::Incremental,
            1 => ApplyMode::ReplaceBase,
            other => {
                return Err(TursoSyncError::Protocol(format!(
                    "unknown apply mode {other}"
                )))
            }
        };
        while next_message(&mut body, &mut buf)? {
            let page = PageData::decode(&buf[..])
                .map_err(|e| TursoSyncError::Protocol(format!("page: {e}")))?;
            if head.db_size != 0 && page.page_id >= head.db_size {
                return Err(TursoSyncError::Protocol(format!(
                    "page {} of a database of {} pages",
                    page.page_id, head.db_size
                )));
            }
            each(page.page_id, &page.encoded_page).map_err(TursoSyncError::Sink)?;
        }
        Ok(PullHeader {
            revision: head.server_revision,
            db_size: head.db_size,
            apply_mode,
        })
    }
}

/// Reads one length-delimited message into `buf`; false at the end of the body.
fn next_message(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<bool, TursoSyncError> {
    if r.fill_buf().map_err(read_error)?.is_empty() {
        return Ok(false);
    }
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        r.read_exact(&mut b).map_err(read_error)?;
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        if shift >= 63 {
            return Err(TursoSyncError::Protocol("a length prefix runs on".into()));
        }
    }
    if len > MAX_MESSAGE {
        return Err(TursoSyncError::Protocol(format!(
            "a message of {len} bytes, more than any page"
        )));
    }
    buf.clear();
    r.take(len).read_to_end(buf).map_err(read_error)?;
    if buf.len() as u64 != len {
        return Err(read_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the answer ended inside a message",
        )));
    }
    Ok(true)
}

fn read_error(e: std::io::Error) -> TursoSyncError {
    TursoSyncError::Remote(RemoteError::Dropped {
        url: String::new(),
        reason: e.to_string(),
    })
}

/// A RoaringBitmap holding the single value `v`, in its portable serialization: the cookie
/// of a bitmap without run containers, one container (its key, its cardinality less one, its
/// offset), and its one 16-bit value.
fn roaring_of_one(v: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&12346u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&((v >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&(v as u16).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_delimited_messages_are_read_one_by_one() {
        let mut body = Vec::new();
        PageData {
            page_id: 3,
            encoded_page: vec![7; 300],
        }
        .encode_length_delimited(&mut body)
        .unwrap();
        let mut r = std::io::Cursor::new(body);
        let mut buf = Vec::new();
        assert!(next_message(&mut r, &mut buf).unwrap());
        let p = PageData::decode(&buf[..]).unwrap();
        assert_eq!((p.page_id, p.encoded_page.len()), (3, 300));
        assert!(!next_message(&mut r, &mut buf).unwrap());
        let mut cut = std::io::Cursor::new(vec![0x90, 0x03, 1, 2]);
        assert!(next_message(&mut cut, &mut buf).is_err());
    }

    #[test]
    fn a_bitmap_of_one_page() {
        assert_eq!(
            roaring_of_one(0),
            [0x3a, 0x30, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0]
        );
    }
}
