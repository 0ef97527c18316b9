//! The `tursync` command line: parses arguments, finds the workspace and the remote, and maps
//! library errors to messages and exit codes. The work itself lives in the library.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use tursync::clone::{self, FetchOptions};
use tursync::diff::{Changeset, Filter};
use tursync::progress::Progress;
use tursync::pull::{MergeOptions, PullReport, Resolve};
use tursync::push::{PushOptions, PushReport};
use tursync::remote::{Endpoint, Remote, RemoteError};
use tursync::sink::SqlSink;
use tursync::workspace::{self, Workspace, DEFAULT_DB};
use tursync::{Conflict, ConflictKind, Outcome};

const EXIT_HELP: &str = "\
Exit codes:
  0  success
  1  failure (network, authentication, local file, refused operation)
  2  usage error (bad arguments, no database URL)
  3  conflict: the same rows or schema changed here and on the remote; nothing was changed
  4  verify: the base differs from the remote at the recorded sync point (drift)
  5  verify: the working copy or the base fails SQLite's integrity check";

#[derive(Parser)]
#[command(
    name = "tursync",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TURSYNC_COMMIT"), ")"),
    about = "Keep a plain local SQLite file as a working copy of a remote libSQL database",
    long_about = "Keep a plain local SQLite file as a working copy of a remote libSQL database \
(Turso Cloud or sqld). Your app reads and writes the local file with any SQLite driver; \
tursync clones the remote exactly, rowids and bytes included.",
    after_help = "Examples:
  export TURSO_DATABASE_URL=libsql://mydb-me.turso.io TURSO_AUTH_TOKEN=...
  tursync init                 # clone into ./working_copy.db
  tursync status               # where things are, and whether the remote answers
  tursync dump > remote.sql    # the remote as SQL text, rowids included

The URL and token may also come from a .env file in the current directory.",
    after_long_help = EXIT_HELP
)]
struct Cli {
    /// Remote database URL: libsql://, https:// or http://. Defaults to the one saved by init
    #[arg(long, env = "TURSO_DATABASE_URL", global = true, value_name = "URL")]
    url: Option<String>,

    /// Auth token, sent as a Bearer token. Never printed, logged or saved
    #[arg(
        long,
        env = "TURSO_AUTH_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// The working copy. Defaults to the one found in .tursync/ here or in a parent directory
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,

    /// No progress bars, and no notes about retries
    #[arg(long, short, global = true)]
    quiet: bool,

    /// Give up on a failing request after retrying it this long. Reads and whole push
    /// transactions are retried (with backoff) on HTTP 429/502/503/504, refused or broken
    /// connections and timeouts
    #[arg(long, global = true, value_name = "SECS", default_value = "60", value_parser = seconds)]
    retry_for: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Clone the remote into a new working copy
    #[command(
        visible_alias = "dump-init",
        after_help = "Examples:
  tursync init --url http://127.0.0.1:8080
  tursync init --db app.db --force     # replace app.db and its state

Creates the working copy (default ./working_copy.db) and .tursync/ beside it, holding the
base snapshot and the URL (never the token). Everything is built aside and renamed into place,
so a failed init leaves nothing behind. Without --force it never replaces a .tursync/ that
holds another working copy's state or whose config cannot be read."
    )]
    Init {
        /// Replace an existing working copy (its unpushed changes are lost)
        #[arg(long)]
        force: bool,
    },
    /// Show the working copy, its state and whether the remote answers
    #[command(after_help = "Examples:
  tursync status
  tursync status --json | jq .remote

Exits with 1 when the remote cannot be reached or rejects the token.")]
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show what changed in the working copy since the last sync
    #[command(after_help = "Examples:
  tursync diff                       # rows inserted, updated, deleted per table; schema changes
  tursync diff --table users --json  # one table's changeset, values typed
  tursync diff --sql > changes.sql   # cp .tursync/base.db x.db && sqlite3 x.db < changes.sql")]
    Diff {
        /// Print SQL that turns a copy of the base into the working copy
        #[arg(long, conflicts_with = "json")]
        sql: bool,
        /// Print the changeset as JSON
        #[arg(long)]
        json: bool,
        /// Only this table (and its indexes and triggers)
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
    },
    /// Send the working copy's changes to the remote in one transaction
    #[command(
        visible_alias = "dump-push",
        after_help = "Examples:
  tursync push                 # apply local changes remotely, all or nothing
  tursync push --dry-run       # show the SQL that would be applied; send nothing
  tursync push --json          # report (or conflicts) as JSON

Every row the push touches must still hold, on the remote, the version the last sync saw
(or already the local one, which is skipped). Otherwise nothing is pushed, the conflicting
rows are listed with their base, local and remote values, and the exit code is 3.
The SQL sent is kept under .tursync/pushes/ (the newest 50 pushes, 16 MB at most)."
    )]
    Push {
        /// Print what would be applied and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable report
        #[arg(long)]
        json: bool,
    },
    /// Bring the remote's changes into the working copy with a three-way merge
    #[command(after_help = "Examples:
  tursync pull                 # merge remote changes; refuse (exit 3) on conflicts
  tursync pull --theirs        # settle every conflict with the remote's side
  tursync pull --ours          # settle every conflict with the working copy's side
  tursync pull --theirs orders --ours notes   # settle table by table

Changes to different rows, or to different columns of one row, merge by themselves. New rows
on both sides that took the same integer key (INTEGER PRIMARY KEY, AUTOINCREMENT or hidden
rowid) are no conflict: ours move to keys free on both sides, with every foreign key that
points at them (--no-renumber makes them conflicts). These are conflicts:
  cell         the same cell changed both ways
  row          a row deleted on one side and changed on the other
  unique       their row and ours hold the same values under a UNIQUE constraint
               (--theirs: our row gives way, back to its remote version if the remote has
               it, else it goes; --ours: their change gives way, and the next push sends
               ours over it)
  foreign_key  a row left pointing at a row one side deleted (--theirs or --ours: the side
               that deleted it keeps its delete, and the ON DELETE action applies to the
               rows pointing at it; the other side's restores it, with the rows its delete
               took along; each row is listed)
Unpushed local changes stay pending. The app may keep the working copy open: pull plans the
merge from a snapshot, then waits for its write lock (up to 10 s) and applies the merge in one
transaction.")]
    Pull {
        #[command(flatten)]
        side: Side,
        /// Report our new rows whose keys others' new rows took as conflicts, instead of
        /// renumbering them
        #[arg(long)]
        no_renumber: bool,
        /// Machine-readable report
        #[arg(long)]
        json: bool,
    },
    /// Pull, then push, stopping at the first conflict
    #[command(after_help = "Examples:
  tursync sync
  tursync sync --theirs

A push refused because a teammate pushed between the pull and the push is a race, not a
conflict: sync pulls again and pushes again (up to 3 pushes), and exits 3 only for a conflict
that a fresh pull still reports.")]
    Sync {
        #[command(flatten)]
        side: Side,
        /// Report our new rows whose keys others' new rows took as conflicts, instead of
        /// renumbering them
        #[arg(long)]
        no_renumber: bool,
        /// Machine-readable report
        #[arg(long)]
        json: bool,
    },
    /// Check the working copy and the base for damage, and the base against the remote
    #[command(after_help = "Examples:
  tursync verify
  tursync verify --json

Runs SQLite's integrity check on the working copy and on the base, then reads the whole remote
and compares it with the base, table by table. When the remote has not moved since the last
sync, any difference is drift (exit 4); when it has, the differences are others' changes not
yet pulled (exit 0). A damaged file exits 5. The working copy is read in one read transaction,
which makes an app in rollback-journal mode wait for the check to end.")]
    Verify {
        /// Machine-readable report
        #[arg(long)]
        json: bool,
    },
    /// Sync continuously: after each local commit, when the remote moves, and every interval
    #[command(after_help = "Examples:
  tursync watch                       # beside the app, until Ctrl-C or SIGTERM
  tursync watch --interval 0.5 --json # one JSON line per round that did something
  tursync watch -v                    # also every check that found nothing

Each round is `tursync sync`: pull, then push, each all or nothing. A local commit is seen
within 50 ms (PRAGMA data_version); the remote's replication index is checked every interval.
A conflict is reported once (the same report as sync); watch keeps running and tries again when
either side changes, so it can be settled with the app or `tursync pull --ours/--theirs`.
Network failures and server restarts are waited out with exponential backoff, saying so. A bad
token, a working copy that is gone or a damaged file stop it (exit 1). SIGINT or SIGTERM ends
it after the current step (exit 0); a second one ends it at once (exit 130), leaving nothing
half-done: every step is a transaction.")]
    Watch {
        /// Seconds between checks of the remote (fractions allowed)
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = seconds)]
        interval: Duration,
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
        /// Also log every check that found nothing to do
        #[arg(long, short)]
        verbose: bool,
    },
    /// Write the database as SQL text that sqlite3 loads into an identical database
    #[command(after_help = "Examples:
  tursync dump --out remote.sql && sqlite3 copy.db < remote.sql
  tursync dump --local > working.sql")]
    Dump {
        /// Write to FILE instead of standard output
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Dump the local working copy instead of the remote
        #[arg(long)]
        local: bool,
    },
    /// Print a shell completion script
    #[command(after_help = "Examples:
  tursync completions bash > ~/.local/share/bash-completion/completions/tursync
  tursync completions zsh > ~/.zfunc/_tursync      # with fpath+=~/.zfunc in ~/.zshrc
  tursync completions fish > ~/.config/fish/completions/tursync.fish")]
    Completions {
        /// The shell to complete in
        shell: clap_complete::Shell,
    },
}

/// Which side wins a merge conflict, in every table or table by table.
#[derive(clap::Args, Clone)]
struct Side {
    /// Settle conflicts with the working copy's side: alone, in every table; with TABLE
    /// (repeatable), in that table
    #[arg(long, value_name = "TABLE", num_args = 0..=1, default_missing_value = EVERY_TABLE)]
    ours: Vec<String>,
    /// Settle conflicts with the remote's side: alone, in every table; with TABLE
    /// (repeatable), in that table
    #[arg(long, value_name = "TABLE", num_args = 0..=1, default_missing_value = EVERY_TABLE)]
    theirs: Vec<String>,
}

/// What a bare `--ours` or `--theirs` stands for.
const EVERY_TABLE: &str = "\u{0}every table";

impl Side {
    fn merge(&self, no_renumber: bool) -> Result<MergeOptions> {
        let mut opts = MergeOptions {
            resolve: Resolve::Refuse,
            tables: Default::default(),
            renumber: !no_renumber,
        };
        for (names, side) in [(&self.ours, Resolve::Ours), (&self.theirs, Resolve::Theirs)] {
            for name in names {
                let slot = if name == EVERY_TABLE {
                    &mut opts.resolve
                } else {
                    opts.tables.entry(name.clone()).or_insert(Resolve::Refuse)
                };
                if *slot != Resolve::Refuse && *slot != side {
                    let which = if name == EVERY_TABLE {
                        "every table"
                    } else {
                        name
                    };
                    return Err(Exit(2, format!("--ours and --theirs both name {which}")).into());
                }
                *slot = side;
            }
        }
        Ok(opts)
    }
}

/// An error that should exit with a code other than 1.
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    // `.env` fills in what the real environment does not set; it never overrides it.
    if Path::new(".env").is_file() {
        if let Err(e) = dotenvy::from_path(".env") {
            // Never the parser's own message: it quotes the offending line, which may hold
            // the token.
            let why = match e {
                dotenvy::Error::LineParse(_, at) => {
                    format!("a line could not be parsed (at character {at})")
                }
                dotenvy::Error::Io(e) => e.to_string(),
                _ => "it could not be read".to_owned(),
            };
            eprintln!("warning: ignoring the rest of .env: {why}");
        }
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = match (e.downcast_ref::<Exit>(), e.downcast_ref::<tursync::Error>()) {
                (Some(x), _) => x.0,
                // `--theirs TABLE` naming no table is a usage error.
                (_, Some(e)) if matches!(e.root(), tursync::Error::BadArgument(_)) => 2,
                _ => 1,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let progress = Progress::new(!cli.quiet);
    match &cli.command {
        Command::Init { force } => {
            let (endpoint, remote) = connect(&cli, None)?;
            let db = cli.db.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DB));
            let started = Instant::now();
            let report = workspace::init(
                &endpoint,
                &remote,
                &db,
                *force,
                FetchOptions::default(),
                &progress,
            )
            .with_context(|| format!("init from {endpoint} failed; nothing was written"))?;
            progress.finish();
            println!(
                "cloned {} ({} tables, {} rows) into {} in {:.1}s",
                endpoint,
                report.stats.tables,
                report.stats.rows,
                report.workspace.db_path().display(),
                started.elapsed().as_secs_f64()
            );
            if !report.schema.skipped.is_empty() {
                println!(
                    "skipped internal tables: {}",
                    report.schema.skipped.join(", ")
                );
            }
            // What the remote speaks, recorded for status and later commands; a failed probe
            // is only a note: the next status probes again.
            match tursync::protocol::detect(&report.workspace.state_dir(), None, &remote) {
                Ok((found, _)) if !cli.quiet => {
                    println!("protocol: {} ({})", found.protocol.as_str(), found.reason)
                }
                Ok(_) => {}
                Err(e) => eprintln!("note: could not find out what the remote speaks: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status(&cli, *json),
        Command::Verify { json } => verify(&cli, *json, &progress),
        Command::Diff { sql, json, table } => {
            let ws = Workspace::locate(cli.db.as_deref())?;
            let filter = Filter {
                table: table.clone(),
            };
            // SQL and JSON are printed as the rows are read, so memory does not grow with
            // the number of changes.
            let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            ws.with_diff(&filter, |d| {
                if *sql {
                    d.write_sql(&mut out)
                } else if *json {
                    d.write_json(&mut out)
                } else {
                    Ok(print_summary(&mut out, &d.changeset()?, color_stdout())?)
                }
            })
            .with_context(|| format!("cannot diff {}", ws.db_path().display()))?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { dry_run, json } => push(&cli, *dry_run, *json, &progress),
        Command::Pull {
            side,
            no_renumber,
            json,
        } => pull(&cli, &side.merge(*no_renumber)?, *json, &progress),
        Command::Sync {
            side,
            no_renumber,
            json,
        } => sync(&cli, &side.merge(*no_renumber)?, *json, &progress),
        Command::Watch {
            interval,
            json,
            verbose,
        } => watch(&cli, *interval, *json, *verbose),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "tursync", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dump { out, local } => {
            let writer: Box<dyn Write> = match out {
                Some(p) => Box::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut sink = SqlSink::new(BufWriter::with_capacity(1 << 20, writer))?;
            if *local {
                let ws = Workspace::locate(cli.db.as_deref())?;
                let conn = ws
                    .open_working_copy(true)
                    .with_context(|| format!("cannot open {}", ws.db_path().display()))?;
                // One read transaction: the app may be writing while we dump.
                conn.execute_batch("BEGIN")?;
                clone::copy_local(&conn, &mut sink, &progress)?;
                conn.execute_batch("COMMIT")?;
            } else {
                let ws = Workspace::locate(cli.db.as_deref()).ok();
                let (_, remote) = connect(&cli, ws.as_ref())?;
                clone::copy_remote(&remote, &mut sink, FetchOptions::default(), &progress)?;
            }
            sink.finish()?;
            progress.finish();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The remote named by `--url`/`TURSO_DATABASE_URL`, else by the workspace's config.
fn connect(cli: &Cli, ws: Option<&Workspace>) -> Result<(Endpoint, Remote)> {
    let raw = match (&cli.url, ws) {
        (Some(u), _) => u.clone(),
        (None, Some(ws)) => ws.config.url.clone(),
        (None, None) => {
            return Err(Exit(
                2,
                "no database URL: pass --url, set TURSO_DATABASE_URL, or put it in .env".into(),
            )
            .into())
        }
    };
    let (endpoint, url_token) = Endpoint::parse(&raw).map_err(|e| Exit(2, e))?;
    let token = cli.token.clone().or(url_token);
    let mut remote = Remote::new(endpoint.clone(), token).with_retry_for(cli.retry_for);
    if !cli.quiet {
        remote = remote.on_retry(Arc::new(|e, delay| {
            eprintln!("note: {e}; retrying in {:.1}s", delay.as_secs_f64())
        }));
    }
    Ok((endpoint, remote))
}

/// A duration given in seconds, fractions allowed (`0.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

fn file_info(p: &Path) -> serde_json::Value {
    match std::fs::metadata(p) {
        Ok(m) => json!({"path": p.display().to_string(), "exists": true, "bytes": m.len()}),
        Err(_) => json!({"path": p.display().to_string(), "exists": false}),
    }
}

fn status(cli: &Cli, as_json: bool) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref());
    let mut report = json!({
        "sqlite_version": rusqlite::version(),
        "external_tools_needed": [],
    });
    match &ws {
        Ok(ws) => {
            report["working_copy"] = file_info(&ws.db_path());
            report["state_dir"] = json!(ws.state_dir().display().to_string());
            report["base"] = file_info(&ws.base_path());
            report["reads"] = reads_report(ws);
        }
        Err(e) => report["workspace_error"] = json!(e.to_string()),
    }
    let ok;
    match connect(cli, ws.as_ref().ok()) {
        Ok((endpoint, remote)) => {
            let started = Instant::now();
            let mut moved = serde_json::Value::Null;
            let (state, detail) = match remote.query("SELECT 1", vec![]) {
                Ok(res) => {
                    if let (Ok(ws), Some(now)) = (&ws, res.replication_index()) {
                        match ws.sync_state().map(|s| s.replication_index) {
                            Ok(Some(known)) => moved = json!(now != known),
                            Ok(None) => {}
                            Err(e) => moved = json!(format!("unknown: {e}")),
                        }
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
            ok = state == "ok";
            if let Ok(ws) = &ws {
                report["protocol"] = protocol_report(ws, &remote, ok);
            }
            report["remote"] = json!({
                "url": endpoint.to_string(),
                "token": if remote.has_token() { "set" } else { "not set" },
                "state": state,
                "error": detail,
                "latency_ms": started.elapsed().as_millis() as u64,
                "moved_since_sync": moved,
            });
        }
        Err(e) => {
            ok = false;
            report["remote"] = json!({"state": "not_configured", "error": e.to_string()});
        }
    }
    let changes = ws.as_ref().ok().map(|ws| ws.diff(&Filter::default()));
    match &changes {
        Some(Ok(cs)) => {
            report["changes"] = json!(cs.change_count());
            report["tables"] = cs
                .tables
                .iter()
                .filter(|t| !t.changes.is_empty())
                .map(|t| {
                    let (i, u, d) = t.counts();
                    json!({"table": t.table.name, "inserted": i, "updated": u, "deleted": d})
                })
                .collect();
            report["schema_changes"] = cs.schema.iter().map(|c| c.describe()).collect();
        }
        Some(Err(e)) => report["changes_error"] = json!(e.to_string()),
        None => {}
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(&report);
        if let Some(res) = &changes {
            match res {
                Ok(cs) => print_summary(&mut std::io::stdout().lock(), cs, color_stdout())?,
                Err(e) => println!("changes        cannot diff: {e}"),
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the remote speaks ([`tursync::protocol`]): probed when nothing is recorded or the
/// record no longer holds, and only when the remote answers (`reachable`); else as recorded.
fn protocol_report(ws: &Workspace, remote: &Remote, reachable: bool) -> serde_json::Value {
    let shown = |d: &tursync::protocol::Detected, again: Option<String>| {
        json!({
            "name": d.protocol.as_str(),
            "reason": d.reason,
            "forced": d.forced,
            "probed_again_because": again,
        })
    };
    if !reachable {
        return match tursync::protocol::recorded(&ws.state_dir()) {
            Some(d) => shown(&d, None),
            None => {
                json!({"name": "unknown", "reason": "not probed yet: the remote did not answer"})
            }
        };
    }
    let log_unusable = ws.sync_state().ok().and_then(|s| s.sql_path);
    match tursync::protocol::detect(&ws.state_dir(), log_unusable.as_deref(), remote) {
        Ok((d, again)) => shown(&d, again),
        Err(e) => json!({"name": "unknown", "reason": e.to_string()}),
    }
}

/// How pulls read the remote: from the replication log into the mirror, or over SQL, and why.
fn reads_report(ws: &Workspace) -> serde_json::Value {
    let mirror = ws.mirror();
    match (ws.sync_state(), mirror.health()) {
        (Err(e), _) | (_, Err(e)) => json!({"path": "unknown", "reason": e.to_string()}),
        (Ok(sync), _) if sync.sql_path.is_some() => {
            json!({"path": "sql", "reason": sync.sql_path})
        }
        (Ok(sync), Ok(Some(Ok(m)))) => json!({
            "path": "log",
            "mirror": file_info(&mirror.db_path()),
            "frame_no": m.frame_no,
            "revision": m.revision,
            "streams": streams_report(&sync),
        }),
        // Partial, or its files disagree: not valid, whatever its size.
        (Ok(_), Ok(Some(Err(why)))) => json!({
            "path": "log",
            "reason": format!("the mirror is not usable ({why}): the next pull drops it and reads the replication log again"),
        }),
        (Ok(sync), Ok(None)) => json!({
            "path": "log",
            "reason": "no mirror yet: the next pull reads the replication log",
            "streams": streams_report(&sync),
        }),
    }
}

/// Whether a long stretch of log is read in streams, or only in batches and why.
fn streams_report(sync: &tursync::workspace::SyncState) -> serde_json::Value {
    match &sync.streams_off {
        None => json!({"on": true}),
        Some(off) => json!({
            "on": false,
            "off": off.reason,
            "until": "the next init, or a new log id",
        }),
    }
}

fn print_status(r: &serde_json::Value) {
    let file = |v: &serde_json::Value| {
        let path = v["path"].as_str().unwrap_or("?");
        match v["bytes"].as_u64() {
            Some(b) => format!("{path} ({})", human_bytes(b)),
            None => format!("{path} (missing)"),
        }
    };
    if let Some(e) = r["workspace_error"].as_str() {
        println!("working copy   none: {e}");
    } else {
        println!("working copy   {}", file(&r["working_copy"]));
        println!("state dir      {}", r["state_dir"].as_str().unwrap_or("?"));
        println!("base snapshot  {}", file(&r["base"]));
        let reads = &r["reads"];
        match reads["path"].as_str() {
            Some("log") if reads["revision"].is_string() => println!(
                "pulls read     Turso Sync's pages: mirror {} at revision {}",
                file(&reads["mirror"]),
                reads["revision"].as_str().unwrap_or("?")
            ),
            Some("log") if reads["mirror"].is_object() => println!(
                "pulls read     the replication log: mirror {} at frame {}",
                file(&reads["mirror"]),
                reads["frame_no"]
            ),
            Some("sql") => println!(
                "pulls read     rows over SQL, because {}",
                reads["reason"].as_str().unwrap_or("?")
            ),
            Some("unknown") => println!(
                "pulls read     unknown: {}",
                reads["reason"].as_str().unwrap_or("?")
            ),
            _ => println!(
                "pulls read     the replication log ({})",
                reads["reason"].as_str().unwrap_or("?")
            ),
        }
        if let Some(off) = reads["streams"]["off"].as_str() {
            println!("log streams    not used, because {off}; batches read the log until the next init or a new log id");
        }
    }
    let remote = &r["remote"];
    match remote["state"].as_str() {
        Some("not_configured") => println!(
            "remote         not configured: {}",
            remote["error"].as_str().unwrap_or("")
        ),
        Some(state) => {
            println!(
                "remote         {} (token {})",
                remote["url"].as_str().unwrap_or("?"),
                remote["token"].as_str().unwrap_or("?")
            );
            match state {
                "ok" => println!(
                    "connection     ok: reachable, {} ({} ms)",
                    if remote["token"] == "set" {
                        "token accepted"
                    } else {
                        "no token needed"
                    },
                    remote["latency_ms"]
                ),
                _ => println!(
                    "connection     FAILED: {}",
                    remote["error"].as_str().unwrap_or(state)
                ),
            }
            match remote["moved_since_sync"].as_bool() {
                Some(true) => {
                    println!("remote         changed since the last sync: run `tursync pull`")
                }
                Some(false) => println!("remote         unchanged since the last sync"),
                None if state == "ok" => match remote["moved_since_sync"].as_str() {
                    Some(why) => println!("remote         changed since the last sync? {why}"),
                    None => println!("remote         may have changed since the last sync"),
                },
                None => {}
            }
        }
        None => {}
    }
    let protocol = &r["protocol"];
    if let Some(name) = protocol["name"].as_str() {
        let what = match name {
            "log" => "sqld's replication log",
            "turso-sync" => "Turso Sync (/pull-updates pages, a pipeline without streams)",
            "sql" => "SQL only",
            _ => "unknown",
        };
        println!(
            "protocol       {what}: {}",
            protocol["reason"].as_str().unwrap_or("?")
        );
        if let Some(why) = protocol["probed_again_because"].as_str() {
            println!("protocol       probed again, because {why}");
        }
    }
    println!(
        "external tools none needed (SQLite {} is built in)",
        r["sqlite_version"].as_str().unwrap_or("?")
    );
}

/// `1 change`, `2 changes`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Colors only for a terminal, and never when NO_COLOR is set.
fn color_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Per table: rows inserted, updated and deleted; then schema changes; then the verdict.
fn print_summary(out: &mut dyn Write, cs: &Changeset, color: bool) -> std::io::Result<()> {
    let paint = |code: &str, text: String| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
    let changed: Vec<_> = cs.tables.iter().filter(|t| !t.changes.is_empty()).collect();
    if !changed.is_empty() {
        let width = changed
            .iter()
            .map(|t| t.table.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            out,
            "{:width$}  {:>9} {:>9} {:>9}",
            "table", "inserted", "updated", "deleted"
        )?;
        for t in &changed {
            let (i, u, d) = t.counts();
            writeln!(
                out,
                "{:width$}  {} {} {}",
                t.table.name,
                paint("32", format!("{:>9}", format!("+{i}"))),
                paint("33", format!("{:>9}", format!("~{u}"))),
                paint("31", format!("{:>9}", format!("-{d}")))
            )?;
        }
    }
    if !cs.schema.is_empty() {
        writeln!(out, "schema:")?;
        for c in &cs.schema {
            let line = c.describe();
            let code = match line.chars().next() {
                Some('+') => "32",
                Some('-') => "31",
                _ => "33",
            };
            writeln!(out, "  {}", paint(code, line))?;
        }
    }
    for q in &cs.sequences {
        let show = |v: Option<i64>| v.map_or_else(|| "none".to_owned(), |n| n.to_string());
        writeln!(
            out,
            "autoincrement counter of {}: {} -> {}",
            q.table,
            show(q.old),
            show(q.new)
        )?;
    }
    if let Some(v) = cs.user_version {
        writeln!(out, "user_version -> {v}")?;
    }
    match cs.change_count() {
        0 if cs.is_empty() => writeln!(out, "nothing to push"),
        n => writeln!(out, "{n} change{} to push", if n == 1 { "" } else { "s" }),
    }
}

fn push(cli: &Cli, dry_run: bool, as_json: bool, progress: &Progress) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref())?;
    if dry_run {
        let cs = ws.diff(&Filter::default())?;
        let mut out = std::io::stdout().lock();
        if cs.is_empty() {
            writeln!(out, "-- nothing to push")?;
        } else {
            writeln!(
                out,
                "-- dry run: {} changes would be applied as below; nothing was sent",
                cs.change_count()
            )?;
            cs.write_sql(&mut out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let started = Instant::now();
    let outcome = tursync::push::push(&ws, &remote, PushOptions::default(), progress)
        .with_context(|| format!("push to {endpoint} failed"))?;
    progress.finish();
    // An interrupted push may have landed rows the base does not know of yet: then some of
    // its conflicts are that push, which a pull recognizes.
    let op = Op::Push {
        interrupted: ws.push_interrupted()?,
    };
    conclude(outcome, op, as_json, |r| {
        print_pushed(&endpoint, started, &r, as_json)
    })
}

/// A finished push, as a line of JSON or for a person.
fn print_pushed(endpoint: &Endpoint, started: Instant, r: &PushReport, as_json: bool) {
    if as_json {
        let mut v = serde_json::to_value(r).expect("a push report is plain data");
        v["pushed"] = json!(r.changes > 0);
        v["log"] = json!(r.log.as_ref().map(|p| p.display().to_string()));
        println!("{v}");
    } else if r.changes == 0 {
        println!("nothing to push");
    } else {
        println!(
            "pushed {} to {endpoint} in {:.1}s ({} applied, {} already there; {})",
            count(r.changes, "change"),
            started.elapsed().as_secs_f64(),
            count(r.applied, "row"),
            r.skipped,
            count(r.requests as usize, "request")
        );
        if r.transactions > 1 {
            println!(
                "note: the push was large, so it went as {} transactions; had it stopped midway, running push again would finish it",
                r.transactions
            );
        }
    }
}

fn pull(cli: &Cli, merge: &MergeOptions, as_json: bool, progress: &Progress) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref())?;
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let started = Instant::now();
    let waiting = || eprintln!("waiting for the app to release the working copy's write lock…");
    let outcome = tursync::pull::pull(
        &ws,
        &remote,
        merge,
        FetchOptions::default(),
        progress,
        &waiting,
    )
    .with_context(|| format!("pull from {endpoint} failed"))?;
    conclude(outcome, Op::Pull, as_json, |r| {
        print_pulled(&endpoint, started, &r, as_json)
    })
}

/// A finished pull, as a line of JSON or for a person.
fn print_pulled(endpoint: &Endpoint, started: Instant, r: &PullReport, as_json: bool) {
    if as_json {
        let mut v = serde_json::to_value(r).expect("a pull report is plain data");
        v["pulled"] = json!(true);
        println!("{v}");
    } else if !r.downloaded {
        println!("the remote has not changed since the last sync; nothing to pull");
    } else {
        println!(
            "pulled from {endpoint} in {:.1}s: {} applied ({} merged cell by cell), {}{}",
            started.elapsed().as_secs_f64(),
            count(r.applied, "row change"),
            r.merged,
            count(r.schema_changes, "schema change"),
            if r.resolved > 0 {
                format!(", {} conflicts settled", r.resolved)
            } else {
                String::new()
            }
        );
        if !r.references.is_empty() {
            println!(
                "settled {} that pointed at a deleted row:",
                count(r.references.len(), "reference")
            );
            let lit = tursync::sql::literal;
            for s in r.references.iter().take(20) {
                let key: Vec<String> = s
                    .key
                    .iter()
                    .map(|(c, v)| format!("{c} = {}", lit(v)))
                    .collect();
                println!("  {} ({}): {}", s.table, key.join(", "), s.action.as_str());
            }
            if r.references.len() > 20 {
                println!(
                    "  … and {} more (use --json for all)",
                    r.references.len() - 20
                );
            }
        }
        if !r.renumbered.is_empty() {
            println!(
                "renumbered {} of ours, whose keys others' new rows took (references to them followed):",
                count(r.renumbered.len(), "new row")
            );
            for n in r.renumbered.iter().take(20) {
                println!("  {}.{}: {} -> {}", n.table, n.column, n.from, n.to);
            }
            if r.renumbered.len() > 20 {
                println!(
                    "  … and {} more (use --json for all)",
                    r.renumbered.len() - 20
                );
            }
        }
    }
}

/// Pull, then push; a push that lost a race with a teammate's is pulled and pushed again
/// (`tursync::sync`). Reports the pulls (added up) and the push, or the conflicts.
fn sync(cli: &Cli, merge: &MergeOptions, as_json: bool, progress: &Progress) -> Result<ExitCode> {
    use tursync::sync::End;
    let ws = Workspace::locate(cli.db.as_deref())?;
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let started = Instant::now();
    let waiting = || eprintln!("waiting for the app to release the working copy's write lock…");
    let synced = tursync::sync::sync(&ws, &remote, merge, true, progress, &waiting)
        .with_context(|| format!("sync with {endpoint} failed"))?;
    progress.finish();
    if let Some(r) = &synced.pulled {
        print_pulled(&endpoint, started, r, as_json);
    }
    match synced.end {
        End::Pushed(r) => conclude(Outcome::Done(r), Op::Pull, as_json, |r| {
            print_pushed(&endpoint, started, &r, as_json)
        }),
        End::PullConflicts(c) => conclude(Outcome::<()>::Conflicts(c), Op::Pull, as_json, |_| {}),
        End::PushConflicts(c) => {
            if synced.attempts >= tursync::sync::ATTEMPTS && !as_json {
                eprintln!(
                    "note: the remote changed between each of {} pulls and the push that followed; the last push was refused as below",
                    synced.attempts
                );
            }
            let op = Op::Push {
                interrupted: ws.push_interrupted()?,
            };
            conclude(Outcome::<()>::Conflicts(c), op, as_json, |_| {})
        }
    }
}

fn watch(cli: &Cli, interval: Duration, as_json: bool, verbose: bool) -> Result<ExitCode> {
    use tursync::watch::Event;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it: a second
        // signal exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let ws = Workspace::locate(cli.db.as_deref())?;
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let remote = remote.cancel_on(stop.clone());
    let now = || humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let line = |event: &str, mut fields: serde_json::Value| {
        fields["time"] = json!(now());
        fields["event"] = json!(event);
        println!("{fields}");
    };
    if verbose && !as_json {
        println!(
            "{} watching {} <-> {endpoint}, checking the remote every {:.1}s",
            now(),
            ws.db_path().display(),
            interval.as_secs_f64()
        );
    }
    let mut on_event = |event: Event<'_>| match event {
        Event::Synced { pulled, pushed } if as_json => line(
            "synced",
            json!({"pulled": {"applied": pulled.applied, "merged": pulled.merged, "schema_changes": pulled.schema_changes},
                   "pushed": {"changes": pushed.changes, "applied": pushed.applied, "skipped": pushed.skipped}}),
        ),
        Event::Synced { pulled, pushed } => println!(
            "{} pulled {} ({} merged, {}), pushed {} ({} applied, {} already there)",
            now(),
            count(pulled.applied, "row change"),
            pulled.merged,
            count(pulled.schema_changes, "schema change"),
            count(pushed.changes, "change"),
            pushed.applied,
            pushed.skipped
        ),
        Event::Checked { .. } if !verbose => {}
        Event::Checked {
            local_changed,
            remote_index,
        } if as_json => line(
            "checked",
            json!({"local_changed": local_changed, "remote_index": remote_index}),
        ),
        Event::Checked {
            local_changed,
            remote_index,
        } => println!(
            "{} checked: working copy {}, remote index {}; nothing to do",
            now(),
            if local_changed {
                "committed to"
            } else {
                "unchanged"
            },
            remote_index.map_or_else(|| "unknown".to_owned(), |i| i.to_string())
        ),
        Event::PullConflicts(conflicts) if as_json => {
            line("conflict", Op::Pull.conflicts_json(conflicts));
        }
        Event::PullConflicts(conflicts) => {
            eprintln!("{} conflict while pulling:", now());
            Op::Pull.print_conflicts(conflicts);
            eprintln!("watch keeps running and tries again when either side changes.");
        }
        Event::PushConflicts {
            conflicts,
            earlier_push_interrupted,
        } => {
            let op = Op::Push {
                interrupted: earlier_push_interrupted,
            };
            if as_json {
                line("conflict", op.conflicts_json(conflicts));
            } else {
                eprintln!("{} conflict while pushing:", now());
                op.print_conflicts(conflicts);
                eprintln!("watch keeps running and tries again when either side changes.");
            }
        }
        Event::Refused(e) if as_json => line("refused", json!({"error": e.to_string()})),
        Event::Refused(e) => {
            eprintln!("{} {e}", now());
            eprintln!("watch keeps running and tries again when either side changes.");
        }
        Event::Settled if as_json => line("settled", json!({})),
        Event::Settled => println!("{} settled: syncing again", now()),
        Event::Backoff { error, delay } if as_json => line(
            "retrying",
            json!({"error": error.to_string(), "in_seconds": delay.as_secs_f64()}),
        ),
        Event::Backoff { error, delay } => {
            eprintln!("{} {error}; trying again in {}s", now(), delay.as_secs())
        }
    };
    tursync::watch::watch(&ws, &remote, interval, &stop, &mut on_event)
        .with_context(|| format!("watch of {} stopped", ws.db_path().display()))?;
    if verbose && !as_json {
        println!("{} stopped", now());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(cli: &Cli, as_json: bool, progress: &Progress) -> Result<ExitCode> {
    use tursync::verify::RemoteCheck;
    let ws = Workspace::locate(cli.db.as_deref())?;
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let report = tursync::verify::verify(&ws, &remote, FetchOptions::default(), progress)
        .with_context(|| format!("verify against {endpoint} failed"))?;
    let code = if !report.intact() {
        5
    } else if report.drift() {
        4
    } else {
        0
    };
    let changes = |cs: &Changeset| -> Vec<serde_json::Value> {
        let mut list: Vec<_> = cs
            .schema
            .iter()
            .map(|c| json!({"schema": c.describe()}))
            .collect();
        list.extend(cs.tables.iter().filter(|t| !t.changes.is_empty()).map(|t| {
            let (ins, upd, del) = t.counts();
            json!({"table": t.table.name, "only_on_remote": ins, "differ": upd, "only_in_base": del})
        }));
        list.extend(
            cs.sequences
                .iter()
                .map(|q| json!({"sequence": q.table, "base": q.old, "remote": q.new})),
        );
        list
    };
    if as_json {
        let file = |i: &tursync::verify::Integrity| json!({"path": i.file.display().to_string(), "ok": i.ok(), "problems": i.problems});
        let compared = |r: &RemoteCheck| match r {
            RemoteCheck::Skipped => json!({"compared": false}),
            RemoteCheck::AtSyncPoint { differences } => {
                json!({"compared": true, "moved": false, "drift": changes(differences)})
            }
            RemoteCheck::Moved { differences } => {
                json!({"compared": true, "moved": true, "not_pulled": changes(differences)})
            }
        };
        let mirror = report.mirror.as_ref().map(|m| {
            json!({"file": file(&m.integrity), "frame_no": m.frame_no, "remote": compared(&m.remote)})
        });
        println!(
            "{}",
            json!({"working_copy": file(&report.working_copy), "base": file(&report.base), "remote": compared(&report.remote), "mirror": mirror, "exit_code": code})
        );
        return Ok(ExitCode::from(code));
    }
    for (what, i) in [
        ("working copy", &report.working_copy),
        ("base", &report.base),
    ]
    .into_iter()
    .chain(report.mirror.as_ref().map(|m| ("mirror", &m.integrity)))
    {
        if i.ok() {
            println!("{what} {}: intact", i.file.display());
        } else {
            println!("{what} {}: DAMAGED", i.file.display());
            for p in i.problems.iter().take(20) {
                println!("  {p}");
            }
        }
    }
    let print_changes = |cs: &Changeset| {
        for c in &cs.schema {
            println!("  {}", c.describe());
        }
        for t in cs.tables.iter().filter(|t| !t.changes.is_empty()) {
            let (ins, upd, del) = t.counts();
            println!(
                "  table {}: {} only on the remote, {} only in the base, {} differ",
                t.table.name,
                count(ins, "row"),
                count(del, "row"),
                count(upd, "row")
            );
        }
        for q in &cs.sequences {
            println!(
                "  AUTOINCREMENT counter of {}: base {:?}, remote {:?}",
                q.table, q.old, q.new
            );
        }
    };
    match &report.remote {
        RemoteCheck::Skipped => println!("remote {endpoint}: not compared, the base is damaged"),
        RemoteCheck::AtSyncPoint { differences } if differences.is_empty() => {
            println!("remote {endpoint}: equals the base at the last sync point")
        }
        RemoteCheck::AtSyncPoint { differences } => {
            println!("remote {endpoint}: DRIFT: the remote has not moved since the last sync, yet differs from the base:");
            print_changes(differences);
        }
        RemoteCheck::Moved { differences } => {
            println!("remote {endpoint}: moved since the last sync; not pulled yet:");
            print_changes(differences);
        }
    }
    if let Some(m) = &report.mirror {
        match &m.remote {
            RemoteCheck::Skipped => println!("mirror: not compared, it is damaged"),
            RemoteCheck::AtSyncPoint { differences } if differences.is_empty() => {
                println!("mirror: equals the remote at frame {:?}", m.frame_no)
            }
            RemoteCheck::AtSyncPoint { differences } => {
                println!(
                    "mirror: DRIFT: the remote is at the mirror's frame, yet differs from it:"
                );
                print_changes(differences);
            }
            RemoteCheck::Moved { .. } => {
                println!("mirror: behind the remote; the next pull brings it up to date")
            }
        }
    }
    match code {
        5 => eprintln!("A file is damaged. Keep a copy of it, save what you can (`tursync diff --sql > mine.sql`, `sqlite3 working_copy.db .recover`), then make a fresh working copy with `tursync init --force`."),
        4 => eprintln!("The base no longer matches the remote, so diffs and merges would be wrong. Save unpushed work (`tursync diff --sql > mine.sql`), then `tursync init --force` and re-apply it."),
        _ => {}
    }
    Ok(ExitCode::from(code))
}

/// Which operation met conflicts: it decides the wording and what to do next.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// `interrupted`: an earlier push may have reached the remote without the base knowing.
    Push {
        interrupted: bool,
    },
    Pull,
}

/// The one place an outcome becomes an exit code: conflicts are reported (as JSON on stdout,
/// or as text on stderr) and exit with 3; a finished operation reports through `done` and
/// exits with 0.
fn conclude<R>(
    outcome: Outcome<R>,
    op: Op,
    as_json: bool,
    done: impl FnOnce(R),
) -> Result<ExitCode> {
    match outcome {
        Outcome::Done(r) => {
            done(r);
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Conflicts(conflicts) => {
            if as_json {
                println!("{}", op.conflicts_json(&conflicts));
            } else {
                op.print_conflicts(&conflicts);
            }
            Ok(ExitCode::from(3))
        }
    }
}

/// One conflict as JSON. A cell conflict's `base`/`ours`/`theirs` are the cell's values; any
/// other's are whole rows by column name (or null where that side has no row).
fn conflict_json(c: &Conflict) -> serde_json::Value {
    let values = |r: &Option<Vec<tursync::Value>>| match (c.kind, r) {
        (_, None) => serde_json::Value::Null,
        (ConflictKind::Cell, Some(r)) => json!(r.first()),
        (_, Some(r)) => json!(c
            .columns
            .iter()
            .cloned()
            .zip(r.iter().map(|v| json!(v)))
            .collect::<serde_json::Map<_, _>>()),
    };
    let column =
        (c.kind != ConflictKind::Row && !c.columns.is_empty()).then(|| c.columns.join(", "));
    json!({"table": c.table, "kind": c.kind.as_str(), "key": c.key, "column": column, "columns": c.columns,
           "base": values(&c.base), "ours": values(&c.ours), "theirs": values(&c.theirs),
           "constraint": c.constraint, "ours_key": c.ours_key, "object": c.object,
           "note": c.note})
}

impl Op {
    fn conflicts_json(self, conflicts: &[Conflict]) -> serde_json::Value {
        let list: Vec<_> = conflicts.iter().map(conflict_json).collect();
        match self {
            Op::Push { interrupted } => {
                json!({"pushed": false, "conflicts": list, "earlier_push_interrupted": interrupted})
            }
            Op::Pull => json!({"pulled": false, "conflicts": list}),
        }
    }

    /// The conflicts for a person: a line or two each (50 at most), then what to do.
    fn print_conflicts(self, conflicts: &[Conflict]) {
        let n = conflicts.len();
        let s = if n == 1 { "" } else { "s" };
        match self {
            Op::Push { .. } => eprintln!(
                "conflict: {n} row{s} changed both here and on the remote since the last sync; nothing was pushed"
            ),
            Op::Pull => eprintln!(
                "conflict: {n} change{s} made both here and on the remote; nothing was pulled"
            ),
        }
        // The remote's side is "theirs" in a merge, "remote" against a push.
        let (ours, theirs) = match self {
            Op::Push { .. } => ("local", "remote"),
            Op::Pull => ("ours", "theirs"),
        };
        let lit = tursync::sql::literal;
        let list = |vs: &[tursync::Value]| vs.iter().map(lit).collect::<Vec<_>>().join(", ");
        for c in conflicts.iter().take(50) {
            let (table, key) = (&c.table, list(&c.key));
            match c.kind {
                ConflictKind::ForeignKey => eprintln!(
                    "  table {table}, key ({key}): its foreign key would point at nothing ({})",
                    c.constraint.as_deref().unwrap_or("a FOREIGN KEY")
                ),
                ConflictKind::Schema => {
                    let object = c.object.as_deref().unwrap_or(table);
                    match self {
                        Op::Push { .. } => {
                            eprintln!("  {object} changed on the remote since your last sync")
                        }
                        Op::Pull => eprintln!("  {object} was changed both here and on the remote"),
                    }
                    let def = |side: &Option<Vec<tursync::Value>>| match side.as_deref() {
                        Some([tursync::Value::Text(t)]) => String::from_utf8_lossy(t).into_owned(),
                        _ => "(none: dropped)".to_owned(),
                    };
                    if c.columns == ["definition"] {
                        eprintln!("    base:    {}", def(&c.base));
                        eprintln!("    {:<8} {}", format!("{ours}:"), def(&c.ours));
                        eprintln!("    {:<8} {}", format!("{theirs}:"), def(&c.theirs));
                    }
                }
                ConflictKind::Unique => {
                    // The other row holding the same values: ours in a merge, the remote's
                    // against a push.
                    let other = c
                        .ours_key
                        .as_deref()
                        .or(c.theirs.as_deref())
                        .map_or("?".to_owned(), list);
                    eprintln!(
                        "  table {table}, key ({key}): {}; the other row holding the same values: ({other})",
                        c.constraint.as_deref().unwrap_or("a UNIQUE constraint")
                    );
                }
                ConflictKind::Cell => {
                    let cell = |v: &Option<Vec<tursync::Value>>| {
                        v.as_ref()
                            .and_then(|v| v.first())
                            .map_or("-".to_owned(), lit)
                    };
                    eprintln!(
                        "  table {table}, key ({key}), column {}: base {}, {ours} {}, {theirs} {}",
                        c.columns.join(", "),
                        cell(&c.base),
                        cell(&c.ours),
                        cell(&c.theirs)
                    );
                }
                ConflictKind::Row if c.columns.is_empty() => {
                    eprintln!(
                        "  table {table}, key ({key}): deleted on one side, changed on the other"
                    )
                }
                ConflictKind::Row => {
                    eprintln!("  table {table}, key ({key})");
                    let state = |r: &Option<Vec<tursync::Value>>| {
                        if r.is_some() {
                            "present"
                        } else {
                            "absent"
                        }
                    };
                    if c.base.is_none() || c.ours.is_none() || c.theirs.is_none() {
                        eprintln!(
                            "    row: base {}, {ours} {}, {theirs} {}",
                            state(&c.base),
                            state(&c.ours),
                            state(&c.theirs)
                        );
                    }
                    for (i, col) in c.columns.iter().enumerate() {
                        let cell = |r: &Option<Vec<tursync::Value>>| {
                            r.as_ref().map_or("-".to_owned(), |r| lit(&r[i]))
                        };
                        let (b, o, t) = (cell(&c.base), cell(&c.ours), cell(&c.theirs));
                        if !(b == o && o == t) {
                            eprintln!("    {col}: base {b}, {ours} {o}, {theirs} {t}");
                        }
                    }
                }
            }
            if let Some(note) = &c.note {
                eprintln!("    ({note})");
            }
        }
        if n > 50 {
            eprintln!("  … and {} more (use --json for all)", n - 50);
        }
        let any = |kind| conflicts.iter().any(|c| c.kind == kind);
        match self {
            Op::Push { interrupted } => {
                if any(ConflictKind::Schema) {
                    eprintln!("Nothing was pushed. Run `tursync pull` to bring the remote's change in first.");
                } else if any(ConflictKind::ForeignKey) {
                    eprintln!("Nothing changed on the remote. A row we deleted (or re-keyed) is still referenced there by a row others added: pull to bring that row in, then restore the parent or delete the child, and push again.");
                } else if conflicts
                    .iter()
                    .any(|c| c.base.is_none() && c.ours.is_some() && c.theirs.is_some())
                {
                    eprintln!("Some of your new rows took keys that new rows on the remote took meanwhile. Push never renumbers: run `tursync sync`, which renumbers your new rows (and the references to them) and pushes them.");
                } else {
                    eprintln!("Nothing changed on either side in this transaction. Run `tursync pull` to merge the remote's changes (it reports the same rows), then push again.");
                }
                if interrupted {
                    eprintln!("An earlier push was interrupted and may have reached the remote without the base knowing: run `tursync sync`, which settles that first.");
                }
            }
            Op::Pull if any(ConflictKind::Schema) => {
                eprintln!("Nothing changed. Both sides changed the same schema object (definitions shown above where known). A table both sides reshaped in place is settled by `tursync sync --theirs` (their definition, our rows merged onto it) or `--ours` (our definition, pushed with their rows carried; `--theirs TABLE` for one table). Otherwise undo one side's change (in the working copy, or on the remote itself) or make both the same, then pull again.")
            }
            Op::Pull => eprintln!("Nothing changed. Settle them with `tursync pull --ours` or `--theirs` (or table by table: `--theirs TABLE`), or edit the working copy and pull again. For a foreign-key conflict, the side you keep decides whether the deleted parent stays deleted (its ON DELETE action then applies to the rows pointing at it) or comes back with what its delete took along; `tursync help pull` says more."),
        }
    }
}
