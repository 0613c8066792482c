//! What many failures have in common. A kernel that fails 60 checks rarely
//! has 60 problems: the failures share a port range, a family, a backend,
//! a kind of check. This finds those groups and says, for each, which
//! dimensions matter and which do not ("redirect and handshake checks at
//! ports >= 33433 fail in all 3 backends and both families; at ports <=
//! 4000 they pass"). Pure: a function of the results alone, written into
//! the JSON report as data and shown by every rendering.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::RunReport;
use crate::protocol::{CheckResult, Status};

/// Fewer failures than this are listed, not diagnosed.
pub const MIN_FAILURES: usize = 3;
/// Findings kept (the largest first).
const MAX_FINDINGS: usize = 6;

/// The groups the failed results fall into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Failed results in the run.
    pub failed: usize,
    /// Largest group first.
    pub findings: Vec<Finding>,
}

/// One group of failures: the kinds of check, the ports, and where they
/// fail along every other dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The finding as one sentence.
    pub summary: String,
    /// Failed results in this group.
    pub failed: usize,
    /// The kinds of check (the result's name without family and port:
    /// `redirect`, `conntrack/redirect`, `forward/tcp`).
    pub kinds: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    /// kernel, scenario, backend, family, protocol: where the group fails.
    pub dimensions: Vec<Dimension>,
}

/// The ports of a group's checks that fail and those that pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ports {
    /// The failing ports as a rule (">= 33433", "<= 4000", "53-4000",
    /// "53, 4000"), or "every port".
    pub rule: String,
    pub failing: Vec<u16>,
    /// Ports of the same checks that passed everywhere.
    pub passing: Vec<u16>,
}

/// One dimension of a group: the values its failures have, every value
/// the run had for the same checks, and whether the dimension matters (the
/// failures do not happen for every value alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub failing: Vec<String>,
    pub all: Vec<String>,
    pub matters: bool,
}

/// What a result is, along each dimension.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Facets {
    kernel: String,
    scenario: String,
    backend: String,
    family: String,
    /// The name without the family prefix (the same check in both families).
    name: String,
    kind: String,
    port: Option<u16>,
    protocol: Option<String>,
}

const DIMENSIONS: [&str; 4] = ["kernel", "scenario", "backend", "family"];

impl Facets {
    fn of(kernel: &str, r: &CheckResult) -> Facets {
        let (family, name) = match r.check.strip_prefix("ipv6/") {
            Some(rest) => ("ipv6", rest),
            None => ("ipv4", r.check.as_str()),
        };
        let (kind, port) = split_port(name);
        let protocol = name
            .split(['/', '-', ':'])
            .find(|w| matches!(*w, "tcp" | "udp" | "icmp"))
            .map(str::to_string);
        Facets {
            kernel: kernel.to_string(),
            scenario: r.scenario.clone(),
            backend: r.backend.clone(),
            family: family.to_string(),
            name: name.to_string(),
            kind,
            port,
            protocol,
        }
    }

    fn get(&self, dim: &str) -> &str {
        match dim {
            "kernel" => &self.kernel,
            "scenario" => &self.scenario,
            "backend" => &self.backend,
            _ => &self.family,
        }
    }

    /// The same result with `dim` set to `value`.
    fn with(&self, dim: &str, value: &str) -> Facets {
        let mut f = self.clone();
        let v = value.to_string();
        match dim {
            "kernel" => f.kernel = v,
            "scenario" => f.scenario = v,
            "backend" => f.backend = v,
            _ => f.family = v,
        }
        f
    }
}

/// `handshake/53` is kind `handshake` at port 53; `conntrack/redirect-4000`
/// kind `conntrack/redirect` at 4000; `forward/tcp` has no port.
fn split_port(name: &str) -> (String, Option<u16>) {
    if let Some((kind, rest)) = name.split_once('/') {
        if let Ok(p) = rest.parse::<u16>() {
            return (kind.to_string(), Some(p));
        }
        if let Some((head, tail)) = rest.rsplit_once('-') {
            if let Ok(p) = tail.parse::<u16>() {
                return (format!("{kind}/{head}"), Some(p));
            }
        }
    }
    (name.to_string(), None)
}

/// Where one kind of check fails: per dimension, the failing values, or
/// "every value" when the failures do not depend on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Signature(Vec<(String, Option<BTreeSet<String>>)>);

/// The run's failures in groups, when there are enough to group.
pub fn diagnose(report: &RunReport) -> Option<Diagnosis> {
    let mut verdicts: BTreeMap<Facets, bool> = BTreeMap::new();
    for k in &report.kernels {
        let label = k.label();
        for r in &k.results {
            // Unsupported and errored results say nothing about NAT.
            let failed = match r.status {
                Status::Fail => true,
                Status::Pass | Status::Flaky => false,
                Status::Unsupported | Status::Error => continue,
            };
            *verdicts.entry(Facets::of(&label, r)).or_insert(false) |= failed;
        }
    }
    let failed = verdicts.values().filter(|f| **f).count();
    if failed < MIN_FAILURES {
        return None;
    }
    let mut kinds: BTreeMap<&str, Vec<(&Facets, bool)>> = BTreeMap::new();
    for (f, failed) in &verdicts {
        kinds.entry(f.kind.as_str()).or_default().push((f, *failed));
    }
    // Kinds that fail the same way form one group (those with ports apart
    // from those without, so a port rule speaks of ports only).
    let mut groups: BTreeMap<(bool, Signature), Vec<&str>> = BTreeMap::new();
    for (kind, results) in &kinds {
        if results.iter().any(|(_, failed)| *failed) {
            let ported = results.iter().any(|(f, _)| f.port.is_some());
            groups
                .entry((ported, signature(results, &verdicts)))
                .or_default()
                .push(kind);
        }
    }
    let mut findings: Vec<Finding> = groups
        .into_iter()
        .map(|((_, sig), group)| finding(&sig, &group, &kinds))
        .collect();
    findings.sort_by(|a, b| b.failed.cmp(&a.failed).then(a.kinds.cmp(&b.kinds)));
    findings.truncate(MAX_FINDINGS);
    Some(Diagnosis { failed, findings })
}

fn signature(results: &[(&Facets, bool)], verdicts: &BTreeMap<Facets, bool>) -> Signature {
    let mut dims = Vec::new();
    for dim in DIMENSIONS {
        let all: BTreeSet<&str> = results.iter().map(|(f, _)| f.get(dim)).collect();
        // The dimension does not matter if each failure fails for every
        // value of it that the same check was run with.
        let regardless = results.iter().filter(|(_, failed)| *failed).all(|(f, _)| {
            all.iter()
                .all(|v| verdicts.get(&f.with(dim, v)).copied().unwrap_or(true))
        });
        let failing: BTreeSet<String> = results
            .iter()
            .filter(|(_, failed)| *failed)
            .map(|(f, _)| f.get(dim).to_string())
            .collect();
        dims.push((dim.to_string(), (!regardless).then_some(failing)));
    }
    Signature(dims)
}

fn finding(
    sig: &Signature,
    group: &[&str],
    kinds: &BTreeMap<&str, Vec<(&Facets, bool)>>,
) -> Finding {
    let results: Vec<(&Facets, bool)> = group
        .iter()
        .flat_map(|k| kinds.get(k).into_iter().flatten().copied())
        .collect();
    let failed = results.iter().filter(|(_, f)| *f).count();
    let mut dimensions = Vec::new();
    for (name, failing) in &sig.0 {
        let all: BTreeSet<String> = results
            .iter()
            .map(|(f, _)| f.get(name).to_string())
            .collect();
        let failing_values: BTreeSet<String> = results
            .iter()
            .filter(|(_, failed)| *failed)
            .map(|(f, _)| f.get(name).to_string())
            .collect();
        dimensions.push(Dimension {
            name: name.clone(),
            failing: failing
                .clone()
                .unwrap_or(failing_values)
                .into_iter()
                .collect(),
            all: all.into_iter().collect(),
            matters: failing.is_some(),
        });
    }
    // Protocols: of the checks that name one, which fail and which exist.
    let protocols = |only_failed: bool| -> BTreeSet<String> {
        results
            .iter()
            .filter(|(_, failed)| *failed || !only_failed)
            .filter_map(|(f, _)| f.protocol.clone())
            .collect()
    };
    let (failing_protocols, all_protocols) = (protocols(true), protocols(false));
    if !all_protocols.is_empty() {
        dimensions.push(Dimension {
            name: "protocol".into(),
            matters: failing_protocols != all_protocols,
            failing: failing_protocols.into_iter().collect(),
            all: all_protocols.into_iter().collect(),
        });
    }
    let ports = ports(&results);
    let kinds: Vec<String> = group.iter().map(|k| k.to_string()).collect();
    Finding {
        summary: sentence(&kinds, ports.as_ref(), &dimensions),
        failed,
        kinds,
        ports,
        dimensions,
    }
}

fn ports(results: &[(&Facets, bool)]) -> Option<Ports> {
    let failing: BTreeSet<u16> = results
        .iter()
        .filter(|(_, f)| *f)
        .filter_map(|(f, _)| f.port)
        .collect();
    if failing.is_empty() {
        return None;
    }
    let passing: BTreeSet<u16> = results
        .iter()
        .filter_map(|(f, _)| f.port)
        .filter(|p| !failing.contains(p))
        .collect();
    Some(Ports {
        rule: port_rule(&failing, &passing),
        failing: failing.into_iter().collect(),
        passing: passing.into_iter().collect(),
    })
}

/// The failing ports as the simplest rule that separates them from the
/// passing ones.
fn port_rule(failing: &BTreeSet<u16>, passing: &BTreeSet<u16>) -> String {
    let (lo, hi) = (first(failing), last(failing));
    if passing.is_empty() {
        return "every port".into();
    }
    if passing.iter().all(|p| *p < lo) {
        return format!(">= {lo}");
    }
    if passing.iter().all(|p| *p > hi) {
        return format!("<= {hi}");
    }
    // Every port but one or two (the listen port, which is not redirected).
    if passing.len() <= 2 && passing.len() * 2 < failing.len() && passing.iter().all(|p| *p > lo) {
        return format!(
            "every port but {}",
            list(&passing.iter().copied().collect::<Vec<_>>())
        );
    }
    // A threshold with a few exceptions.
    let above: Vec<u16> = passing.iter().copied().filter(|p| *p > lo).collect();
    if above.len() <= 2 && above.len() * 2 < failing.len() {
        return format!(">= {lo} (but not {})", list(&above));
    }
    if failing.len() <= 8 {
        return list(&failing.iter().copied().collect::<Vec<_>>());
    }
    format!(
        "{} of {} ports",
        failing.len(),
        failing.len() + passing.len()
    )
}

fn first(s: &BTreeSet<u16>) -> u16 {
    s.iter().next().copied().unwrap_or(0)
}

fn last(s: &BTreeSet<u16>) -> u16 {
    s.iter().next_back().copied().unwrap_or(0)
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "in all 3 backends", "in both families", "on all 5 kernels".
fn plural(dim: &str, n: usize) -> String {
    let prep = match dim {
        "kernel" => "on",
        "protocol" => "for",
        _ => "in",
    };
    match (dim, n) {
        ("family", 2) => "in both families".into(),
        ("family", _) => format!("in all {n} families"),
        (d, 2) => format!("{prep} both {d}s"),
        (d, _) => format!("{prep} all {n} {d}s"),
    }
}

/// The finding in words: what fails, where it does not matter, where it
/// does, and what passes.
fn sentence(kinds: &[String], ports: Option<&Ports>, dims: &[Dimension]) -> String {
    let what = if kinds.len() > 4 {
        format!(
            "{} kinds of check ({}, ...)",
            kinds.len(),
            kinds[..3].join(", ")
        )
    } else if kinds.len() == 1 && ports.is_none() {
        kinds[0].clone()
    } else {
        format!("{} checks", and_list(kinds))
    };
    let mut out = what;
    if let Some(p) = ports {
        if p.rule.starts_with("every port but") {
            out.push_str(&format!(" at {}", p.rule));
        } else if p.rule != "every port" {
            out.push_str(&format!(" at ports {}", p.rule));
        }
    }
    out.push_str(if kinds.len() == 1 && ports.is_none() {
        " fails"
    } else {
        " fail"
    });
    let mut regardless = Vec::new();
    let mut only = Vec::new();
    for d in dims {
        if !d.matters && d.all.len() > 1 {
            regardless.push(plural(&d.name, d.all.len()));
        } else if d.matters && d.failing.len() < d.all.len() {
            let values = and_list(&d.failing);
            only.push(match d.name.as_str() {
                "kernel" => format!("only on {values}"),
                "backend" => format!("only with {values}"),
                "family" => format!("only in {values}"),
                "protocol" => format!("only for {values}"),
                _ => format!("only in {} {values}", d.name),
            });
        } else if d.matters {
            only.push(format!("in some {} combinations", d.name));
        }
    }
    if !only.is_empty() {
        out.push(' ');
        out.push_str(&and_list(&only));
    }
    if !regardless.is_empty() {
        out.push_str(if only.is_empty() { " " } else { ", " });
        out.push_str(&and_list(&regardless));
        if !only.is_empty() {
            out.push_str(" alike");
        }
    }
    if let Some(p) = ports {
        if !p.passing.is_empty() && !p.rule.starts_with("every port") {
            let fail_lo = p.failing.first().copied().unwrap_or(0);
            let below: Vec<u16> = p.passing.iter().copied().filter(|x| *x < fail_lo).collect();
            if p.rule.starts_with(">=") && !below.is_empty() {
                out.push_str(&format!(
                    "; at ports <= {} they pass",
                    below.last().copied().unwrap_or(0)
                ));
            } else if p.rule.starts_with("<=") {
                out.push_str(&format!(
                    "; at ports >= {} they pass",
                    p.passing.first().copied().unwrap_or(0)
                ));
            } else {
                out.push_str(&format!("; at {} they pass", list(&p.passing)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{KernelRun, KernelState, Timings, SCHEMA};

    fn r(scenario: &str, backend: &str, check: &str, status: Status) -> CheckResult {
        CheckResult {
            scenario: scenario.into(),
            backend: backend.into(),
            check: check.into(),
            status,
            expected: String::new(),
            observed: String::new(),
            duration_ms: 1,
            evidence: None,
            evidence_dir: None,
            series: None,
        }
    }

    fn run(kernels: Vec<(&str, Vec<CheckResult>)>) -> RunReport {
        RunReport {
            schema: SCHEMA.into(),
            natvet_version: "t".into(),
            started_at: "now".into(),
            elapsed_ms: 1,
            kernels: kernels
                .into_iter()
                .map(|(release, results)| KernelRun {
                    spec: release.into(),
                    release: Some(release.into()),
                    id: None,
                    package: None,
                    boot: None,
                    state: KernelState::Completed,
                    results,
                    perf: vec![],
                    notes: vec![],
                    attempts: 1,
                    timings: Timings::default(),
                    console_log: None,
                })
                .collect(),
            gate: None,
            diagnosis: None,
        }
    }

    /// The redirect-high-ports bug: every redirect of a port above 32767
    /// fails, in every backend and family; the listen port itself is fine.
    fn high_ports(kernel_fails: impl Fn(&str) -> bool) -> Vec<CheckResult> {
        let mut out = Vec::new();
        for backend in ["nftables", "iptables-nft", "iptables-legacy"] {
            for family in ["", "ipv6/"] {
                for kind in ["redirect", "handshake"] {
                    for port in [51820u16, 53, 4000, 33433, 33565, 51819, 52000, 60000] {
                        let bad = port > 32767 && port != 51820 && kernel_fails(backend);
                        let status = if bad { Status::Fail } else { Status::Pass };
                        out.push(r(
                            "extended-ports",
                            backend,
                            &format!("{family}{kind}/{port}"),
                            status,
                        ));
                    }
                }
                out.push(r(
                    "extended-ports",
                    backend,
                    &format!("{family}forward/tcp"),
                    Status::Pass,
                ));
                out.push(r(
                    "extended-ports",
                    backend,
                    &format!("{family}no-redirect/33434"),
                    Status::Pass,
                ));
            }
        }
        out
    }

    #[test]
    fn a_port_range_that_fails_everywhere() {
        let d = diagnose(&run(vec![("6.12.117", high_ports(|_| true))])).unwrap();
        assert_eq!(d.failed, 60);
        assert_eq!(d.findings.len(), 1, "{d:#?}");
        let f = &d.findings[0];
        assert_eq!(f.kinds, ["handshake", "redirect"]);
        assert_eq!(
            f.summary,
            "handshake and redirect checks at ports >= 33433 (but not 51820) fail in all 3 backends and in both families; at ports <= 4000 they pass"
        );
        let backend = f.dimensions.iter().find(|d| d.name == "backend").unwrap();
        assert!(!backend.matters);
        assert_eq!(f.ports.as_ref().unwrap().passing, [53, 4000, 51820]);
    }

    #[test]
    fn one_backend_and_one_kernel_matter() {
        let d = diagnose(&run(vec![
            ("6.1.0-50", high_ports(|_| false)),
            ("6.12.117", high_ports(|b| b == "iptables-legacy")),
        ]))
        .unwrap();
        assert_eq!(d.failed, 20);
        let f = &d.findings[0];
        assert_eq!(
            f.summary,
            "handshake and redirect checks at ports >= 33433 (but not 51820) fail only on 6.12.117 and only with iptables-legacy, in both families alike; at ports <= 4000 they pass"
        );
    }

    #[test]
    fn few_failures_are_not_diagnosed() {
        let mut results = high_ports(|_| false);
        results[0].status = Status::Fail;
        assert_eq!(diagnose(&run(vec![("k", results)])), None);
    }

    #[test]
    fn names_split_into_kind_and_port() {
        assert_eq!(split_port("handshake/53"), ("handshake".into(), Some(53)));
        assert_eq!(
            split_port("conntrack/redirect-4000"),
            ("conntrack/redirect".into(), Some(4000))
        );
        assert_eq!(
            split_port("port-forward/tcp-8443"),
            ("port-forward/tcp".into(), Some(8443))
        );
        assert_eq!(split_port("forward/tcp"), ("forward/tcp".into(), None));
        assert_eq!(split_port("kernel-health"), ("kernel-health".into(), None));
    }

    #[test]
    fn port_rules() {
        let s = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
        assert_eq!(port_rule(&s(&[53, 4000]), &s(&[33433])), "<= 4000");
        assert_eq!(port_rule(&s(&[53, 4000]), &s(&[])), "every port");
        assert_eq!(port_rule(&s(&[53, 60000]), &s(&[4000])), "53, 60000");
    }
}
