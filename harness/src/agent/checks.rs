//! The checks: each sends real packets through the guest kernel and compares
//! what arrived with what the scenario expects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::kmsg::Kmsg;
use super::probes::{self, IcmpPacket};
use super::topology::{run_in, Topology};
use crate::conntrack;
use crate::nat::NatBackend;
use crate::scenario::Addrs;
use base64::Engine as _;

use super::capture::{Capture, LeakWatch};
use super::netlink;
use super::topology::wait_usable;
use crate::protocol::{CaptureFile, CaptureMode, CheckResult, Evidence, Status};
use crate::scenario::CheckSpec;
use crate::types::{human_bytes, Family, IpNet, PortRange, Protocol};

/// How long a handshake that should happen may take: WireGuard retries an
/// initiation after 5 s (REKEY_TIMEOUT), so this allows two retries.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(12);
/// How long to wait before concluding that no handshake happens, when the
/// relay does not tell us sooner with an ICMP error.
pub const NO_HANDSHAKE_WAIT: Duration = Duration::from_secs(6);
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a datagram that should not arrive, when the relay
/// does not tell us sooner with an ICMP error.
pub const REDIRECT_ABSENT_WAIT: Duration = Duration::from_secs(3);
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the relay keeps sending to an idle client before concluding
/// that nothing reaches it.
pub const KEEPALIVE_WAIT: Duration = Duration::from_secs(3);
/// WireGuard's REKEY_AFTER_TIME: the initiator starts a new handshake when
/// it sends on keys this old.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// How long the rekey check waits for the new handshake.
pub const REKEY_WAIT: Duration = Duration::from_secs(150);

/// An address and port as people write them ("192.0.2.1:53", "[2001:db8::1]:53").
fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// An address ready to be followed by ":PORT".
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// What a check concluded, before timing and evidence are attached.
pub struct Verdict {
    pub status: Status,
    pub expected: String,
    pub observed: String,
}

impl Verdict {
    /// The kernel lacks what the check needs: neither a pass nor a NAT failure.
    fn unsupported(expected: impl Into<String>, why: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Unsupported,
            expected: expected.into(),
            observed: why.into(),
        }
    }

    fn judge(ok: bool, expected: impl Into<String>, observed: impl Into<String>) -> Verdict {
        Verdict {
            status: if ok { Status::Pass } else { Status::Fail },
            expected: expected.into(),
            observed: observed.into(),
        }
    }
}

/// State shared by the checks of one scenario run.
pub struct Context<'a> {
    pub topo: Topology,
    pub backend: &'a dyn NatBackend,
    pub kmsg: Kmsg,
    /// Every kernel log line since the scenario started.
    pub dmesg: Vec<String>,
    pub evidence_always: bool,
    pub capture: CaptureMode,
    /// The family whose checks run now.
    pub family: Family,
    /// The family of the endpoint the data tunnel was brought up through,
    /// while the client's peer still points there.
    tunnel_up: Option<Family>,
    /// The relay's NAT rules, for checks that re-apply them.
    pub rules: crate::nat::NatRules,
    /// Whether the scenario's flowtable was set up (None: it asks for none),
    /// or what to report if not.
    pub flowtable: Option<std::result::Result<(), (Status, String)>>,
    /// Conntrack losses a check caused on purpose (port-exhaustion's flows
    /// that find no port), by namespace and counter, measured around it:
    /// kernel-health does not count them against the kernel.
    deliberate_losses: Option<BTreeMap<(String, String), u64>>,
    nonce: u64,
}

impl<'a> Context<'a> {
    pub fn new(
        topo: Topology,
        backend: &'a dyn NatBackend,
        kmsg: Kmsg,
        evidence_always: bool,
        capture: CaptureMode,
    ) -> Self {
        Context {
            topo,
            backend,
            kmsg,
            dmesg: Vec::new(),
            evidence_always,
            capture,
            family: Family::Ipv4,
            tunnel_up: None,
            rules: crate::nat::NatRules::default(),
            flowtable: None,
            deliberate_losses: None,
            nonce: u64::from(std::process::id()) << 32 | u64::from(rand::random::<u16>()),
        }
    }

    /// The addresses of the family whose checks run now.
    pub fn a(&self) -> &Addrs {
        self.topo.addrs(self.family)
    }

    /// A UDP socket on the client's tunnel address (current family), any port.
    fn client_tunnel_socket(&self) -> Result<UdpSocket> {
        let addr = self.a().tunnel_client;
        self.topo
            .client
            .run(|| UdpSocket::bind((addr, 0)).context("binding a UDP socket on the client"))
    }

    /// An unbound socket's address in the current family.
    fn any(&self) -> SocketAddr {
        match self.family {
            Family::Ipv4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            Family::Ipv6 => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        }
    }

    fn tag(&mut self, what: &str) -> String {
        self.nonce += 1;
        format!("{what}-{:x}", self.nonce)
    }

    /// Run one named check and wrap its verdict in a result.
    fn start_capture(&self) -> Capture {
        let targets = self.topo.interfaces();
        Capture::start(
            &targets
                .iter()
                .map(|(n, i)| (*n, i.as_str()))
                .collect::<Vec<_>>(),
        )
    }

    fn judge(&mut self, f: &impl Fn(&mut Self) -> Result<Verdict>) -> Verdict {
        if let Some(why) = self.topo.lacks(self.family) {
            return Verdict::unsupported(format!("the check runs over {}", self.family), why);
        }
        f(self).unwrap_or_else(|e| Verdict {
            status: Status::Error,
            expected: "the check runs".into(),
            observed: format!("natvet could not run it: {e:#}"),
        })
    }

    /// Run one named check and wrap its verdict in a result.
    ///
    /// Captures cost little per packet but a lot under TCG, so by default
    /// (`--capture failures`) a check runs without them, and only a check that
    /// did not pass runs once more with every interface captured; its verdict
    /// stays the first run's, and the evidence says what the re-run showed.
    pub fn run(
        &mut self,
        scenario: &str,
        name: &str,
        f: impl Fn(&mut Self) -> Result<Verdict>,
    ) -> CheckResult {
        super::send(&crate::protocol::GuestMessage::CheckStarted {
            scenario: scenario.to_string(),
            backend: self.backend.kind().to_string(),
            check: name.to_string(),
        });
        let always = self.capture == CaptureMode::Always;
        let capture = always.then(|| self.start_capture());
        let start = Instant::now();
        let verdict = self.judge(&f);
        let duration_ms = start.elapsed().as_millis() as u64;
        let mut lines = self.kmsg.drain();
        self.dmesg.extend(lines.iter().cloned());
        // An unsupported check has nothing to show: the kernel lacks what it needs.
        let failed = matches!(verdict.status, Status::Fail | Status::Error);
        let mut capture_note = String::new();
        let mut captures = capture.map(|c| c.finish(true)).unwrap_or_default();
        if failed && self.capture == CaptureMode::Failures {
            // Tell the host, which counts silence as a hung check.
            super::send(&crate::protocol::GuestMessage::Note {
                message: format!(
                    "{scenario} [{}] {name}: running it again with packet capture",
                    self.backend.kind()
                ),
            });
            let c = self.start_capture();
            let again = self.judge(&f);
            captures = c.finish(true);
            let more = self.kmsg.drain();
            self.dmesg.extend(more.iter().cloned());
            lines.extend(more);
            capture_note = format!(
                "packets captured while the check ran a second time, which gave: {} ({})",
                again.status.label(),
                again.observed
            );
        }
        let evidence = (failed || self.evidence_always || !captures.is_empty()).then(|| {
            let mut ev = self.evidence(lines);
            ev.capture_note = capture_note;
            ev.captures = captures
                .into_iter()
                .map(|p| CaptureFile {
                    namespace: p.namespace,
                    interface: p.interface,
                    packets: p.packets,
                    not_kept: p.not_kept,
                    pcap_base64: base64::engine::general_purpose::STANDARD.encode(p.bytes),
                })
                .collect();
            ev
        });
        CheckResult {
            scenario: scenario.to_string(),
            backend: self.backend.kind().to_string(),
            check: name.to_string(),
            status: verdict.status,
            expected: verdict.expected,
            observed: verdict.observed,
            duration_ms,
            evidence,
            evidence_dir: None,
        }
    }

    fn evidence(&self, dmesg: Vec<String>) -> Evidence {
        let t = &self.topo;
        let per_ns = |f: &dyn Fn(&crate::agent::netns::Netns) -> String| {
            [&t.client, &t.relay, &t.internet]
                .iter()
                .map(|ns| format!("== {}\n{}", ns.name, f(ns)))
                .collect::<String>()
        };
        Evidence {
            conntrack: self.conntrack_text().unwrap_or_else(|e| format!("({e:#})")),
            ruleset: self
                .backend
                .lists()
                .iter()
                .map(|inv| {
                    let out = t
                        .relay_run(inv, None)
                        .unwrap_or_else(|e| format!("({e:#})"));
                    format!("== {inv}\n{out}")
                })
                .collect(),
            counters: per_ns(&|ns| ns.proc_net("dev")),
            routes: per_ns(&|ns| ns.proc_net("route")),
            wireguard: t.describe_tunnel(),
            dmesg,
            captures: vec![],
            capture_note: String::new(),
        }
    }

    /// The relay's conntrack table, both families (`conntrack -L` alone lists IPv4).
    fn conntrack_text(&self) -> Result<String> {
        let mut out = String::new();
        for family in ["ipv4", "ipv6"] {
            let inv = crate::nat::Invocation {
                program: "/usr/sbin/conntrack",
                args: vec!["-L", "-f", family],
            };
            out.push_str(
                &run_in(&self.topo.relay, &inv, None)
                    .context("listing the relay's conntrack table")?,
            );
        }
        Ok(out)
    }
}

/// Run every result of one check specification.
pub fn run_spec(
    ctx: &mut Context,
    scenario: &str,
    spec: &CheckSpec,
    emit: &mut dyn FnMut(CheckResult),
) {
    let names = spec.result_names_in(ctx.family);
    match spec {
        CheckSpec::Handshake { ports } | CheckSpec::NoHandshake { ports } => {
            let expect = matches!(spec, CheckSpec::Handshake { .. });
            for (port, name) in ports.iter().zip(&names) {
                emit(ctx.run(scenario, name, |c| handshake(c, *port, expect)));
            }
        }
        CheckSpec::Forward { protocols } => {
            for (proto, name) in protocols.iter().zip(&names) {
                emit(ctx.run(scenario, name, |c| forward(c, *proto)));
            }
        }
        CheckSpec::Transfer { bytes } => {
            emit(ctx.run(scenario, &names[0], |c| transfer(c, *bytes)));
        }
        CheckSpec::ConntrackRedirect { port } => {
            emit(ctx.run(scenario, &names[0], |c| conntrack_redirect(c, *port)));
        }
        CheckSpec::ConntrackMasquerade => {
            emit(ctx.run(scenario, &names[0], conntrack_masquerade));
        }
        CheckSpec::KernelHealth => {
            emit(ctx.run(scenario, &names[0], kernel_health));
        }
        CheckSpec::IcmpError => emit(ctx.run(scenario, &names[0], icmp_error)),
        CheckSpec::ConntrackFlush => emit(ctx.run(scenario, &names[0], conntrack_flush)),
        CheckSpec::ManyFlows { flows } => {
            emit(ctx.run(scenario, &names[0], |c| many_flows(c, *flows)))
        }
        CheckSpec::FlowtableOffload => emit(ctx.run(scenario, &names[0], flowtable_offload)),
        CheckSpec::TunnelMtu { icmp_mtu } => {
            emit(ctx.run(scenario, &names[0], |c| tunnel_mtu(c, *icmp_mtu)))
        }
        CheckSpec::ReloadUnderTraffic { reloads, atomic } => {
            emit(ctx.run(scenario, &names[0], |c| {
                reload_under_traffic(c, *reloads, *atomic)
            }))
        }
        CheckSpec::PortExhaustion { beyond, range } => {
            emit(ctx.run(scenario, &names[0], |c| port_exhaustion(c, *beyond, *range)))
        }
        CheckSpec::SameSourcePort { ports, at, second } => {
            for (port, name) in ports.iter().zip(&names) {
                emit(ctx.run(scenario, name, |c| same_source_port(c, *port, at, second)));
            }
        }
        CheckSpec::PortShadow => emit(ctx.run(scenario, &names[0], port_shadow)),
        CheckSpec::Rekey => emit(ctx.run(scenario, &names[0], rekey)),
        CheckSpec::PortForward { protocols, port } => {
            for (proto, name) in protocols.iter().zip(&names) {
                emit(ctx.run(scenario, name, |c| port_forward(c, *proto, *port)));
            }
        }
        CheckSpec::UdpGso {
            segment,
            segments,
            bursts,
        } => emit(ctx.run(scenario, &names[0], |c| {
            udp_gso(c, *segment as usize, *segments as usize, *bursts)
        })),
        CheckSpec::ConntrackExpiry { within } => {
            emit(ctx.run(scenario, &names[0], |c| conntrack_expiry(c, *within)))
        }
        CheckSpec::Keepalive { idle } => {
            emit(ctx.run(scenario, &names[0], |c| keepalive(c, *idle)))
        }
        CheckSpec::Roaming { at, to } => emit(ctx.run(scenario, &names[0], |c| roaming(c, at, to))),
        CheckSpec::Redirect { ports } | CheckSpec::NoRedirect { ports } => {
            let expect = matches!(spec, CheckSpec::Redirect { .. });
            for (port, name) in ports.iter().zip(&names) {
                emit(ctx.run(scenario, name, |c| udp_redirect(c, *port, expect)));
            }
        }
    }
}

/// A plain UDP datagram from the client to the relay's public `port`: with
/// `expect`, it must reach a socket on the relay's listen port with the
/// client's source intact, and the reply must return from `port` (the
/// redirect's reverse translation); without, it must not reach that socket.
/// Runs before the tunnel exists, when the listen port is free to bind.
fn udp_redirect(ctx: &mut Context, port: u16, expect: bool) -> Result<Verdict> {
    let Addrs {
        client_public,
        client_seen,
        relay_public,
        ..
    } = *ctx.a();
    let listen = ctx.topo.listen_port;
    let sport = ctx.topo.fresh_client_port();
    let expected = if expect {
        format!(
            "a UDP datagram to {} reaches the relay's socket on :{listen} from {}, and the reply returns from {}",
            at(relay_public, port),
            at(client_seen, sport),
            at(relay_public, port)
        )
    } else {
        format!(
            "a UDP datagram to {} does not reach the relay's socket on :{listen}",
            at(relay_public, port)
        )
    };
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let relay_sock = topo.relay.run(|| {
        probes::bind_udp_again(SocketAddr::new(any.ip(), listen)).with_context(|| {
            format!("binding udp/{listen} on the relay (is something else listening there?)")
        })
    })?;
    let client_sock = topo.client.run(|| {
        UdpSocket::bind((client_public, sport))
            .with_context(|| format!("binding udp/{sport} on the client"))
    })?;
    icmp_sock.drain();
    let wait = if expect {
        EXCHANGE_TIMEOUT
    } else {
        REDIRECT_ABSENT_WAIT
    };
    let flow = probes::Flow {
        sender: &client_sock,
        dest: at(relay_public, port),
        tag: format!("natvet-redirect-{sport}"),
    };
    let mut refused: Option<(IcmpPacket, Duration)> = None;
    // Resend every second: the first datagram may wait on ARP/ND. A refusal
    // ends the wait only while nothing has arrived.
    let seen = probes::echo_exchange(
        std::slice::from_ref(&flow),
        &relay_sock,
        wait,
        Duration::from_secs(1),
        |seen, after| {
            if let Some(icmp) = icmp_sock.recv() {
                if icmp.is_unreachable()
                    && icmp.inner_proto == Some(17)
                    && icmp.inner_dport == Some(port)
                {
                    refused = Some((icmp, after));
                }
            }
            refused.is_some() && seen[0].sources.is_empty()
        },
    )?
    .remove(0);
    let arrived = seen.source().zip(seen.arrived_after);
    let reply = seen.reply_from();
    let mut observed = match &arrived {
        Some((from, after)) => format!(
            "the relay's socket on :{listen} received it from {from} after {} ms",
            after.as_millis()
        ),
        None => format!("the relay's socket on :{listen} received nothing"),
    };
    match (&reply, &refused) {
        (Some(from), _) => observed.push_str(&format!("; the reply came back from {from}")),
        (None, _) if arrived.is_some() => observed.push_str(&format!(
            "; no reply reached the client within {:.1} s",
            wait.as_secs_f32()
        )),
        (None, Some((icmp, after))) => observed.push_str(&format!(
            "; {} answered ICMP destination unreachable (code {}) for udp/{port} after {} ms",
            icmp.source,
            icmp.code,
            after.as_millis()
        )),
        (None, None) => observed.push_str(&format!(
            " and no ICMP error came within {:.1} s",
            wait.as_secs_f32()
        )),
    }
    observed.push_str(&later_sources("its", &seen));
    let client = SocketAddr::new(client_seen, sport);
    let ok = if expect {
        arrived.as_ref().map(|(from, _)| *from) == Some(client)
            && seen.sources.len() == 1
            && reply == Some(SocketAddr::new(relay_public, port))
    } else {
        arrived.is_none()
    };
    Ok(Verdict::judge(ok, expected, observed))
}

/// Resent copies of one datagram that reached the responder from another
/// source than the first: the flow's translation changed between copies.
fn later_sources(whose: &str, seen: &probes::Echoed) -> String {
    match seen.sources.get(1..) {
        Some(rest) if !rest.is_empty() => format!(
            "; {whose} later copies came from {}",
            rest.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

/// What happened when the client tried to reach the relay at one port.
enum HandshakeOutcome {
    /// `seen`: the client's endpoint as the relay learned it (through any NAT).
    Completed {
        after: Duration,
        seen: Option<SocketAddr>,
    },
    Refused {
        after: Duration,
        icmp: IcmpPacket,
    },
    Silent {
        waited: Duration,
    },
}

/// Point the client at `relay_public:port` from a fresh source port, with a
/// fresh peer (no session), send one packet into the tunnel and watch.
fn attempt_handshake(
    ctx: &mut Context,
    port: u16,
    wait: Duration,
) -> Result<(u16, HandshakeOutcome)> {
    let Addrs {
        relay_public,
        internet,
        ..
    } = *ctx.a();
    let sport = ctx.topo.fresh_client_port();
    // The peer is replaced: whatever tunnel was up is gone.
    ctx.tunnel_up = None;
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let (client_wg, relay_wg) = topo.wg().map_err(anyhow::Error::msg)?;
    icmp_sock.drain();
    let (allowed, keepalive) = topo.client_peer();
    client_wg.set_only_peer(
        &relay_wg.public_key(),
        Some(SocketAddr::new(relay_public, port)),
        &allowed,
        Some(sport),
        keepalive,
    )?;
    // Any packet routed into wg0 makes WireGuard initiate a handshake.
    let trigger = topo
        .client
        .run(|| UdpSocket::bind(any).context("binding trigger socket"))?;
    trigger
        .send_to(b"natvet-trigger", (internet, 9))
        .context("sending a packet into the tunnel")?;
    let start = Instant::now();
    loop {
        let state = client_wg.peer_state()?;
        if state.and_then(|s| s.last_handshake).is_some() {
            let after = start.elapsed();
            let seen = relay_wg.peer_state()?.and_then(|p| p.endpoint);
            return Ok((sport, HandshakeOutcome::Completed { after, seen }));
        }
        // recv waits up to 20 ms, which paces this loop.
        if let Some(icmp) = icmp_sock.recv() {
            if icmp.is_unreachable()
                && icmp.source == relay_public
                && icmp.inner_proto == Some(17)
                && icmp.inner_dport == Some(port)
            {
                return Ok((
                    sport,
                    HandshakeOutcome::Refused {
                        after: start.elapsed(),
                        icmp,
                    },
                ));
            }
        }
        if start.elapsed() >= wait {
            return Ok((
                sport,
                HandshakeOutcome::Silent {
                    waited: start.elapsed(),
                },
            ));
        }
    }
}

fn describe(a: &Addrs, outcome: &HandshakeOutcome, sport: u16, port: u16) -> String {
    let Addrs {
        client_seen: client_public,
        relay_public,
        ..
    } = *a;
    match outcome {
        HandshakeOutcome::Completed { after, seen } => format!(
            "handshake completed after {} ms (client {} -> {})",
            after.as_millis(),
            seen.unwrap_or_else(|| at(client_public, sport)),
            at(relay_public, port)
        ),
        HandshakeOutcome::Refused { after, icmp } => format!(
            "no handshake: {} answered ICMP destination unreachable (code {}) for udp/{port} after {} ms",
            icmp.source,
            icmp.code,
            after.as_millis()
        ),
        HandshakeOutcome::Silent { waited } => format!(
            "no handshake and no ICMP error within {:.1} s",
            waited.as_secs_f32()
        ),
    }
}

fn handshake(ctx: &mut Context, port: u16, expect: bool) -> Result<Verdict> {
    let Addrs { relay_public, .. } = *ctx.a();
    let wait = if expect {
        HANDSHAKE_TIMEOUT
    } else {
        NO_HANDSHAKE_WAIT
    };
    let expected = if expect {
        format!("a WireGuard handshake via {}", at(relay_public, port))
    } else {
        format!("no WireGuard handshake via {}", at(relay_public, port))
    };
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    let (sport, outcome) = attempt_handshake(ctx, port, wait)?;
    let completed = matches!(outcome, HandshakeOutcome::Completed { .. });
    Ok(Verdict::judge(
        completed == expect,
        expected,
        describe(ctx.a(), &outcome, sport, port),
    ))
}

fn conntrack_redirect(ctx: &mut Context, port: u16) -> Result<Verdict> {
    let Addrs {
        client_seen: client_public,
        relay_public,
        ..
    } = *ctx.a();
    let listen = ctx.topo.listen_port;
    let expected = format!(
        "a conntrack entry {}:SPORT -> {} whose reply comes from {}",
        host(client_public),
        at(relay_public, port),
        at(relay_public, listen)
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    let (sport, outcome) = attempt_handshake(ctx, port, HANDSHAKE_TIMEOUT)?;
    if !matches!(outcome, HandshakeOutcome::Completed { .. }) {
        return Ok(Verdict::judge(
            false,
            expected,
            describe(ctx.a(), &outcome, sport, port),
        ));
    }
    let table = ctx.conntrack_text()?;
    let entry = conntrack::parse(&table).into_iter().find(|e| {
        e.protocol == "udp"
            && e.original.src == client_public
            && e.original.dst == relay_public
            && e.original.sport == Some(sport)
            && e.original.dport == Some(port)
    });
    Ok(match entry {
        None => Verdict::judge(
            false,
            expected,
            format!(
                "no conntrack entry for {} -> {}",
                at(client_public, sport),
                at(relay_public, port)
            ),
        ),
        Some(e) => Verdict::judge(
            e.reply.src == relay_public
                && e.reply.sport == Some(listen)
                && e.reply.dst == client_public
                && e.reply.dport == Some(sport),
            expected,
            e.line,
        ),
    })
}

/// Bring the data tunnel up through the plain listen port, over the current
/// family (once, until a handshake check points the client elsewhere).
fn ensure_tunnel(ctx: &mut Context) -> Result<std::result::Result<(), String>> {
    // A veth stand-in needs no handshake.
    if ctx.tunnel_up == Some(ctx.family) || ctx.topo.wg().is_err() {
        return Ok(Ok(()));
    }
    let listen = ctx.topo.listen_port;
    let (sport, outcome) = attempt_handshake(ctx, listen, HANDSHAKE_TIMEOUT)?;
    if let HandshakeOutcome::Completed { .. } = outcome {
        ctx.tunnel_up = Some(ctx.family);
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "the tunnel did not come up through the plain port, so nothing could be forwarded: {}",
            describe(ctx.a(), &outcome, sport, listen)
        )))
    }
}

/// How an exchange's reply went, for an observation.
fn reply_text(reply: &Result<()>) -> String {
    match reply {
        Ok(()) => "the reply returned".to_string(),
        Err(e) => format!("no reply ({e:#})"),
    }
}

fn masq_expectation(a: &Addrs, what: &str) -> String {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *a;
    format!("{what} from the client reaches {internet} from {relay_wan} (masqueraded) and the reply returns")
}

/// What the internet host recorded for `tag`. The kernel answers an ICMP echo
/// before the recording thread has run, so give the record a moment to land.
fn seen_source(ctx: &Context, tag: &str) -> Result<Option<probes::Seen>> {
    let host = ctx.topo.internet_host()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let seen = host.seen(tag);
        if seen.is_some() || Instant::now() >= deadline {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe_seen(a: &Addrs, seen: &Option<probes::Seen>) -> String {
    let Addrs { internet, .. } = *a;
    match seen {
        None => format!("{internet} received nothing"),
        Some(s) => match s.source_port {
            Some(p) => format!("{internet} received it from {}", at(s.source, p)),
            None => format!("{internet} received it from {}", s.source),
        },
    }
}

fn forward(ctx: &mut Context, proto: Protocol) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = masq_expectation(ctx.a(), &proto.to_string().to_uppercase());
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let (reply, tag) = match proto {
        Protocol::Tcp => {
            let tag = ctx.tag("tcp");
            let dest = SocketAddr::new(internet, probes::TCP_PORT);
            (
                probes::tcp_echo(&ctx.topo.client, dest, &tag, EXCHANGE_TIMEOUT),
                tag,
            )
        }
        Protocol::Udp => {
            let tag = ctx.tag("udp");
            let dest = SocketAddr::new(internet, probes::UDP_PORT);
            (
                probes::udp_echo(&ctx.topo.client, dest, &tag, EXCHANGE_TIMEOUT),
                tag,
            )
        }
        Protocol::Icmp => {
            let id = rand::random::<u16>();
            let icmp = ctx.topo.client_icmp(ctx.family)?;
            let deadline = Instant::now() + EXCHANGE_TIMEOUT;
            let mut seq = 0u16;
            let mut got = None;
            while got.is_none() && Instant::now() < deadline {
                seq += 1;
                icmp.send_echo(internet, id, seq)?;
                got = icmp.await_echo_reply(
                    id,
                    seq,
                    (Instant::now() + Duration::from_millis(500)).min(deadline),
                );
            }
            let reply = match got {
                Some(_) => Ok(()),
                None => Err(anyhow::anyhow!("no echo reply within {EXCHANGE_TIMEOUT:?}")),
            };
            (reply, probes::echo_tag(id, seq))
        }
    };
    let seen = seen_source(ctx, &tag)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        masqueraded && reply.is_ok(),
        expected,
        format!("{}; {reply_text}", describe_seen(ctx.a(), &seen)),
    ))
}

fn transfer(ctx: &mut Context, bytes: u64) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "{} over TCP reaches {internet} from {relay_wan} with the same SHA-256 at both ends",
        human_bytes(bytes)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("transfer");
    let dest = SocketAddr::new(internet, probes::TCP_PORT);
    let start = Instant::now();
    let result = probes::tcp_transfer(
        &ctx.topo.client,
        dest,
        &tag,
        bytes,
        EXCHANGE_TIMEOUT,
        TRANSFER_TIMEOUT,
    );
    let secs = start.elapsed().as_secs_f64();
    let seen = seen_source(ctx, &tag)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
    Ok(match result {
        Err(e) => Verdict::judge(
            false,
            expected,
            format!("{}; transfer failed: {e:#}", describe_seen(ctx.a(), &seen)),
        ),
        Ok((ours, theirs)) => Verdict::judge(
            masqueraded && ours == theirs,
            expected,
            format!(
                "{}; sent sha256 {ours}, received sha256 {theirs} ({:.1} MiB/s)",
                describe_seen(ctx.a(), &seen),
                bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-6)
            ),
        ),
    })
}

fn conntrack_masquerade(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        tunnel_client,
        ..
    } = *ctx.a();
    let expected = format!(
        "a conntrack entry {tunnel_client} -> {} whose reply goes to {relay_wan}",
        at(internet, probes::UDP_PORT)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("ct");
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    if let Err(e) = probes::udp_echo(&ctx.topo.client, dest, &tag, EXCHANGE_TIMEOUT) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the UDP flow did not work: {e:#}"),
        ));
    }
    let table = ctx.conntrack_text()?;
    let entries: Vec<_> = conntrack::parse(&table)
        .into_iter()
        .filter(|e| {
            e.protocol == "udp"
                && e.original.src == tunnel_client
                && e.original.dst == internet
                && e.original.dport == Some(probes::UDP_PORT)
        })
        .collect();
    if entries.is_empty() {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "no conntrack entry for {tunnel_client} -> {}",
                at(internet, probes::UDP_PORT)
            ),
        ));
    }
    let good = entries
        .iter()
        .find(|e| e.reply.dst == relay_wan && e.reply.src == internet);
    Ok(match good {
        Some(e) => Verdict::judge(true, expected, e.line.clone()),
        None => Verdict::judge(false, expected, entries[0].line.clone()),
    })
}

/// Behaviour 17: the kernel log holds no sign of trouble, and conntrack in
/// every namespace of the scenario lost nothing (its statistics count no
/// failed insert, no drop, no early drop). The namespaces are the run's
/// own, so the counters cover exactly this scenario with this backend.
fn kernel_health(ctx: &mut Context) -> Result<Verdict> {
    let more = ctx.kmsg.drain();
    ctx.dmesg.extend(more);
    let bad: Vec<&String> = ctx
        .dmesg
        .iter()
        .filter(|l| crate::kernel_log::is_unhealthy(l))
        .collect();
    let mut observed = if bad.is_empty() {
        format!(
            "{} kernel log lines during the scenario, none alarming",
            ctx.dmesg.len()
        )
    } else {
        bad.iter()
            .take(10)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut on_purpose: BTreeMap<String, u64> = BTreeMap::new();
    let mut losses = Vec::new();
    for ns in &ctx.topo.namespaces {
        let counters = conntrack_counters(ns)?;
        for name in crate::conntrack::TROUBLE_COUNTERS {
            let n = counters.get(name).copied().unwrap_or(0);
            let allowed = ctx
                .deliberate_losses
                .as_ref()
                .and_then(|d| d.get(&(ns.name.clone(), name.to_string())))
                .copied()
                .unwrap_or(0);
            *totals.entry(name.to_string()).or_insert(0) += n;
            *on_purpose.entry(name.to_string()).or_insert(0) += allowed;
            if n > allowed {
                losses.push(format!("{name} {} unexplained in {}", n - allowed, ns.name));
            }
        }
    }
    let list = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    observed.push_str(&format!(
        "; conntrack statistics of {} namespaces: {}",
        ctx.topo.namespaces.len(),
        list(&totals)
    ));
    if ctx.deliberate_losses.is_some() {
        observed.push_str(&format!(
            " (caused on purpose by port-exhaustion: {})",
            list(&on_purpose)
        ));
    }
    if !losses.is_empty() {
        observed.push_str(&format!("; {}", losses.join("; ")));
    }
    Ok(Verdict::judge(
        bad.is_empty() && losses.is_empty(),
        "no WARN, BUG, oops, lockup or RCU stall in the kernel log; conntrack counts no failed insert, drop or early drop",
        observed,
    ))
}

/// `conntrack -S` in `ns`, summed over CPUs.
fn conntrack_counters(ns: &crate::agent::netns::Netns) -> Result<BTreeMap<String, u64>> {
    let stats = crate::nat::Invocation {
        program: "/usr/sbin/conntrack",
        args: vec!["-S"],
    };
    let text = run_in(ns, &stats, None)
        .with_context(|| format!("reading conntrack statistics in {}", ns.name))?;
    Ok(crate::conntrack::parse_stats(&text))
}

fn flush_conntrack(ctx: &Context) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let inv = crate::nat::Invocation {
            program: "/usr/sbin/conntrack",
            args: vec!["-F", "-f", family],
        };
        run_in(&ctx.topo.relay, &inv, None).context("flushing the relay's conntrack table")?;
    }
    Ok(())
}

/// A UDP port nothing listens on at the internet host.
pub const CLOSED_PORT: u16 = 9;

/// A UDP datagram through tunnel and NAT to a closed port beyond the relay:
/// the internet host's ICMP port unreachable goes to the relay's public
/// address, and conntrack must translate it back (outer and embedded headers)
/// so the client sees its own address and port in it.
fn icmp_error(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        internet,
        tunnel_client,
        ..
    } = *ctx.a();
    let expected = format!(
        "the ICMP port unreachable {internet} sends for udp/{CLOSED_PORT} reaches the client with the embedded source translated back to {}:SPORT",
        host(tunnel_client)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let topo = &ctx.topo;
    let icmp_sock = topo.client_icmp(ctx.family)?;
    let socket = topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let sport = socket.local_addr()?.port();
    icmp_sock.drain();
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut other: Option<IcmpPacket> = None;
    while start.elapsed() < EXCHANGE_TIMEOUT {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            socket
                .send_to(b"natvet-icmp-error", (internet, CLOSED_PORT))
                .context("sending to the closed port")?;
            last_send = Some(Instant::now());
        }
        let Some(icmp) = icmp_sock.recv() else {
            continue;
        };
        if !icmp.is_unreachable() || icmp.inner_dport != Some(CLOSED_PORT) {
            continue;
        }
        let translated = icmp.inner_src == Some(tunnel_client) && icmp.inner_sport == Some(sport);
        let observed = format!(
            "after {} ms the client got ICMP unreachable (code {}) from {}, embedded source {}",
            start.elapsed().as_millis(),
            icmp.code,
            icmp.source,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(a), Some(p)) => at(a, p).to_string(),
                _ => "unreadable".into(),
            },
        );
        if translated && icmp.source == internet && icmp.is_port_unreachable() {
            return Ok(Verdict::judge(true, expected, observed));
        }
        other = Some(icmp);
    }
    let observed = match other {
        Some(icmp) => format!(
            "only an untranslated or unexpected ICMP error arrived: from {}, code {}, embedded source {}",
            icmp.source,
            icmp.code,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(a), Some(p)) => at(a, p).to_string(),
                _ => "unreadable".into(),
            }
        ),
        None => format!(
            "no ICMP error reached the client within {:.0} s (client port {sport})",
            EXCHANGE_TIMEOUT.as_secs_f32()
        ),
    };
    Ok(Verdict::judge(false, expected, observed))
}

/// Flush the relay's conntrack table while a UDP flow is in use: the next
/// datagram of that flow, and a new flow, are translated again and answered.
fn conntrack_flush(ctx: &mut Context) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "after `conntrack -F` on the relay, the same UDP socket and a new one still reach {internet} from {relay_wan} and get replies"
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let any = ctx.any();
    let socket = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let before = ctx.tag("flush-before");
    if let Err(e) = probes::udp_echo_on(&socket, dest, &before, EXCHANGE_TIMEOUT) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the flow did not work even before the flush: {e:#}"),
        ));
    }
    flush_conntrack(ctx)?;
    let mut parts = Vec::new();
    let mut ok = true;
    let fresh = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    for (what, sock) in [("the same socket", &socket), ("a new socket", &fresh)] {
        let tag = ctx.tag("flush-after");
        let reply = probes::udp_echo_on(sock, dest, &tag, EXCHANGE_TIMEOUT);
        let seen = seen_source(ctx, &tag)?;
        let masqueraded = seen.as_ref().map(|s| s.source) == Some(relay_wan);
        ok &= masqueraded && reply.is_ok();
        parts.push(format!(
            "{what}: {}; {}",
            describe_seen(ctx.a(), &seen),
            match reply {
                Ok(()) => "the reply returned".to_string(),
                Err(e) => format!("no reply ({e:#})"),
            }
        ));
    }
    Ok(Verdict::judge(ok, expected, parts.join("; ")))
}

/// A UDP flow of the client: its tag and its socket.
type Flow = (String, UdpSocket);

/// Open `n` UDP sockets on the client and send one tagged datagram from each
/// to the internet host's echo server, resending the unanswered ones each
/// second until all are answered or `timeout`; with `enough`, also until
/// that many are answered and one more resend round found no other.
/// Returns the sockets and which were answered.
fn udp_flows(
    ctx: &mut Context,
    n: u32,
    timeout: Duration,
    enough: Option<usize>,
) -> Result<(Vec<Flow>, Vec<bool>)> {
    let Addrs { internet, .. } = *ctx.a();
    let any = ctx.any();
    let tags: Vec<String> = (0..n).map(|_| ctx.tag("flow")).collect();
    let sockets = ctx.topo.client.run(|| {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let flows: Vec<Flow> = tags.into_iter().zip(sockets).collect();
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let mut answered = vec![false; flows.len()];
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 256];
    let mut enough_at: Option<Instant> = None;
    while start.elapsed() < timeout && answered.iter().any(|a| !a) {
        if let Some(k) = enough {
            if answered.iter().filter(|a| **a).count() >= k {
                let at = *enough_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= Duration::from_millis(1100) {
                    break;
                }
            }
        }
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            for ((tag, s), done) in flows.iter().zip(&answered) {
                if !done {
                    // A full socket buffer just means this one waits for the next round.
                    let _ = s.send_to(tag.as_bytes(), dest);
                }
            }
            last_send = Some(Instant::now());
        }
        let mut progress = false;
        for ((tag, s), done) in flows.iter().zip(answered.iter_mut()) {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == tag.as_bytes() {
                    *done = true;
                    progress = true;
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok((flows, answered))
}

/// The translated source the internet host saw for each tag.
fn translated_sources(ctx: &Context, tags: &[&str]) -> Result<Vec<Option<probes::Seen>>> {
    let host = ctx.topo.internet_host()?;
    Ok(tags.iter().map(|t| host.seen(t)).collect())
}

/// Many concurrent UDP flows through the tunnel and the masquerade: every one
/// answered, every one from the relay's address, each on a port of its own.
fn many_flows(ctx: &mut Context, n: u32) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    let expected = format!(
        "{n} concurrent UDP flows reach {internet} from {relay_wan} on {n} distinct ports, and every reply returns"
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let (flows, answered) = udp_flows(ctx, n, EXCHANGE_TIMEOUT, None)?;
    let tags: Vec<&str> = flows.iter().map(|(t, _)| t.as_str()).collect();
    let seen = translated_sources(ctx, &tags)?;
    let replies = answered.iter().filter(|a| **a).count();
    let from_relay = seen
        .iter()
        .flatten()
        .filter(|s| s.source == relay_wan)
        .count();
    let ports: BTreeSet<u16> = seen
        .iter()
        .flatten()
        .filter_map(|s| s.source_port)
        .collect();
    let ok = replies == flows.len() && from_relay == flows.len() && ports.len() == flows.len();
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{replies} of {} flows answered; {from_relay} arrived from {relay_wan}, on {} distinct ports",
            flows.len(),
            ports.len()
        ),
    ))
}

/// Fill `relay.masquerade_ports` with flows to one destination, plus
/// `beyond` more: exactly as many flows as the range holds get a port inside
/// it and replies; the rest are dropped (no port is left for their tuple);
/// the flows that got a port still work afterwards; nothing hangs. The
/// relay's conntrack table is flushed at the end, so the filled range does
/// not spill into later checks.
fn port_exhaustion(ctx: &mut Context, beyond: u32, range: Option<PortRange>) -> Result<Verdict> {
    let Addrs {
        relay_wan,
        internet,
        ..
    } = *ctx.a();
    // Default: the range the relay's masquerade rule uses.
    let rule_range = ctx.rules.masquerade.iter().find_map(|m| m.ports);
    let Some(range) = range.or(rule_range) else {
        return Ok(Verdict::unsupported(
            "a masquerade port range to exhaust",
            "the scenario sets no relay.masquerade_ports",
        ));
    };
    let size = u32::from(range.last - range.first) + 1;
    let total = size + beyond;
    let expected = format!(
        "of {total} UDP flows to {}, exactly {size} get a port in {range} and replies, the other {beyond} are dropped, and the first {size} still work afterwards",
        at(internet, probes::UDP_PORT)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    // Start from an empty range: earlier checks' flows may still hold ports.
    flush_conntrack(ctx)?;
    // Flows in the range, then the ones that cannot fit: wait until the
    // range's worth is answered (milliseconds, more on a busy guest), then
    // one more resend round for any that should not be. The packets of the
    // flows that find no port are dropped by conntrack on purpose:
    // kernel-health is told how many.
    let relay = ctx.topo.relay.clone();
    let before = conntrack_counters(&relay)?;
    let (flows, answered) = udp_flows(ctx, total, EXCHANGE_TIMEOUT, Some(size as usize))?;
    let after = conntrack_counters(&relay)?;
    let deliberate = ctx.deliberate_losses.get_or_insert_with(BTreeMap::new);
    for name in crate::conntrack::TROUBLE_COUNTERS {
        let caused = after
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(name).copied().unwrap_or(0));
        *deliberate
            .entry((relay.name.clone(), name.to_string()))
            .or_insert(0) += caused;
    }
    let tags: Vec<&str> = flows.iter().map(|(t, _)| t.as_str()).collect();
    let seen = translated_sources(ctx, &tags)?;
    let replies = answered.iter().filter(|a| **a).count() as u32;
    let in_range: BTreeSet<u16> = seen
        .iter()
        .flatten()
        .filter(|s| s.source == relay_wan)
        .filter_map(|s| s.source_port)
        .filter(|p| range.contains(*p))
        .collect();
    let outside = seen
        .iter()
        .flatten()
        .filter(|s| s.source_port.is_some_and(|p| !range.contains(p)))
        .count();
    // The flows that got a port keep it.
    let dest = SocketAddr::new(internet, probes::UDP_PORT);
    let mut still = 0;
    for ((_, s), got) in flows.iter().zip(&answered) {
        if *got {
            let tag = ctx.tag("again");
            s.set_nonblocking(false)?;
            if probes::udp_echo_on(s, dest, &tag, Duration::from_secs(3)).is_ok() {
                still += 1;
            }
        }
    }
    flush_conntrack(ctx)?;
    let ok = replies == size && in_range.len() as u32 == size && outside == 0 && still == size;
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{replies} of {total} flows answered, on {} distinct ports in {range}, {outside} outside it; {still} of the answered flows still worked afterwards",
            in_range.len()
        ),
    ))
}

/// Apply `rules` with the scenario's backend, in the relay's namespace.
fn apply_rules(ctx: &Context, rules: &crate::nat::NatRules) -> Result<()> {
    for (inv, script) in ctx.backend.scripts(rules) {
        run_in(&ctx.topo.relay, &inv, Some(&script))
            .with_context(|| format!("re-applying the ruleset with {inv}"))?;
    }
    Ok(())
}

/// What the traffic thread of `reload_under_traffic` counted.
struct TrafficCount {
    new_sent: usize,
    /// New flows answered while the traffic ran (and a grace period after).
    new_answered: usize,
    /// New flows answered only when their datagram was sent again on the
    /// same socket (same flow, same conntrack entry) after the reloads.
    new_recovered: usize,
    est_sent: usize,
    est_answered: usize,
    /// The established flow still answers after the reloads.
    est_alive: bool,
}

/// Re-apply the relay's ruleset `reloads` times while traffic flows: a TCP
/// transfer and an established UDP flow must go on untouched, every new UDP
/// flow started meanwhile must be masqueraded and answered, and no packet
/// from the tunnel's network may reach the internet's link untranslated.
/// With `atomic` false, each reload first loads an empty ruleset and waits
/// 100 ms, the gap a careless deploy script leaves (a negative control).
fn reload_under_traffic(ctx: &mut Context, reloads: u32, atomic: bool) -> Result<Verdict> {
    const NEW_FLOW_EVERY: Duration = Duration::from_millis(10);
    const NEW_FLOWS: usize = 600;
    let a = *ctx.a();
    let how = if atomic {
        "atomically"
    } else {
        "non-atomically (emptied for 100 ms, then re-applied)"
    };
    let expected = format!(
        "while the ruleset is re-applied {reloads} times {how}, a 2 MiB TCP transfer and an established UDP flow go on, every new UDP flow reaches {} from {} and is answered, and no packet from {} reaches the internet's link",
        a.internet, a.relay_wan, a.tunnel_net
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let udp_dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let (established, pool) = ctx.topo.client.run(|| {
        let bind = || -> Result<UdpSocket> {
            let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let pool = (0..NEW_FLOWS).map(|_| bind()).collect::<Result<Vec<_>>>()?;
        Ok((bind()?, pool))
    })?;
    established.set_nonblocking(false)?;
    let first = ctx.tag("established");
    if let Err(e) = probes::udp_echo_on(&established, udp_dest, &first, EXCHANGE_TIMEOUT) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the UDP flow did not work before any reload: {e:#}"),
        ));
    }
    established.set_nonblocking(true)?;
    let new_tags: Vec<String> = (0..NEW_FLOWS).map(|_| ctx.tag("new-flow")).collect();
    let est_tags: Vec<String> = (0..NEW_FLOWS).map(|_| ctx.tag("est")).collect();
    let (peer_ns, peer_if) = ctx.topo.wan_peer()?;
    let watch = LeakWatch::start(peer_ns, &peer_if, a.tunnel_net)?;

    let client = ctx.topo.client.clone();
    let transfer_tag = ctx.tag("reload-transfer");
    let tcp_dest = SocketAddr::new(a.internet, probes::TCP_PORT);
    let transfer = std::thread::spawn(move || {
        probes::tcp_transfer(
            &client,
            tcp_dest,
            &transfer_tag,
            2 << 20,
            EXCHANGE_TIMEOUT,
            TRANSFER_TIMEOUT,
        )
    });

    // Traffic: a new flow every 10 ms, the established flow every 20 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let new_tags = new_tags.clone();
        std::thread::spawn(move || {
            let (mut new_sent, mut est_sent) = (0usize, 0usize);
            let mut est_answered = 0;
            let mut buf = [0u8; 256];
            // Read the established flow's replies as they come: left to the
            // end they would overflow its receive buffer.
            let drain = |est_sent: usize, est_answered: &mut usize, buf: &mut [u8]| {
                while let Ok((n, _)) = established.recv_from(buf) {
                    if est_tags[..est_sent]
                        .iter()
                        .any(|t| t.as_bytes() == &buf[..n])
                    {
                        *est_answered += 1;
                    }
                }
            };
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && new_sent < pool.len() {
                let _ = pool[new_sent].send_to(new_tags[new_sent].as_bytes(), udp_dest);
                new_sent += 1;
                if new_sent % 2 == 0 {
                    let _ = established.send_to(est_tags[est_sent].as_bytes(), udp_dest);
                    est_sent += 1;
                }
                drain(est_sent, &mut est_answered, &mut buf);
                let next = NEW_FLOW_EVERY * (new_sent as u32);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            // Replies still in flight: wait while they keep coming (a busy
            // guest can hold them for a while), at most 3 s.
            let mut answered = vec![false; new_sent];
            let poll_new = |answered: &mut [bool], buf: &mut [u8]| {
                for ((s, tag), got) in pool.iter().zip(&new_tags).zip(answered.iter_mut()) {
                    while let Ok((n, _)) = s.recv_from(buf) {
                        *got |= &buf[..n] == tag.as_bytes();
                    }
                }
            };
            let grace = Instant::now();
            let mut last = (usize::MAX, usize::MAX);
            while grace.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(200));
                drain(est_sent, &mut est_answered, &mut buf);
                poll_new(&mut answered, &mut buf);
                let now = (est_answered, answered.iter().filter(|a| **a).count());
                if now == (est_sent, new_sent) || now == last {
                    break;
                }
                last = now;
            }
            let new_answered = answered.iter().filter(|a| **a).count();
            // A datagram lost to load is not a lost flow: send the
            // unanswered ones again on their own sockets. A flow whose
            // conntrack entry lost (or never got) its NAT binding stays
            // unanswered, and its packets show on the internet's link.
            for _ in 0..3 {
                if answered.iter().all(|a| *a) {
                    break;
                }
                for ((s, tag), got) in pool.iter().zip(&new_tags).zip(&answered) {
                    if !*got {
                        let _ = s.send_to(tag.as_bytes(), udp_dest);
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
                poll_new(&mut answered, &mut buf);
            }
            let new_recovered = answered.iter().filter(|a| **a).count() - new_answered;
            let _ = established.set_nonblocking(false);
            let est_alive = probes::udp_echo_on(
                &established,
                udp_dest,
                &est_tags[est_sent],
                EXCHANGE_TIMEOUT,
            )
            .is_ok();
            TrafficCount {
                new_sent,
                new_answered,
                new_recovered,
                est_sent,
                est_answered,
                est_alive,
            }
        })
    };

    let rules = ctx.rules.clone();
    let empty = rules.emptied();
    let mut reload_error = None;
    let reload_start = Instant::now();
    for _ in 0..reloads {
        let step = if atomic {
            apply_rules(ctx, &rules)
        } else {
            apply_rules(ctx, &empty).and_then(|()| {
                std::thread::sleep(Duration::from_millis(100));
                apply_rules(ctx, &rules)
            })
        };
        if let Err(e) = step {
            reload_error = Some(e);
            break;
        }
    }
    let reload_ms = reload_start.elapsed().as_millis();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))?;
    let transfer = transfer
        .join()
        .map_err(|_| anyhow::anyhow!("the transfer thread panicked"))?;
    let leaks = watch.finish();
    if let Some(e) = reload_error {
        return Err(e);
    }
    let tags: Vec<&str> = new_tags[..t.new_sent].iter().map(String::as_str).collect();
    let masqueraded = translated_sources(ctx, &tags)?
        .iter()
        .flatten()
        .filter(|s| s.source == a.relay_wan)
        .count();
    let (transfer_ok, transfer_text) = match &transfer {
        Ok((ours, theirs)) if ours == theirs => (true, "the transfer arrived intact".to_string()),
        Ok((ours, theirs)) => (
            false,
            format!("the transfer arrived corrupted (sent {ours}, received {theirs})"),
        ),
        Err(e) => (false, format!("the transfer failed: {e:#}")),
    };
    // Flows must survive; a datagram lost on a busy guest is reported, not
    // judged (an untranslated packet always is).
    let ok = leaks.leaked == 0
        && transfer_ok
        && t.new_answered + t.new_recovered == t.new_sent
        && masqueraded == t.new_sent
        && t.est_alive;
    Ok(Verdict::judge(
        ok,
        expected,
        format!(
            "{reloads} reloads in {reload_ms} ms; {transfer_text}; established flow: {} of {} answered during the reloads, {} after them; new flows: {} of {} answered, {} more when sent again, {masqueraded} arrived from {}; {} of {} packets on the internet's link came from {}{}",
            t.est_answered,
            t.est_sent,
            if t.est_alive { "answering" } else { "silent" },
            t.new_answered,
            t.new_sent,
            t.new_recovered,
            a.relay_wan,
            leaks.leaked,
            leaks.packets,
            a.tunnel_net,
            leaks
                .first
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        ),
    ))
}

/// A UDP flow through tunnel and masquerade, a few exchanges long, must end
/// up in the relay's flowtable: conntrack marks offloaded entries [OFFLOAD]
/// (or [HW_OFFLOAD]). Without a flowtable in the scenario the check still
/// runs, and fails: that is its negative control.
fn flowtable_offload(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let expected = format!(
        "a UDP flow from the client to {} is offloaded to the relay's flowtable (its conntrack entry says [OFFLOAD]) and reaches the internet host from {}",
        at(a.internet, probes::UDP_PORT),
        a.relay_wan
    );
    if let Some(Err((status, why))) = &ctx.flowtable {
        return Ok(Verdict {
            status: *status,
            expected,
            observed: why.clone(),
        });
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let socket = ctx
        .topo
        .client
        .run(|| UdpSocket::bind(any).context("binding a UDP socket on the client"))?;
    let sport = socket.local_addr()?.port();
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    // The first exchange makes the flow established; the next packets are
    // the ones the forward hook offloads.
    let mut tags = Vec::new();
    for _ in 0..5 {
        let tag = ctx.tag("offload");
        if let Err(e) = probes::udp_echo_on(&socket, dest, &tag, EXCHANGE_TIMEOUT) {
            return Ok(Verdict::judge(
                false,
                expected,
                format!("the UDP flow did not work: {e:#}"),
            ));
        }
        tags.push(tag);
    }
    let last = tags.last().map(String::as_str).unwrap_or_default();
    let seen = seen_source(ctx, last)?;
    let table = ctx.conntrack_text()?;
    let entry = table.lines().find(|l| {
        l.contains(&format!("sport={sport} "))
            && l.contains(&format!("dst={}", a.internet))
            && l.starts_with("udp")
    });
    let offloaded = entry.is_some_and(|l| l.contains("OFFLOAD]"));
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let observed = format!(
        "{}; conntrack: {}",
        describe_seen(ctx.a(), &seen),
        entry.unwrap_or("no entry for the flow")
    );
    Ok(Verdict::judge(offloaded && masqueraded, expected, observed))
}

/// A datagram that fills the tunnel's MTU, with DF set, from the client to
/// the internet host's echo server. Without `icmp_mtu` it must arrive intact
/// from the relay's address and its full-size reply must come back; with it,
/// the relay (whose wan link is smaller) must answer with ICMP
/// "fragmentation needed" (IPv4) or "packet too big" (IPv6) carrying that MTU.
fn tunnel_mtu(ctx: &mut Context, icmp_mtu: Option<u32>) -> Result<Verdict> {
    let a = *ctx.a();
    let header = if a.family == Family::Ipv6 {
        40 + 8
    } else {
        20 + 8
    };
    let size = ctx.topo.tunnel_mtu() as usize - header;
    let expected = match icmp_mtu {
        None => format!(
            "a {} byte packet (the tunnel's MTU, DF) reaches {} intact from {} and its reply returns",
            ctx.topo.tunnel_mtu(),
            at(a.internet, probes::UDP_PORT),
            a.relay_wan
        ),
        Some(m) => format!(
            "a {} byte packet (DF) through the tunnel draws an ICMP {} with MTU {m} (from the relay or a router beyond it), whose embedded header is the client's own packet ({} as source)",
            ctx.topo.tunnel_mtu(),
            if a.family == Family::Ipv6 {
                "packet too big"
            } else {
                "fragmentation needed"
            },
            a.tunnel_client
        ),
    };
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let any = ctx.any();
    let family = ctx.family;
    let socket = ctx.topo.client.run(|| {
        let s = UdpSocket::bind(any).context("binding a UDP socket on the client")?;
        set_dont_fragment(&s, family)?;
        Ok(s)
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let own_port = socket.local_addr()?.port();
    let tag = ctx.tag("mtu");
    let mut payload = tag.clone().into_bytes();
    payload.resize(size, b'.');
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let icmp_sock = ctx.topo.client_icmp(family)?;
    icmp_sock.drain();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut reply: Option<usize> = None;
    let mut too_big: Option<IcmpPacket> = None;
    let mut send_error: Option<String> = None;
    while start.elapsed() < EXCHANGE_TIMEOUT && reply.is_none() && too_big.is_none() {
        if let Err(e) = socket.send_to(&payload, dest) {
            // EMSGSIZE: the kernel already learned a smaller path MTU.
            send_error = Some(e.to_string());
        }
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if buf[..n] == payload[..] {
                reply = Some(n);
            }
        }
        while let Some(icmp) = icmp_sock.recv() {
            if icmp.is_too_big() {
                too_big = Some(icmp);
            }
        }
    }
    // The echo server files a datagram under its whole text, padding
    // included. After an ICMP error nothing reached it: no need to wait.
    let seen = if too_big.is_some() && reply.is_none() {
        ctx.topo
            .internet_host()?
            .seen(&String::from_utf8_lossy(&payload))
    } else {
        seen_source(ctx, &String::from_utf8_lossy(&payload))?
    };
    let observed = match (&reply, &too_big) {
        (Some(n), _) => format!(
            "{}; the {n} byte reply returned",
            describe_seen(ctx.a(), &seen)
        ),
        (None, Some(icmp)) => format!(
            "{} answered ICMP type {} code {} with MTU {}, about a packet from {}",
            icmp.source,
            icmp.icmp_type,
            icmp.code,
            icmp.mtu,
            match (icmp.inner_src, icmp.inner_sport) {
                (Some(ip), Some(p)) => at(ip, p).to_string(),
                (Some(ip), None) => ip.to_string(),
                _ => "an unreadable header".into(),
            }
        ),
        (None, None) => format!(
            "{}; no reply and no ICMP error within {} s{}",
            describe_seen(ctx.a(), &seen),
            EXCHANGE_TIMEOUT.as_secs(),
            send_error
                .map(|e| format!(" (send: {e})"))
                .unwrap_or_default()
        ),
    };
    let ok = match icmp_mtu {
        None => reply.is_some() && seen.as_ref().map(|s| s.source) == Some(a.relay_wan),
        Some(m) => too_big.as_ref().is_some_and(|i| {
            i.mtu == m && i.inner_src == Some(a.tunnel_client) && i.inner_sport == Some(own_port)
        }),
    };
    Ok(Verdict::judge(ok, expected, observed))
}

/// Set DF (path MTU discovery "do") on a UDP socket.
fn set_dont_fragment(s: &UdpSocket, family: Family) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = match family {
        Family::Ipv4 => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        Family::Ipv6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
    };
    // SAFETY: setsockopt on a socket we own, with an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting DF on the socket");
    }
    Ok(())
}

/// The relay sends a tagged datagram to `dest` through the tunnel every
/// 300 ms until `sock` on the client receives it or `wait` passes: the
/// time it took, if it arrived.
fn relay_to_client(
    ctx: &mut Context,
    sock: &UdpSocket,
    wait: Duration,
) -> Result<Option<Duration>> {
    let a = *ctx.a();
    let dest = sock
        .local_addr()
        .context("reading the client socket's address")?;
    let tag = ctx.tag("to-client");
    let relay_sock = ctx.topo.relay.run(|| {
        UdpSocket::bind((a.tunnel_relay, 0)).context("binding a UDP socket on the relay")
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 256];
    while start.elapsed() < wait {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
            relay_sock
                .send_to(tag.as_bytes(), dest)
                .context("sending from the relay into the tunnel")?;
            last_send = Some(Instant::now());
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if &buf[..n] == tag.as_bytes() {
                return Ok(Some(start.elapsed()));
            }
        }
    }
    Ok(None)
}

/// What the relay knows of its peer, for an observation.
fn relay_view(ctx: &Context) -> String {
    let Ok((_, relay_wg)) = ctx.topo.wg() else {
        return String::new();
    };
    match relay_wg.peer_state() {
        Ok(Some(p)) => {
            let endpoint = p
                .endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none".into());
            let handshake = p
                .last_handshake
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!("{:.1} s ago", d.as_secs_f32()))
                .unwrap_or_else(|| "never".into());
            format!("; the relay's peer endpoint is {endpoint}, last handshake {handshake}")
        }
        Ok(None) => "; the relay has no peer".into(),
        Err(e) => format!("; the relay's peer could not be read: {e:#}"),
    }
}

/// Behaviour 11, keepalive: the client goes quiet for `idle` seconds, then
/// the relay sends to it through the tunnel. Only a NAT mapping kept open
/// by the client's persistent keepalives lets that through.
fn keepalive(ctx: &mut Context, idle: u32) -> Result<Verdict> {
    let a = *ctx.a();
    let (_, keepalive) = ctx.topo.client_peer();
    let every = keepalive
        .map(|k| format!(" but its keepalive every {k} s"))
        .unwrap_or_else(|| " (no keepalive configured)".into());
    let expected = format!(
        "after {idle} s in which the client sends nothing{every}, a UDP datagram from the relay to {} through the tunnel reaches the client",
        a.tunnel_client
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    // The socket exists before the quiet time, so nothing needs sending after it.
    let sock = ctx.client_tunnel_socket()?;
    // The check is about time passing: there is no event to wait for instead.
    std::thread::sleep(Duration::from_secs(u64::from(idle)));
    let arrived = relay_to_client(ctx, &sock, KEEPALIVE_WAIT)?;
    let observed = match arrived {
        Some(after) => format!(
            "after {idle} s quiet, the relay's datagram reached the client in {} ms",
            after.as_millis()
        ),
        None => format!(
            "after {idle} s quiet, nothing the relay sent reached the client within {:.1} s",
            KEEPALIVE_WAIT.as_secs_f32()
        ),
    };
    Ok(Verdict::judge(
        arrived.is_some(),
        expected,
        format!("{observed}{}", relay_view(ctx)),
    ))
}

/// Behaviour 11, roaming: `at` swaps its address of the current family for
/// the one in `to`; a NAT there (masquerade) must drop its old mappings,
/// the relay must follow the client's new endpoint, and traffic must flow
/// both ways again. The old address is put back afterwards.
fn roaming(
    ctx: &mut Context,
    at: &crate::scenario::topology::IfRef,
    to: &[IpNet],
) -> Result<Verdict> {
    let a = *ctx.a();
    let f = ctx.family;
    let old = ctx
        .topo
        .spec
        .address(at, f)
        .with_context(|| format!("{at} has no {f} address"))?;
    let new = *to
        .iter()
        .find(|n| n.family() == f)
        .with_context(|| format!("roaming names no {f} address to move {at} to"))?;
    let expected = format!(
        "after {at} moves from {} to {}, UDP from the client crosses tunnel and NAT to {} again, the relay's peer endpoint moves to {}, and the reply returns",
        old.addr, new.addr, a.internet, new.addr
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let before = ctx
        .topo
        .wg()
        .ok()
        .and_then(|(_, r)| r.peer_state().ok().flatten());
    let ns = ctx.topo.ns(&at.ns)?.clone();
    if f == Family::Ipv4 {
        // The new address comes in as a secondary of the same subnet; it must
        // survive the removal of the primary.
        ns.sysctl(
            &format!("net.ipv4.conf.{}.promote_secondaries", at.iface),
            "1",
        )?;
    }
    let swap = |from: IpNet, to: IpNet| -> Result<()> {
        netlink::add_address(&ns, &at.iface, to.addr, to.prefix)?;
        netlink::del_address(&ns, &at.iface, from.addr, from.prefix)?;
        wait_usable(&ns, to.addr)
    };
    swap(old, new).with_context(|| format!("moving {at} from {old} to {new}"))?;
    let tag = ctx.tag("roam");
    let dest = SocketAddr::new(a.internet, probes::UDP_PORT);
    let reply = probes::udp_echo(&ctx.topo.client, dest, &tag, EXCHANGE_TIMEOUT);
    let after = ctx
        .topo
        .wg()
        .ok()
        .and_then(|(_, r)| r.peer_state().ok().flatten());
    let seen = seen_source(ctx, &tag)?;
    let view = relay_view(ctx);
    swap(new, old).with_context(|| format!("moving {at} back from {new} to {old}"))?;
    let endpoint = |p: &Option<super::wireguard::PeerState>| {
        p.as_ref()
            .and_then(|p| p.endpoint)
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none".into())
    };
    let followed = after.as_ref().and_then(|p| p.endpoint).map(|e| e.ip()) == Some(new.addr);
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        reply.is_ok() && followed && masqueraded,
        expected,
        format!(
            "the relay's peer endpoint went from {} to {}; {}; {reply_text}{view}",
            endpoint(&before),
            endpoint(&after),
            describe_seen(ctx.a(), &seen)
        ),
    ))
}

/// Behaviour 2: client A (the client's address) and client B (a second
/// address on the same link) send from one source port at the same moment,
/// A to the listen port and B to the redirected `port`.
fn same_source_port(
    ctx: &mut Context,
    port: u16,
    link: &crate::scenario::topology::IfRef,
    second: &[IpNet],
) -> Result<Verdict> {
    let a = *ctx.a();
    let f = ctx.family;
    let listen = ctx.topo.listen_port;
    let b_addr = *second
        .iter()
        .find(|n| n.family() == f)
        .with_context(|| format!("same-source-port names no {f} address for the second client"))?;
    let sport = ctx.topo.fresh_client_port();
    let (to_a, to_b) = (at(a.relay_public, listen), at(a.relay_public, port));
    let expected = format!(
        "client A {} -> {to_a} and client B {} -> {to_b} both reach the relay's socket on :{listen} from distinct sources; A's reply comes from {to_a}, B's from {to_b}",
        at(a.client_public, sport),
        at(b_addr.addr, sport)
    );
    let ns = ctx.topo.ns(&link.ns)?.clone();
    netlink::add_address(&ns, &link.iface, b_addr.addr, b_addr.prefix)?;
    let result = (|| -> Result<Verdict> {
        wait_usable(&ns, b_addr.addr)?;
        let any = ctx.any();
        let relay_sock = ctx.topo.relay.run(|| {
            probes::bind_udp_again(SocketAddr::new(any.ip(), listen)).with_context(|| {
                format!("binding udp/{listen} on the relay (is something else listening there?)")
            })
        })?;
        let (sock_a, sock_b) = ns.run(|| {
            Ok((
                UdpSocket::bind((a.client_public, sport)).context("binding client A")?,
                UdpSocket::bind((b_addr.addr, sport)).context("binding client B")?,
            ))
        })?;
        // Both clients send at the same moment; each resends until its own
        // reply is back (a crossed reply leaves one of them waiting, so it
        // shows as a failure, not as a pass).
        let flows = [
            probes::Flow {
                sender: &sock_a,
                dest: to_a,
                tag: ctx.tag("client-a"),
            },
            probes::Flow {
                sender: &sock_b,
                dest: to_b,
                tag: ctx.tag("client-b"),
            },
        ];
        let seen = probes::echo_exchange(
            &flows,
            &relay_sock,
            EXCHANGE_TIMEOUT,
            Duration::from_secs(1),
            |_, _| false,
        )?;
        let (src_a, src_b) = (seen[0].source(), seen[1].source());
        let (reply_a, reply_b) = (seen[0].reply_from(), seen[1].reply_from());
        let crossed = seen.iter().any(|e| e.crossed);
        let show =
            |s: Option<SocketAddr>| s.map(|s| s.to_string()).unwrap_or_else(|| "nothing".into());
        let observed = format!(
            "the relay's socket received A from {} and B from {}; A got its reply from {}, B from {}{}{}{}",
            show(src_a),
            show(src_b),
            show(reply_a),
            show(reply_b),
            if crossed { "; a reply reached the wrong client" } else { "" },
            later_sources("A's", &seen[0]),
            later_sources("B's", &seen[1]),
        );
        let ok = src_a.is_some()
            && src_b.is_some()
            && src_a != src_b
            && seen.iter().all(|e| e.sources.len() == 1)
            && reply_a == Some(to_a)
            && reply_b == Some(to_b)
            && !crossed;
        Ok(Verdict::judge(ok, expected.clone(), observed))
    })();
    netlink::del_address(&ns, &link.iface, b_addr.addr, b_addr.prefix)
        .context("removing the second client's address")?;
    result
}

/// Behaviour 8 (the deterministic form of a NAT clash, netfilter's "port
/// shadowing" case): a client flow is masqueraded to relay_wan:P; then a
/// socket on the relay itself binds relay_wan:P and talks to the same
/// server. Their reply tuples would be the same; netfilter must give the
/// second flow another port, and each side must get only its own replies.
fn port_shadow(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "a client flow masqueraded to {}:P and a relay socket bound to {}:P, both talking to {server}: each gets its own replies, none of the other's",
        host(a.relay_wan),
        host(a.relay_wan)
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let client = ctx.client_tunnel_socket()?;
    let first = ctx.tag("shadowed");
    if let Err(e) = probes::udp_echo_on(&client, server, &first, EXCHANGE_TIMEOUT) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the client's flow did not work before the relay's socket existed: {e:#}"),
        ));
    }
    let Some(seen) = seen_source(ctx, &first)? else {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("{server} recorded nothing from the client"),
        ));
    };
    let Some(port) = seen.source_port else {
        return Ok(Verdict::judge(
            false,
            expected,
            "the server recorded no source port".to_string(),
        ));
    };
    if seen.source != a.relay_wan {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "the client's flow reached {server} from {} (not masqueraded)",
                at(seen.source, port)
            ),
        ));
    }
    let relay = ctx.topo.relay.run(|| {
        probes::bind_udp_again(SocketAddr::new(a.relay_wan, port))
            .with_context(|| format!("binding {} on the relay", at(a.relay_wan, port)))
    })?;
    let (from_relay, from_client) = (ctx.tag("shadow"), ctx.tag("shadowed-again"));
    let mut relay_got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut client_got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let has =
        |got: &[(Vec<u8>, SocketAddr)], tag: &str| got.iter().any(|(p, _)| p == tag.as_bytes());
    relay.set_nonblocking(true)?;
    client.set_nonblocking(true)?;
    let start = Instant::now();
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    // Until each side has its own reply (a crossed reply leaves one side
    // waiting, so it shows as a failure), resending every 300 ms.
    while start.elapsed() < EXCHANGE_TIMEOUT
        && !(has(&relay_got, &from_relay) && has(&client_got, &from_client))
    {
        if last_send.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
            relay
                .send_to(from_relay.as_bytes(), server)
                .context("sending from the relay")?;
            client
                .send_to(from_client.as_bytes(), server)
                .context("sending from the client")?;
            last_send = Some(Instant::now());
        }
        for (sock, got) in [(&relay, &mut relay_got), (&client, &mut client_got)] {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), from));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let relay_own = has(&relay_got, &from_relay);
    let client_own = has(&client_got, &from_client);
    let crossed = has(&relay_got, &from_client) || has(&client_got, &from_relay);
    let relay_seen = seen_source(ctx, &from_relay)?;
    let observed = format!(
        "the client's flow was masqueraded to {}; the relay's socket on that port reached {server} from {}; relay got its own replies: {}, client got its own replies: {}{}",
        at(a.relay_wan, port),
        relay_seen
            .as_ref()
            .map(|s| s.source_port.map(|p| at(s.source, p).to_string()).unwrap_or_else(|| s.source.to_string()))
            .unwrap_or_else(|| "nowhere (nothing recorded)".into()),
        if relay_own { "yes" } else { "no" },
        if client_own { "yes" } else { "no" },
        if crossed { "; a reply reached the wrong side" } else { "" }
    );
    Ok(Verdict::judge(
        relay_own && client_own && !crossed,
        expected,
        observed,
    ))
}

/// Behaviour 12, expiry: a masqueraded UDP flow goes idle; its conntrack
/// entry on the relay must go within `within` seconds, and the same socket
/// must then work again (a new entry, masqueraded).
fn conntrack_expiry(ctx: &mut Context, within: u32) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "an idle UDP flow {} -> {server}: its conntrack entry on the relay is gone within {within} s, and the same socket then reaches {server} from {} again",
        host(a.tunnel_client),
        a.relay_wan
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let sock = ctx.client_tunnel_socket()?;
    let sport = sock.local_addr()?.port();
    let tag = ctx.tag("expiry");
    if let Err(e) = probes::udp_echo_on(&sock, server, &tag, EXCHANGE_TIMEOUT) {
        return Ok(Verdict::judge(
            false,
            expected,
            format!("the flow did not work at first: {e:#}"),
        ));
    }
    let ours = |ctx: &Context| -> Result<Option<String>> {
        let table = ctx.conntrack_text()?;
        Ok(conntrack::parse(&table)
            .into_iter()
            .find(|e| {
                e.protocol == "udp"
                    && e.original.src == a.tunnel_client
                    && e.original.sport == Some(sport)
                    && e.original.dst == a.internet
            })
            .map(|e| e.line))
    };
    let Some(entry) = ours(ctx)? else {
        return Ok(Verdict::judge(
            false,
            expected,
            "the working flow had no conntrack entry on the relay".to_string(),
        ));
    };
    // Poll for the entry to go: its disappearance is the event.
    let start = Instant::now();
    let limit = Duration::from_secs(u64::from(within));
    let mut gone = None;
    while start.elapsed() < limit {
        if ours(ctx)?.is_none() {
            gone = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(after) = gone else {
        return Ok(Verdict::judge(
            false,
            expected,
            format!(
                "the entry was still there after {within} s: {}",
                ours(ctx)?.unwrap_or(entry)
            ),
        ));
    };
    let again = ctx.tag("expiry-again");
    let reply = probes::udp_echo_on(&sock, server, &again, EXCHANGE_TIMEOUT);
    let seen = seen_source(ctx, &again)?;
    let masqueraded = seen.as_ref().map(|s| s.source) == Some(a.relay_wan);
    let reply_text = reply_text(&reply);
    Ok(Verdict::judge(
        reply.is_ok() && masqueraded,
        expected,
        format!(
            "the entry was gone after {:.1} s; then {}; {reply_text}",
            after.as_secs_f32(),
            describe_seen(ctx.a(), &seen)
        ),
    ))
}

/// The UDP port the GSO check's receiver listens on in the internet namespace.
const GSO_PORT: u16 = 8082;

/// The payload of datagram `seq` of burst `burst`: its numbers, then bytes
/// that depend on both, so a corrupted, truncated or misplaced datagram shows.
fn gso_payload(burst: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&burst.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mut x = burst.wrapping_mul(2_654_435_761) ^ seq.wrapping_mul(40_503);
    while p.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        p.push((x >> 16) as u8);
    }
    p
}

/// Behaviour 14: UDP GSO bursts from the client through tunnel and masquerade.
fn udp_gso(ctx: &mut Context, segment: usize, segments: usize, bursts: u32) -> Result<Verdict> {
    use std::os::fd::AsRawFd;
    let a = *ctx.a();
    let dest = at(a.internet, GSO_PORT);
    let expected = format!(
        "{bursts} GSO sends of {segments} x {segment}-byte UDP segments from the client: all {} datagrams reach {dest} intact, from {}",
        bursts as usize * segments,
        a.relay_wan
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let receiver = ctx.topo.internet.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dest),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .context("creating the receiver")?;
        s.set_recv_buffer_size(4 << 20)
            .context("sizing the receiver's buffer")?;
        s.bind(&dest.into())
            .with_context(|| format!("binding {dest} in the internet namespace"))?;
        Ok(UdpSocket::from(s))
    })?;
    let sender = ctx.client_tunnel_socket()?;
    let gso = segment as i32;
    // SAFETY: setsockopt on a socket we own, with an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sender.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &gso as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(Verdict::unsupported(
                expected,
                format!("the kernel has no UDP GSO (UDP_SEGMENT: {e})"),
            ));
        }
        return Err(e).context("enabling UDP_SEGMENT on the client's socket");
    }
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 65536];
    let mut intact = 0usize;
    let mut damaged = 0usize;
    let mut wrong_source = 0usize;
    let mut sources = BTreeSet::new();
    let mut missing_in = Vec::new();
    let started = Instant::now();
    for burst in 0..bursts {
        let mut wanted: BTreeSet<u32> = (0..segments as u32).collect();
        let mut big = Vec::with_capacity(segment * segments);
        for seq in 0..segments as u32 {
            big.extend(gso_payload(burst, seq, segment));
        }
        // One send: the kernel cuts it into `segments` datagrams.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sends = 0;
        while !wanted.is_empty() && Instant::now() < deadline {
            // The first burst may wait for the tunnel; resend once a second.
            if sends == 0 || (burst == 0 && sends < 3 && intact == 0) {
                sender.send_to(&big, dest).context("sending a GSO buffer")?;
                sends += 1;
            }
            let wait_until = Instant::now() + Duration::from_secs(1);
            while !wanted.is_empty() && Instant::now() < wait_until {
                let Ok((n, from)) = receiver.recv_from(&mut buf) else {
                    continue;
                };
                sources.insert(from.ip());
                if from.ip() != a.relay_wan {
                    wrong_source += 1;
                }
                if n < 8 {
                    damaged += 1;
                    continue;
                }
                let b = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if b == burst && seq < segments as u32 {
                    if buf[..n] == gso_payload(b, seq, segment)[..] {
                        if wanted.remove(&seq) {
                            intact += 1;
                        }
                    } else {
                        damaged += 1;
                    }
                }
            }
        }
        if !wanted.is_empty() {
            missing_in.push(format!("burst {burst}: {} missing", wanted.len()));
        }
    }
    let total = bursts as usize * segments;
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let observed = format!(
        "{intact} of {total} datagrams arrived intact in {} ms{}{}; from {}{}",
        started.elapsed().as_millis(),
        if damaged > 0 {
            format!(", {damaged} damaged")
        } else {
            String::new()
        },
        if missing_in.is_empty() {
            String::new()
        } else {
            format!(" ({})", missing_in.join(", "))
        },
        if sources.is_empty() {
            "nowhere".to_string()
        } else {
            sources.join(", ")
        },
        if wrong_source > 0 {
            format!(" ({wrong_source} not from {})", a.relay_wan)
        } else {
            String::new()
        }
    );
    Ok(Verdict::judge(
        intact == total && damaged == 0 && wrong_source == 0,
        expected,
        observed,
    ))
}

/// Behaviour 11, rekey: a fresh session, then one UDP echo a second through
/// tunnel and NATs until the client's handshake time moves on (WireGuard
/// rekeys once its keys are REKEY_AFTER_TIME old and it sends), and a few
/// seconds more on the new keys.
fn rekey(ctx: &mut Context) -> Result<Verdict> {
    let a = *ctx.a();
    let server = at(a.internet, probes::UDP_PORT);
    let expected = format!(
        "one UDP echo a second to {server} through the tunnel: a new handshake completes {}-{} s after the first, and the echoes go on over the new keys",
        REKEY_AFTER.as_secs(),
        REKEY_WAIT.as_secs()
    );
    if let Err(why) = ctx.topo.wg() {
        return Ok(Verdict::unsupported(expected, why));
    }
    // A fresh session: its keys' age is known.
    let listen = ctx.topo.listen_port;
    let (sport, outcome) = attempt_handshake(ctx, listen, HANDSHAKE_TIMEOUT)?;
    if !matches!(outcome, HandshakeOutcome::Completed { .. }) {
        return Ok(Verdict::judge(
            false,
            expected,
            describe(ctx.a(), &outcome, sport, listen),
        ));
    }
    ctx.tunnel_up = Some(ctx.family);
    let handshake_time = |ctx: &Context| -> Result<Option<std::time::SystemTime>> {
        let (client, _) = ctx.topo.wg().map_err(anyhow::Error::msg)?;
        Ok(client.peer_state()?.and_then(|p| p.last_handshake))
    };
    let first = handshake_time(ctx)?;
    let sock = ctx.client_tunnel_socket()?;
    let start = Instant::now();
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut rekeyed: Option<Duration> = None;
    let mut after = (0u32, 0u32);
    let mut last_note = Instant::now();
    while start.elapsed() < REKEY_WAIT {
        let tick = Instant::now();
        let tag = ctx.tag("rekey");
        sent += 1;
        let ok = probes::udp_echo_on(&sock, server, &tag, Duration::from_millis(800)).is_ok();
        answered += u32::from(ok);
        if rekeyed.is_some() {
            after.0 += 1;
            after.1 += u32::from(ok);
            if after.0 >= 5 {
                break;
            }
        } else if handshake_time(ctx)? != first {
            rekeyed = Some(start.elapsed());
        }
        if last_note.elapsed() >= Duration::from_secs(30) {
            // The host counts a silent guest as hung.
            super::send(&crate::protocol::GuestMessage::Note {
                message: format!(
                    "rekey: {} s of up to {} s, {answered}/{sent} echoes answered",
                    start.elapsed().as_secs(),
                    REKEY_WAIT.as_secs()
                ),
            });
            last_note = Instant::now();
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let observed = match rekeyed {
        Some(t) => format!(
            "a new handshake completed {:.0} s after the first; {answered} of {sent} echoes answered, {} of {} on the new keys{}",
            t.as_secs_f32(),
            after.1,
            after.0,
            relay_view(ctx)
        ),
        None => format!(
            "no new handshake within {} s; {answered} of {sent} echoes answered{}",
            REKEY_WAIT.as_secs(),
            relay_view(ctx)
        ),
    };
    // A lost echo or two before the rekey is noise under TCG; every echo
    // on the new keys must be answered.
    let ok = rekeyed.is_some_and(|t| t >= REKEY_AFTER - Duration::from_secs(5))
        && after.0 >= 5
        && after.1 == after.0
        && answered + 3 >= sent;
    Ok(Verdict::judge(ok, expected, observed))
}

/// Port forwarding: the internet host reaches relay_wan:`port`; the relay's
/// dnat rule sends it through the tunnel to the client, which must see the
/// internet host's own address (no source NAT); the reply must come back
/// from relay_wan:`port`.
fn port_forward(ctx: &mut Context, proto: Protocol, port: u16) -> Result<Verdict> {
    use std::io::{Read, Write};
    let a = *ctx.a();
    let f = ctx.family;
    let rule = ctx
        .rules
        .dnat
        .iter()
        .find(|d| {
            d.protocol == proto && d.family() == f && d.ports.iter().any(|r| r.contains(port))
        })
        .cloned()
        .with_context(|| format!("no dnat rule forwards {proto} port {port} over {f}"))?;
    let target = SocketAddr::new(rule.to, rule.to_port.unwrap_or(port));
    let public = at(a.relay_wan, port);
    let expected = format!(
        "{} from {} to {public} reaches the client at {target} from {} itself, and the reply returns from {public}",
        proto.to_string().to_uppercase(),
        a.internet,
        a.internet
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let tag = ctx.tag("forwarded");
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let any = ctx.any();
    let (seen_from, reply_from, error): (Option<SocketAddr>, Option<SocketAddr>, Option<String>) =
        match proto {
            Protocol::Tcp => {
                let listener = ctx.topo.client.run(|| {
                    probes::listen_tcp_again(target)
                        .with_context(|| format!("listening on {target} on the client"))
                })?;
                listener.set_nonblocking(true)?;
                let conn = ctx.topo.internet.run(|| {
                    std::net::TcpStream::connect_timeout(&public, EXCHANGE_TIMEOUT)
                        .with_context(|| format!("connecting to {public} from the internet host"))
                });
                match conn {
                    Err(e) => (None, None, Some(format!("{e:#}"))),
                    Ok(mut stream) => {
                        let reply_from = stream.peer_addr().ok();
                        let mut accepted = None;
                        while accepted.is_none() && Instant::now() < deadline {
                            match listener.accept() {
                                Ok(x) => accepted = Some(x),
                                Err(_) => std::thread::sleep(Duration::from_millis(5)),
                            }
                        }
                        match accepted {
                            None => (None, None, Some("the client accepted nothing".into())),
                            Some((mut inside, from)) => {
                                inside.set_nonblocking(false)?;
                                inside.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                                stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                                stream.write_all(tag.as_bytes())?;
                                let mut buf = vec![0u8; tag.len()];
                                let echoed = inside
                                    .read_exact(&mut buf)
                                    .and_then(|()| inside.write_all(&buf))
                                    .and_then(|()| {
                                        let mut back = vec![0u8; tag.len()];
                                        stream.read_exact(&mut back).map(|()| back)
                                    });
                                match echoed {
                                    Ok(back) if back == tag.as_bytes() => {
                                        (Some(from), reply_from, None)
                                    }
                                    Ok(_) => {
                                        (Some(from), None, Some("the reply was garbled".into()))
                                    }
                                    Err(e) => {
                                        (Some(from), None, Some(format!("exchanging data: {e}")))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ => {
                let inside = ctx.topo.client.run(|| {
                    probes::bind_udp_again(target)
                        .with_context(|| format!("binding {target} on the client"))
                })?;
                let outside = ctx.topo.internet.run(|| {
                    UdpSocket::bind(any).context("binding a UDP socket on the internet host")
                })?;
                let flow = probes::Flow {
                    sender: &outside,
                    dest: public,
                    tag: tag.clone(),
                };
                let seen = probes::echo_exchange(
                    std::slice::from_ref(&flow),
                    &inside,
                    deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(500),
                    |_, _| false,
                )?
                .remove(0);
                let (seen, reply) = (seen.source(), seen.reply_from());
                let error = reply
                    .is_none()
                    .then(|| format!("no reply within {} s", EXCHANGE_TIMEOUT.as_secs()));
                (seen, reply, error)
            }
        };
    let show = |s: Option<SocketAddr>| s.map(|s| s.to_string()).unwrap_or_else(|| "nothing".into());
    let observed = format!(
        "the client received it from {}; the internet host's reply came from {}{}",
        show(seen_from),
        show(reply_from),
        error.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    let ok = seen_from.map(|s| s.ip()) == Some(a.internet) && reply_from == Some(public);
    Ok(Verdict::judge(ok, expected, observed))
}
