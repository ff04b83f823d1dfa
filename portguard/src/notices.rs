//! Warnings that must stay in sight. `portguard run` on a terminal redraws its table every
//! interval, which would wipe a warning logged at startup ("native XDP unavailable", "already
//! guarded: watching, settings unchanged") within a second. While its live view is up, log
//! records at warn level and above are posted here instead of written out, and the view draws
//! them above the table until they stop being true.
//!
//! A record logged with a target starting with `notice:` is posted under that key, and
//! whoever knows the condition ended clears it with [`clear`] (the interface came back, the
//! socket went away); any other warning is keyed by its own text and stays for the run.

use std::sync::Mutex;

/// The prefix of a log target that names a notice.
pub const TARGET_PREFIX: &str = "notice:";

struct Board {
    /// Whether warnings are held here rather than written out.
    capturing: bool,
    /// Key, text, and whether it has been drawn; in the order posted.
    notices: Vec<(String, String, bool)>,
}

static BOARD: Mutex<Board> = Mutex::new(Board { capturing: false, notices: Vec::new() });

fn board() -> std::sync::MutexGuard<'static, Board> {
    BOARD.lock().unwrap_or_else(|e| e.into_inner())
}

/// From now on, warnings are held for the live view.
pub fn capture() {
    board().capturing = true;
}

/// Whether warnings are being held (the logger asks, per record).
pub fn capturing() -> bool {
    board().capturing
}

/// Holds `text` under `key`, replacing what the key held.
pub fn post(key: &str, text: String) {
    let mut b = board();
    match b.notices.iter_mut().find(|n| n.0 == key) {
        Some(n) if n.1 == text => {}
        Some(n) => *n = (key.to_string(), text, false),
        None => b.notices.push((key.to_string(), text, false)),
    }
}

/// The condition behind `key` ended: its notice goes.
pub fn clear(key: &str) {
    board().notices.retain(|n| n.0 != key);
}

/// What the view draws, oldest first; marked as drawn.
pub fn current() -> Vec<String> {
    let mut b = board();
    b.notices
        .iter_mut()
        .map(|n| {
            n.2 = true;
            n.1.clone()
        })
        .collect()
}

/// Stops holding warnings, and returns those never drawn (the run ended before its first
/// frame): the caller writes them out, so that none is lost.
pub fn finish() -> Vec<String> {
    let mut b = board();
    b.capturing = false;
    b.notices.drain(..).filter(|n| !n.2).map(|n| n.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posted_replaced_cleared() {
        capture();
        post("notice:a", "a is gone".into());
        post("b", "b".into());
        post("notice:a", "a is gone".into());
        assert_eq!(current(), ["a is gone", "b"]);
        post("notice:c", "c".into());
        clear("notice:a");
        assert_eq!(finish(), ["c"], "only what was never drawn");
        assert!(!capturing());
    }
}
