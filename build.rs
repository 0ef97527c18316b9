//! Names the commit a binary was built from, for `tursync --version`: `git rev-parse` at build
//! time, or "unknown commit" where the source has no git history (a crate tarball).

use std::path::Path;
use std::process::Command;

/// What `git args…` prints, trimmed; `None` without git, outside a repository, or on nothing.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown commit".to_owned());
    println!("cargo:rustc-env=TURSYNC_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names (loose, or packed). Git names the files:
    // in a worktree `.git` is a file and they live elsewhere. Only files that exist are named,
    // since cargo takes a missing one for changed and would rebuild the crate on every build;
    // and only this branch's ref, so other branches' commits rebuild nothing.
    println!("cargo:rerun-if-changed=build.rs");
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let names = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(branch);
    for name in names {
        if let Some(path) =
            git(&["rev-parse", "--git-path", &name]).filter(|p| Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
