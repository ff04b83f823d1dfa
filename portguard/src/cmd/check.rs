//! `portguard check`: is anything on this host using a guarded port? Exit 0 when nothing is,
//! 1 when something is, 2 when the question could not be answered, so cron jobs and monitoring
//! can act on the code alone.

use std::{io::Write as _, process::ExitCode};

use portguard::{
    check::{self, Family, Report, Socket},
    guard::View,
    pins::Pins,
};
use portguard_common::DEFAULT_PORT;

/// Is anything here using the guarded port? Lists its sockets and their processes.
///
/// Lists TCP sockets in any state (listening, connecting, connected, closing) and bound UDP
/// sockets, IPv4 and IPv6, whose local or remote port is guarded, with the processes that own
/// them. Exits 0 when there are none, 1 when there are some, 2 on error.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Port to look for (repeat for several) [default: the ports the guards on this host are
    /// configured with, or 2745 when nothing is guarded].
    #[arg(long = "port", short = 'p', value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Print one JSON document instead of the table.
    ///
    /// Stable field names: ports, netns, clean, sockets[] with protocol, family, state,
    /// local_address, local_port, remote_address, remote_port, inode, uid, user,
    /// processes[] {pid, name, cmdline}, owner_visible, owner_note.
    #[arg(long)]
    pub json: bool,
}

pub const FOUND: u8 = 1;
pub const ERROR: u8 = 2;

/// `netns`: the global `--netns NAME`: that namespace's sockets are inspected (processes are
/// still looked up across the whole host), for that namespace's guarded ports by default.
pub fn run(args: Args, netns: Option<&str>) -> ExitCode {
    let ports = match (args.ports.is_empty(), netns) {
        (false, _) => args.ports.clone(),
        (true, None) => guarded_ports(),
        // The guards of that namespace; a name that cannot be entered is reported by the scan.
        (true, Some(ns)) => {
            portguard::lab::in_netns(ns, guarded_ports).unwrap_or_else(|_| vec![DEFAULT_PORT])
        }
    };
    let report = match check::scan(&ports, netns) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portguard: error: {}", one_line(&e));
            return ExitCode::from(ERROR);
        }
    };
    let text = if args.json {
        match portguard::json::Document::now(&report).pretty() {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("portguard: error: encoding JSON: {e}");
                return ExitCode::from(ERROR);
            }
        }
    } else {
        render(&report)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that stopped early (`| head -1`) still gets the answer through the code.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("portguard: error: writing output: {e}");
            return ExitCode::from(ERROR);
        }
    }
    if report.clean { ExitCode::SUCCESS } else { ExitCode::from(FOUND) }
}

/// The ports the guards on this host watch, so that `check` answers the daemon's warning
/// about them; 2745 when nothing is guarded (or the guards cannot be read without root).
fn guarded_ports() -> Vec<u16> {
    let pins = Pins::default();
    let mut ports: Vec<u16> = pins
        .guarded()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| View::open(&pins, i).ok())
        .flat_map(|v| v.settings().ports.clone())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() { vec![DEFAULT_PORT] } else { ports }
}

/// The outermost context and the root cause, like the other commands' errors.
fn one_line(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    match (chain.first(), chain.last()) {
        (Some(first), Some(last)) if chain.len() > 1 && !first.contains(last.as_str()) => {
            format!("{first}: {last}")
        }
        (Some(first), _) => first.clone(),
        _ => e.to_string(),
    }
}

/// The table and the verdict line, as people read them.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    if !report.clean {
        let head = ["PROTO", "STATE", "LOCAL", "REMOTE", "PID", "USER", "PROCESS", "COMMAND"];
        let mut rows: Vec<[String; 8]> = vec![head.map(str::to_string)];
        for s in &report.sockets {
            rows.extend(rows_for(s));
        }
        let mut widths = [0usize; 8];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    // The command is last and never padded: it can be long.
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out.push_str(&verdict(report));
    out.push('\n');
    out
}

/// One row per owning process; a socket no process could be found for still gets its row.
fn rows_for(s: &Socket) -> Vec<[String; 8]> {
    let proto = format!("{}{}", s.protocol, if s.family == Family::Ipv6 { "6" } else { "" });
    let local = s.local().to_string();
    let remote = if s.remote_port == 0 && s.remote_address.is_unspecified() {
        "*".to_string()
    } else {
        s.remote().to_string()
    };
    if s.processes.is_empty() {
        let note = s.owner_note.as_deref().unwrap_or("unknown");
        return vec![[
            proto,
            s.state.clone(),
            local,
            remote,
            "-".into(),
            printable(&s.user),
            format!("({note})"),
            "-".into(),
        ]];
    }
    s.processes
        .iter()
        .map(|p| {
            let cmd =
                if p.cmdline.is_empty() { format!("[{}]", p.name) } else { p.cmdline.clone() };
            [
                proto.clone(),
                s.state.clone(),
                local.clone(),
                remote.clone(),
                p.pid.to_string(),
                printable(&s.user),
                printable(&p.name),
                printable(&cmd),
            ]
        })
        .collect()
}

/// Process names and command lines are whatever their processes chose: escape control
/// characters so a newline cannot break the table and an escape sequence cannot reach the
/// terminal.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// "nothing on this host uses port 2745", or how much does.
pub fn verdict(report: &Report) -> String {
    let ports: Vec<String> = report.ports.iter().map(u16::to_string).collect();
    let ports = match ports.len() {
        1 => format!("port {}", ports[0]),
        _ => format!("ports {}", ports.join(", ")),
    };
    let place = match &report.netns {
        Some(ns) => format!("in network namespace {ns}"),
        None => "on this host".to_string(),
    };
    let n = report.sockets.len();
    if n == 0 {
        format!("nothing {place} uses {ports}")
    } else {
        let verb = if n == 1 { "uses" } else { "use" };
        format!("{} {place} {verb} {ports}", portguard::text::plural(n as u64, "socket"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("python3 -c \nimport os\x1b[2J"), "python3 -c \\nimport os\\u{1b}[2J");
        assert_eq!(printable("nginx: worker"), "nginx: worker");
    }
}
