//! Declarative scenarios: what the relay is configured to do, and which checks
//! prove it. Parsed from TOML, validated once, before any VM boots.
//!
//! A scenario is its setup (`setup.rs`: the relay, NAT rules, `topology.rs`)
//! and its checks (`crate::checks`, one file each). The checks and the agent
//! see the setup only, so they sit below this file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bounds::{Invalid, Limit};
use crate::checks::{CheckSpec, Phase};
use crate::nat::BackendKind;
use crate::types::Family;

mod position;
pub mod setup;
pub mod topology;

use setup::{NatSpec, RelayConfig, Setup};
use topology::{Addrs, TopologySpec};

/// The scenarios that ship with natvet, embedded so the binary works anywhere.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "extended-ports",
        include_str!("../../../scenarios/extended-ports.toml"),
    ),
    (
        "port-exhaustion",
        include_str!("../../../scenarios/port-exhaustion.toml"),
    ),
    (
        "ruleset-reload",
        include_str!("../../../scenarios/ruleset-reload.toml"),
    ),
    (
        "flowtable",
        include_str!("../../../scenarios/flowtable.toml"),
    ),
    ("pmtu", include_str!("../../../scenarios/pmtu.toml")),
    (
        "behind-nat",
        include_str!("../../../scenarios/behind-nat.toml"),
    ),
    (
        "policy-routing",
        include_str!("../../../scenarios/policy-routing.toml"),
    ),
    (
        "pmtu-router",
        include_str!("../../../scenarios/pmtu-router.toml"),
    ),
    (
        "port-forward",
        include_str!("../../../scenarios/port-forward.toml"),
    ),
    ("rekey", include_str!("../../../scenarios/rekey.toml")),
    (
        "peer-churn",
        include_str!("../../../scenarios/peer-churn.toml"),
    ),
    (
        "production-scale",
        include_str!("../../../scenarios/production-scale.toml"),
    ),
    ("perf", include_str!("../../../scenarios/perf.toml")),
];

/// A scenario as the user wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name: lower-case letters, digits and '-'.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// NAT backends that configure the relay; each is a run of its own.
    #[serde(default = "default_backends")]
    pub backends: Vec<BackendKind>,
    pub relay: RelayConfig,
    /// Takes minutes: runs only when named (`--scenario NAME`), not in the
    /// default set of `vet`, `gate` and `verify`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slow: bool,
    /// Settings of the whole kernel under test, not of one namespace (the
    /// conntrack table's size, for one): the guest's agent sets them before
    /// any scenario runs. `natvet verify` never changes them on a live host:
    /// where they differ there, the scenario is unsupported.
    #[serde(default, skip_serializing_if = "KernelSettings::is_empty")]
    pub kernel: KernelSettings,
    /// The network: namespaces, links, routes, sysctls and the tunnel.
    /// Default: client ---- relay ---- internet (`natvet scenarios show`).
    #[serde(default)]
    pub topology: TopologySpec,
    /// NAT beyond the relay's own shorthand (`relay.masquerade`,
    /// `relay.redirect_udp`): in any namespace, rendered by the backend under test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat: Vec<NatSpec>,
    /// The checks, in the order they run.
    #[serde(rename = "check")]
    pub checks: Vec<CheckSpec>,
    /// Performance probes, run after the checks (figures, not verdicts:
    /// only `gate` compares them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<crate::perf::PerfSpec>,
}

/// Kernel-wide settings of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSettings {
    /// `net.*` sysctls of the initial namespace, e.g.
    /// "net.netfilter.nf_conntrack_max" = 262144.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, topology::SysctlValue>,
}

impl KernelSettings {
    pub fn is_empty(&self) -> bool {
        self.sysctls.is_empty()
    }
}

fn default_backends() -> Vec<BackendKind> {
    vec![BackendKind::Nftables]
}

/// A scenario that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("no scenario named '{name}'; shipped scenarios: {known}. Pass a path to a .toml file for your own")]
    UnknownName { name: String, known: String },
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario {origin} is not valid TOML for natvet: {message}")]
    Parse { origin: String, message: String },
    #[error("scenario {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Limits on a scenario's own values, each with why (beside the relay's,
/// `setup::LIMITS`, the topology's, `topology::LIMITS`, and each check's
/// own, in its `Info::limits`).
pub const LIMITS: &[Limit] = &[RESULTS, KERNEL_SYSCTLS, RULESET_FILES, RULESET_BYTES];

const RESULTS: Limit = Limit::new(
    "check",
    1,
    256,
    "a run's results come one after another, each waiting up to its check's timeout (10-12 s for most) when the kernel fails it: 256 fill about 45 minutes, four times the 10 min default --timeout; split a larger scenario into several",
)
.on("the number of results (of every check, in every family)");
const KERNEL_SYSCTLS: Limit = Limit::new(
    "sysctls",
    0,
    64,
    "each is a write to /proc/sys of the whole guest kernel before any run starts, and net.* holds no more settings worth changing",
)
.on("the number of kernel.sysctls");

const RULESET_FILES: Limit = Limit::new(
    "files",
    1,
    2,
    "a relay's ruleset is one nft script, or one iptables-restore text per family",
)
.on("the number of relay.ruleset files");
const RULESET_BYTES: Limit = Limit::new(
    "text",
    1,
    crate::relay::bundle::MAX_FILE,
    "the guest's loader reads the whole file at once, and production rulesets are a few hundred kilobytes",
)
.on("the size in bytes of a relay.ruleset file");

/// Every limit natvet puts on a scenario's values: the scenario's, the
/// relay's and NAT rules', the topology's and each check's (for
/// `natvet explain` and the parameter table of docs/checks.md).
pub fn all_limits() -> Vec<(&'static str, &'static Limit)> {
    let mut out: Vec<(&'static str, &'static Limit)> = Vec::new();
    out.extend(LIMITS.iter().map(|l| ("scenario", l)));
    out.extend(setup::LIMITS.iter().map(|l| ("relay", l)));
    out.extend(topology::LIMITS.iter().map(|l| ("topology", l)));
    for (kind, info) in crate::checks::CATALOGUE {
        out.extend(info.limits.iter().map(|l| (*kind, l)));
    }
    out.extend(crate::perf::limits());
    out
}

/// A validation error and where it is in the text.
struct Problem {
    message: String,
    /// The path of the value at fault (a value out of range): its line.
    value: Option<Vec<String>>,
    /// The table the message is about (a check's): its line is found there.
    table: Option<Vec<String>>,
}

impl From<String> for Problem {
    fn from(message: String) -> Problem {
        Problem {
            message,
            value: None,
            table: None,
        }
    }
}

impl From<&str> for Problem {
    fn from(message: &str) -> Problem {
        message.to_string().into()
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Problem {
        match e {
            Invalid::Says(m) => m.into(),
            Invalid::OutOfRange(e) => Problem {
                message: e.to_string(),
                value: Some(e.path.clone()),
                table: None,
            },
        }
    }
}

impl Problem {
    /// An error of check `index` (of `kind`): its values' paths are below
    /// its table, its messages about that table.
    fn of_check(index: usize, kind: &str, e: Invalid) -> Problem {
        let at = index.to_string();
        match e.under(&["check", &at]) {
            Invalid::Says(message) => Problem {
                message,
                value: None,
                table: Some(vec!["check".into(), at]),
            },
            Invalid::OutOfRange(e) => Problem {
                message: format!("check {kind}: {e}"),
                value: Some(e.path.clone()),
                table: None,
            },
        }
    }

    /// An error of `[[perf.probe]]` `index`, as `of_check` for a check.
    fn of_probe(index: usize, kind: &str, e: Invalid) -> Problem {
        let at = index.to_string();
        match e.under(&["perf", "probe", &at]) {
            Invalid::Says(message) => Problem {
                message,
                value: None,
                table: Some(vec!["perf".into(), "probe".into(), at]),
            },
            Invalid::OutOfRange(e) => Problem {
                message: format!("perf probe {kind}: {e}"),
                value: Some(e.path.clone()),
                table: None,
            },
        }
    }

    /// The line it is on: the value's, else one of its table's, else the
    /// line that writes what the message quotes.
    fn line(&self, text: &str) -> Option<usize> {
        self.value
            .as_ref()
            .and_then(|p| position::line_of(text, p))
            .or_else(|| {
                self.table
                    .as_ref()
                    .and_then(|p| position::locate_within(text, p, &self.message))
            })
            .or_else(|| position::locate(text, &self.message))
    }
}

/// The shipped scenarios a run takes when none is named: all but the slow ones.
pub fn default_set() -> Vec<&'static str> {
    SHIPPED
        .iter()
        .filter(|(name, _)| Scenario::load(name).map(|s| !s.slow).unwrap_or(true))
        .map(|(name, _)| *name)
        .collect()
}

impl Scenario {
    /// A shipped scenario by name, or a file by path (anything with '/' or ending in .toml).
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        match SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Scenario::parse(text, &format!("'{name}' (shipped)")),
            None => Err(ScenarioError::UnknownName {
                name: name_or_path.to_string(),
                known: SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Parse and validate. `origin` names the source in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|problem| ScenarioError::Invalid {
                origin: origin.to_string(),
                message: match problem.line(text) {
                    Some(line) => format!("line {line}: {}", problem.message),
                    None => problem.message,
                },
            })?;
        Ok(scenario)
    }

    /// Validate a scenario changed after it was parsed (a soak's, whose
    /// sessions last as long as `--duration` says): the same rules and
    /// limits, without a text to find lines in.
    pub fn revalidate(&self, origin: &str) -> Result<(), ScenarioError> {
        self.validate().map_err(|p| ScenarioError::Invalid {
            origin: origin.to_string(),
            message: p.message,
        })
    }

    fn validate(&self) -> Result<(), Problem> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(format!(
                "name '{}' must be non-empty and use only a-z, 0-9 and '-'",
                self.name
            )
            .into());
        }
        if self.backends.is_empty() {
            return Err(
                "backends is empty: name at least one of nftables, iptables-nft, iptables-legacy"
                    .into(),
            );
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].contains(b) {
                return Err(Problem {
                    message: format!(
                        "backends names {} twice: each backend is one run of the scenario",
                        b.name()
                    ),
                    value: Some(vec!["backends".into(), i.to_string()]),
                    table: None,
                });
            }
        }
        if self.checks.is_empty() {
            return Err("no checks: add at least one [[check]] table".into());
        }
        if let Some(r) = &self.relay.ruleset {
            if self.backends != [r.backend] {
                return Err(format!(
                    "relay.ruleset is a {} ruleset, so backends must be [\"{}\"] alone: another tool cannot load it",
                    r.backend.name(),
                    r.backend.name()
                )
                .into());
            }
            RULESET_FILES
                .check_len(r.files.len())
                .map_err(|e| Invalid::from(e.under(&["relay", "ruleset"])))?;
            for f in &r.files {
                RULESET_BYTES
                    .check(f.text.len())
                    .map_err(|e| Invalid::from(e.under(&["relay", "ruleset"])))?;
            }
        }
        KERNEL_SYSCTLS
            .check_len(self.kernel.sysctls.len())
            .map_err(|e| Invalid::from(e.under(&["kernel"])))?;
        for key in self.kernel.sysctls.keys() {
            if !topology::is_net_sysctl(key) {
                return Err(format!(
                    "kernel.sysctls: '{key}' is not a net.* sysctl (e.g. \"net.netfilter.nf_conntrack_max\")"
                )
                .into());
            }
        }
        let setup = self.setup();
        setup.validate()?;
        let mut names = std::collections::HashSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            check
                .validate(&setup)
                .map_err(|e| Problem::of_check(i, check.kind(), e))?;
            for name in check.result_names() {
                if !names.insert(name.clone()) {
                    let e = Invalid::from(format!("check '{name}' appears twice"));
                    return Err(Problem::of_check(i, check.kind(), e));
                }
            }
        }
        if let Some(perf) = &self.perf {
            perf.validate(&setup).map_err(|(i, e)| match i {
                Some(i) => Problem::of_probe(i, perf.probes[i].kind(), e),
                None => Problem::from(e),
            })?;
        }
        // The results of every check in every family, counted up to the
        // check that passes the limit.
        let families = self.relay.families.len();
        let mut results = 0usize;
        for (i, check) in self.checks.iter().enumerate() {
            let per = if check.info().per_family { families } else { 1 };
            results = results.saturating_add(check.result_names().len().saturating_mul(per));
            if let Err(e) = RESULTS.check(results) {
                return Err(Problem {
                    message: format!("{e} (counted up to this check)"),
                    value: Some(vec!["check".into(), i.to_string()]),
                    table: None,
                });
            }
        }
        Ok(())
    }

    /// What the scenario sets up, apart from its checks.
    pub fn setup(&self) -> Setup<'_> {
        Setup {
            relay: &self.relay,
            topology: &self.topology,
            nat: &self.nat,
        }
    }

    /// The checks in run order, each with the family it runs in: those that
    /// need the listen port free first (each family), then the rest as
    /// written (each family).
    pub fn plan(&self) -> Vec<(Family, &CheckSpec)> {
        let (early, late): (Vec<&CheckSpec>, Vec<&CheckSpec>) = self
            .checks
            .iter()
            .partition(|c| c.info().phase == Phase::BeforeTunnel);
        let mut out = Vec::new();
        let first = self.relay.families.first().copied();
        for phase in [early, late] {
            for f in &self.relay.families {
                out.extend(
                    phase
                        .iter()
                        .filter(|c| c.info().per_family || Some(*f) == first)
                        .map(|c| (*f, *c)),
                );
            }
        }
        out
    }

    /// The namespaces that get NAT rules: the relay first, then routers.
    pub fn nat_namespaces(&self) -> Vec<String> {
        self.setup().nat_namespaces()
    }

    /// The neutral NAT rules of namespace `ns` (see `Setup::nat_rules`).
    pub fn nat_rules(&self, ns: &str) -> crate::nat::NatRules {
        self.setup().nat_rules(ns)
    }

    /// The addresses of family `f` by role (valid for a validated scenario).
    pub fn addrs(&self, f: Family) -> Result<Addrs, String> {
        self.setup().addrs(f)
    }

    /// The names of its performance figures, in the order reported
    /// (per backend; none without `[perf]`).
    pub fn perf_names(&self) -> Vec<String> {
        self.perf
            .as_ref()
            .map(|p| {
                p.figures(&self.setup())
                    .into_iter()
                    .map(|f| f.probe)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// All result names, in run order.
    pub fn result_names(&self) -> Vec<String> {
        self.plan()
            .into_iter()
            .flat_map(|(f, c)| c.result_names_in(f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap();
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn port_ranges() {
        use crate::types::PortRange;
        assert_eq!(
            "53".parse(),
            Ok(PortRange {
                first: 53,
                last: 53
            })
        );
        assert_eq!(
            "4000-33433".parse(),
            Ok(PortRange {
                first: 4000,
                last: 33433
            })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("9-3".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    fn minimal(extra: &str) -> String {
        format!("name = \"t\"\n[relay]\n{extra}\n[[check]]\nkind = \"kernel-health\"\n")
    }

    #[test]
    fn errors_are_precise() {
        let err = Scenario::parse(&minimal("listen_port = \"x\""), "t.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.toml") && msg.contains("line 3"), "{msg}");

        let err = Scenario::parse(&minimal("bogus = 1"), "t.toml").unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");

        let err =
            Scenario::parse(&minimal("redirect_udp = [\"1-10\", \"5\"]"), "t.toml").unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");

        let err = Scenario::parse(
            "name = \"t\"\n[relay]\n[[check]]\nkind = \"teleport\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `teleport`"),
            "{err}"
        );

        // Topology mistakes name the line they are on.
        let behind = SHIPPED
            .iter()
            .find(|(n, _)| *n == "behind-nat")
            .map(|(_, t)| *t)
            .unwrap();
        let line_of = |text: &str, needle: &str| {
            text.lines()
                .collect::<Vec<_>>()
                .iter()
                .rposition(|l| l.contains(needle))
                .unwrap()
                + 1
        };
        for (from, to, says) in [
            (
                "peer = \"relay:wg0\"",
                "peer = \"relay:wg1\"",
                "names peer relay:wg1, which no",
            ),
            (
                "at = \"client:eth0\"",
                "at = \"clinet:eth0\"",
                "namespace 'clinet', which is not defined",
            ),
            (
                "\"198.51.100.2/24\"",
                "\"198.51.100.1/24\"",
                "address 198.51.100.1 of internet:eth0 is already relay:wan's",
            ),
            ("out = \"up\"", "out = \"uplink\"", "names interface uplink"),
        ] {
            let text = behind.replacen(from, to, 1);
            let msg = Scenario::parse(&text, "b.toml").unwrap_err().to_string();
            let line = line_of(&text, to);
            assert!(
                msg.contains(&format!("line {line}:")) && msg.contains(says),
                "{msg}"
            );
        }

        // Values out of range name their line, the limit and why.
        let ranges: Vec<String> = (0..65).map(|i| format!("\"{}\"", 1000 + i)).collect();
        let sysctls: Vec<String> = (0..65).map(|i| format!("\"net.core.x{i}\" = 1")).collect();
        for (text, line, says) in [
            (
                minimal("listen_port = 0"),
                3,
                "listen_port = 0 must be between 1 and 65535 because",
            ),
            (
                minimal("wan_mtu = 100"),
                3,
                "wan_mtu = 100 must be between 1280 and 9000 bytes because",
            ),
            (
                minimal(&format!("redirect_udp = [\n{}\n]", ranges.join(",\n"))),
                68,
                "the number of relay.redirect_udp ranges = 65 must be between 0 and 64 because",
            ),
            (
                minimal("families = [\"ipv4\", \"ipv6\", \"ipv4\"]"),
                3,
                "the number of relay.families = 3 must be between 1 and 2",
            ),
            (
                format!("backends = [\"nftables\", \"nftables\"]\n{}", minimal("")),
                1,
                "backends names nftables twice",
            ),
            (
                format!("{}[kernel.sysctls]\n{}\n", minimal(""), sysctls.join("\n")),
                6,
                "the number of kernel.sysctls = 65 must be between 0 and 64",
            ),
        ] {
            let msg = Scenario::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(msg.contains(&format!("t.toml: line {line}: ")), "{msg}");
            assert!(msg.contains(says), "{msg}");
        }
        // More results than a run can wait for: at the check that passes 256.
        let checks: String = (0..9)
            .map(|i| {
                let ports: Vec<String> = (1..=32).map(|p| (i * 100 + p).to_string()).collect();
                format!(
                    "[[check]]\nkind = \"redirect\"\nports = [{}]\n",
                    ports.join(", ")
                )
            })
            .collect();
        let msg = Scenario::parse(&format!("name = \"t\"\n[relay]\n{checks}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 27: value out of range: the number of results (of every check, in every family) = 288 must be between 1 and 256"),
            "{msg}"
        );

        let err = Scenario::load("no-such-scenario").unwrap_err();
        assert!(err.to_string().contains("extended-ports"), "{err}");
    }
}

/// Scenario files are user input: any text yields a scenario or a precise
/// error, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::types::PortRange;
    use proptest::prelude::*;

    const SHIPPED_TEXT: &str = include_str!("../../../scenarios/extended-ports.toml");

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = Scenario::parse(&text, "fuzz.toml");
        }

        #[test]
        fn mutated_shipped_scenarios_never_panic(pos in 0usize..2000, insert in "[\\[\\]=\"a-z0-9,. \n-]{0,12}", cut in 0usize..20) {
            let mut text = SHIPPED_TEXT.to_string();
            let pos = pos.min(text.len());
            let pos = (0..=pos).rev().find(|p| text.is_char_boundary(*p)).unwrap_or(0);
            let end = (pos + cut).min(text.len());
            let end = (end..=text.len()).find(|p| text.is_char_boundary(*p)).unwrap_or(text.len());
            text.replace_range(pos..end, &insert);
            if let Err(e) = Scenario::parse(&text, "fuzz.toml") {
                prop_assert!(e.to_string().contains("fuzz.toml"));
            }
        }

        #[test]
        fn port_ranges_parse_or_explain(s in "[0-9-]{0,12}") {
            match s.parse::<PortRange>() {
                Ok(r) => prop_assert!(r.first >= 1 && r.first <= r.last),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }
}
