use super::*;
use crate::checks::tests::scenario_with;

#[test]
fn one_result_per_port_and_sane_times() {
    let s = scenario_with("kind = \"session\"\nports = [53, 4000]").unwrap();
    assert_eq!(s.checks[0].result_names(), ["session/53", "session/4000"]);
    for bad in ["active = 2", "duration = 3", "idle = 601", "ports = []"] {
        let toml = format!("kind = \"session\"\nports = [53]\n{bad}")
            .replace("ports = [53]\nports = []", "ports = []");
        assert!(scenario_with(&toml).is_err(), "{bad}");
    }
}

#[test]
fn what_a_session_keeps_is_bounded() {
    // A day of seven sessions would keep about 700 MiB of probe records
    // in a 384 MiB guest: refused before boot, at the line of duration.
    let day = scenario_with(
        "kind = \"session\"\nports = [53, 4000, 33433, 33565, 51819, 52000, 60000]\nduration = 86400",
    )
    .unwrap_err();
    assert!(
        day.contains("line 7: check session: value out of range: ports x duration = 7 x 86400 = 604800 must be between 3 and 50000 session-seconds because"),
        "{day}"
    );
    assert!(scenario_with("kind = \"session\"\nports = [53]\nduration = 50000").is_ok());
    let faults: String = (0..17)
        .map(|i| format!("{{ at = {i}, kind = \"conntrack-flush\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let many = scenario_with(&format!(
        "kind = \"session\"\nports = [53]\nduration = 60\nfaults = [{faults}]"
    ))
    .unwrap_err();
    assert!(
        many.contains("the number of faults = 17 must be between 0 and 16"),
        "{many}"
    );
    // The memory per session-second above counts probe records of 48 bytes.
    assert_eq!(std::mem::size_of::<Probe>(), 48);
}

fn log_with(probes: &[(u64, bool)]) -> Log {
    Log {
        handshake: Some(Duration::from_millis(100)),
        probes: probes
            .iter()
            .enumerate()
            .map(|(i, (ms, answered))| Probe {
                kind: Kind::Udp,
                seq: i as u32,
                first_sent: Duration::from_millis(*ms),
                last_sent: Duration::from_millis(*ms),
                resends: 0,
                answered: *answered,
            })
            .collect(),
        length: Duration::from_millis(3500),
        ..Log::default()
    }
}

#[test]
fn the_series_counts_per_second_and_says_when_it_stopped() {
    let log = log_with(&[
        (0, true),
        (500, true),
        (1000, true),
        (2100, false),
        (3200, true),
    ]);
    let s = log.series();
    assert_eq!(s.sent, [2, 1, 1, 1]);
    assert_eq!(s.answered, [2, 1, 0, 1]);
    assert_eq!(s.stopped_at_ms, Some(2000));
    assert_eq!(log_with(&[(0, true)]).series().stopped_at_ms, None);
}

#[test]
fn an_unanswered_probe_or_a_moved_endpoint_fails() {
    let a = crate::scenario::Scenario::load("extended-ports")
        .unwrap()
        .addrs(crate::types::Family::Ipv4)
        .unwrap();
    let check: Session = serde_json::from_str(r#"{"ports":[53]}"#).unwrap();
    let ep = at(a.relay_public, 53);
    let mut good = log_with(&[(0, true)]);
    good.seen_udp = Some(a.relay_wan);
    good.seen_tcp = Some(a.relay_wan);
    assert!(good.judge(ep, &a, &check).0);
    let mut lost = log_with(&[(0, false)]);
    lost.seen_udp = good.seen_udp;
    lost.seen_tcp = good.seen_tcp;
    assert!(!lost.judge(ep, &a, &check).0);
    let mut moved = log_with(&[(0, true)]);
    moved.seen_udp = good.seen_udp;
    moved.seen_tcp = good.seen_tcp;
    moved.fail(
        Duration::from_secs(1),
        "the client's WireGuard endpoint moved".into(),
    );
    let (ok, observed) = moved.judge(ep, &a, &check);
    assert!(!ok && observed.contains("endpoint moved"), "{observed}");
    let mut unmasqueraded = log_with(&[(0, true)]);
    unmasqueraded.seen_udp = Some(a.tunnel_client);
    assert!(!unmasqueraded.judge(ep, &a, &check).0);
}
