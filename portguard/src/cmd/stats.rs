//! `portguard stats`: totals and the top sources of the running guards, read from their pins.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use anyhow::Result;
use portguard::{
    clock, counters,
    guard::View,
    json::Document,
    pins::Pins,
    ranges,
    report::{self, InterfaceJson, SortBy, StatsJson},
};
use portguard_common::Totals;

use super::args::targets;

/// Show totals and the top sources of guarded interfaces.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Only this interface (default: every guarded one).
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub iface: Option<String>,
    /// Sources shown per interface.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Order of the sources.
    #[arg(long, value_enum, default_value = "packets")]
    pub sort: SortBy,
    /// Sample twice this many seconds apart (0.05 to 3600), for rates over that interval
    /// (default: one read; a source's rate is then its average since first seen).
    #[arg(long, value_name = "SECONDS", value_parser = ranges::parse::interval)]
    pub interval: Option<f64>,
    /// One JSON document (fields in README.md, "JSON output").
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = Pins::default();
    let guards: Vec<View> = targets(&pins, args.iface.as_slice())?
        .iter()
        .map(|i| View::open(&pins, i))
        .collect::<Result<_>>()?;
    // The first sample, when rates over an interval were asked for.
    let mut first: Vec<Option<(Totals, HashMap<portguard::counters::SourceAddr, u64>)>> =
        Vec::new();
    if let Some(i) = args.interval {
        for g in &guards {
            let s = g.sources()?;
            first.push(Some((g.totals()?, s.iter().map(|s| (s.addr, s.stats.packets)).collect())));
        }
        std::thread::sleep(Duration::from_secs_f64(i));
    }
    let now = clock::monotonic_ns();
    let mut snaps = Vec::new();
    for (n, g) in guards.iter().enumerate() {
        let totals = g.totals()?;
        let sources = g.sources()?;
        let labels = g.fingerprints()?;
        let health = g.health();
        let (rates, prev) = match first.get(n).and_then(Option::as_ref) {
            Some((t, p)) => {
                let dt = Duration::from_secs_f64(args.interval.unwrap_or(1.0));
                (Some(counters::rates(t, &totals, dt)), Some((p, dt)))
            }
            None => (None, None),
        };
        snaps.push(report::Snapshot {
            iface: g.iface().to_string(),
            netns: None,
            attached: health.mode(),
            health,
            settings: g.settings().clone(),
            totals,
            rates,
            tracked: sources.len(),
            capacity: g.capacity(),
            sources: report::rank(&sources, prev, now, args.sort, args.top, &labels),
        });
    }
    if args.json {
        let interfaces = snaps.iter().map(InterfaceJson::new).collect();
        println!("{}", Document::now(StatsJson { interfaces }).pretty()?);
    } else if snaps.is_empty() {
        // A read-only verb: nothing guarded is an answer, not an error.
        println!("{}", super::args::nothing_guarded(&pins));
    } else {
        print!("{}", report::table(&snaps, report::Room::terminal().width));
    }
    Ok(ExitCode::SUCCESS)
}
