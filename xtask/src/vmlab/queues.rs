//! The queues scenario: a guest with many vCPUs and queue pairs (default 16 and 64 vCPUs, twice
//! as many queue pairs). Probes with random source ports spread over the RX queues (the tap
//! picks a queue per flow); every packet must be counted exactly once in the totals and in its
//! source's row, one row per source however many queues its flows landed on. Per-queue
//! counters come from `ethtool -S` in the guest (virtio_net's rx_queue_<n>_* statistics).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    Run,
    report::Checks,
    scenario::{Guest, check_source, probes},
    traffic,
};

/// Per-RX-queue counters: queue -> (packets, xdp_drops).
pub fn rx_queues(ethtool_s: &str) -> BTreeMap<u32, (u64, u64)> {
    let mut m: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for l in ethtool_s.lines() {
        let Some((k, v)) = l.trim().split_once(':') else { continue };
        let Ok(v) = v.trim().parse::<u64>() else { continue };
        // rx_queue_3_packets (6.1, 6.12) or rx3_packets.
        let rest = k.strip_prefix("rx_queue_").or_else(|| k.strip_prefix("rx"));
        let Some(rest) = rest else { continue };
        let Some((q, field)) = rest.split_once('_') else { continue };
        let Ok(q) = q.parse::<u32>() else { continue };
        let e = m.entry(q).or_default();
        match field {
            "packets" => e.0 = v,
            "xdp_drops" => e.1 = v,
            _ => {}
        }
    }
    m
}

fn diff(a: &BTreeMap<u32, (u64, u64)>, b: &BTreeMap<u32, (u64, u64)>) -> BTreeMap<u32, (u64, u64)> {
    b.iter()
        .map(|(q, (p, d))| {
            let (p0, d0) = a.get(q).copied().unwrap_or_default();
            (*q, (p - p0, d - d0))
        })
        .collect()
}

pub fn run(run: &Run) -> Result<()> {
    let mut c = Checks::new(&format!("queues {}", run.label()));
    c.value("queue_pairs", run.queues);
    let r = steps(run, &mut c);
    if let Err(e) = &r {
        c.that("scenario ran to the end", false, format!("{e:#}"));
    }
    c.write(&super::artifacts::lab_dir().join("results.txt"))?;
    c.verdict()
}

fn steps(run: &Run, c: &mut Checks) -> Result<()> {
    let mut g = Guest::boot(run, c)?;
    let nic = g.nic.clone();
    let t = std::time::Instant::now();
    g.start_daemon("")?;
    c.value("attach_s", format!("{:.1}", t.elapsed().as_secs_f64()));
    let ch = g.vm.ok(&format!("ethtool -l {nic}"))?;
    c.value(
        "channels",
        ch.lines()
            .filter(|l| l.contains("Combined"))
            .map(|l| l.split_whitespace().last().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join("/"),
    );
    let in_use = g.vm.ok(&format!("ls /sys/class/net/{nic}/queues | grep -c rx-"))?;
    let in_use: u32 = in_use.trim().parse().context("counting RX queues")?;
    c.value("rx_queues_after_attach", in_use);

    // One source at a time, so the queues its flows used can be told apart; then all of them
    // at once. Random source ports for every frame.
    // Enough flows that no queue is left out by chance: with 16 per queue, a given queue gets
    // none with probability e^-16.
    let per_source = (16 * run.queues).max(500);
    let phases: Vec<(&str, Vec<std::net::IpAddr>)> = vec![
        ("one IPv4 source", vec![traffic::source(false, 21)]),
        ("one IPv6 source", vec![traffic::source(true, 0x21)]),
        (
            "four sources",
            vec![
                traffic::source(false, 22),
                traffic::source(false, 23),
                traffic::source(true, 0x22),
                traffic::source(true, 0x23),
            ],
        ),
    ];
    let mut all = Vec::new();
    for (name, srcs) in phases {
        let before = g.stats()?;
        let q0 = rx_queues(&g.vm.ok(&format!("ethtool -S {nic}"))?);
        // Three UDP datagrams for every two SYNs, interleaved.
        let (udp, tcp) = (per_source * 3 / 5, per_source * 2 / 5);
        let p = probes(&srcs, udp, tcp, g.rng());
        let s = g.probe(&p, &before)?;
        let q1 = rx_queues(&g.vm.ok(&format!("ethtool -S {nic}"))?);
        let d = diff(&q0, &q1);
        let n = p.len() as u64;
        let dm = |k: &str| {
            s.totals.get(k).copied().unwrap_or(0) - before.totals.get(k).copied().unwrap_or(0)
        };
        c.eq(&format!("{name}: matched"), dm("matched"), n);
        c.eq(&format!("{name}: dropped"), dm("dropped"), n);
        for &a in &srcs {
            check_source(c, &s, a, u64::from(udp), u64::from(tcp), "probing");
        }
        let xdp_drops: u64 = d.values().map(|v| v.1).sum();
        c.eq(&format!("{name}: the queues' xdp_drops add up"), xdp_drops, n);
        let used: Vec<u32> = d.iter().filter(|(_, v)| v.1 > 0).map(|(q, _)| *q).collect();
        c.value(
            &format!("{}_queues_hit", name.replace(' ', "_")),
            format!("{}/{}", used.len(), d.len()),
        );
        let spread: Vec<String> = d.iter().map(|(q, v)| format!("{q}:{}", v.1)).collect();
        c.value(&format!("{}_per_queue", name.replace(' ', "_")), spread.join(","));
        c.that(
            &format!("{name}: every RX queue in use took probes"),
            used.len() as u32 >= in_use.min(d.len() as u32),
            format!("{} of {} queues ({in_use} in use): {}", used.len(), d.len(), spread.join(",")),
        );
        all.extend(srcs);
    }
    let s = g.stats()?;
    c.eq("one row per source", s.sources_tracked, all.len() as u64);
    let t = std::time::Instant::now();
    let o = g.vm.sh("portguard stats --json >/dev/null", Duration::from_secs(120))?;
    c.value("stats_json_ms", o.ms);
    c.value("stats_json_host_ms", t.elapsed().as_millis());
    g.save_log()?;
    g.vm.end(0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ethtool_names() {
        let s = "NIC statistics:\n     rx_packets: 9\n     rx_queue_0_packets: 5\n     rx_queue_0_xdp_drops: 4\n     rx_queue_1_packets: 7\n     rx1_xdp_drops: 2\n     tx_queue_0_packets: 1\n";
        let m = super::rx_queues(s);
        assert_eq!(m[&0], (5, 4));
        assert_eq!(m[&1], (7, 2));
        assert_eq!(m.len(), 2);
    }
}
