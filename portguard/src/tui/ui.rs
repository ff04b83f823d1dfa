//! What the person at the keyboard chose, and what each key does. Kept apart from drawing and
//! from the maps so that the key handling can be tested without a terminal.

use std::cell::RefCell;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{settings::Mode, tui::model::Row};

/// The source table's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Most packets first.
    Packets,
    /// Fastest first.
    Rate,
    /// Most recently seen first.
    LastSeen,
    /// Ascending (IPv4 before IPv6).
    Address,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Packets => SortBy::Rate,
            SortBy::Rate => SortBy::LastSeen,
            SortBy::LastSeen => SortBy::Address,
            SortBy::Address => SortBy::Packets,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Packets => "packets",
            SortBy::Rate => "rate",
            SortBy::LastSeen => "last seen",
            SortBy::Address => "address",
        }
    }
}

/// What the keyboard is talking to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    None,
    /// Typing a filter; applied on Enter.
    Filter(String),
    /// Asking before switching `iface` to `to`.
    Confirm {
        iface: String,
        to: Mode,
    },
    Help,
}

/// What the caller has to do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Something on screen changed.
    Redraw,
    /// The interface on screen changed: its sources are read now rather than at the next tick.
    Refresh,
    SetMode {
        iface: String,
        to: Mode,
    },
    Quit,
}

pub struct Ui {
    pub sort: SortBy,
    /// Applied address filter (a substring), empty for none.
    pub filter: String,
    pub prompt: Prompt,
    /// The interface on screen, by name (the list can change under it).
    pub iface: Option<String>,
    /// One line for the footer: the outcome of the last action.
    pub notice: Option<String>,
    /// The last selection, as row indices: between two reads of a large table nothing in it
    /// changes, and selecting among 65,536 rows on every tick would cost more than the rest of
    /// the tick. Interior mutability because drawing only borrows the `Ui`.
    cache: RefCell<Option<(CacheKey, Vec<usize>, usize)>>,
}

#[derive(Clone, PartialEq, Eq)]
struct CacheKey {
    iface: String,
    generation: u64,
    sort: SortBy,
    filter: String,
    limit: usize,
}

impl Ui {
    pub fn new(iface: Option<String>) -> Ui {
        Ui {
            sort: SortBy::Packets,
            filter: String::new(),
            prompt: Prompt::None,
            iface,
            notice: None,
            cache: RefCell::new(None),
        }
    }

    /// Keeps the selection on an interface that exists: the first one when it went away.
    pub fn settle(&mut self, names: &[&str]) {
        if self.iface.as_deref().is_none_or(|n| !names.contains(&n)) {
            self.iface = names.first().map(|n| (*n).to_string());
        }
    }

    /// Handles one key press. `names` are the guarded interfaces in order, `mode` the mode
    /// shown for the one on screen.
    pub fn key(&mut self, k: KeyEvent, names: &[&str], mode: Option<Mode>) -> Action {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match std::mem::replace(&mut self.prompt, Prompt::None) {
            Prompt::Filter(mut text) => {
                match k.code {
                    KeyCode::Enter => {
                        self.filter = text.trim().to_string();
                    }
                    KeyCode::Esc => self.filter.clear(),
                    KeyCode::Backspace => {
                        text.pop();
                        self.prompt = Prompt::Filter(text);
                    }
                    KeyCode::Char(c) if !c.is_control() && text.len() < 64 => {
                        text.push(c);
                        self.prompt = Prompt::Filter(text);
                    }
                    _ => self.prompt = Prompt::Filter(text),
                }
                Action::Redraw
            }
            Prompt::Confirm { iface, to } => match k.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => Action::SetMode { iface, to },
                _ => {
                    self.notice = Some(format!("{iface}: mode unchanged"));
                    Action::Redraw
                }
            },
            Prompt::Help => match k.code {
                KeyCode::Char('q') => Action::Quit,
                _ => Action::Redraw,
            },
            Prompt::None => self.normal_key(k, names, mode),
        }
    }

    fn normal_key(&mut self, k: KeyEvent, names: &[&str], mode: Option<Mode>) -> Action {
        // The last outcome stays on screen until the next key.
        let had_notice = self.notice.take().is_some();
        match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char('i') | KeyCode::Tab => {
                if names.len() < 2 {
                    let why = if names.is_empty() { "nothing" } else { "only one interface" };
                    self.notice = Some(format!("{why} is guarded"));
                    return Action::Redraw;
                }
                let at = names.iter().position(|n| Some(*n) == self.iface.as_deref());
                let next = at.map_or(0, |i| (i + 1) % names.len());
                self.iface = Some(names[next].to_string());
                Action::Refresh
            }
            KeyCode::Char('/') => {
                self.prompt = Prompt::Filter(self.filter.clone());
                Action::Redraw
            }
            KeyCode::Esc => {
                self.filter.clear();
                Action::Redraw
            }
            KeyCode::Char('m') => {
                let (Some(iface), Some(mode)) = (self.iface.clone(), mode) else {
                    self.notice = Some("no interface to switch".to_string());
                    return Action::Redraw;
                };
                let to = match mode {
                    Mode::Drop => Mode::Count,
                    Mode::Count => Mode::Drop,
                };
                self.prompt = Prompt::Confirm { iface, to };
                Action::Redraw
            }
            KeyCode::Char('?') | KeyCode::Char('h') => {
                self.prompt = Prompt::Help;
                Action::Redraw
            }
            _ if had_notice => Action::Redraw,
            _ => Action::Nothing,
        }
    }

    /// The first `limit` rows to show, filtered and sorted, and how many match in all. Only
    /// the rows that fit are sorted: a full table is 65,536 sources, and the rest are
    /// partitioned away in linear time.
    pub fn visible<'a>(&self, rows: &'a [Row], limit: usize) -> (Vec<&'a Row>, usize) {
        let (idx, matching) = self.select(rows, limit);
        (idx.into_iter().map(|i| &rows[i]).collect(), matching)
    }

    /// `visible` for the rows of `iface` as of its `generation` (bumped at every read), reusing
    /// the previous selection when nothing it depends on changed.
    pub fn visible_cached<'a>(
        &self,
        iface: &str,
        generation: u64,
        rows: &'a [Row],
        limit: usize,
    ) -> (Vec<&'a Row>, usize) {
        let key = CacheKey {
            iface: iface.to_string(),
            generation,
            sort: self.sort,
            filter: self.filter.clone(),
            limit,
        };
        let mut cache = self.cache.borrow_mut();
        let (idx, matching) = match cache.as_ref() {
            Some((k, idx, matching)) if *k == key => (idx.clone(), *matching),
            _ => {
                let (idx, matching) = self.select(rows, limit);
                *cache = Some((key, idx.clone(), matching));
                (idx, matching)
            }
        };
        (idx.into_iter().filter_map(|i| rows.get(i)).collect(), matching)
    }

    fn select(&self, rows: &[Row], limit: usize) -> (Vec<usize>, usize) {
        let needle = self.filter.to_ascii_lowercase();
        let mut out: Vec<usize> = if needle.is_empty() {
            (0..rows.len()).collect()
        } else {
            (0..rows.len()).filter(|i| rows[*i].addr.to_string().contains(&needle)).collect()
        };
        let matching = out.len();
        let order = self.order();
        let by = |a: &usize, b: &usize| order(&rows[*a], &rows[*b]);
        if limit == 0 {
            out.clear();
        } else if out.len() > limit {
            out.select_nth_unstable_by(limit - 1, by);
            out.truncate(limit);
        }
        out.sort_unstable_by(by);
        (out, matching)
    }

    /// A total order (the address breaks ties), so the screen does not shuffle equal rows.
    fn order(&self) -> fn(&Row, &Row) -> std::cmp::Ordering {
        match self.sort {
            SortBy::Packets => {
                |a, b| b.stats.packets.cmp(&a.stats.packets).then(a.addr.cmp(&b.addr))
            }
            SortBy::Rate => |a, b| {
                let rate = |r: &Row| r.rate.unwrap_or(0.0);
                rate(b)
                    .total_cmp(&rate(a))
                    .then(b.stats.packets.cmp(&a.stats.packets))
                    .then(a.addr.cmp(&b.addr))
            },
            SortBy::LastSeen => {
                |a, b| b.stats.last_seen_ns.cmp(&a.stats.last_seen_ns).then(a.addr.cmp(&b.addr))
            }
            SortBy::Address => |a, b| a.addr.cmp(&b.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::SourceStats;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn row(addr: &str, packets: u64, last: u64) -> Row {
        Row {
            addr: addr.parse().unwrap(),
            stats: SourceStats { packets, last_seen_ns: last, ..Default::default() },
            rate: Some(packets as f64 / 10.0),
            new: false,
            tool: None,
        }
    }

    #[test]
    fn sort_cycles_and_orders() {
        let rows =
            vec![row("198.18.0.3", 31, 1), row("198.18.0.2", 5, 3), row("2001:db8::3", 3, 2)];
        let mut ui = Ui::new(None);
        let order = |ui: &Ui| -> Vec<String> {
            ui.visible(&rows, 10).0.iter().map(|r| r.addr.to_string()).collect()
        };
        assert_eq!(order(&ui), ["198.18.0.3", "198.18.0.2", "2001:db8::3"]);
        ui.key(key('s'), &[], None);
        assert_eq!(ui.sort, SortBy::Rate);
        ui.key(key('s'), &[], None);
        assert_eq!(order(&ui), ["198.18.0.2", "2001:db8::3", "198.18.0.3"]);
        ui.key(key('s'), &[], None);
        assert_eq!(order(&ui), ["198.18.0.2", "198.18.0.3", "2001:db8::3"]);
        ui.key(key('s'), &[], None);
        assert_eq!(ui.sort, SortBy::Packets);
        let (top, all) = ui.visible(&rows, 2);
        assert_eq!(all, 3);
        assert_eq!(top.iter().map(|r| r.stats.packets).collect::<Vec<_>>(), [31, 5]);
        let (top, all) = ui.visible(&rows, 0);
        assert_eq!((top.len(), all), (0, 3));
    }

    #[test]
    fn filter_applies_on_enter_and_clears_on_esc() {
        let rows = vec![row("198.18.0.3", 31, 1), row("2001:db8::3", 3, 2)];
        let mut ui = Ui::new(None);
        ui.key(key('/'), &[], None);
        for c in "DB8".chars() {
            ui.key(key(c), &[], None);
        }
        assert_eq!(ui.visible(&rows, 10).1, 2, "not applied before Enter");
        ui.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), &[], None);
        assert_eq!(ui.visible(&rows, 10).1, 1);
        ui.key(key('/'), &[], None);
        ui.key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), &[], None);
        assert_eq!(ui.filter, "");
        assert_eq!(ui.prompt, Prompt::None);
    }

    #[test]
    fn mode_switch_asks_first() {
        let names = ["pg-lan", "pg-wan"];
        let mut ui = Ui::new(Some("pg-wan".into()));
        assert_eq!(ui.key(key('m'), &names, Some(Mode::Drop)), Action::Redraw);
        assert_eq!(ui.key(key('n'), &names, Some(Mode::Drop)), Action::Redraw);
        assert_eq!(ui.prompt, Prompt::None);
        ui.key(key('m'), &names, Some(Mode::Drop));
        assert_eq!(
            ui.key(key('y'), &names, Some(Mode::Drop)),
            Action::SetMode { iface: "pg-wan".into(), to: Mode::Count }
        );
        assert_eq!(ui.key(key('i'), &names, None), Action::Refresh);
        assert_eq!(ui.iface.as_deref(), Some("pg-lan"));
        assert_eq!(ui.key(key('q'), &names, None), Action::Quit);
    }
}
