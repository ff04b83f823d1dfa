//! The full-screen terminal: raw mode and the alternate screen on the way in, and the terminal
//! as it was on the way out, however `top` leaves (return, error, panic, SIGTERM/SIGINT/SIGHUP).

use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Set by the signal handler; the event loop polls it (crossterm retries its poll on EINTR, so
/// the loop wakes at least every few hundred ms to look).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: nothing else is async-signal-safe here.
    STOP.store(true, Ordering::Relaxed);
}

/// Whether SIGTERM, SIGINT or SIGHUP arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Routes SIGTERM, SIGINT (raw mode turns Ctrl-C into a key, but `kill -INT` still comes as a
/// signal) and SIGHUP (the terminal went away) to `stop_requested`, so the terminal is restored
/// by the normal way out instead of the process dying in raw mode.
pub fn catch_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the terminal has for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes to read: crossterm parses them into keys.
    Ready,
    /// Nothing before the timeout, or a signal arrived (see `stop_requested`).
    Idle,
    /// The terminal hung up (tmux kill-session, a closed ssh connection).
    Gone,
}

/// Waits up to `timeout` for input on stdin (crossterm reads keys from stdin when it is a
/// terminal, which `top` requires). This wait is ours rather than crossterm's because
/// crossterm 0.29 spins forever in its poll once the terminal hangs up (every read returns 0
/// and its read loop never ends), which would leave a process burning a core after its tmux
/// session or ssh connection is gone: here a hang-up is seen, and `top` exits.
pub fn wait_input(timeout: Duration) -> Input {
    let mut fd = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd that outlives the call.
    let r = unsafe { libc::poll(&mut fd, 1, ms) };
    if r <= 0 {
        // 0: the timeout; -1: EINTR from a signal, which the caller looks at next.
        return Input::Idle;
    }
    if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Input::Gone;
    }
    Input::Ready
}

/// Once a stop was requested, gives the normal way out `grace` to finish, then restores the
/// terminal and exits from this thread: a last resort should the main thread be stuck in a
/// library call (see `wait_input`) when the signal comes.
pub fn exit_on_stop_after(grace: Duration) {
    thread::spawn(move || {
        while !stop_requested() {
            thread::sleep(Duration::from_millis(250));
        }
        thread::sleep(grace);
        restore();
        std::process::exit(0);
    });
}

/// Leaves raw mode and the alternate screen and shows the cursor. Harmless when already done:
/// it runs from the guard's drop and from the panic hook, possibly both.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Holds the terminal in full-screen mode until dropped.
pub struct Screen {
    pub term: Term,
}

impl Screen {
    pub fn enter() -> io::Result<Screen> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // Restore first, or the panic message lands in the alternate screen and
                // vanishes with it.
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        let screen = || -> io::Result<Term> {
            execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
            Terminal::new(CrosstermBackend::new(io::stdout()))
        };
        match screen() {
            Ok(term) => Ok(Screen { term }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
