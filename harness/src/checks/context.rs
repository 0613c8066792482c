//! The state one scenario run's checks share, and the wrapper that runs a
//! check: timing, kernel log, and evidence (captures, conntrack, ruleset)
//! for a check that does not pass.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use anyhow::{Context as _, Result};
use base64::Engine as _;

use super::verdict::Verdict;
use crate::agent::capture::Capture;
use crate::agent::channel::send;
use crate::agent::kmsg::Kmsg;
use crate::agent::topology::{run_in, Topology};
use crate::nat::NatBackend;
use crate::protocol::{CaptureFile, CaptureMode, CheckResult, Evidence, Status};
use crate::scenario::topology::Addrs;
use crate::types::Family;

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
    pub(super) tunnel_up: Option<Family>,
    /// The relay's NAT rules, for checks that re-apply them.
    pub rules: crate::nat::NatRules,
    /// Whether the scenario's flowtable was set up (None: it asks for none),
    /// or what to report if not.
    pub flowtable: Option<std::result::Result<(), (Status, String)>>,
    /// Conntrack losses a check caused on purpose (port-exhaustion's flows
    /// that find no port), by namespace and counter, measured around it:
    /// kernel-health does not count them against the kernel.
    pub(super) deliberate_losses: Option<BTreeMap<(String, String), u64>>,
    /// A check of this run has failed: the kernel is likely broken, so the
    /// checks that follow are captured during their first attempt.
    failed_before: bool,
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
            failed_before: false,
            nonce: u64::from(std::process::id()) << 32 | u64::from(rand::random::<u16>()),
        }
    }

    /// The addresses of the family whose checks run now.
    pub fn a(&self) -> &Addrs {
        self.topo.addrs(self.family)
    }

    /// A UDP socket on the client's tunnel address (current family), any port.
    pub fn client_tunnel_socket(&self) -> Result<UdpSocket> {
        let addr = self.a().tunnel_client;
        self.topo
            .client
            .run(|| UdpSocket::bind((addr, 0)).context("binding a UDP socket on the client"))
    }

    /// An unbound socket's address in the current family.
    pub fn any(&self) -> SocketAddr {
        match self.family {
            Family::Ipv4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            Family::Ipv6 => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        }
    }

    pub fn tag(&mut self, what: &str) -> String {
        self.nonce += 1;
        format!("{what}-{:x}", self.nonce)
    }

    /// Start capturing on every interface of the topology.
    fn start_capture(&self) -> Capture {
        let targets = self.topo.interfaces();
        Capture::start(
            &targets
                .iter()
                .map(|(n, i)| (*n, i.as_str()))
                .collect::<Vec<_>>(),
        )
    }

    /// The verdicts of a batch of `n` results: unsupported all when the
    /// kernel cannot do the family, an error for all when natvet could not
    /// run them.
    fn judge(&mut self, n: usize, f: &impl Fn(&mut Self) -> Result<Vec<Verdict>>) -> Vec<Verdict> {
        if let Some(why) = self.topo.lacks(self.family) {
            let v = Verdict::unsupported(format!("the check runs over {}", self.family), why);
            return vec![v; n];
        }
        match f(self) {
            Ok(v) if v.len() == n => v,
            Ok(v) => vec![
                Verdict::error(&anyhow::anyhow!(
                    "natvet's check judged {} results where it names {n}",
                    v.len()
                ));
                n
            ],
            Err(e) => vec![Verdict::error(&e); n],
        }
    }

    /// Run one named check and wrap its verdict in a result.
    pub fn run(
        &mut self,
        scenario: &str,
        name: &str,
        capture_first: bool,
        f: impl Fn(&mut Self) -> Result<Verdict>,
    ) -> CheckResult {
        let mut results = self.run_batch(scenario, &[name.to_string()], capture_first, |ctx| {
            Ok(vec![f(ctx)?])
        });
        results.remove(0)
    }

    /// Run the results `names` together (one call of `f` judges them all,
    /// in order) and wrap each verdict in a result.
    ///
    /// Captures cost little per packet but a lot under TCG, so by default
    /// (`--capture failures`) a check runs without them, and only a batch
    /// in which one did not pass runs once more with every interface
    /// captured; the verdicts stay the first run's, and the evidence of each
    /// that did not pass says what the re-run showed. Once a check of the
    /// run has failed, the kernel is likely broken and more failures are to
    /// come: then a batch whose packets are few (`capture_first`) is
    /// captured during its first attempt, and a failure needs no re-run.
    pub fn run_batch(
        &mut self,
        scenario: &str,
        names: &[String],
        capture_first: bool,
        f: impl Fn(&mut Self) -> Result<Vec<Verdict>>,
    ) -> Vec<CheckResult> {
        for name in names {
            send(&crate::protocol::GuestMessage::CheckStarted {
                scenario: scenario.to_string(),
                backend: self.backend.kind().to_string(),
                check: name.to_string(),
            });
        }
        let always = self.capture == CaptureMode::Always;
        let first = always
            || (self.capture == CaptureMode::Failures && capture_first && self.failed_before);
        let capture = first.then(|| self.start_capture());
        let start = Instant::now();
        let verdicts = self.judge(names.len(), &f);
        let duration_ms = start.elapsed().as_millis() as u64;
        let mut lines = self.kmsg.drain();
        self.dmesg.extend(lines.iter().cloned());
        // An unsupported check has nothing to show: the kernel lacks what it needs.
        let failed = |v: &Verdict| matches!(v.status, Status::Fail | Status::Error);
        let any_failed = verdicts.iter().any(failed);
        let mut captures = capture
            .map(|c| c.finish(always || any_failed))
            .unwrap_or_default();
        let mut again: Vec<Option<Verdict>> = vec![None; names.len()];
        let captured_first = first && !always;
        self.failed_before |= any_failed;
        if any_failed && self.capture == CaptureMode::Failures && !captured_first {
            let which: Vec<&str> = names
                .iter()
                .zip(&verdicts)
                .filter(|(_, v)| failed(v))
                .map(|(n, _)| n.as_str())
                .collect();
            // Tell the host, which counts silence as a hung check.
            send(&crate::protocol::GuestMessage::Note {
                message: format!(
                    "{scenario} [{}] {}: running it again with packet capture",
                    self.backend.kind(),
                    which.join(", ")
                ),
            });
            let c = self.start_capture();
            again = self.judge(names.len(), &f).into_iter().map(Some).collect();
            captures = c.finish(true);
            let more = self.kmsg.drain();
            self.dmesg.extend(more.iter().cloned());
            lines.extend(more);
        }
        let files: Vec<CaptureFile> = captures
            .into_iter()
            .map(|p| CaptureFile {
                namespace: p.namespace,
                interface: p.interface,
                packets: p.packets,
                not_kept: p.not_kept,
                pcap_base64: base64::engine::general_purpose::STANDARD.encode(p.bytes),
            })
            .collect();
        names
            .iter()
            .zip(verdicts)
            .zip(again)
            .map(|((name, verdict), again)| {
                let show = failed(&verdict) || always;
                let evidence = (show || self.evidence_always).then(|| {
                    let mut ev = self.evidence(lines.clone());
                    if let Some(again) = &again {
                        ev.capture_note = format!(
                            "packets captured while the check ran a second time, which gave: {} ({})",
                            again.status.label(),
                            again.observed
                        );
                    } else if captured_first {
                        ev.capture_note = "packets captured while the check ran (an earlier check of this run had failed, so natvet captured this one from the start)".to_string();
                    }
                    if show {
                        ev.captures = files.clone();
                    }
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
                    series: verdict.series,
                }
            })
            .collect()
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
    pub fn conntrack_text(&self) -> Result<String> {
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
