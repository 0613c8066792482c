//! The typed protocol between the host (natvet) and the guest (the agent, PID 1).
//!
//! The host hands the guest one `job::Job` (a JSON file in the initramfs); the guest
//! answers with a stream of [`GuestMessage`]s, one JSON object per line, on its
//! second serial port. Results are data: nothing on the host reads console text
//! to learn what happened.

use serde::{Deserialize, Serialize};

pub mod job;
pub mod perf;

/// Bumped whenever a message changes shape; host and guest are the same binary,
/// so a mismatch means a stale initramfs, never a supported combination.
pub const PROTOCOL_VERSION: u32 = 2;

/// The guest's serial port that carries [`GuestMessage`]s (ttyS0 is the console).
pub const RESULTS_TTY: &str = "/dev/ttyS1";

/// The longest line the host accepts from the guest. A longer one is a protocol error.
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// Outcome of one check. `Unsupported` and `Error` are never a NAT verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Packets did what the check expects.
    Pass,
    /// The kernel did not do what the check expects: a NAT regression.
    Fail,
    /// The kernel (or the guest's tools) lacks something the check needs.
    Unsupported,
    /// natvet itself could not run the check (setup failed, timeout of the harness).
    Error,
    /// Passed only when natvet retried after a harness error (set by the host).
    Flaky,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unsupported => "unsupported",
            Status::Error => "ERROR",
            Status::Flaky => "flaky",
        }
    }
}

/// The result of one check, for one scenario and NAT backend, as the host
/// records it: what the guest reported ([`GuestResult`]) and what only the
/// host decides (`flaky`, `evidence_dir`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub scenario: String,
    pub backend: String,
    pub check: String,
    pub status: Status,
    pub expected: String,
    pub observed: String,
    pub duration_ms: u64,
    /// Collected for failures (and errors), or always on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Where the host wrote the evidence as files (set by the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_dir: Option<String>,
    /// What the check measured over time, step by step (sessions, soaks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
}

/// The result of one check as the guest sends it: a [`CheckResult`] without
/// what only the host sets. A guest that sends `evidence_dir`, or the
/// status `flaky`, sends a line that is not a natvet message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestResult {
    pub scenario: String,
    pub backend: String,
    pub check: String,
    #[serde(deserialize_with = "guest_status")]
    pub status: Status,
    pub expected: String,
    pub observed: String,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
}

/// A status a guest may report: any but `flaky`, which the host gives a
/// check that passed only when it retried.
fn guest_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    match Status::deserialize(d)? {
        Status::Flaky => Err(serde::de::Error::custom(
            "status `flaky` is the host's verdict (a check that passed only on a retry): the guest cannot report it",
        )),
        s => Ok(s),
    }
}

impl From<GuestResult> for CheckResult {
    fn from(r: GuestResult) -> CheckResult {
        CheckResult {
            scenario: r.scenario,
            backend: r.backend,
            check: r.check,
            status: r.status,
            expected: r.expected,
            observed: r.observed,
            duration_ms: r.duration_ms,
            evidence: r.evidence,
            evidence_dir: None,
            series: r.series,
        }
    }
}

/// What of a result the guest sends (the checks build `CheckResult`s; the
/// host's fields stay behind).
impl From<CheckResult> for GuestResult {
    fn from(r: CheckResult) -> GuestResult {
        GuestResult {
            scenario: r.scenario,
            backend: r.backend,
            check: r.check,
            status: r.status,
            expected: r.expected,
            observed: r.observed,
            duration_ms: r.duration_ms,
            evidence: r.evidence,
            series: r.series,
        }
    }
}

/// A check's traffic over time: in each step of `step_ms`, how many probes
/// it sent and how many were answered. A person reads it as a plot (the
/// HTML report draws one); `stopped_at_ms` is the start of the first step
/// in which something sent was not answered, if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub step_ms: u64,
    pub sent: Vec<u32>,
    pub answered: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<u64>,
}

/// What an engineer needs to see why a packet did not get through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The relay's conntrack table (`conntrack -L`).
    pub conntrack: String,
    /// The relay's active NAT ruleset as its backend lists it.
    pub ruleset: String,
    /// Interface counters per namespace (`/proc/net/dev`).
    pub counters: String,
    /// Routes per namespace (`/proc/net/route`).
    pub routes: String,
    /// WireGuard state of client and relay (peers, endpoints, handshakes, bytes).
    pub wireguard: String,
    /// Kernel log lines emitted while the check ran.
    pub dmesg: Vec<String>,
    /// Packet captures of the check's interfaces (pcap, base64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<CaptureFile>,
    /// How the captures were taken (a re-run of a failed check says what it gave).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub capture_note: String,
}

impl Evidence {
    /// The tables of text the guest collected (everything but the kernel
    /// log's lines, the captures and the note on how they were taken).
    pub fn tables_mut(&mut self) -> [&mut String; 5] {
        [
            &mut self.conntrack,
            &mut self.ruleset,
            &mut self.counters,
            &mut self.routes,
            &mut self.wireguard,
        ]
    }
}

/// One interface's packets during one check, as a pcap file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureFile {
    pub namespace: String,
    pub interface: String,
    pub packets: usize,
    /// Packets seen after the capture's size limit, not in the file.
    #[serde(default)]
    pub not_kept: usize,
    pub pcap_base64: String,
}

/// When the guest captures packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Only for checks that do not pass: such a check runs once more with
    /// captures on (no cost for passing checks).
    #[default]
    Failures,
    /// During every check, always kept.
    Always,
    /// Not at all.
    Never,
}

/// One line from the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The agent runs: the readiness signal. `uptime_ms` is the guest's clock at
    /// that moment, i.e. the boot time to the agent.
    Hello {
        version: u32,
        kernel_release: String,
        uptime_ms: u64,
    },
    /// A setup step's outcome worth showing (modules loaded, backend probing).
    Note { message: String },
    /// A check is about to run (progress, and names the culprit if the guest dies).
    CheckStarted {
        scenario: String,
        backend: String,
        check: String,
    },
    /// A check finished.
    Check(Box<GuestResult>),
    /// One scenario run (a scenario with one backend) ended.
    RunDone(RunTiming),
    /// A performance probe's figure (after every scenario run's checks).
    Perf(Box<perf::PerfFigure>),
    /// All scenarios ran; the guest powers off next.
    Done { elapsed_ms: u64 },
    /// The agent cannot go on (setup failed in a way no check can report).
    Fatal { error: String },
}

/// How long one scenario run took in the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTiming {
    pub scenario: String,
    pub backend: String,
    /// Building the topology and applying the NAT rules.
    pub setup_ms: u64,
    /// From the start of setup to the end of teardown.
    pub elapsed_ms: u64,
}

impl GuestMessage {
    /// One line of the wire format (no trailing newline).
    pub fn to_line(&self) -> String {
        // Serialising these plain data types cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"fatal","error":"cannot serialise message: {e}"}}"#)
        })
    }

    /// Parse one line from the guest. Carriage returns from the tty are tolerated.
    pub fn from_line(line: &str) -> Result<GuestMessage, ProtocolError> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.len() > MAX_LINE {
            return Err(ProtocolError::TooLong(line.len()));
        }
        serde_json::from_str(line).map_err(|e| ProtocolError::Malformed {
            error: e.to_string(),
            line: line.chars().take(200).collect(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error(
        "the guest sent a line of {0} bytes or more, over the protocol's limit of {MAX_LINE} bytes"
    )]
    TooLong(usize),
    #[error("the guest sent a line that is not a natvet message ({error}): {line:?}")]
    Malformed { error: String, line: String },
    #[error("the guest speaks protocol version {guest}, the host {host}: rebuild natvet")]
    Version { guest: u32, host: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let msg = GuestMessage::Check(Box::new(GuestResult {
            scenario: "extended-ports".into(),
            backend: "nftables".into(),
            check: "handshake-port-53".into(),
            status: Status::Fail,
            expected: "handshake".into(),
            observed: "none".into(),
            duration_ms: 12,
            evidence: Some(Evidence::default()),
            series: None,
        }));
        let line = msg.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(GuestMessage::from_line(&(line + "\r\n")), Ok(msg));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "null",
            "{\"type\":\"nope\"}",
            "\u{0}\u{1}",
            "[1,2]",
        ] {
            assert!(GuestMessage::from_line(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(
            GuestMessage::from_line(&long),
            Err(ProtocolError::TooLong(MAX_LINE + 1))
        );
    }

    #[test]
    fn wire_shape() {
        let hello = GuestMessage::Hello {
            version: 1,
            kernel_release: "6.1.0-50-amd64".into(),
            uptime_ms: 2100,
        };
        assert_eq!(
            hello.to_line(),
            r#"{"type":"hello","version":1,"kernel_release":"6.1.0-50-amd64","uptime_ms":2100}"#
        );
    }
}

/// The guest is untrusted input: whatever bytes arrive, parsing them yields a
/// message or an error, never a panic. (What the host then accepts of a
/// message stream is `inbound`'s, fuzzed there.)
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// The statuses a guest may report (`flaky` is the host's).
    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Pass),
            Just(Status::Fail),
            Just(Status::Unsupported),
            Just(Status::Error),
        ]
    }

    fn result(check: String, st: Status) -> GuestResult {
        GuestResult {
            scenario: "s".into(),
            backend: "nftables".into(),
            check,
            status: st,
            expected: "e".into(),
            observed: "o".into(),
            duration_ms: 1,
            evidence: None,
            series: None,
        }
    }

    /// Every kind of message, with arbitrary contents.
    fn message() -> impl Strategy<Value = GuestMessage> {
        let text = "\\PC{0,60}";
        prop_oneof![
            (any::<u32>(), text, any::<u64>()).prop_map(|(version, kernel_release, uptime_ms)| {
                GuestMessage::Hello {
                    version,
                    kernel_release,
                    uptime_ms,
                }
            }),
            text.prop_map(|message| GuestMessage::Note { message }),
            (text, text, text).prop_map(|(scenario, backend, check)| GuestMessage::CheckStarted {
                scenario,
                backend,
                check,
            }),
            (
                text,
                status(),
                any::<u64>(),
                proptest::collection::vec(any::<u32>(), 0..6),
                proptest::option::of(any::<u64>()),
                text,
                proptest::collection::vec(any::<u8>(), 0..40),
            )
                .prop_map(|(check, st, ms, steps, stopped, note, pcap)| {
                    let mut r = result(check, st);
                    r.duration_ms = ms;
                    r.series = Some(Series {
                        step_ms: ms,
                        sent: steps.clone(),
                        answered: steps,
                        stopped_at_ms: stopped,
                    });
                    r.evidence = Some(Evidence {
                        dmesg: vec![note.clone()],
                        capture_note: note,
                        captures: vec![CaptureFile {
                            namespace: "relay".into(),
                            interface: "public".into(),
                            packets: pcap.len(),
                            not_kept: 0,
                            pcap_base64: base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                pcap,
                            ),
                        }],
                        ..Evidence::default()
                    });
                    GuestMessage::Check(Box::new(r))
                }),
            (text, text, any::<u64>(), any::<u64>()).prop_map(
                |(scenario, backend, setup_ms, elapsed_ms)| {
                    GuestMessage::RunDone(RunTiming {
                        scenario,
                        backend,
                        setup_ms,
                        elapsed_ms,
                    })
                }
            ),
            any::<u64>().prop_map(|elapsed_ms| GuestMessage::Done { elapsed_ms }),
            text.prop_map(|error| GuestMessage::Fatal { error }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = GuestMessage::from_line(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn json_shaped_garbage_never_panics(s in r#"\{"type":"(hello|check|done|fatal|note|check_started|run_done)"[ -~]{0,200}\}?"#) {
            let _ = GuestMessage::from_line(&s);
        }

        #[test]
        fn truncated_messages_are_errors(cut in 1usize..120, check in "[a-z/0-9-]{1,30}", st in status()) {
            let line = GuestMessage::Check(Box::new(result(check, st))).to_line();
            let cut = cut.min(line.len() - 1);
            prop_assert!(GuestMessage::from_line(&line[..cut]).is_err());
        }

        #[test]
        fn results_round_trip(check in "\\PC{0,40}", observed in "\\PC{0,200}", st in status(), ms in any::<u64>()) {
            let mut r = result(check, st);
            r.backend = "iptables-legacy".into();
            r.expected = "e\nwith lines".into();
            r.observed = observed;
            r.duration_ms = ms;
            r.evidence = Some(Evidence::default());
            let msg = GuestMessage::Check(Box::new(r));
            let line = msg.to_line();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(GuestMessage::from_line(&line), Ok(msg));
        }

        #[test]
        fn every_message_round_trips(msg in message()) {
            let line = msg.to_line();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(GuestMessage::from_line(&line), Ok(msg));
        }

        /// What only the host sets never parses from a guest, wherever it is put.
        #[test]
        fn host_fields_never_come_from_a_guest(check in "[a-z/0-9-]{1,30}", st in status(), dir in "\\PC{0,30}") {
            let line = GuestMessage::Check(Box::new(result(check, st))).to_line();
            let flaky = line.replace(&format!("\"status\":\"{}\"", serde_json::to_value(st).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()), "\"status\":\"flaky\"");
            prop_assert!(flaky.contains("flaky"));
            prop_assert!(GuestMessage::from_line(&flaky).is_err());
            let with_dir = format!("{},\"evidence_dir\":{}}}", &line[..line.len() - 1], serde_json::Value::String(dir));
            prop_assert!(GuestMessage::from_line(&with_dir).is_err());
        }
    }
}
