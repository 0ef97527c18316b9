//! The one integration test binary: every file in `tests/` is a module of it, sharing the
//! harness in `tests/common`. One binary is linked once per change instead of once per file
//! (docs/BENCHMARKS.md, "Test suite"). Run one file's tests with
//! `cargo test --release --test tests -- push::`.

mod common;

mod app_beside;
mod attack;
mod attack2;
mod attack3;
mod attack4;
mod attack5;
mod attack6;
mod attack7;
mod attack8;
mod clone;
mod diff;
mod disk;
mod exact;
mod harness_selftest;
mod migrate;
mod network;
mod pull;
mod push;
mod replog;
mod round_trips;
mod team;
mod turso_mirror;
mod turso_sync;
mod verify;
mod watch;

/// `autotests = false` (Cargo.toml) means a file in `tests/` that is not declared above is
/// never compiled, so its tests would silently not run: this fails instead.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let declared = include_str!("tests.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs") {
            if module != "tests" && !declared.contains(&format!("\nmod {module};\n")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "declare these in tests/tests.rs: {missing:?}"
    );
}
