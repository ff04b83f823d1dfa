//! `portguard top`: a live full-screen view of who is knocking, beside the running service. It
//! only opens the pinned maps (`Guard::open`); it never loads or attaches anything.

use std::{
    io::IsTerminal as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portguard::{
    guard::View,
    pins::Pins,
    tui::{
        NOTHING_GUARDED,
        model::{Model, one_line},
        term::{self, Screen},
        ui::{Action, Ui},
        view,
    },
};
use ratatui::crossterm::event::{self, Event, KeyEvent, KeyEventKind};

/// Live view of the guarded interfaces and the sources knocking on them.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Seconds between refreshes, 0.05 to 3600.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0,
          value_parser = portguard::ranges::parse::interval)]
    pub interval: f64,
    /// The interface shown first (default: the first guarded one).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub iface: Option<String>,
}

/// The longest the loop sleeps. Signals (SIGTERM, SIGINT, SIGHUP, and SIGWINCH for resizes)
/// interrupt the wait at once; this only bounds how stale the check for them can get.
const WAKE: Duration = Duration::from_millis(250);

pub fn run(args: Args) -> Result<ExitCode> {
    let interval = Duration::from_secs_f64(args.interval);
    let pins = Pins::default();
    // Without the privileges to read the pins, every interface would look unguarded: say
    // "needs root" instead, as every other verb does.
    pins.guarded()?;
    // An interface asked for by name must be guarded, as for every other verb: an error now,
    // not a notice on a screen that shows another interface.
    if let Some(want) = &args.iface {
        View::open(&pins, want)?;
    }
    if !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
        if pins.guarded()?.is_empty() {
            bail!(NOTHING_GUARDED);
        }
        bail!("top needs a terminal (for counters in a pipe, use `portguard run`)");
    }
    let mut model = Model::new(pins);
    let mut ui = Ui::new(args.iface.clone());
    model.refresh(ui.iface.as_deref(), interval);
    settle(&model, &mut ui);

    term::catch_signals().context("catching SIGTERM and SIGINT")?;
    term::exit_on_stop_after(Duration::from_secs(2));
    let mut screen = Screen::enter().context("setting up the terminal")?;
    let mut next_tick = Instant::now() + interval;
    let mut dirty = true;
    'run: while !term::stop_requested() {
        if Instant::now() >= next_tick {
            model.refresh(ui.iface.as_deref(), interval);
            settle(&model, &mut ui);
            // Behind (a suspended process, a slow read): skip the missed ticks rather than
            // catching up in a burst.
            next_tick = (next_tick + interval).max(Instant::now());
            dirty = true;
        }
        if dirty {
            screen.term.draw(|f| view::draw(f, &model, &ui, interval))?;
            dirty = false;
        }
        let wait = next_tick.saturating_duration_since(Instant::now()).min(WAKE);
        if term::wait_input(wait) == term::Input::Gone {
            break;
        }
        // Everything crossterm has now: keys, and resizes (it learns of them from SIGWINCH,
        // which also cut the wait short).
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    match key(&mut model, &mut ui, k, interval) {
                        Step::Quit => break 'run,
                        Step::Redraw => dirty = true,
                        Step::Refreshed => {
                            next_tick = Instant::now() + interval;
                            dirty = true;
                        }
                        Step::Nothing => {}
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    drop(screen);
    Ok(ExitCode::SUCCESS)
}

/// What the loop does after a key.
enum Step {
    Nothing,
    Redraw,
    /// Read the maps out of turn (the interface on screen changed): the next tick is due one
    /// interval from now.
    Refreshed,
    Quit,
}

fn key(model: &mut Model, ui: &mut Ui, k: KeyEvent, interval: Duration) -> Step {
    let names: Vec<&str> = model.ifaces.iter().map(|i| i.name.as_str()).collect();
    let mode = ui
        .iface
        .as_deref()
        .and_then(|n| model.get(n))
        .and_then(|i| i.settings.as_ref())
        .map(|s| s.mode);
    match ui.key(k, &names, mode) {
        Action::Quit => Step::Quit,
        Action::Nothing => Step::Nothing,
        Action::Redraw => Step::Redraw,
        Action::Refresh => {
            // The new interface's sources now, not up to an interval later.
            model.refresh(ui.iface.as_deref(), interval);
            settle(model, ui);
            Step::Refreshed
        }
        Action::SetMode { iface, to } => {
            ui.notice = Some(match model.get_mut(&iface).map(|i| i.set_mode(to)) {
                Some(Ok(true)) => format!("{iface}: now {}", mode_name(to)),
                Some(Ok(false)) => format!("{iface}: already {}", mode_name(to)),
                Some(Err(e)) => format!("{iface}: {}", one_line(&e)),
                None => format!("{iface} is no longer guarded"),
            });
            Step::Redraw
        }
    }
}

fn settle(model: &Model, ui: &mut Ui) {
    let names: Vec<&str> = model.ifaces.iter().map(|i| i.name.as_str()).collect();
    ui.settle(&names);
}

fn mode_name(m: portguard::settings::Mode) -> &'static str {
    match m {
        portguard::settings::Mode::Drop => "drop",
        portguard::settings::Mode::Count => "count",
    }
}
