//! Pulls from a real Turso Sync server (`tursodb DB --sync-server`) through its `/pull-updates`
//! pages into the mirror: page-exact across many transactions, after a checkpoint that made
//! the server forget the mirror's revision, after a pull killed midway, and on a server that
//! stops serving `/pull-updates`. And pyturso, Turso's own sync client, on the same server:
//! what each side pushes, the other pulls.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// `tursync pull --json`, which must succeed, as JSON.
fn pull(dir: &Path) -> Value {
    let out = run_ok(tursync(dir).args(["pull", "--json"]));
    serde_json::from_slice(&out.stdout).expect("pull --json prints JSON")
}

/// How the last pull read their changes (`read` in `pull --json`).
fn read_of(report: &Value) -> String {
    report["read"].as_str().unwrap_or_default().to_owned()
}

/// What `status --json` says of how pulls read the remote.
fn reads(dir: &Path) -> Value {
    let out = run_ok(tursync(dir).args(["status", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    v["reads"].clone()
}

fn mirror_state(dir: &Path) -> Value {
    let text = std::fs::read(dir.join(".tursync/mirror.json")).expect("read mirror.json");
    serde_json::from_slice(&text).expect("mirror.json is JSON")
}

/// The server's database as a bootstrap gives it, page for page: what the mirror must be.
fn server_pages(url: &str) -> Vec<u8> {
    let (endpoint, _) = tursync::remote::Endpoint::parse(url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, None);
    let sync = tursync::remote::turso_sync::TursoSync::new(&remote);
    let mut file = Vec::new();
    let head = sync
        .pull(None, None, &mut |id, page| {
            let at = id as usize * page.len();
            if file.len() < at + page.len() {
                file.resize(at + page.len(), 0);
            }
            file[at..at + page.len()].copy_from_slice(page);
            Ok(())
        })
        .unwrap();
    file.truncate(head.db_size as usize * 4096);
    file
}

/// The mirror is the server's file, byte for byte.
fn assert_mirror_exact(server: &TursoSync, dir: &Path) {
    let mirror = mirror_image(&dir.join("working_copy.db")).expect("a mirror");
    let want = server_pages(&server.url);
    assert_eq!(mirror.len(), want.len(), "the mirror's size");
    if let Some(at) = (0..want.len()).find(|&i| mirror[i] != want[i]) {
        panic!(
            "the mirror differs from the server at page {}",
            at / 4096 + 1
        );
    }
}

/// Every table of the server, row for row, in the working copy.
fn assert_same(server: &TursoSync, dir: &Path) {
    let tables = server.query(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' \
         AND name NOT LIKE 'turso%' AND name NOT LIKE '!_!_turso%' ESCAPE '!' ORDER BY name",
    );
    let local = local_query(
        &wc(dir),
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name",
    );
    assert_eq!(tables, local, "the tables");
    for t in tables {
        let Cell::Text(name) = &t[0] else {
            panic!("a table name {t:?}")
        };
        server.assert_table_eq(
            &wc(dir),
            &format!("SELECT rowid, * FROM \"{name}\" ORDER BY rowid"),
        );
    }
}

/// A proxy in front of the server that keeps the first line of every request.
fn counting_proxy(server: &TursoSync) -> (HookProxy, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let proxy = HookProxy::start(&server.url, move |head, _| {
        let line = head.lines().next().unwrap_or_default().to_owned();
        log.lock().unwrap().push(line);
        Verdict::Forward
    });
    (proxy, seen)
}

fn page_pulls(seen: &Mutex<Vec<String>>) -> usize {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|l| l.starts_with("POST /pull-updates"))
        .count()
}

const SEED: &[&str] = &[
    "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, n INT)",
    "CREATE INDEX a_n ON a(n)",
    "CREATE TABLE h(x, y)",
    "INSERT INTO a(v, n) SELECT 'a' || value, value % 50 FROM generate_series(1, 40)",
    "INSERT INTO h SELECT value, zeroblob(3000) FROM generate_series(1, 10)",
];

/// One remote transaction over the seeded tables.
fn random_edit(rng: &mut Rng) -> String {
    let id = rng.below(60) + 1;
    let v = format!("'r{}'", rng.below(1000));
    match rng.below(7) {
        0 => format!("INSERT INTO a(v, n) VALUES ({v}, {})", rng.below(50)),
        1 => format!("UPDATE a SET v = {v} WHERE id = {id}"),
        2 => format!("DELETE FROM a WHERE id = {id}"),
        3 => format!("INSERT INTO h VALUES ({v}, zeroblob({}))", rng.below(9000)),
        4 => format!("UPDATE h SET x = {v} WHERE rowid = {id}"),
        5 => format!("DELETE FROM h WHERE rowid = {}", id % 12),
        _ => format!("UPDATE a SET n = n + 1 WHERE id % 7 = {}", id % 7),
    }
}

/// Pulls across many remote transactions (and a push of ours, and a new table) read the pages
/// `/pull-updates` sends, and leave the mirror the server's file byte for byte and the working
/// copy equal to the remote.
#[test]
fn pulls_across_many_transactions_are_page_exact() {
    let server = TursoSync::start();
    server.exec(SEED);
    let (proxy, seen) = counting_proxy(&server);
    let dir = tempdir();
    init_url(&proxy.url, dir.path());
    assert!(page_pulls(&seen) >= 2, "init bootstraps from /pull-updates");
    assert_eq!(mirror_state(dir.path())["log_id"], "turso-sync");
    assert!(mirror_state(dir.path())["revision"].is_string());
    assert_mirror_exact(&server, dir.path());

    let mut rng = Rng::from_time("turso mirror");
    for round in 0..12 {
        for _ in 0..1 + rng.below(4) {
            server.exec(&[&random_edit(&mut rng)]);
        }
        if round == 4 {
            edit(
                dir.path(),
                "INSERT INTO a(id, v, n) VALUES (100000, 'ours', 1)",
            );
            run_ok(tursync(dir.path()).arg("push"));
        }
        if round == 7 {
            server.exec(&[
                "CREATE TABLE late(x TEXT)",
                "INSERT INTO late VALUES ('late')",
            ]);
        }
        let now = server_revision(&server.url).to_string();
        let moved = mirror_state(dir.path())["revision"].as_str() != Some(now.as_str());
        seen.lock().unwrap().clear();
        let report = pull(dir.path());
        let read = read_of(&report);
        assert!(
            read == "the pages the log changed" || read.starts_with("whole tables of the mirror"),
            "round {round}: {read}"
        );
        // One request for the pages, and one to check the revision they go on from (none when
        // the edits changed nothing: a delete of a row already gone).
        let want = if moved { 2 } else { 1 };
        assert_eq!(page_pulls(&seen), want, "round {round}: {:?}", seen.lock());
        assert_eq!(
            mirror_state(dir.path())["revision"],
            server_revision(&server.url).to_string()
        );
        assert_mirror_exact(&server, dir.path());
        assert_same(&server, dir.path());
        assert_nothing_pending(dir.path());
    }
    // Nothing new: one request, and nothing read.
    seen.lock().unwrap().clear();
    pull(dir.path());
    assert_eq!(page_pulls(&seen), 1, "{:?}", seen.lock());
    assert_eq!(reads(dir.path())["path"], "log");
    assert!(reads(dir.path())["revision"].is_string());
}

/// The server's newest revision (tursodb's: its WAL's frame count).
fn server_revision(url: &str) -> u64 {
    let (endpoint, _) = tursync::remote::Endpoint::parse(url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, None);
    let head = tursync::remote::turso_sync::TursoSync::new(&remote)
        .probe()
        .unwrap();
    head.revision.parse().unwrap()
}

/// A checkpoint starts tursodb's WAL, and so its revisions, again from 0: the mirror's
/// revision then names frames the server no longer has, or (once the new WAL grew past it)
/// other frames. Either way the pull finds out, merges nothing of a wrong mirror, and ends
/// with the working copy equal to the remote; so do the pulls after it (over SQL, as a
/// bootstrap of a checkpointed file lacks the pages it holds outside its WAL).
#[test]
fn a_pull_after_a_checkpoint_finds_the_revision_reset() {
    for grown in [false, true] {
        let server = TursoSync::start();
        server.exec(SEED);
        let dir = tempdir();
        init_url(&server.url, dir.path());
        server.exec(&["UPDATE a SET v = 'before' WHERE id = 3"]);
        assert_eq!(read_of(&pull(dir.path())), "the pages the log changed");
        let revision: u64 = mirror_state(dir.path())["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        server.exec(&["PRAGMA wal_checkpoint(TRUNCATE)"]);
        assert_eq!(
            server_revision(&server.url),
            0,
            "the checkpoint reset the WAL"
        );
        // A row the new WAL's first frames change, then (grown) others until it holds more
        // frames than the mirror's revision: an answer from that revision would leave out
        // the first change.
        server.exec(&["UPDATE a SET v = 'first after' WHERE id = 5"]);
        let mut i = 0;
        while grown && server_revision(&server.url) <= revision {
            i += 1;
            server.exec(&[&format!(
                "UPDATE h SET x = 'grow{i}' WHERE rowid = {}",
                i % 10 + 1
            )]);
        }
        let report = pull(dir.path());
        let read = read_of(&report);
        assert!(
            read.contains(&format!("no longer knows revision {revision}")),
            "grown {grown}: {read}"
        );
        assert_same(&server, dir.path());
        assert_nothing_pending(dir.path());
        // The next pull cannot bootstrap from the pages (the checkpointed ones are not sent):
        // it says so, and reads over SQL from then on.
        read_over_sql_from_now_on(&server, dir.path(), "pages");
    }
}

/// A remote change read over SQL by the next pull, which says so, as `status` does with a
/// reason naming `why`; and the pull after it too, each ending exact.
fn read_over_sql_from_now_on(server: &TursoSync, dir: &Path, why: &str) {
    server.exec(&["UPDATE a SET v = 'over sql' WHERE id = 7"]);
    let read = read_of(&pull(dir));
    assert!(read.starts_with("over SQL"), "{read}");
    assert_same(server, dir);
    let r = reads(dir);
    assert_eq!(r["path"], "sql", "{r}");
    assert!(r["reason"].as_str().unwrap().contains(why), "{r}");
    server.exec(&["DELETE FROM a WHERE id = 9"]);
    pull(dir);
    assert_same(server, dir);
}

/// A pull killed with SIGKILL at random moments (fetching the pages, applying them slowly,
/// merging) is finished or started again by the next one: the mirror ends the server's file
/// and the working copy the remote.
#[test]
fn a_pull_killed_midway_is_healed_by_the_next() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)",
        "INSERT INTO t(b) SELECT randomblob(2000) FROM generate_series(1, 300)",
    ]);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    let spool = dir.path().join(".tursync/mirror.spool");
    let mut rng = Rng::from_time("turso mirror kill");
    let mut killed_applying = false;
    for round in 0..4 {
        server.exec(&[&format!(
            "UPDATE t SET b = randomblob(1500) WHERE id % 3 = {}",
            round % 3
        )]);
        let mut child = tursync(dir.path())
            .args(["pull"])
            .env("TURSYNC_TEST_APPLY_PAUSE_MS", "10")
            .spawn()
            .unwrap();
        // The first round waits for the spool, so one kill surely lands mid-apply.
        if round == 0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !spool.exists() {
                assert!(Instant::now() < deadline, "the spool never became ready");
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(100));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(1200)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed_applying |= spool.exists();
        server.exec(&["UPDATE t SET b = x'00' WHERE id = 1"]);
        eprintln!(
            "round {round}: killed with a spool: {}; the next pull read {}",
            spool.exists(),
            read_of(&pull(dir.path()))
        );
        assert!(!spool.exists());
        assert_mirror_exact(&server, dir.path());
        assert_same(&server, dir.path());
        assert_nothing_pending(dir.path());
    }
    assert!(
        killed_applying,
        "no kill landed while a spool was being applied"
    );
}

/// A pull killed after its merge committed into the working copy, but before the base took
/// theirs, leaves the base behind the working copy. A remote row that then goes back to the
/// base's value must still reach the working copy: the next pull must not take the row the
/// killed pull wrote for a local edit and keep it.
#[test]
fn a_pull_killed_between_the_working_copy_and_the_base_is_healed() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)",
        "INSERT INTO t(id, b) VALUES (1, x'00'), (2, x'00')",
    ]);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    server.exec(&["UPDATE t SET b = x'01' WHERE id = 1"]);
    let mut child = tursync(dir.path())
        .args(["pull"])
        .env("TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS", "60000")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = "SELECT b FROM t WHERE id = 1";
    while local_query(&wc(dir.path()), row) != [[Cell::Blob(vec![1])]] {
        assert!(Instant::now() < deadline, "the pull never committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    server.exec(&["UPDATE t SET b = x'00' WHERE id = 1"]);
    pull(dir.path());
    assert_mirror_exact(&server, dir.path());
    assert_same(&server, dir.path());
    assert_nothing_pending(dir.path());
}

/// A server that stops serving `/pull-updates` (404 from a proxy) is read over SQL from then
/// on, exactly, and `status` says why; a workspace started on such a server reads over SQL
/// from its init.
#[test]
fn a_server_without_pull_updates_is_read_over_sql() {
    let server = TursoSync::start();
    server.exec(SEED);
    let off = Arc::new(AtomicBool::new(false));
    let hide = off.clone();
    let proxy = HookProxy::start(&server.url, move |head, _| {
        if hide.load(Ordering::SeqCst) && head.starts_with("POST /pull-updates") {
            Verdict::Answer(
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        } else {
            Verdict::Forward
        }
    });
    let dir = tempdir();
    init_url(&proxy.url, dir.path());
    server.exec(&["UPDATE a SET v = 'paged' WHERE id = 1"]);
    assert_eq!(read_of(&pull(dir.path())), "the pages the log changed");

    off.store(true, Ordering::SeqCst);
    read_over_sql_from_now_on(&server, dir.path(), "/pull-updates");
    assert!(!dir.path().join(".tursync/mirror.db").exists());

    let fresh = tempdir();
    init_url(&proxy.url, fresh.path());
    assert_eq!(reads(fresh.path())["path"], "sql");
    server.exec(&["UPDATE a SET v = 'again' WHERE id = 4"]);
    pull(fresh.path());
    assert_same(&server, fresh.path());
}

/// tursodb 0.7.0 stops putting later writes into its WAL once a table-valued pragma (`SELECT …
/// FROM pragma_table_info(…)`) ran on its one connection: SQL still sees them, `/pull-updates`
/// never sends them. tursync's reads of the schema over SQL (init and pulls over SQL, `verify`,
/// push's orphan checks) must not do that: a teammate's write after each still reaches a page
/// pull of another working copy.
#[test]
fn schema_reads_over_sql_leave_later_writes_in_the_servers_pages() {
    let server = TursoSync::start();
    server.exec(SEED);
    server.exec(&["CREATE TABLE kid(id INTEGER PRIMARY KEY, a_id INT REFERENCES a(id))"]);
    let pages = tempdir();
    init_url(&server.url, pages.path());
    let sql = tempdir();
    let over_sql = |args: &[&str]| {
        run_ok(
            tursync(sql.path())
                .args(args)
                .env("TURSYNC_PROTOCOL", "sql"),
        );
    };
    let steps: [(&str, &dyn Fn()); 4] = [
        ("init over SQL", &|| {
            over_sql(&["init", "--url", &server.url])
        }),
        ("a pull over SQL", &|| over_sql(&["pull"])),
        ("verify", &|| over_sql(&["verify"])),
        ("a push with a foreign key", &|| {
            edit(sql.path(), "INSERT INTO kid(id, a_id) VALUES (1, 2)");
            over_sql(&["push"]);
        }),
    ];
    for (i, (what, step)) in steps.iter().enumerate() {
        step();
        server.exec(&[&format!("INSERT INTO h(x, y) VALUES ('after {what}', {i})")]);
        pull(pages.path());
        assert_eq!(
            local_query(
                &wc(pages.path()),
                &format!("SELECT count(*) FROM h WHERE x = 'after {what}'")
            ),
            vec![vec![Cell::Integer(1)]],
            "a teammate's write after {what} is missing from the server's pages"
        );
    }
    assert_same(&server, pages.path());
}

/// Runs the pyturso client (its own process) on `db`; returns what it printed.
fn pyturso(url: &str, db: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pyturso_client.py");
    let out = run_ok(
        Command::new(pyturso_python())
            .arg(script)
            .arg(url)
            .arg(db)
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// pyturso and tursync on one server: rows pyturso pushes arrive in the working copy after
/// `tursync pull` (read from the pages), rows tursync pushes reach pyturso after its pull,
/// and the tables pyturso keeps (`turso_cdc`, `turso_sync_last_change_id`, …) are never
/// pulled, diffed, pushed or shown.
#[test]
fn pyturso_and_tursync_share_a_server() {
    let server = TursoSync::start();
    server.exec(SEED);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    let py = tempdir();
    let py_db = py.path().join("client.db");

    pyturso(
        &server.url,
        &py_db,
        &[
            "write",
            "INSERT INTO a(id, v, n) VALUES (1000, 'from pyturso', 7)",
            "UPDATE a SET v = 'changed by pyturso' WHERE id = 2",
            "DELETE FROM a WHERE id = 3",
            "INSERT INTO h VALUES ('py', x'00ff')",
        ],
    );
    let report = pull(dir.path());
    let read = read_of(&report);
    assert!(!read.starts_with("over SQL"), "{read}");
    assert_same(&server, dir.path());
    assert_eq!(
        local_query(
            &wc(dir.path()),
            "SELECT v FROM a WHERE id IN (2, 1000) ORDER BY id"
        ),
        vec![
            vec![Cell::text("changed by pyturso")],
            vec![Cell::text("from pyturso")]
        ]
    );
    // The server now holds pyturso's table; none of it is ours.
    assert!(!server
        .query("SELECT name FROM sqlite_schema WHERE name = 'turso_sync_last_change_id'")
        .is_empty());
    let names = local_query(&wc(dir.path()), "SELECT name FROM sqlite_schema");
    assert!(
        !names
            .iter()
            .any(|r| matches!(&r[0], Cell::Text(n) if n.contains("turso"))),
        "{names:?}"
    );
    assert_nothing_pending(dir.path());
    let status = run_ok(tursync(dir.path()).arg("status"));
    let shown = text(&status).replace("Turso Sync", "");
    assert!(!shown.contains("turso_"), "{shown}");

    edit(
        dir.path(),
        "INSERT INTO a(id, v, n) VALUES (2000, 'from tursync', 8); UPDATE a SET n = 99 WHERE id = 1000",
    );
    run_ok(tursync(dir.path()).arg("push"));
    let rows = pyturso(
        &server.url,
        &py_db,
        &[
            "read",
            "SELECT id, v, n FROM a WHERE id >= 1000 ORDER BY id",
        ],
    );
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            r#"[["integer", "1000"], ["text", "from pyturso"], ["integer", "99"]]"#,
            r#"[["integer", "2000"], ["text", "from tursync"], ["integer", "8"]]"#,
        ]
    );
    // pyturso's tables on the server were not touched by the push, and the next pull still
    // reads pages.
    pyturso(
        &server.url,
        &py_db,
        &["write", "UPDATE a SET v = 'second' WHERE id = 1"],
    );
    let read = read_of(&pull(dir.path()));
    assert_eq!(read, "the pages the log changed");
    assert_same(&server, dir.path());
    assert_nothing_pending(dir.path());
}
