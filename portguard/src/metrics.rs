//! Prometheus metrics (OpenMetrics text) over HTTP, for the monitoring stack a fleet already
//! runs. The daemon publishes a snapshot every interval; a scrape encodes the latest one, so
//! values are at most one interval old. Per-source series are limited to the top N sources
//! (bounded cardinality, however many sources a flood brings).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use portguard_common::Totals;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::counters::Source;

/// The default endpoint: loopback only; exposing it is a deliberate choice (`--metrics`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9745";

/// One guarded interface, as last published.
#[derive(Clone, Debug, Default)]
pub struct IfaceMetrics {
    pub iface: String,
    pub xdp_mode: String,
    pub mode: String,
    /// "exclusive" or "multiprog" (one program of libxdp's dispatcher).
    pub attach: String,
    /// Whether the kernel says the interface runs portguard's program now.
    pub guarded: bool,
    pub totals: Totals,
    pub tracked: usize,
    pub capacity: u32,
    /// The top sources by packets, already cut to N.
    pub top: Vec<Source>,
    /// How many tracked sources carry each tool label (`report::tools`: bounded).
    pub tools: Vec<(String, u64)>,
}

/// A socket on a guarded port on this host (see `portguard check`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalSocket {
    pub port: u16,
    pub protocol: String,
    pub state: String,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ifaces: Vec<IfaceMetrics>,
    /// None until the first socket scan.
    pub sockets: Option<Vec<LocalSocket>>,
    /// The ports scanned: each gets a 0 per protocol where nothing was found, so that "none"
    /// is a value, not a missing series.
    pub socket_ports: Vec<u16>,
}

pub type Shared = Arc<Mutex<Snapshot>>;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut reg = Registry::with_prefix("portguard");
    let build = Family::<Labels, Gauge>::default();
    build.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))])).set(1);
    reg.register("build_info", "portguard's version", build);

    let info = Family::<Labels, Gauge>::default();
    let guarded = Family::<Labels, Gauge>::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let malformed = Family::<Labels, Counter>::default();
    let followed = Family::<Labels, Counter>::default();
    let tracked = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    let src_packets = Family::<Labels, Counter>::default();
    let src_bytes = Family::<Labels, Counter>::default();
    let src_syns = Family::<Labels, Counter>::default();
    let by_tool = Family::<Labels, Gauge>::default();
    let lost = Family::<Labels, Counter>::default();
    let paced = Family::<Labels, Counter>::default();
    for i in &s.ifaces {
        for (tool, n) in &i.tools {
            by_tool.get_or_create(&labels(&[("iface", &i.iface), ("tool", tool)])).set(*n as i64);
        }
        let t = &i.totals;
        let l = |kind: &str| labels(&[("iface", &i.iface), ("kind", kind)]);
        info.get_or_create(&labels(&[
            ("iface", &i.iface),
            ("xdp_mode", &i.xdp_mode),
            ("mode", &i.mode),
            ("attach", &i.attach),
        ]))
        .set(1);
        guarded.get_or_create(&labels(&[("iface", &i.iface)])).set(i.guarded as i64);
        for (kind, v) in [
            ("seen", t.seen),
            ("matched", t.matched),
            ("dropped", t.dropped),
            ("allowed", t.allowed),
            ("untracked", t.untracked),
            ("unjudged", t.unjudged),
        ] {
            packets.get_or_create(&l(kind)).inc_by(v);
        }
        for (kind, v) in [
            ("matched", t.matched_bytes),
            ("dropped", t.dropped_bytes),
            ("untracked", t.untracked_bytes),
            ("unjudged", t.unjudged_bytes),
        ] {
            bytes.get_or_create(&l(kind)).inc_by(v);
        }
        let il = labels(&[("iface", &i.iface)]);
        for (ring, v) in [("features", t.features_lost), ("capture", t.captures_lost)] {
            lost.get_or_create(&labels(&[("iface", &i.iface), ("ring", ring)])).inc_by(v);
        }
        paced.get_or_create(&il).inc_by(t.captures_paced);
        malformed.get_or_create(&il).inc_by(t.malformed);
        followed.get_or_create(&il).inc_by(t.fragments_followed);
        tracked.get_or_create(&il).set(i.tracked as i64);
        capacity.get_or_create(&il).set(i.capacity as i64);
        for src in &i.top {
            let addr = src.addr.to_string();
            let direction = src.stats.directions.word();
            let sl = labels(&[("iface", &i.iface), ("source", &addr), ("direction", direction)]);
            src_packets.get_or_create(&sl).inc_by(src.stats.packets);
            src_bytes.get_or_create(&sl).inc_by(src.stats.bytes);
            src_syns.get_or_create(&sl).inc_by(src.stats.tcp_syns as u64);
        }
    }
    reg.register(
        "guard_info",
        "A guarded interface: XDP mode, action, and how it holds the XDP hook",
        info,
    );
    reg.register(
        "guarded",
        "1 when the kernel runs portguard's program on the interface now, else 0",
        guarded,
    );
    reg.register("packets", "Packets by interface and what happened to them", packets);
    reg.register("bytes", "Bytes (whole frames) by interface and what happened to them", bytes);
    reg.register(
        "malformed_packets",
        "Frames with truncated or contradictory headers, passed",
        malformed,
    );
    reg.register(
        "fragments_followed",
        "Later fragments given their first fragment's verdict",
        followed,
    );
    reg.register("sources_tracked", "Sources in the per-source table", tracked);
    reg.register(
        "records_lost",
        "Fingerprint records and captured packets that found their ring buffer full (the packets were judged and counted all the same)",
        lost,
    );
    reg.register("capture_paced", "Packets a capture wanted past its rate", paced);
    reg.register(
        "sources",
        "Tracked sources by what their packets say they are (tool=\"none\": not fingerprinted yet)",
        by_tool,
    );
    reg.register("source_capacity", "Capacity of the per-source table", capacity);
    reg.register("source_packets", "Packets from one of the top sources", src_packets);
    reg.register("source_bytes", "Bytes from one of the top sources", src_bytes);
    reg.register(
        "source_tcp_syns",
        "TCP connection attempts from one of the top sources",
        src_syns,
    );
    if let Some(socks) = &s.sockets {
        let local = Family::<Labels, Gauge>::default();
        for k in socks {
            let port = k.port.to_string();
            local
                .get_or_create(&labels(&[
                    ("port", &port),
                    ("protocol", &k.protocol),
                    ("state", &k.state),
                ]))
                .inc();
        }
        for port in &s.socket_ports {
            for protocol in ["tcp", "udp"] {
                if !socks.iter().any(|k| k.port == *port && k.protocol == protocol) {
                    let port = port.to_string();
                    let _ =
                        local.get_or_create(&labels(&[("port", &port), ("protocol", protocol)]));
                }
            }
        }
        reg.register(
            "local_sockets",
            "Sockets on this host using a guarded port (portguard check), by state",
            local,
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    sorted_samples(&out)
}

/// The exposition with each family's samples sorted: prometheus-client keeps series in hash
/// maps, and a diff of two scrapes (or a person reading one) should not see them shuffle.
fn sorted_samples(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort_unstable();
        for l in samples.drain(..) {
            out.push_str(l);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

/// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
/// OpenMetrics: the same samples, counters' HELP and TYPE named after their `_total` sample,
/// no `# EOF`.
pub fn render_classic(s: &Snapshot) -> String {
    let open = render(s);
    let counters: std::collections::HashSet<String> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_owned)
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Binds the endpoint (before anything is attached, so a taken port is an early, clean error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for metrics (--metrics ADDR to choose another, --no-metrics to disable)")
    })
}

/// Connections served at once. A scraper needs one; a local user holding many open must not
/// run the daemon out of descriptors (its own health checks need a few), so the rest wait in
/// the kernel's backlog, costing this process nothing.
const MAX_CONNECTIONS: usize = 256;
/// A scraper sends its request at once; a connection that does not is let go after this.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves GET /metrics until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Shared) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: out of something the next accept needs too. Wait
                // rather than spin; the connection waits in the backlog.
                log::debug!("metrics: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded; slow clients are cut off).
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while n < buf.len() {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let method = head.split_whitespace().next().unwrap_or("");
            let openmetrics = head.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("accept:") && l.contains("application/openmetrics-text")
            });
            let (status, ctype, body) = match (method, path) {
                ("GET", "/metrics") => {
                    let snap = shared.lock().map(|s| s.clone()).unwrap_or_default();
                    if openmetrics {
                        (
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            render(&snap),
                        )
                    } else {
                        (
                            "200 OK",
                            "text/plain; version=0.0.4; charset=utf-8",
                            render_classic(&snap),
                        )
                    }
                }
                ("GET", "/") => (
                    "200 OK",
                    "text/plain; charset=utf-8",
                    "portguard: metrics at /metrics\n".into(),
                ),
                _ => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.write_all(resp.as_bytes())).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{counters::SourceStats, wire::Directions};

    #[test]
    fn renders_openmetrics() {
        let snap = Snapshot {
            ifaces: vec![IfaceMetrics {
                iface: "eth1".into(),
                xdp_mode: "native".into(),
                mode: "drop".into(),
                attach: "exclusive".into(),
                guarded: true,
                totals: Totals {
                    seen: 10,
                    matched: 4,
                    dropped: 4,
                    dropped_bytes: 240,
                    ..Totals::default()
                },
                tracked: 1,
                capacity: 65536,
                top: vec![Source {
                    addr: "198.18.0.2".parse().unwrap(),
                    stats: SourceStats {
                        packets: 4,
                        bytes: 240,
                        directions: Directions(portguard_common::DIR_DST),
                        last_port: 2745,
                        ..SourceStats::default()
                    },
                }],
                tools: vec![("masscan".into(), 1)],
            }],
            sockets: Some(vec![LocalSocket {
                port: 2745,
                protocol: "tcp".into(),
                state: "listen".into(),
            }]),
            socket_ports: vec![2745, 3127],
        };
        let text = render(&snap);
        for line in [
            "portguard_packets_total{iface=\"eth1\",kind=\"dropped\"} 4",
            "portguard_bytes_total{iface=\"eth1\",kind=\"dropped\"} 240",
            "portguard_source_packets_total{iface=\"eth1\",source=\"198.18.0.2\",direction=\"probing\"} 4",
            "portguard_sources_tracked{iface=\"eth1\"} 1",
            "portguard_sources{iface=\"eth1\",tool=\"masscan\"} 1",
            "portguard_records_lost_total{iface=\"eth1\",ring=\"features\"} 0",
            "portguard_local_sockets{port=\"2745\",protocol=\"tcp\",state=\"listen\"} 1",
            // Nothing found is 0, not a missing series.
            "portguard_local_sockets{port=\"2745\",protocol=\"udp\"} 0",
            "portguard_local_sockets{port=\"3127\",protocol=\"tcp\"} 0",
            "portguard_guard_info{iface=\"eth1\",xdp_mode=\"native\",mode=\"drop\",attach=\"exclusive\"} 1",
            "portguard_guarded{iface=\"eth1\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // Series in a stable order, scrape after scrape.
        let kinds: Vec<&str> =
            text.lines().filter(|l| l.starts_with("portguard_packets_total{")).collect();
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(kinds, sorted);
        assert_eq!(render(&snap), text);
        let classic = render_classic(&snap);
        assert!(classic.contains("# TYPE portguard_packets_total counter\n"));
        assert!(!classic.contains("# EOF"));
    }
}
