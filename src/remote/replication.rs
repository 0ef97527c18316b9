//! The replication log sqld serves to embedded replicas, read over the same HTTP client as Hrana.
//!
//! The calls are gRPC-web over HTTP/1.1 on the Hrana port: `POST /wal_log.ReplicationLog/<call>`
//! with `content-type: application/grpc-web+proto`. A body is a run of frames, each one flag byte
//! and a 4-byte big-endian length, then a protobuf message; a frame whose flag has bit 0x80 set
//! holds the trailers (`grpc-status`, `grpc-message`). An error may also come "trailers-only",
//! with `grpc-status` among the HTTP headers and no body. The messages are declared here with
//! `prost`'s derive, field for field as `libsql-replication/proto/replication_log.proto` has
//! them, so no `protoc` runs at build time.
//!
//! Frames are handed to the caller one at a time as they come off the wire, so memory stays at
//! one page whatever the length of the log or the snapshot.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use prost::Message;

use super::{Remote, RemoteError, Transient};

/// `HelloRequest`: a `handshake_version` makes the server hand out a session token instead of
/// remembering the client's address.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(uint64, optional, tag = "1")]
    handshake_version: Option<u64>,
}

/// `HelloResponse`, without the database config (field 6), which tursync does not need.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloResponse {
    #[prost(string, tag = "1")]
    generation_id: String,
    #[prost(uint64, tag = "2")]
    generation_start_index: u64,
    #[prost(string, tag = "3")]
    log_id: String,
    #[prost(bytes = "vec", tag = "4")]
    session_token: Vec<u8>,
    #[prost(uint64, optional, tag = "5")]
    current_replication_index: Option<u64>,
}

/// `LogOffset`: the first frame wanted. `wal_flavor` is left out, which means SQLite frames.
#[derive(Clone, PartialEq, prost::Message)]
struct LogOffset {
    #[prost(uint64, tag = "1")]
    next_offset: u64,
}

/// `Frame`: a WAL frame header and its page in `data`; the timestamp is not needed.
#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// What `Hello` tells about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Changes when the log is reset: whatever was read from the old one must be read again.
    pub log_id: String,
    pub generation_id: String,
    /// The last frame the server has, if any.
    pub replication_index: Option<u64>,
}

/// The 24-byte little-endian header sqld puts before each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_no: u64,
    pub page_no: u32,
    /// Non-zero on the last frame of a transaction: the database size in pages after it.
    pub size_after: u32,
}

pub const FRAME_HEADER: usize = 24;

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
        Some(FrameHeader {
            frame_no: u64_at(0)?,
            page_no: u32_at(16)?,
            size_after: u32_at(20)?,
        })
    }

    /// Whether this frame ends a transaction (the size after it is recorded only there).
    pub fn is_commit(&self) -> bool {
        self.size_after != 0
    }
}

/// The page a frame carries: what follows its [`FrameHeader`].
///
/// ```text
/// frame = [frame_no u64][checksum 8 bytes][page_no u32][size_after u32] [page …]
///                                                                        ^ page_of(frame)
/// ```
pub fn page_of(frame: &[u8]) -> &[u8] {
    frame.get(FRAME_HEADER..).unwrap_or(&[])
}

/// Why the log could not be read. [`LogError::NotServed`] and the other protocol answers make
/// the caller use the SQL path instead.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the server does not serve the replication log ({0})")]
    NotServed(String),
    /// The log was compacted past the frame asked for: the `Snapshot` call has those pages.
    #[error("the replication log was compacted past the frame asked for (NEED_SNAPSHOT)")]
    NeedSnapshot,
    /// No snapshot holds the frame asked for: the log still does, or sqld is still writing the
    /// snapshot of what it compacted. It passes, as the 503 it holds does (retried while the
    /// snapshot is written); only the mirror's look for a snapshot before it streams a long
    /// stretch takes it as final.
    #[error("no snapshot holds the frame asked for")]
    NoSnapshot(RemoteError),
    /// The session token is unknown to the server (it restarted): say hello again.
    #[error("the replication log session ended (NO_HELLO)")]
    NoHello,
    /// The log got a new id while it was being read: read it again from the start, later.
    #[error("the replication log was reset while it was read")]
    Reset,
    /// A frame came that the log's commits, as read, end before (a server behind the one that
    /// sent it, say): what was read cannot be trusted as one point; read it again, later.
    #[error("frame {0} was read, but the log's commits read end before it")]
    Uneven(u64),
    /// A stream sent no frame within this long. sqld sends its first frame at once: something
    /// between (a proxy that passes an answer on only once it is whole, say) holds the stream.
    #[error("the replication log stream sent nothing within {} ms (held by a proxy that passes answers on only once they end?)", .0.as_millis())]
    Silent(Duration),
    #[error("the replication log answered gRPC status {code}: {message}")]
    Status { code: u32, message: String },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("unexpected answer from the replication log: {0}")]
    Protocol(String),
    /// The caller's handling of a frame failed (writing the spool, say).
    #[error("storing a frame of the replication log: {0}")]
    Sink(#[from] std::io::Error),
    /// Turso Sync's `/pull-updates`, read as a log ([`crate::turso_pages`]), failed.
    #[error(transparent)]
    TursoSync(#[from] super::turso_sync::TursoSyncError),
}

impl Transient for LogError {
    fn remote(&self) -> Option<&RemoteError> {
        match self {
            LogError::Remote(e) | LogError::NoSnapshot(e) => Some(e),
            LogError::TursoSync(e) => e.remote(),
            _ => None,
        }
    }

    fn gave_up(self, after: Duration, attempts: u32) -> Self {
        match self {
            LogError::Remote(e) => LogError::Remote(e.gave_up(after, attempts)),
            LogError::TursoSync(e) => LogError::TursoSync(e.gave_up(after, attempts)),
            other => other,
        }
    }
}

/// Where frames come from; the mirror is written against this so it can be driven without a
/// server.
pub trait LogSource {
    fn hello(&mut self) -> Result<Hello, LogError>;
    /// Calls `each` with every frame (header and page) of one batch starting at `next_offset`,
    /// or of the snapshot holding it when `snapshot` is set. A batch ends at a transaction
    /// boundary; an empty one means the caller is caught up.
    fn frames(
        &mut self,
        next_offset: u64,
        snapshot: bool,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError>;
    /// Calls `each` with frames `from..=upto`, read as one stream (`LogEntries`): the server
    /// sends each frame as it reads it, where it sends a batch only once whole, and several
    /// streams over as many parts of the log keep as many of its threads reading. The stream is left after
    /// `upto`. A source without streams says `NotServed`; a stream that sends no frame within
    /// a short wait is left, and says `Silent`.
    fn stream(
        &mut self,
        _from: u64,
        _upto: u64,
        _each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        Err(LogError::NotServed("no streams from this source".into()))
    }
    /// Another reader of the same log and session, for a thread of its own; `None` when the
    /// source cannot have two.
    fn fork(&self) -> Option<Box<dyn LogSource + Send + '_>> {
        None
    }
    /// The server's own name for the point the frames read so far reach, when it has one
    /// besides the frame number (Turso Sync's revision); recorded with the mirror.
    fn revision(&self) -> Option<String> {
        None
    }
    /// Whether frame numbers are the server's replication index, the one its SQL answers
    /// carry: only then can a spot check ([`crate::spot_check`]) read the remote at the
    /// mirror's frame and conclude.
    fn frames_are_server_index(&self) -> bool {
        true
    }
    /// Runs `attempt`, again while it fails in a way that may pass (as the remote's reads are).
    fn retrying(
        &mut self,
        attempt: &mut dyn FnMut(&mut dyn LogSource) -> Result<(), LogError>,
    ) -> Result<(), LogError>;
}

/// The replication log of a [`Remote`].
pub struct ReplicationLog<'r> {
    remote: &'r Remote,
    session: Option<String>,
    /// How long the last `Hello` took to be answered: a round trip or more.
    hello_took: Duration,
}

/// How long a snapshot may take to arrive: it holds the whole database.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The least a stream may stay silent: sqld sends a stream's first frame as soon as it has read
/// it from its log, 0.3 to 3.4 ms after the request on a local sqld (from the middle of a log
/// of 2500 frames), so a stream silent for this long is held on the way. Half a second is far
/// beyond that and beyond most round trips, and keeps a clone through a proxy that holds
/// streams (left after this wait, then read in batches) within a second of a direct one: at
/// 200k rows 0.07 s direct, 0.64 s through it.
const STREAM_QUIET: Duration = Duration::from_millis(500);
/// The most it may: a stream falls back to batches after this at worst.
const STREAM_QUIET_MAX: Duration = Duration::from_secs(5);

impl<'r> ReplicationLog<'r> {
    pub fn new(remote: &'r Remote) -> ReplicationLog<'r> {
        ReplicationLog {
            remote,
            session: None,
            hello_took: Duration::ZERO,
        }
    }

    /// How long a stream may send nothing: [`STREAM_QUIET`], or on a slower network twice what
    /// `Hello` took (a round trip, often with the connection's set-up), up to
    /// [`STREAM_QUIET_MAX`].
    fn stream_quiet(&self) -> Duration {
        (2 * self.hello_took).clamp(STREAM_QUIET, STREAM_QUIET_MAX)
    }

    /// One call: sends `msg`, checks the answer's HTTP and trailers-only status, and returns the
    /// body to read frames from. `quiet` bounds any silence of the server's (see
    /// [`Remote::post_grpc`]).
    fn call(
        &self,
        method: &str,
        msg: &impl Message,
        body_timeout: Duration,
        quiet: Option<Duration>,
    ) -> Result<BufReader<ureq::BodyReader<'static>>, LogError> {
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        msg.encode(&mut body)
            .map_err(|e| LogError::Protocol(e.to_string()))?;
        let resp = self.remote.post_grpc(
            &format!("wal_log.ReplicationLog/{method}"),
            &body,
            self.session.as_deref(),
            body_timeout,
            quiet,
        )?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(code) = header("grpc-status").and_then(|c| c.trim().parse::<u32>().ok()) {
            if code != 0 {
                return Err(status_error(
                    code,
                    header("grpc-message").unwrap_or_default(),
                ));
            }
        }
        if matches!(status, 404 | 405 | 415) {
            return Err(LogError::NotServed(format!("HTTP {status}")));
        }
        if status != 200 {
            let mut text = Vec::new();
            let _ = resp
                .into_body()
                .into_reader()
                .take(4096)
                .read_to_end(&mut text);
            return Err(self.remote.status_error(status, &text).into());
        }
        if !header("content-type").is_some_and(|c| c.starts_with("application/grpc")) {
            return Err(LogError::NotServed(format!(
                "HTTP 200 with content-type {:?}",
                header("content-type").unwrap_or_default()
            )));
        }
        Ok(BufReader::with_capacity(
            64 << 10,
            resp.into_body().into_reader(),
        ))
    }
}

impl LogSource for ReplicationLog<'_> {
    fn retrying(
        &mut self,
        attempt: &mut dyn FnMut(&mut dyn LogSource) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let remote = self.remote;
        remote.retrying(|| attempt(self))
    }

    fn hello(&mut self) -> Result<Hello, LogError> {
        let req = HelloRequest {
            handshake_version: Some(1),
        };
        let resp: HelloResponse = self.remote.retrying(|| {
            let started = Instant::now();
            let mut r = self.call("Hello", &req, super::RESPONSE_TIMEOUT, None)?;
            let mut reply = None;
            read_messages(&mut r, &mut |len, r| {
                let mut buf = vec![0; len];
                r.read_exact(&mut buf).map_err(read_error)?;
                reply = Some(
                    HelloResponse::decode(&buf[..])
                        .map_err(|e| LogError::Protocol(format!("Hello reply: {e}")))?,
                );
                Ok(More::Yes)
            })?;
            self.hello_took = started.elapsed();
            reply.ok_or_else(|| LogError::Protocol("Hello sent no reply".into()))
        })?;
        if resp.log_id.is_empty() {
            return Err(LogError::Protocol("Hello named no log".into()));
        }
        self.session = Some(
            String::from_utf8(resp.session_token)
                .map_err(|_| LogError::Protocol("session token is not text".into()))?,
        );
        Ok(Hello {
            log_id: resp.log_id,
            generation_id: resp.generation_id,
            replication_index: resp.current_replication_index,
        })
    }

    fn frames(
        &mut self,
        next_offset: u64,
        snapshot: bool,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        let req = LogOffset { next_offset };
        let (method, timeout) = if snapshot {
            ("Snapshot", SNAPSHOT_TIMEOUT)
        } else {
            ("BatchLogEntries", super::RESPONSE_TIMEOUT)
        };
        let mut r = self.call(method, &req, timeout, None)?;
        let mut frame = Vec::new();
        read_messages(&mut r, &mut |len, r| {
            if snapshot {
                // A server stream: every message is one `Frame`.
                read_frame(r, len, &mut frame)?;
                each(&frame)?;
                return Ok(More::Yes);
            }
            // One `Frames` message: its field 1, repeated, read one `Frame` at a time.
            let mut left = len;
            while left > 0 {
                let (tag, a) = read_varint(r)?;
                let (n, b) = read_varint(r)?;
                let n =
                    usize::try_from(n).map_err(|_| LogError::Protocol("frame length".into()))?;
                if tag != (1 << 3 | 2) || a + b + n > left {
                    return Err(LogError::Protocol(format!(
                        "Frames message with field tag {tag} of {n} bytes"
                    )));
                }
                read_frame(r, n, &mut frame)?;
                each(&frame)?;
                left -= a + b + n;
            }
            Ok(More::Yes)
        })
    }

    fn stream(
        &mut self,
        from: u64,
        upto: u64,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        let req = LogOffset { next_offset: from };
        // A stream waits for frames that do not exist yet (a log reset meanwhile, say): it gets
        // a response's time, not a snapshot's, and the caller's batches take over after it. It
        // may not stay silent long: a proxy that passes an answer on only once it is whole
        // would hold a stream, which does not end, until that time is up.
        let quiet = self.stream_quiet();
        let started = Instant::now();
        let mut last = None;
        let read = (|| {
            let mut r = self.call("LogEntries", &req, super::RESPONSE_TIMEOUT, Some(quiet))?;
            let mut frame = Vec::new();
            read_messages(&mut r, &mut |len, r| {
                read_frame(r, len, &mut frame)?;
                let h = FrameHeader::parse(&frame)
                    .ok_or_else(|| LogError::Protocol("a frame without its header".into()))?;
                if h.frame_no > upto {
                    return Err(LogError::Protocol(format!(
                        "frame {} past the {upto} asked for",
                        h.frame_no
                    )));
                }
                each(&frame)?;
                last = Some(h.frame_no);
                Ok(if h.frame_no == upto {
                    More::No
                } else {
                    More::Yes
                })
            })
        })();
        match read {
            // Nothing came for as long as it may stay silent: whatever ended it (the wait, or
            // a connection closed after it), the stream is held on the way.
            Err(LogError::Remote(_)) if last.is_none() && started.elapsed() >= quiet => {
                return Err(LogError::Silent(quiet))
            }
            other => other?,
        }
        // The stream is left unread past `upto`; its connection is not reused.
        if last != Some(upto) {
            return Err(LogError::Protocol(format!(
                "the stream ended at frame {last:?}, before {upto}"
            )));
        }
        Ok(())
    }

    fn fork(&self) -> Option<Box<dyn LogSource + Send + '_>> {
        Some(Box::new(ReplicationLog {
            remote: self.remote,
            session: self.session.clone(),
            hello_took: self.hello_took,
        }))
    }
}

/// Reads gRPC-web frames until the trailers, or until `message` (which reads each message of
/// `len` bytes from the body) says it wants no more. A trailer with a non-zero `grpc-status` is
/// the call's error.
fn read_messages(
    r: &mut BufReader<ureq::BodyReader<'static>>,
    message: &mut dyn FnMut(usize, &mut dyn Read) -> Result<More, LogError>,
) -> Result<(), LogError> {
    loop {
        if r.fill_buf().map_err(read_error)?.is_empty() {
            // Trailers may also come as HTTP trailers, which HTTP/1.1 clients drop: a body
            // that simply ends is a complete answer.
            return Ok(());
        }
        let mut head = [0u8; 5];
        r.read_exact(&mut head).map_err(read_error)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] & 0x80 != 0 {
            let mut text = vec![0; len];
            r.read_exact(&mut text).map_err(read_error)?;
            // The body's end read too: only then does the connection go back to the pool for
            // the next request, which would otherwise open another and pay a round trip for it
            // (two on https). Nothing should follow the trailers; a server that sent more
            // only costs its connection.
            let _ = std::io::copy(&mut r.take(AFTER_TRAILERS), &mut std::io::sink());
            return trailers(&String::from_utf8_lossy(&text));
        }
        if head[0] != 0 {
            return Err(LogError::Protocol(format!(
                "compressed or unknown frame (flag {})",
                head[0]
            )));
        }
        let mut limited = r.take(len as u64);
        let more = message(len, &mut limited)?;
        if limited.limit() != 0 {
            return Err(LogError::Protocol("a message was not read whole".into()));
        }
        if more == More::No {
            return Ok(());
        }
    }
}

/// The most read past the trailers for the connection to be kept.
const AFTER_TRAILERS: u64 = 4096;

/// Whether a reader of messages wants the next one.
#[derive(PartialEq, Eq)]
enum More {
    Yes,
    No,
}

/// `grpc-status: N\r\ngrpc-message: …` as a result.
fn trailers(text: &str) -> Result<(), LogError> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    match field("grpc-status").map(|c| c.parse::<u32>()) {
        None | Some(Ok(0)) => Ok(()),
        Some(Ok(code)) => Err(status_error(
            code,
            field("grpc-message").unwrap_or_default(),
        )),
        Some(Err(_)) => Err(LogError::Protocol(format!("trailers {text:?}"))),
    }
}

/// A gRPC status as an error: the ones tursync acts on get their own variant.
fn status_error(code: u32, message: String) -> LogError {
    // The message is percent-encoded on the wire.
    let message = url::form_urlencoded::parse(format!("m={message}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or(message);
    match code {
        // UNIMPLEMENTED
        12 => LogError::NotServed(format!("gRPC status 12: {message}")),
        // FAILED_PRECONDITION
        9 if message.contains("NEED_SNAPSHOT") => LogError::NeedSnapshot,
        9 if message.contains("NO_HELLO") => LogError::NoHello,
        // sqld's answer to `Snapshot` for a frame no snapshot holds (not one that passes).
        14 if message.contains("snapshot not found") => {
            LogError::NoSnapshot(RemoteError::Unavailable {
                status: 503,
                retry_after: None,
            })
        }
        // UNAVAILABLE: a server restarting; passes like an HTTP 503.
        14 => LogError::Remote(RemoteError::Unavailable {
            status: 503,
            retry_after: None,
        }),
        _ => LogError::Status { code, message },
    }
}

fn read_frame(r: &mut dyn Read, len: usize, frame: &mut Vec<u8>) -> Result<(), LogError> {
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).map_err(read_error)?;
    let f = Frame::decode(&buf[..]).map_err(|e| LogError::Protocol(format!("Frame: {e}")))?;
    if f.data.len() <= FRAME_HEADER {
        return Err(LogError::Protocol(format!(
            "a frame of {} bytes",
            f.data.len()
        )));
    }
    *frame = f.data;
    Ok(())
}

/// A protobuf varint off the wire and how many bytes it took.
fn read_varint(r: &mut dyn Read) -> Result<(u64, usize), LogError> {
    let mut bytes = Vec::with_capacity(10);
    loop {
        let mut b = [0u8];
        r.read_exact(&mut b).map_err(read_error)?;
        bytes.push(b[0]);
        if b[0] & 0x80 == 0 || bytes.len() == 10 {
            break;
        }
    }
    let n = bytes.len();
    prost::encoding::decode_varint(&mut &bytes[..])
        .map(|v| (v, n))
        .map_err(|e| LogError::Protocol(e.to_string()))
}

/// A body that breaks off is a dropped connection, which may pass.
fn read_error(e: std::io::Error) -> LogError {
    LogError::Remote(RemoteError::Dropped {
        url: String::new(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_and_headers_parse() {
        let b: Vec<u8> = [
            7u64.to_le_bytes().as_slice(),
            &9u64.to_le_bytes(),
            &3u32.to_le_bytes(),
            &12u32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(
            FrameHeader::parse(&b),
            Some(FrameHeader {
                frame_no: 7,
                page_no: 3,
                size_after: 12
            })
        );
        assert!(trailers("grpc-status:0\r\n").is_ok());
        assert!(matches!(
            trailers("grpc-status: 9\r\ngrpc-message: NEED_SNAPSHOT\r\n"),
            Err(LogError::NeedSnapshot)
        ));
        assert!(matches!(
            status_error(12, "not%20here".into()),
            LogError::NotServed(m) if m.ends_with("not here")
        ));
    }
}
