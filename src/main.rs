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
use tursync::conflict::{Op, Stopped};
use tursync::diff::Filter;
use tursync::progress::Progress;
use tursync::pull::{MergeOptions, Resolve};
use tursync::push::PushOptions;
use tursync::remote::{Endpoint, Remote};
use tursync::report::Report;
use tursync::sink::SqlSink;
use tursync::workspace::{self, Workspace, DEFAULT_DB};
use tursync::Outcome;

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
        merge: MergeArgs,
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
        merge: MergeArgs,
    },
    /// Check the working copy and the base for damage, and the base against the remote
    #[command(after_help = "Examples:
  tursync verify
  tursync verify --json
  tursync verify --repair    # after exit 4 or 5, or a push that names a damaged base

Runs SQLite's integrity check on the working copy and on the base, then reads the whole remote
and compares it with the base, table by table. When the remote has not moved since the last
sync, any difference is drift (exit 4); when it has, the differences are others' changes not
yet pulled (exit 0). A damaged file exits 5. The working copy is read in one read transaction,
which makes an app in rollback-journal mode wait for the check to end.

--repair mends a damaged or drifted base and mirror, never the working copy: the remote just
read becomes the base and the mirror is read again from the log by the next pull. When the
remote moved since the last sync, every difference of the working copy from it is then a
conflict that `sync --ours` or `--theirs` settles. Exits 0 once mended.")]
    Verify {
        /// Machine-readable report
        #[arg(long)]
        json: bool,
        /// Mend a damaged or drifted base and mirror: the remote read again becomes the base,
        /// the mirror is read again from the log; the working copy is left as it is
        #[arg(long)]
        repair: bool,
    },
    /// Sync continuously: after each local commit, when the remote moves, and every interval
    #[command(after_help = "Examples:
  tursync watch                       # beside the app, until Ctrl-C or SIGTERM
  tursync watch --interval 0.5 --json # one JSON line per round that did something
  tursync watch -v                    # also every check that found nothing

Each round is `tursync sync`: pull, then push, each all or nothing. A round that changed
something is logged with its duration, from its first request to the end of its push (JSON:
{\"event\":\"synced\",\"pulled\":{..},\"pushed\":{..},\"seconds\":0.031}). A local commit is seen
within 50 ms (PRAGMA data_version); the remote's replication index is checked every interval,
by the round's pull (one request when nothing moved). A conflict is reported once (the same
report as sync); watch keeps running and tries again when either side changes, so it can be
settled with the app, with `tursync pull --ours/--theirs`, or on the remote.
Network failures and server restarts are waited out with exponential backoff, saying so. A bad
token, a working copy that is gone or a damaged file stop it (exit 1; 5 for a damaged base,
which `tursync verify --repair` mends). SIGINT or SIGTERM ends
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

/// The flags of the commands that merge (`pull`, `sync`), written once.
#[derive(clap::Args, Clone)]
struct MergeArgs {
    #[command(flatten)]
    side: Side,
    /// Report our new rows whose keys others' new rows took as conflicts, instead of
    /// renumbering them
    #[arg(long)]
    no_renumber: bool,
    /// Machine-readable report
    #[arg(long)]
    json: bool,
}

impl MergeArgs {
    fn options(&self) -> Result<MergeOptions> {
        self.side.merge(self.no_renumber)
    }
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
                // A base that is not the remote's as of the last sync is a damaged file.
                (_, Some(e)) if matches!(e.root(), tursync::Error::DamagedBase(_)) => 5,
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
        Command::Verify { json, repair } => verify(&cli, *json, *repair, &progress),
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
                    d.write_summary(&mut out, color_stdout())
                }
            })
            .with_context(|| format!("cannot diff {}", ws.db_path().display()))?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { dry_run, json } => push(&cli, *dry_run, *json, &progress),
        Command::Pull { merge } => pull(&cli, &merge.options()?, merge.json, &progress),
        Command::Sync { merge } => sync(&cli, &merge.options()?, merge.json, &progress),
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
                let mut conn = ws
                    .open_working_copy(true)
                    .with_context(|| format!("cannot open {}", ws.db_path().display()))?;
                // One read transaction: the app may be writing while we dump.
                let snapshot = conn.transaction()?;
                clone::copy_local(&snapshot, &mut sink, &progress)?;
                snapshot.commit()?;
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
    if let (None, Some(ws), Ok(None)) = (&cli.url, ws, tursync::protocol::from_env()) {
        // What the remote speaks, as recorded, spares the requests that would find it out.
        match tursync::protocol::recorded(&ws.state_dir()).map(|d| d.protocol) {
            Some(tursync::protocol::Protocol::TursoSync) => remote = remote.presume_streams(false),
            Some(tursync::protocol::Protocol::Log) => remote = remote.presume_streams(true),
            _ => {}
        }
    }
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

fn status(cli: &Cli, as_json: bool) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref());
    let remote = connect(cli, ws.as_ref().ok()).map_err(|e| e.to_string());
    let status = tursync::status::Status::read(&ws, remote);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        status.write_text(&mut std::io::stdout().lock(), color_stdout())?;
    }
    Ok(if status.remote_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Colors only for a terminal, and never when NO_COLOR is set.
fn color_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn push(cli: &Cli, dry_run: bool, as_json: bool, progress: &Progress) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref())?;
    if dry_run {
        let cs = ws.diff(&Filter::default())?;
        tursync::push::write_dry_run(&cs, &mut std::io::stdout().lock())?;
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
        print_report(&r, as_json, &endpoint, started)
    })
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
    .with_context(|| format!("pull from {endpoint} failed"))?
    .outcome;
    conclude(outcome, Op::Pull, as_json, |r| {
        print_report(&r, as_json, &endpoint, started)
    })
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
        print_report(r, as_json, &endpoint, started)?;
    }
    if let Some(note) = synced.retries_note().filter(|_| !as_json) {
        eprintln!("{note}");
    }
    match synced.end {
        End::Pushed(r) => conclude(Outcome::Done(r), Op::Pull, as_json, |r| {
            print_report(&r, as_json, &endpoint, started)
        }),
        End::PullConflicts(c) => {
            conclude(Outcome::<()>::Conflicts(c), Op::Pull, as_json, |_| Ok(()))
        }
        End::PushConflicts(c) => {
            let op = Op::Push {
                interrupted: ws.push_interrupted()?,
            };
            conclude(Outcome::<()>::Conflicts(c), op, as_json, |_| Ok(()))
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
    if verbose && !as_json {
        println!(
            "{} watching {} <-> {endpoint}, checking the remote every {:.1}s",
            now(),
            ws.db_path().display(),
            interval.as_secs_f64()
        );
    }
    let mut on_event = |event: Event<'_>| match event {
        Event::Checked { .. } if !verbose => {}
        event if as_json => {
            let mut line = serde_json::to_value(&event).expect("a watch event is plain data");
            line["time"] = json!(now());
            println!("{line}");
        }
        event => {
            // Written into memory, then printed as `println!` prints.
            let mut text = Vec::new();
            let _ = event.write_text(&now(), &mut text);
            let text = String::from_utf8_lossy(&text);
            if event.is_trouble() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
        }
    };
    tursync::watch::watch(&ws, &remote, interval, &stop, &mut on_event)
        .with_context(|| format!("watch of {} stopped", ws.db_path().display()))?;
    if verbose && !as_json {
        println!("{} stopped", now());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(cli: &Cli, as_json: bool, repair: bool, progress: &Progress) -> Result<ExitCode> {
    let ws = Workspace::locate(cli.db.as_deref())?;
    let (endpoint, remote) = connect(cli, Some(&ws))?;
    let report = tursync::verify::verify(&ws, &remote, FetchOptions::default(), progress, repair)
        .with_context(|| format!("verify against {endpoint} failed"))?;
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.write_text(&mut std::io::stdout().lock(), &endpoint)?;
        if let Some(advice) = report.advice() {
            eprintln!("{advice}");
        }
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// A finished push or pull on stdout: its JSON line, or its text.
fn print_report(
    r: &impl Report,
    as_json: bool,
    endpoint: &Endpoint,
    started: Instant,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", r.json())
    } else {
        r.write_text(&mut out, endpoint, started.elapsed())
    }
}

/// The one place an outcome becomes an exit code: conflicts are reported (as JSON on stdout,
/// or as text on stderr) and exit with 3; a finished operation reports through `done` and
/// exits with 0.
fn conclude<R>(
    outcome: Outcome<R>,
    op: Op,
    as_json: bool,
    done: impl FnOnce(R) -> std::io::Result<()>,
) -> Result<ExitCode> {
    match outcome {
        Outcome::Done(r) => {
            done(r)?;
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Conflicts(conflicts) => {
            let stopped = Stopped {
                op,
                conflicts: &conflicts,
            };
            if as_json {
                println!("{}", serde_json::to_string(&stopped)?);
            } else {
                stopped.write_text(&mut std::io::stderr().lock())?;
            }
            Ok(ExitCode::from(3))
        }
    }
}
