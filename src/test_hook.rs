//! Test hooks: an environment variable names a number of milliseconds to sleep at one step of
//! a command, so an integration test, which runs the command in its own process, can kill it
//! right there. Unset (as in any real use), a hook does nothing.
//!
//! ```text
//! TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS=60000 tursync pull   # sleeps between two steps
//! ```

use std::time::Duration;

/// A sleep of the milliseconds `var` names, to call at each step, or `None` when it names none.
pub(crate) fn sleeper(var: &str) -> Option<impl FnMut()> {
    let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
    Some(move || std::thread::sleep(Duration::from_millis(ms)))
}

/// Sleeps the milliseconds `var` names, once.
pub(crate) fn pause(var: &str) {
    if let Some(mut sleep) = sleeper(var) {
        sleep()
    }
}
