//! Criterion benchmarks of natvet's pure, host-side parts: what runs before
//! every boot (scenario parsing, rule rendering, cpio writing) and what runs
//! for every guest message (protocol parsing, conntrack parsing).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use natvet::nat::{BackendKind, Masquerade, NatRules, Redirect};
use natvet::protocol::{Evidence, GuestMessage, GuestResult, Status};
use natvet::scenario::Scenario;
use natvet::types::{Family, IpNet};

fn rules() -> NatRules {
    NatRules {
        masquerade: vec![Masquerade {
            source: IpNet {
                addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 0)),
                prefix: 24,
            },
            out_iface: "wan".into(),
            ports: None,
            to: None,
        }],
        redirect_udp: vec![Redirect {
            family: Family::Ipv4,
            in_iface: "public".into(),
            ports: ["53", "4000-33433", "33565-51820", "52000-60000"]
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            to_port: 51820,
        }],
        dnat: vec![],
        firewall: vec![],
        families: vec![Family::Ipv4],
    }
}

fn benches(c: &mut Criterion) {
    let text = natvet::scenario::SHIPPED[0].1;
    c.bench_function("scenario/parse+validate extended-ports", |b| {
        b.iter(|| Scenario::parse(black_box(text), "bench"))
    });
    let r = rules();
    for kind in BackendKind::ALL {
        let backend = kind.backend();
        c.bench_function(&format!("nat/render {kind}"), |b| {
            b.iter(|| backend.scripts(black_box(&r)))
        });
    }
    let msg = GuestMessage::Check(Box::new(GuestResult {
        scenario: "extended-ports".into(),
        backend: "nftables".into(),
        check: "handshake/53".into(),
        status: Status::Fail,
        expected: "a WireGuard handshake via 192.0.2.1:53".into(),
        observed: "no handshake: 192.0.2.1 answered ICMP destination unreachable".into(),
        duration_ms: 12,
        evidence: Some(Evidence {
            conntrack: "udp 17 29 src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=53\n".repeat(50),
            ..Evidence::default()
        }),
        series: None,
    }))
    .to_line();
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("parse a check result with evidence", |b| {
        b.iter(|| GuestMessage::from_line(black_box(&msg)))
    });
    // Parsed, checked against the job, cleaned: what the host does with each line.
    let asked = vec![(
        "extended-ports".to_string(),
        "nftables".to_string(),
        "handshake/53".to_string(),
    )];
    let hello = r#"{"type":"hello","version":1,"kernel_release":"6.1.0-50-amd64","uptime_ms":1}"#;
    g.bench_function("accept a check result with evidence", |b| {
        b.iter(|| {
            let mut inbound = natvet::inbound::Inbound::new(asked.clone());
            let _ = inbound.accept(hello.as_bytes());
            inbound.accept(black_box(msg.as_bytes())).is_ok()
        })
    });
    g.finish();
    let table = "udp      17 28 src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=4000 src=192.0.2.1 dst=192.0.2.2 sport=51820 dport=40001 [ASSURED] mark=0 use=1\n".repeat(500);
    c.bench_function("conntrack/parse 500 entries", |b| {
        b.iter(|| natvet::conntrack::parse(black_box(&table)))
    });
    let blob = vec![0x5au8; 16 << 20];
    let mut g = c.benchmark_group("cpio");
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.sample_size(20);
    g.bench_function("write a 16 MiB file", |b| {
        b.iter(|| {
            let mut w = natvet::cpio::CpioWriter::new(Vec::with_capacity(17 << 20));
            let _ = w.add_file("init", 0o755, black_box(&blob));
            w.finish()
        })
    });
    g.finish();
}

criterion_group!(pure, benches);
criterion_main!(pure);
