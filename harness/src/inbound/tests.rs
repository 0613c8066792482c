use super::*;
use crate::protocol::{CaptureFile, Status, MAX_LINE};

fn asked() -> Vec<(String, String, String)> {
    ["forward/tcp", "forward/udp"]
        .iter()
        .map(|c| ("pmtu".to_string(), "nftables".to_string(), c.to_string()))
        .collect()
}

fn hello(release: &str) -> String {
    GuestMessage::Hello {
        version: PROTOCOL_VERSION,
        kernel_release: release.into(),
        uptime_ms: 5,
    }
    .to_line()
}

fn result(check: &str, status: Status) -> GuestResult {
    GuestResult {
        scenario: "pmtu".into(),
        backend: "nftables".into(),
        check: check.into(),
        status,
        expected: "e".into(),
        observed: "o".into(),
        duration_ms: 1,
        evidence: None,
        series: None,
    }
}

fn line(r: GuestResult) -> String {
    GuestMessage::Check(Box::new(r)).to_line()
}

fn feed(inbound: &mut Inbound, lines: &[String]) -> Result<(), Violation> {
    for l in lines {
        inbound.accept(l.as_bytes())?;
    }
    Ok(())
}

#[test]
fn an_honest_run_is_accepted() {
    let mut inbound = Inbound::new(asked());
    let started = GuestMessage::CheckStarted {
        scenario: "pmtu".into(),
        backend: "nftables".into(),
        check: "forward/udp".into(),
    }
    .to_line();
    let run_done = GuestMessage::RunDone(RunTiming {
        scenario: "pmtu".into(),
        backend: "nftables".into(),
        setup_ms: 1,
        elapsed_ms: 2,
    })
    .to_line();
    let lines = [
        hello("6.1.0-50-amd64"),
        String::new(),
        "\r".into(),
        started,
        line(result("forward/tcp", Status::Pass)),
        line(result("forward/udp", Status::Fail)),
        run_done,
        GuestMessage::Done { elapsed_ms: 9 }.to_line(),
    ];
    feed(&mut inbound, &lines).unwrap();
    let got = inbound.finish();
    assert_eq!(got.release.as_deref(), Some("6.1.0-50-amd64"));
    assert_eq!(got.results.len(), 2);
    assert!(got.running.is_empty());
    assert_eq!(got.agent_ms, Some(9));
}

#[test]
fn results_only_for_the_job_and_once() {
    let mut inbound = Inbound::new(asked());
    let lines = [hello("6.1.0"), line(result("forward/icmp", Status::Pass))];
    assert_eq!(
        feed(&mut inbound, &lines),
        Err(Violation::NotAsked(
            "a result for pmtu [nftables] forward/icmp".into()
        ))
    );
    let mut inbound = Inbound::new(asked());
    let lines = [
        hello("6.1.0"),
        line(result("forward/tcp", Status::Pass)),
        line(result("forward/tcp", Status::Fail)),
    ];
    assert_eq!(
        feed(&mut inbound, &lines),
        Err(Violation::SecondResult(
            "pmtu [nftables] forward/tcp".into()
        ))
    );
}

#[test]
fn order_of_the_protocol() {
    let mut inbound = Inbound::new(asked());
    assert_eq!(
        inbound
            .accept(line(result("forward/tcp", Status::Pass)).as_bytes())
            .map(|_| ()),
        Err(Violation::BeforeHello("a result"))
    );
    let mut inbound = Inbound::new(asked());
    let lines = [hello("6.1.0"), hello("6.1.0")];
    assert_eq!(feed(&mut inbound, &lines), Err(Violation::SecondHello));
    let mut inbound = Inbound::new(asked());
    let lines = [
        hello("6.1.0"),
        GuestMessage::Done { elapsed_ms: 1 }.to_line(),
        GuestMessage::Note {
            message: "x".into(),
        }
        .to_line(),
    ];
    assert_eq!(
        feed(&mut inbound, &lines),
        Err(Violation::AfterDone("a note"))
    );
    // The agent may give up before it could say Hello.
    let mut inbound = Inbound::new(asked());
    let fatal = GuestMessage::Fatal {
        error: "no /dev".into(),
    }
    .to_line();
    assert_eq!(
        inbound.accept(fatal.as_bytes()).map(|e| e.is_some()),
        Ok(true)
    );
}

#[test]
fn the_host_decides_flaky_and_evidence_dir() {
    let mut inbound = Inbound::new(asked());
    inbound.accept(hello("6.1.0").as_bytes()).unwrap();
    let flaky = r#"{"type":"check","scenario":"pmtu","backend":"nftables","check":"forward/tcp","status":"flaky","expected":"e","observed":"o","duration_ms":1}"#;
    let err = inbound.accept(flaky.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("flaky"), "{err}");
    let dir = r#"{"type":"check","scenario":"pmtu","backend":"nftables","check":"forward/tcp","status":"fail","expected":"e","observed":"o","duration_ms":1,"evidence_dir":"/etc"}"#;
    let err = inbound.accept(dir.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("evidence_dir"), "{err}");
}

#[test]
fn releases_are_checked() {
    for good in [
        "6.1.0-50-amd64",
        "6.12.43+deb12-amd64",
        "7.2.13+deb14-amd64",
        "6.8.0-31-generic",
    ] {
        assert!(is_release(good), "{good}");
    }
    for bad in [
        "..",
        "",
        "../../etc",
        "6.1/x",
        "linux",
        "6.1 x",
        "6.1\u{1b}[2J",
    ] {
        assert!(!is_release(bad), "{bad:?}");
        let mut inbound = Inbound::new(asked());
        assert!(matches!(
            inbound.accept(hello(bad).as_bytes()),
            Err(Violation::Release(_))
        ));
    }
    assert!(!is_release(&format!("6.{}", "1".repeat(MAX_RELEASE))));
}

#[test]
fn numbers_are_bounded() {
    let mut inbound = Inbound::new(asked());
    inbound.accept(hello("6.1.0").as_bytes()).unwrap();
    let mut r = result("forward/tcp", Status::Pass);
    r.duration_ms = u64::MAX;
    assert!(matches!(
        inbound.accept(line(r).as_bytes()),
        Err(Violation::Number {
            field: "duration_ms",
            ..
        })
    ));
    let mut r = result("forward/tcp", Status::Pass);
    r.series = Some(Series {
        step_ms: u64::MAX,
        sent: vec![1, 1],
        answered: vec![1, 1],
        stopped_at_ms: None,
    });
    assert!(matches!(
        inbound.accept(line(r).as_bytes()),
        Err(Violation::Series { .. })
    ));
    let mut r = result("forward/tcp", Status::Pass);
    r.series = Some(Series {
        step_ms: 1000,
        sent: vec![1, 1],
        answered: vec![1],
        stopped_at_ms: None,
    });
    assert!(matches!(
        inbound.accept(line(r).as_bytes()),
        Err(Violation::Series { .. })
    ));
}

#[test]
fn capture_names_are_names() {
    let capture = |ns: &str, ifname: &str, b64: &str| {
        let mut r = result("forward/tcp", Status::Fail);
        r.evidence = Some(Evidence {
            captures: vec![CaptureFile {
                namespace: ns.into(),
                interface: ifname.into(),
                packets: 1,
                not_kept: 0,
                pcap_base64: b64.into(),
            }],
            ..Evidence::default()
        });
        let mut inbound = Inbound::new(asked());
        inbound.accept(hello("6.1.0").as_bytes()).unwrap();
        inbound.accept(line(r).as_bytes()).map(|_| ())
    };
    assert_eq!(capture("relay", "public", "AAAA"), Ok(()));
    for (ns, ifname, b64) in [
        ("../..", "eth0", "AAAA"),
        ("relay", "..", "AAAA"),
        ("relay", "a/b", "AAAA"),
        ("relay", "eth0", "@@@"),
    ] {
        assert!(
            matches!(capture(ns, ifname, b64), Err(Violation::Capture { .. })),
            "{ns} {ifname} {b64}"
        );
    }
}

#[test]
fn text_is_cleaned_and_cut() {
    assert_eq!(clean("a\u{1b}[2Jb\tc\nd", false), "a\\x1b[2Jb\tc\\x0ad");
    assert_eq!(clean("a\nb\r", true), "a\nb\\x0d");
    assert_eq!(clean("x\u{9b}1m\u{202e}", true), "x\\x9b1m\\x202e");
    assert!(matches!(clean("plain text", true), Cow::Borrowed(_)));
    assert_eq!(cut("abcdef", 3), "abc... (3 bytes cut)");
    assert_eq!(cut("ééé", 3), "é... (4 bytes cut)");
    let mut inbound = Inbound::new(asked());
    inbound.accept(hello("6.1.0").as_bytes()).unwrap();
    let mut r = result("forward/tcp", Status::Fail);
    r.observed = format!("\u{1b}]0;owned\u{7}{}", "o".repeat(MAX_TEXT));
    inbound.accept(line(r).as_bytes()).unwrap();
    let note = GuestMessage::Note {
        message: "n\u{1b}[31m\nfake line".into(),
    };
    inbound.accept(note.to_line().as_bytes()).unwrap();
    let got = inbound.finish();
    let observed = &got.results[0].observed;
    assert!(observed.starts_with("\\x1b]0;owned\\x07"), "{observed:.40}");
    assert!(observed.len() < MAX_TEXT + 40);
    assert_eq!(got.notes, ["n\\x1b[31m\\x0afake line"]);
}

#[test]
fn notes_keep_the_first_and_the_last() {
    let mut inbound = Inbound::new(asked());
    inbound.accept(hello("6.1.0").as_bytes()).unwrap();
    for i in 0..1000 {
        let note = GuestMessage::Note {
            message: format!("note {i}"),
        };
        inbound.accept(note.to_line().as_bytes()).unwrap();
    }
    let notes = inbound.finish().notes;
    assert_eq!(notes.len(), MAX_NOTES + 1);
    assert_eq!(notes[0], "note 0");
    assert!(notes[MAX_NOTES / 2].starts_with("800 more notes"));
    assert_eq!(notes[MAX_NOTES], "note 999");
}

#[test]
fn evidence_past_the_budget_loses_its_captures() {
    let mut inbound = Inbound::with_evidence_budget(asked(), 10_000);
    inbound.accept(hello("6.1.0").as_bytes()).unwrap();
    for check in ["forward/tcp", "forward/udp"] {
        let mut r = result(check, Status::Fail);
        r.evidence = Some(Evidence {
            conntrack: "c".repeat(6000),
            captures: vec![CaptureFile {
                namespace: "relay".into(),
                interface: "public".into(),
                packets: 1,
                not_kept: 0,
                pcap_base64: "AAAA".repeat(100),
            }],
            ..Evidence::default()
        });
        inbound.accept(line(r).as_bytes()).unwrap();
    }
    let got = inbound.finish();
    let first = got.results[0].evidence.as_ref().unwrap();
    let second = got.results[1].evidence.as_ref().unwrap();
    assert_eq!(first.captures.len(), 1);
    assert!(second.captures.is_empty());
    assert!(second.conntrack.len() < 4200);
    assert!(second.capture_note.contains("budget"));
}

#[test]
fn lines_split_in_any_chunks_and_cap() {
    let mut lines = Lines::messages(8);
    let mut out = Vec::new();
    for chunk in [
        &b"ab"[..],
        b"c\n\n\r\nde",
        b"f\n",
        b"0123456789abc",
        b"def\nok\n",
    ] {
        lines.push(chunk);
        while let Some(p) = lines.next_line() {
            out.push((String::from_utf8_lossy(&p.bytes).into_owned(), p.cut));
        }
    }
    let want = [
        ("abc", false),
        ("def", false),
        ("01234567", true),
        ("ok", false),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(s, c)| (s.to_string(), *c)).collect();
    assert_eq!(out, want);
    // A console keeps its blank lines.
    let mut console = Lines::console(8);
    console.push(b"a\n\nb\n");
    let mut n = 0;
    while console.next_line().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn a_flood_of_blank_lines_costs_linear_time() {
    let mut lines = Lines::messages(MAX_LINE);
    let chunk = vec![b'\n'; 64 << 10];
    let start = std::time::Instant::now();
    for _ in 0..256 {
        lines.push(&chunk);
        assert_eq!(lines.next_line(), None);
    }
    lines.push(b"{}\n");
    assert_eq!(lines.next_line().map(|p| p.bytes), Some(b"{}".to_vec()));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "16 MiB of blank lines took {:?}",
        start.elapsed()
    );
}

fn figure(probe: &str, value: Option<f64>, samples: Vec<f64>) -> String {
    GuestMessage::Perf(Box::new(PerfFigure {
        scenario: "perf".into(),
        backend: "nftables".into(),
        probe: probe.into(),
        // The guest's word for these is not taken.
        unit: "furlongs".into(),
        better: Better::Lower,
        value,
        samples,
        note: "n\x1b[2J".into(),
    }))
    .to_line()
}

fn perf_inbound() -> Inbound {
    let key = |p: &str| ("perf".to_string(), "nftables".to_string(), p.to_string());
    Inbound::new(vec![]).with_perf(vec![
        (
            key("tcp-throughput/tunnel"),
            "Mbit/s".into(),
            Better::Higher,
        ),
        (key("rtt-p99/tunnel"), "ms".into(), Better::Lower),
    ])
}

#[test]
fn figures_are_taken_as_asked_with_the_hosts_unit_and_direction() {
    let mut inbound = perf_inbound();
    let lines = [
        hello("6.1.0-57-amd64"),
        figure("tcp-throughput/tunnel", Some(12.5), vec![12.0, 13.0]),
    ];
    feed(&mut inbound, &lines).unwrap();
    let got = inbound.finish();
    assert_eq!(got.perf.len(), 1);
    assert_eq!(got.perf[0].unit, "Mbit/s");
    assert_eq!(got.perf[0].better, Better::Higher);
    assert!(!got.perf[0].note.contains('\x1b'));
    assert_eq!(got.perf_missing, ["perf [nftables] rtt-p99/tunnel"]);
}

#[test]
fn figures_nobody_asked_for_twice_or_out_of_bounds_are_refused() {
    let attacks = [
        vec![figure("udp-rate/1-flows", Some(1.0), vec![])],
        vec![
            figure("rtt-p99/tunnel", Some(1.0), vec![]),
            figure("rtt-p99/tunnel", Some(1.0), vec![]),
        ],
        vec![figure("rtt-p99/tunnel", Some(-1.0), vec![])],
        vec![figure("rtt-p99/tunnel", Some(1e300), vec![])],
        vec![figure("rtt-p99/tunnel", None, vec![1.0; MAX_SAMPLES + 1])],
    ];
    for a in attacks {
        let mut inbound = perf_inbound();
        let mut lines = vec![hello("6.1.0-57-amd64")];
        lines.extend(a.iter().cloned());
        assert!(feed(&mut inbound, &lines).is_err(), "{a:?}");
    }
    // NaN does not survive JSON (it is written null): no figure.
    let mut inbound = perf_inbound();
    let nan = figure("rtt-p99/tunnel", Some(f64::NAN), vec![]);
    feed(&mut inbound, &[hello("6.1.0-57-amd64"), nan]).unwrap();
    assert_eq!(inbound.finish().perf[0].value, None);
}
