//! Drawing one frame. ratatui keeps the previous frame and writes only the cells that changed,
//! so redrawing on every tick and key does not flicker.
//!
//! Layout, top to bottom: a title line; the interface panel (settings, drop and pass rates with
//! sparklines, totals); the source table, which takes what is left; a footer with the keys, a
//! prompt or the outcome of the last action. Help and confirmations are drawn over it.

use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, Wrap},
};

use crate::{
    clock,
    settings::Mode,
    text,
    tui::{
        MIN_HEIGHT, MIN_WIDTH, NOTHING_GUARDED, fmt,
        model::{Iface, Model},
        ui::{Prompt, Ui},
    },
};

/// Lines of the interface panel, borders included.
const PANEL: u16 = 7;

pub fn draw(f: &mut Frame, model: &Model, ui: &Ui, interval: Duration) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(f, area);
        return;
    }
    let [title, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1), Constraint::Length(1)])
            .areas(area);
    let shown = ui.iface.as_deref().and_then(|n| model.get(n));
    title_line(f, title, model, ui, interval);
    match shown {
        None => nothing(f, body, model),
        Some(iface) => {
            let [panel_area, table_area] =
                Layout::vertical([Constraint::Length(PANEL), Constraint::Fill(1)]).areas(body);
            panel(f, panel_area, iface);
            sources(f, table_area, iface, ui, interval);
        }
    }
    footer_line(f, footer, ui);
    match &ui.prompt {
        Prompt::Help => help(f, area),
        Prompt::Confirm { iface, to } => confirm(f, area, iface, *to),
        _ => {}
    }
}

fn too_small(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from(format!("terminal too small: {MIN_WIDTH}×{MIN_HEIGHT} needed")),
        Line::from(format!("(now {}×{}; q quits)", area.width, area.height)),
    ];
    let y = area.height.saturating_sub(2) / 2;
    let at = Rect { y: area.y + y, height: area.height.saturating_sub(y).min(2), ..area };
    f.render_widget(
        Paragraph::new(text).alignment(Alignment::Center).wrap(Wrap { trim: true }),
        at,
    );
}

fn title_line(f: &mut Frame, area: Rect, model: &Model, ui: &Ui, interval: Duration) {
    let names: Vec<&str> = model.ifaces.iter().map(|i| i.name.as_str()).collect();
    let mut left = vec![Span::styled(" portguard top ", Style::new().reversed().bold())];
    if let Some(name) = ui.iface.as_deref() {
        let at = names.iter().position(|n| *n == name).map_or(0, |i| i + 1);
        left.push(Span::raw(" "));
        left.push(Span::styled(name.to_string(), Style::new().bold()));
        left.push(Span::raw(format!(" ({at}/{})", names.len())));
    }
    let mut right = format!("sort: {}", ui.sort.label());
    if !ui.filter.is_empty() {
        right.push_str(&format!("  filter: {}", ui.filter));
    }
    right.push_str(&format!("  every {} ", secs(interval)));
    let width = right.chars().count() as u16;
    let [l, r] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(width)]).areas(area);
    f.render_widget(Paragraph::new(Line::from(left)), l);
    f.render_widget(Paragraph::new(right).alignment(Alignment::Right), r);
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0}s") } else { format!("{s:.2}s") }
}

fn nothing(f: &mut Frame, area: Rect, model: &Model) {
    let mut text = vec![
        Line::from(NOTHING_GUARDED).bold(),
        Line::from(""),
        Line::from(format!("(looking for pinned guards under {})", model.pins.root.display())),
    ];
    if let Some(e) = &model.error {
        text.push(Line::from(e.clone()).red());
    }
    let y = area.height.saturating_sub(text.len() as u16) / 2;
    let at = Rect { y: area.y + y, height: area.height - y, ..area };
    f.render_widget(
        Paragraph::new(text).alignment(Alignment::Center).wrap(Wrap { trim: true }),
        at,
    );
}

fn panel(f: &mut Frame, area: Rect, i: &Iface) {
    let block = Block::bordered().title(Line::from(format!(" {} ", i.name)).bold());
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [head, drops, passes, totals1, totals2] =
        Layout::vertical([Constraint::Length(1); 5]).areas(inner);

    let mut line = Vec::new();
    match &i.settings {
        Some(s) => {
            let action = match s.mode {
                Mode::Drop => Span::styled("drop", Style::new().red().bold()),
                Mode::Count => Span::styled("count", Style::new().yellow().bold()),
            };
            let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
            line.extend([
                Span::raw("action "),
                action,
                Span::raw(format!("  ports {}  {}", ports.join(","), s.scope())),
            ]);
            if !s.allow.is_empty() {
                line.push(Span::raw(format!("  allow {}", s.allow.len())));
            }
        }
        None => line.push(Span::raw("settings unknown")),
    }
    if let Some(a) = i.attached {
        line.push(Span::raw(format!("  {a} XDP")));
    }
    if let Some(m) = &i.meta {
        line.push(Span::raw(if m.owner_pid != 0 {
            format!("  pid {}", m.owner_pid)
        } else {
            "  no owner".to_string()
        }));
    }
    let head_line = match &i.error {
        Some(e) => Line::from(e.clone()).red(),
        None => Line::from(line),
    };
    f.render_widget(Paragraph::new(head_line), head);

    for (area, label, h, color) in
        [(drops, "dropped", &i.drops, Color::Red), (passes, "passed", &i.passes, Color::Green)]
    {
        let [l, s] = Layout::horizontal([Constraint::Length(17), Constraint::Fill(1)])
            .spacing(1)
            .areas(area);
        let text = format!("{label:<8}{:>9}", fmt::rate(h.last()));
        f.render_widget(Paragraph::new(text), l);
        let data = h.tail(s.width as usize);
        f.render_widget(Sparkline::default().data(&data).style(Style::new().fg(color)), s);
    }

    let t = &i.totals;
    f.render_widget(
        Paragraph::new(format!(
            "seen {}  matched {}  dropped {}  allowed {}",
            t.seen, t.matched, t.dropped, t.allowed
        )),
        totals1,
    );
    f.render_widget(
        Paragraph::new(format!(
            "malformed {}  fragments followed {}  untracked {}  unjudged {}",
            t.malformed, t.fragments_followed, t.untracked, t.unjudged
        )),
        totals2,
    );
}

fn sources(f: &mut Frame, area: Rect, i: &Iface, ui: &Ui, interval: Duration) {
    let shown = area.height.saturating_sub(3) as usize;
    let (rows, matching) = ui.visible_cached(&i.name, i.generation, &i.rows, shown);
    let count = if ui.filter.is_empty() {
        format!(" sources: {}", i.rows.len())
    } else {
        format!(" sources: {matching} of {} match \"{}\"", i.rows.len(), ui.filter)
    };
    let mut title = vec![Span::raw(count).bold()];
    let new = i.rows.iter().filter(|r| r.new).count();
    if new > 0 {
        title.push(Span::raw(", "));
        title.push(Span::styled(format!("{new} new"), Style::new().yellow()));
    }
    if i.sources_every > 1 {
        // A large table is read less often than the counters (see model::SOURCES_BUDGET).
        let every = interval * i.sources_every;
        title.push(Span::raw(format!(", read every {}", secs(every))).dim());
    }
    title.push(Span::raw(" "));
    let block = Block::bordered().title(Line::from(title));
    if matching == 0 {
        let text = if i.rows.is_empty() { "no sources yet" } else { "no source matches" };
        f.render_widget(Paragraph::new(text).alignment(Alignment::Center).block(block), area);
        return;
    }

    let inner_width = area.width.saturating_sub(2) as usize;
    let longest = rows.iter().map(|r| r.addr.to_string().len()).max().unwrap_or(0);
    let cols = columns(inner_width, longest);
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|c| {
            if c.kind == Col::Direction { Constraint::Fill(1) } else { Constraint::Length(c.width) }
        })
        .collect();
    let now = clock::monotonic_ns();
    let age = |ns: u64| clock::short(clock::age(ns, now));
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let body: Vec<TableRow> = rows
        .iter()
        .map(|r| {
            let st = &r.stats;
            let cells = cols.iter().map(|c| match c.kind {
                Col::New => Cell::from(if r.new { "*" } else { " " }),
                // Cut in the middle with a mark: the network and the host part both show.
                Col::Address => Cell::from(text::fit_middle(&r.addr.to_string(), c.width as usize)),
                Col::Packets => right(fmt::count(st.packets)),
                Col::Tool => {
                    Cell::from(text::fit_middle(r.tool.as_deref().unwrap_or("-"), c.width as usize))
                }
                Col::Rate => right(fmt::rate(r.rate)),
                Col::Bytes => right(fmt::bytes(st.bytes)),
                Col::Syns => right(fmt::count(st.tcp_syns.into())),
                Col::Protocols => Cell::from(st.protocols.to_string()),
                Col::First => right(age(st.first_seen_ns)),
                Col::Last => right(age(st.last_seen_ns)),
                Col::Direction => Cell::from(st.directions.describe(st.last_port)),
            });
            let row = TableRow::new(cells);
            if r.new { row.style(Style::new().yellow().add_modifier(Modifier::BOLD)) } else { row }
        })
        .collect();
    let header = TableRow::new(cols.iter().map(|c| {
        if c.right() { right(c.kind.head().to_string()) } else { Cell::from(c.kind.head()) }
    }))
    .style(Style::new().bold().underlined());
    f.render_widget(Table::new(body, widths).header(header).column_spacing(1).block(block), area);
}

/// The source table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    New,
    Address,
    Packets,
    Tool,
    Rate,
    Bytes,
    Syns,
    Protocols,
    First,
    Last,
    Direction,
}

impl Col {
    fn head(self) -> &'static str {
        match self {
            Col::New => "",
            Col::Address => "ADDRESS",
            Col::Packets => "PACKETS",
            Col::Tool => "TOOL",
            Col::Rate => "RATE",
            Col::Bytes => "BYTES",
            Col::Syns => "SYNS",
            Col::Protocols => "PROTO",
            Col::First => "FIRST",
            Col::Last => "LAST",
            Col::Direction => "DIRECTION",
        }
    }
}

struct Column {
    kind: Col,
    width: u16,
}

impl Column {
    fn right(&self) -> bool {
        !matches!(self.kind, Col::New | Col::Address | Col::Tool | Col::Protocols | Col::Direction)
    }
}

/// The columns that fit in `w` cells, in display order. The marker, the address, the packets and
/// the direction always show (the direction never narrower than "probing 2745"); then, as room
/// allows: the rate, the tool (what the source's packets say it is), the last-seen age, a wider
/// address, bytes, the first-seen age, protocols, SYNs, and the full address. The direction
/// takes what is left.
fn columns(w: usize, longest_addr: usize) -> Vec<Column> {
    const DIRECTION_MIN: usize = 12;
    const ADDR_MIN: usize = 15;
    const ADDR_MID: usize = 25;
    // "OS stack (Linux)" whole; longer labels are cut in the middle.
    const TOOL: usize = 16;
    let mut addr = ADDR_MIN.min(longest_addr.max(7));
    // Each column costs its width and a space.
    let mut left = w.saturating_sub(2 + addr + 1 + 8 + DIRECTION_MIN);
    let mut take = |n: usize| {
        let ok = n <= left;
        if ok {
            left -= n;
        }
        ok
    };
    let rate = take(8);
    let tool = take(TOOL + 1);
    let last = take(7);
    let grow = longest_addr.min(ADDR_MID).saturating_sub(addr);
    if take(grow) {
        addr += grow;
    }
    let bytes = take(8);
    let first = take(7);
    let protocols = take(8);
    let syns = take(7);
    let grow = longest_addr.saturating_sub(addr);
    if take(grow) {
        addr += grow;
    }
    let mut out = vec![
        Column { kind: Col::New, width: 1 },
        Column { kind: Col::Address, width: addr as u16 },
        Column { kind: Col::Packets, width: 7 },
    ];
    for (on, kind, width) in [
        (tool, Col::Tool, TOOL as u16),
        (rate, Col::Rate, 7),
        (bytes, Col::Bytes, 7),
        (syns, Col::Syns, 6),
        (protocols, Col::Protocols, 7),
        (first, Col::First, 6),
        (last, Col::Last, 6),
    ] {
        if on {
            out.push(Column { kind, width });
        }
    }
    out.push(Column { kind: Col::Direction, width: DIRECTION_MIN as u16 });
    out
}

fn footer_line(f: &mut Frame, area: Rect, ui: &Ui) {
    let line = match &ui.prompt {
        Prompt::Filter(text) => Line::from(vec![
            Span::styled(" filter: ", Style::new().reversed()),
            Span::raw(format!(" {text}")),
            Span::styled("_", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::raw("  (Enter applies, Esc clears)").dim(),
        ]),
        _ => match &ui.notice {
            Some(n) => Line::from(format!(" {n}")).yellow(),
            None => {
                Line::from(" q quit  s sort  i interface  / filter  m drop/count  ? help").dim()
            }
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

/// A rectangle of `w`×`h` in the middle of `area`, clipped to it.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn help(f: &mut Frame, area: Rect) {
    let lines = [
        "q        quit (also Ctrl-C)",
        "s        sort by packets, rate, last seen, address",
        "i, Tab   next guarded interface",
        "/        filter sources by address; Enter applies",
        "Esc      clear the filter",
        "m        switch drop/count (asks y/n first)",
        "?        this help; any key closes it",
        "",
        "* marks sources new since top started or since",
        "the last refresh. FIRST/LAST are ages; RATE is",
        "packets/s since the last refresh.",
    ];
    let at = centered(area, 56, lines.len() as u16 + 2);
    f.render_widget(Clear, at);
    let text: Vec<Line> = lines.iter().map(|l| Line::from(format!(" {l}"))).collect();
    f.render_widget(Paragraph::new(text).block(Block::bordered().title(" help ")), at);
}

fn confirm(f: &mut Frame, area: Rect, iface: &str, to: Mode) {
    let what = match to {
        Mode::Drop => "matched packets will be dropped",
        Mode::Count => "matched packets will pass, only counted",
    };
    let text = vec![
        Line::from(format!("Switch {iface} to {}?", to.as_str())).bold(),
        Line::from(what),
        Line::from(""),
        Line::from("y: switch    n: keep as is"),
    ];
    let at = centered(area, 48, text.len() as u16 + 2);
    f.render_widget(Clear, at);
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .block(Block::bordered().title(" confirm ")),
        at,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::pins::Pins;

    fn screen(w: u16, h: u16, model: &Model, ui: &Ui) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, model, ui, Duration::from_secs(1))).unwrap();
        let buf = t.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..h {
            for x in 0..w {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    #[test]
    fn columns_fit_from_60_to_200_cells() {
        let kinds = |w, longest| columns(w, longest).iter().map(|c| c.kind).collect::<Vec<_>>();
        let width = |w, longest| {
            columns(w, longest).iter().map(|c| c.width as usize + 1).sum::<usize>() - 1
        };
        // 60 columns: the direction keeps its room ("probing 2745"), fewer columns show.
        let narrow = kinds(58, 29);
        assert!(narrow.contains(&Col::Direction) && !narrow.contains(&Col::Syns), "{narrow:?}");
        assert!(width(58, 29) <= 58);
        // 200 columns: every column, and the whole of a long IPv6 address.
        let wide = columns(198, 29);
        assert_eq!(wide.len(), 11, "{:?}", wide.iter().map(|c| c.kind).collect::<Vec<_>>());
        assert_eq!(wide[1].width, 29);
        for w in [58, 78, 98, 198] {
            assert!(width(w, 29) <= w, "{w}");
        }
    }

    #[test]
    fn small_and_empty_screens_say_why() {
        let model = Model::new(Pins::new("/nonexistent/pgtop"));
        let ui = Ui::new(None);
        assert!(screen(40, 10, &model, &ui).contains("terminal too small: 60×15 needed"));
        let s = screen(80, 24, &model, &ui);
        assert!(s.contains(NOTHING_GUARDED), "{s}");
        assert!(s.contains("q quit"), "{s}");
    }
}
