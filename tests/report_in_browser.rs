//! The HTML report in a real browser: a hand-made failing report (a gate,
//! a diagnosis, evidence with a packet capture, a check with a series) is
//! rendered, opened in headless Chromium, and its laid-out DOM queried; a
//! screenshot is taken and its size checked. A page that does not parse
//! into the sections a person reads first, or draws nothing, fails here.
//!
//! `NATVET_KEEP_HTML=DIR` keeps the page and its screenshot in DIR.
//! `make test` installs Chromium (Debian's `chromium`). Without it the test
//! fails under CI (CI set) and is skipped, loudly, elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use natvet::protocol::perf::{Better, PerfFigure};
use natvet::protocol::{CaptureFile, CheckResult, Evidence, RunTiming, Series, Status};
use natvet::report::gate;
use natvet::report::{KernelRun, KernelState, RunReport, Timings, SCHEMA};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn result(scenario: &str, backend: &str, check: &str, status: Status) -> CheckResult {
    CheckResult {
        scenario: scenario.into(),
        backend: backend.into(),
        check: check.into(),
        status,
        expected: format!("{check} gets through"),
        observed: if status == Status::Pass {
            "it did".into()
        } else {
            "the relay answered ICMP port unreachable <udp> & nothing reached :51820".into()
        },
        duration_ms: 40,
        evidence: None,
        evidence_dir: None,
        series: None,
    }
}

/// A pcap of one UDP datagram and the relay's ICMP port unreachable, as
/// the guest writes them (Linux cooked headers).
fn capture() -> String {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let header = PcapHeader {
        snaplen: 528,
        datalink: pcap_file::DataLink::LINUX_SLL,
        endianness: pcap_file::Endianness::Little,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    let sll = |outgoing: bool| {
        let mut h = vec![0u8, if outgoing { 4 } else { 0 }, 0, 1, 0, 6];
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&[0x08, 0x00]);
        h
    };
    let mut udp = sll(false);
    udp.extend_from_slice(&[
        0x45, 0, 0, 33, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1,
    ]);
    udp.extend_from_slice(&[
        0x9c, 0x42, 0x82, 0x99, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
    ]);
    let mut icmp = sll(true);
    icmp.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
    ]);
    icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    for (i, p) in [udp, icmp].iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::new(1_700_000_000, i as u32 * 1_000_000),
            p.len() as u32,
            p,
        ))
        .unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.into_writer())
}

fn kernel(release: &str, fail_high_ports: bool) -> KernelRun {
    let mut results = Vec::new();
    for backend in ["nftables", "iptables-nft"] {
        for port in [51820u16, 53, 4000, 33433, 52000, 60000] {
            let bad = fail_high_ports && port > 32767 && port != 51820;
            let status = if bad { Status::Fail } else { Status::Pass };
            results.push(result(
                "extended-ports",
                backend,
                &format!("redirect/{port}"),
                status,
            ));
        }
        results.push(result(
            "extended-ports",
            backend,
            "forward/tcp",
            Status::Pass,
        ));
        results.push(result(
            "pmtu",
            backend,
            "tunnel-mtu/icmp-1400",
            Status::Pass,
        ));
    }
    results.push(result(
        "flowtable",
        "nftables",
        "flowtable/offload",
        Status::Unsupported,
    ));
    for r in results.iter_mut().filter(|r| r.status == Status::Fail) {
        r.evidence = Some(Evidence {
            conntrack: "udp 17 29 src=192.0.2.2 dst=192.0.2.1 sport=40002 dport=33433 [UNREPLIED]"
                .into(),
            ruleset: "table ip natvet {\n  chain prerouting { udp dport 53 redirect to :51820 }\n}"
                .into(),
            counters: "relay public: 741 bytes in, 987 out".into(),
            routes: "default via 192.0.2.1".into(),
            wireguard: "peer: none".into(),
            dmesg: vec![],
            captures: vec![CaptureFile {
                namespace: "relay".into(),
                interface: "public".into(),
                packets: 2,
                not_kept: 0,
                pcap_base64: capture(),
            }],
            capture_note: "captured on a second run, which failed the same way".into(),
        });
        r.evidence_dir = Some(format!(
            "natvet-out/{release}/extended-ports-{}/{}",
            r.backend,
            r.check.replace('/', "_")
        ));
    }
    // One long-running check with traffic over time that stopped.
    let mut soak = result(
        "extended-ports",
        "nftables",
        "session/udp-60s",
        Status::Pass,
    );
    if fail_high_ports {
        soak.status = Status::Fail;
    }
    soak.series = Some(Series {
        step_ms: 1000,
        sent: vec![10; 60],
        answered: (0..60)
            .map(|i| if fail_high_ports && i >= 41 { 3 } else { 10 })
            .collect(),
        stopped_at_ms: fail_high_ports.then_some(41_000),
    });
    results.push(soak);
    KernelRun {
        spec: format!("debian:{release}"),
        release: Some(release.into()),
        id: None,
        package: None,
        boot: Some("pvh".into()),
        state: KernelState::Completed,
        results,
        perf: vec![],
        notes: vec![],
        attempts: 1,
        timings: Timings {
            resolve_ms: 120,
            initramfs_ms: 900,
            boot_ms: Some(2400),
            agent_ms: Some(21_000),
            total_ms: 25_800,
            scenario_runs: ["extended-ports", "pmtu"]
                .iter()
                .flat_map(|s| {
                    ["nftables", "iptables-nft"].map(|b| RunTiming {
                        scenario: s.to_string(),
                        backend: b.into(),
                        setup_ms: 300,
                        elapsed_ms: if *s == "pmtu" { 4_000 } else { 12_500 },
                    })
                })
                .collect(),
            ..Timings::default()
        },
        console_log: None,
    }
}

fn report() -> RunReport {
    let baseline = kernel("6.1.0-50-amd64", false);
    let candidate = kernel("6.12.117+deb13-amd64", true);
    let mut gate = gate::compare(&baseline, &candidate);
    // Performance over three alternated boots each: the candidate's
    // throughput a third of the baseline's, its latency the same.
    let boot = |k: &KernelRun, mbit: f64, rtt: f64| {
        let figure = |probe: &str, unit: &str, better, value: f64| PerfFigure {
            scenario: "perf".into(),
            backend: "nftables".into(),
            probe: probe.into(),
            unit: unit.into(),
            better,
            value: Some(value),
            samples: vec![value * 0.9, value, value * 1.1],
            note: "measured".into(),
        };
        KernelRun {
            perf: vec![
                figure("tcp-throughput/tunnel", "Mbit/s", Better::Higher, mbit),
                figure("rtt-median/tunnel", "ms", Better::Lower, rtt),
            ],
            results: vec![],
            ..k.clone()
        }
    };
    let b: Vec<KernelRun> = [20.0, 21.0, 19.5]
        .iter()
        .map(|m| boot(&baseline, *m, 5.0 + m / 100.0))
        .collect();
    let c: Vec<KernelRun> = [6.5, 7.0, 6.8]
        .iter()
        .map(|m| boot(&candidate, *m, 5.0 + m / 50.0))
        .collect();
    gate.perf = Some(natvet::report::perf::compare(&b, &c, 1.5));
    RunReport {
        schema: SCHEMA.into(),
        natvet_version: "test".into(),
        started_at: "2026-12-01T12:00:00Z".into(),
        elapsed_ms: 30_000,
        kernels: vec![baseline, candidate],
        gate: Some(gate),
        diagnosis: None,
    }
}

/// Facts about the laid-out page, computed in the browser and written into it.
const PROBE: &str = r##"<script>
const q = s => [...document.querySelectorAll(s)];
const size = e => { const b = e.getBoundingClientRect(); return [Math.round(b.width), Math.round(b.height)]; };
const facts = {
  order: q('main > section').map(s => s.id),
  verdict: document.querySelector('header.verdict h1').textContent,
  verdict_colour: getComputedStyle(document.querySelector('header.verdict')).backgroundColor,
  diagnosis: q('#diagnosis li').map(l => l.textContent),
  failures: q('#failures > details.failure').length,
  open_failures: q('#failures > details.failure[open]').length,
  visible_evidence: q('#failures > details.failure[open] .evidence details[open] > pre').filter(p => size(p)[1] > 0).map(p => p.parentElement.querySelector('summary').textContent),
  packets: q('#failures details.capture pre').map(p => p.textContent)[0] || '',
  pcap_downloads: q('a[download$=".pcap"]').length,
  plots: q('svg.plot').map(size),
  perf_plots: q('#gate svg.plot > title').filter(t => t.textContent.includes('perf/')).map(t => t.textContent),
  perf_slower: q('#gate td.fail').map(td => td.textContent).filter(t => t === 'SLOWER').length,
  stop_marks: q('svg.series line.stop').length,
  scenarios: q('#matrix > details.scenario').map(d => [d.dataset.scenario, d.open]),
  failed_cell_links: q('#matrix td.fail a[href^="#"]').filter(a => document.getElementById(a.getAttribute('href').slice(1))).length,
};
const pre = document.createElement('pre');
pre.id = 'natvet-probe';
pre.textContent = JSON.stringify(facts);
document.body.appendChild(pre);
</script>"##;

fn chromium(args: &[&str], dir: &Path) -> Result<std::process::Output, String> {
    let profile = dir.join("profile");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {CHROMIUM}: {e}"))?;
    // Collect output on threads so a chatty browser cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let stdout = reader.join().unwrap_or_default();
            return Ok(std::process::Output {
                status,
                stdout,
                stderr: vec![],
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("chromium did not finish within 90 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[1..4] != b"PNG" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

#[test]
fn html_report_reads_right_in_a_browser() {
    if !Path::new(CHROMIUM).exists() {
        let msg = format!(
            "\n\n*** {CHROMIUM} is missing: the HTML report was NOT checked in a browser. \
             `make test` installs it (apt-get install chromium). ***\n"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return;
    }
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let html = natvet::report::html::html(&report(), Some(&dir));
    std::fs::write(dir.join("index.html"), &html).unwrap();
    std::fs::write(
        dir.join("probe.html"),
        html.replace("</body>", &format!("{PROBE}</body>")),
    )
    .unwrap();
    let page = |name: &str| format!("file://{}", dir.join(name).display());

    // The DOM, laid out, as the probe saw it; a screenshot of the page as
    // a person opens it, at the same time.
    let shot = dir.join("shot.png");
    let (dom, screenshot) = std::thread::scope(|s| {
        let dom = s.spawn(|| {
            chromium(
                &["--window-size=1280,1600", "--dump-dom", &page("probe.html")],
                &dir.join("a"),
            )
        });
        let screenshot = s.spawn(|| {
            chromium(
                &[
                    "--window-size=1280,1600",
                    &format!("--screenshot={}", shot.display()),
                    &page("index.html"),
                ],
                &dir.join("b"),
            )
        });
        (dom.join().unwrap(), screenshot.join().unwrap())
    });
    let dom = String::from_utf8_lossy(&dom.unwrap().stdout).into_owned();
    let facts = dom
        .split_once("<pre id=\"natvet-probe\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(json, _)| unescape(json))
        .unwrap_or_else(|| panic!("the probe did not run; the page as Chromium saw it:\n{dom}"));
    let f: Value = serde_json::from_str(&facts).unwrap();
    let show = || serde_json::to_string_pretty(&f).unwrap();

    // What a person sees first: the verdict, what the failures share, the failures.
    let order: Vec<&str> = f["order"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "diagnosis",
            "failures",
            "gate",
            "matrix",
            "series",
            "timings"
        ],
        "{}",
        show()
    );
    assert!(
        f["verdict"]
            .as_str()
            .unwrap()
            .contains("FAIL: 7 checks failed"),
        "{}",
        show()
    );
    assert_eq!(f["verdict_colour"], "rgb(198, 40, 40)", "{}", show());
    let diagnosis = f["diagnosis"][0].as_str().unwrap_or("");
    assert!(
        diagnosis.starts_with(
            "redirect checks at ports >= 33433 (but not 51820) fail only on 6.12.117+deb13-amd64, in both backends alike; at ports <= 4000 they pass",
        ),
        "{}",
        show()
    );
    // Each failure open, its evidence inline and visible, its pcap downloadable.
    assert_eq!(f["failures"], 7, "{}", show());
    assert_eq!(f["open_failures"], 7, "{}", show());
    let visible: Vec<&str> = f["visible_evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for what in [
        "conntrack table (relay)",
        "ruleset (relay)",
        "interface counters",
    ] {
        assert!(visible.contains(&what), "{what} not visible: {}", show());
    }
    let packets = f["packets"].as_str().unwrap();
    assert!(
        packets.contains("udp  192.0.2.2:40002 > 192.0.2.1:33433 len 5")
            && packets.contains("icmp 192.0.2.1 > 192.0.2.2 port unreachable"),
        "{}",
        show()
    );
    assert_eq!(f["pcap_downloads"], 6, "{}", show());
    // Plots drawn with a size; the series marks where traffic stopped.
    let plots = f["plots"].as_array().unwrap();
    assert!(plots.len() >= 6, "{}", show());
    for p in plots {
        assert!(
            p[0].as_u64().unwrap() > 200 && p[1].as_u64().unwrap() > 100,
            "{}",
            show()
        );
    }
    assert!(f["stop_marks"].as_u64().unwrap() >= 2, "{}", show());
    // The gate's performance: each figure's two distributions plotted, the
    // third of the throughput flagged SLOWER.
    assert_eq!(
        f["perf_plots"].as_array().map(Vec::len),
        Some(2),
        "{}",
        show()
    );
    assert!(f["perf_slower"].as_u64().unwrap() >= 1, "{}", show());
    // The failing scenario first and open; passing ones folded.
    assert_eq!(
        f["scenarios"][0],
        serde_json::json!(["extended-ports", true]),
        "{}",
        show()
    );
    assert_eq!(
        f["scenarios"][1],
        serde_json::json!(["flowtable", false]),
        "{}",
        show()
    );
    assert_eq!(f["failed_cell_links"], 7, "{}", show());

    screenshot.unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert_eq!(png_size(&png), Some((1280, 1600)));
    // A blank page compresses to a few kilobytes; this one has text and colour.
    assert!(png.len() > 40_000, "screenshot of {} bytes", png.len());
    // NATVET_KEEP_HTML=DIR keeps the page and its screenshot for a look.
    if let Some(keep) = std::env::var_os("NATVET_KEEP_HTML") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for f in ["index.html", "shot.png"] {
            std::fs::copy(dir.join(f), keep.join(f)).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
