//! Everything a guest sends the host enters here: its messages (the results
//! channel) and the pieces of its console that natvet keeps. A guest runs
//! the kernel under test, which may be broken or hostile, so nothing it
//! sends is trusted:
//!
//! - lines are split in linear time and capped ([`Lines`]);
//! - each message is checked against what the host asked for
//!   ([`Inbound`]): results only for the job's checks, once each; a check's
//!   start and a run's end only for the job's own; Hello first and once,
//!   nothing after Done;
//! - text is stripped of control sequences before it can reach a terminal
//!   ([`clean`]) and cut to a length ([`cut`]);
//! - numbers are bounded before the host computes with them, capture names
//!   must be names and their packets base64;
//! - what the host keeps is bounded: notes, evidence (a budget per run).
//!
//! A message that breaks a rule is a [`Violation`]: the run ends as an
//! infrastructure error that names it, never as a check's verdict. Paths
//! under `--out` are built from the host's own names only (the kernel's
//! folder is made before the guest starts; scenario, backend and check names
//! are the job's).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use base64::Engine as _;

use crate::protocol::perf::{Better, PerfFigure, MAX_SAMPLES};
use crate::protocol::{
    CheckResult, Evidence, GuestMessage, GuestResult, ProtocolError, RunTiming, Series,
    PROTOCOL_VERSION,
};

/// The longest console line kept: the kernel's own records are at most
/// 1 KiB of text (printk), so a longer line is not the kernel's and is cut.
pub const MAX_CONSOLE_LINE: usize = 4096;
/// The most console.log holds: a boot and a whole run write well under
/// 1 MiB, a kernel warning in a loop for an hour some tens of MiB.
pub const MAX_CONSOLE_LOG: u64 = 32 << 20;
/// Console warnings kept as notes (the rest are counted; console.log has them).
pub const MAX_ALARMS: usize = 50;
/// Notes kept from one guest: the first and the last half of this many.
/// A long soak sends a note every few seconds per session to show it is alive.
pub const MAX_NOTES: usize = 200;
/// The longest note kept (the agent's longest, a module list, is a few hundred bytes).
pub const MAX_NOTE: usize = 4096;
/// The longest expected, observed or fatal text kept (a failed setup's
/// error with its kernel log lines is a few KiB).
pub const MAX_TEXT: usize = 64 << 10;
/// The evidence kept from one run: a failing check's evidence with its
/// captures is up to a few MiB (one message is at most `MAX_LINE`); past
/// this budget, later results keep their verdicts and short evidence texts,
/// without captures.
pub const MAX_EVIDENCE: usize = 256 << 20;
/// The longest time a guest may report, in ms: 30 days, far beyond any
/// run's `--timeout`, and small enough that sums of many never overflow.
pub const MAX_GUEST_MS: u64 = 30 * 24 * 3600 * 1000;
/// The most steps a series may have: a day of one-second steps, and then some.
pub const MAX_SERIES_STEPS: usize = 100_000;
/// The longest step of a series: an hour.
pub const MAX_STEP_MS: u64 = 3600 * 1000;
/// The longest kernel release (`uname -r`; the kernel's own limit).
pub const MAX_RELEASE: usize = 64;

/// Text from the guest as the host shows it: control characters (ESC, CR,
/// BEL, backspace, C1 codes, bidirectional overrides) become visible
/// escapes such as `\x1b`, so no guest text can move a terminal's cursor,
/// retitle its window or hide what follows. Tabs stay; newlines stay when
/// `newlines` (multi-line texts such as an error with log lines).
pub fn clean(s: &str, newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\t' && !(newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    // Only these bytes start a character to escape: C0 codes and DEL, and
    // the lead bytes of C1 codes (0xc2) and of the bidirectional controls
    // (0xe2). Looking at bytes first keeps plain text cheap.
    let suspect = |b: &u8| *b < 0x20 || *b == 0x7f || *b == 0xc2 || *b == 0xe2;
    if !s.as_bytes().iter().any(suspect) || !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` cut to at most `max` bytes (at a character boundary), saying how much was left out.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &s[..end], s.len() - end)
}

/// Guest text cleaned and cut, for a single line.
fn line_text(s: &str, max: usize) -> String {
    cut(&clean(s, false), max)
}

/// Guest text cleaned and cut, newlines kept.
fn text(s: &str, max: usize) -> String {
    cut(&clean(s, true), max)
}

/// One line as [`Lines`] hands it out, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// The line was longer than the limit: these are its first bytes, the
    /// rest up to its newline is dropped.
    pub cut: bool,
}

/// Bytes split into lines of at most `max` bytes, in time linear in the
/// bytes (each is looked at once, however they arrive), holding at most one
/// unfinished line of `max` bytes plus the last chunk pushed.
pub struct Lines {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// How far `buf` has been searched for a newline.
    scanned: usize,
    max: usize,
    /// Dropping the rest of a line that was too long.
    dropping: bool,
    /// Blank lines (nothing but '\n' and '\r') are skipped, not handed out.
    skip_blank: bool,
}

impl Lines {
    /// Lines for the results channel: blank ones (tty noise) are skipped.
    pub fn messages(max: usize) -> Lines {
        Lines::new(max, true)
    }

    /// Lines of a console: every line, blank ones too.
    pub fn console(max: usize) -> Lines {
        Lines::new(max, false)
    }

    fn new(max: usize, skip_blank: bool) -> Lines {
        Lines {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
            dropping: false,
            skip_blank,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next line, if a whole one (or the first `max` bytes of a longer
    /// one) has arrived.
    pub fn next_line(&mut self) -> Option<Piece> {
        loop {
            if self.skip_blank && !self.dropping {
                self.start += blank_prefix(&self.buf[self.start..]);
                self.scanned = self.scanned.max(self.start);
            }
            match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                Some(i) => {
                    let end = self.scanned + i;
                    let line = &self.buf[self.start..end];
                    let piece = if self.dropping {
                        self.dropping = false;
                        None
                    } else if line.len() > self.max {
                        Some(Piece {
                            bytes: line[..self.max].to_vec(),
                            cut: true,
                        })
                    } else {
                        Some(Piece {
                            bytes: line.to_vec(),
                            cut: false,
                        })
                    };
                    self.start = end + 1;
                    self.scanned = self.start;
                    if piece.is_some() {
                        return piece;
                    }
                }
                None => {
                    self.scanned = self.buf.len();
                    if self.dropping {
                        self.start = self.buf.len();
                        return None;
                    }
                    if self.buf.len() - self.start > self.max {
                        let piece = Piece {
                            bytes: self.buf[self.start..self.start + self.max].to_vec(),
                            cut: true,
                        };
                        self.dropping = true;
                        self.start = self.buf.len();
                        self.scanned = self.start;
                        return Some(piece);
                    }
                    return None;
                }
            }
        }
    }
}

/// How many bytes at the start of `bytes` are line ends ('\n', '\r'). Runs
/// of newlines are compared a block at a time (a slice comparison is one
/// memcmp), so a flood of blank lines costs little even unoptimised.
fn blank_prefix(bytes: &[u8]) -> usize {
    const BLOCK: [u8; 256] = [b'\n'; 256];
    let mut n = 0;
    loop {
        let rest = &bytes[n..];
        if rest.len() >= BLOCK.len() && rest[..BLOCK.len()] == BLOCK {
            n += BLOCK.len();
        } else if rest.first().is_some_and(|&b| b == b'\n' || b == b'\r') {
            n += 1;
        } else {
            return n;
        }
    }
}

/// A message from the guest that breaks the protocol.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Violation {
    #[error(transparent)]
    Message(#[from] ProtocolError),
    #[error("the guest sent {0} before its Hello")]
    BeforeHello(&'static str),
    #[error("the guest said Hello twice")]
    SecondHello,
    #[error("the guest sent {0} after Done")]
    AfterDone(&'static str),
    #[error("the guest reported {0}, which the job did not ask for")]
    NotAsked(String),
    #[error("the guest sent a second result for {0}")]
    SecondResult(String),
    #[error("the guest started {0} after reporting its result")]
    StartedAgain(String),
    #[error("the guest ended the run {0} twice")]
    SecondRunEnd(String),
    #[error(
        "the guest reports the kernel release {0:?}, which is not one (a digit first, then at most {MAX_RELEASE} of A-Z a-z 0-9 . _ + ~ -)"
    )]
    Release(String),
    #[error("the guest's {field} for {what} is {value}, more than the {max} the host accepts")]
    Number {
        field: &'static str,
        what: String,
        value: u64,
        max: u64,
    },
    #[error("the guest's series for {what} {why}")]
    Series { what: String, why: String },
    #[error("the guest's performance figure {what} {why}")]
    Perf { what: String, why: String },
    #[error("the guest's capture {name:?} of {what} {why}")]
    Capture {
        what: String,
        name: String,
        why: &'static str,
    },
}

/// Where the guest is in its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing but Hello (or Fatal) may come yet.
    Waiting,
    Running,
    /// Done came: nothing more may.
    Done,
    /// Fatal came: the host stops listening.
    GaveUp,
}

/// What an accepted message was, for the caller's progress and timing.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    Hello { release: &'a str },
    Note,
    CheckStarted { check: &'a str },
    Check(&'a CheckResult),
    Perf,
    RunDone,
    Done,
    Fatal,
}

/// What the guest reported over its run, validated and bounded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reported {
    /// `uname -r` in the guest (checked to look like one; never a path).
    pub release: Option<String>,
    pub uptime_ms: Option<u64>,
    pub results: Vec<CheckResult>,
    pub notes: Vec<String>,
    pub fatal: Option<String>,
    /// Checks started and not reported at the end, "SCENARIO [BACKEND] CHECK", in the job's order.
    pub running: Vec<String>,
    pub agent_ms: Option<u64>,
    pub scenario_runs: Vec<RunTiming>,
    /// Performance figures, in the order they came.
    pub perf: Vec<PerfFigure>,
    /// Figures the job asks for and the guest did not report: "SCENARIO [BACKEND] PROBE".
    pub perf_missing: Vec<String>,
}

/// A figure the job asks for: (scenario, backend, probe), its unit and
/// which way is better (the host's, not the guest's word).
pub type AskedFigure = ((String, String, String), String, Better);

/// One guest's messages, accepted only as the job allows, and what they reported.
pub struct Inbound {
    /// (scenario, backend, check) of every result the job asks for, in its order.
    asked: Vec<(String, String, String)>,
    by_name: HashMap<(String, String, String), usize>,
    /// Every (scenario, backend) run of the job, and whether it ended.
    runs: HashMap<(String, String), bool>,
    phase: Phase,
    reported: Vec<bool>,
    running: BTreeSet<usize>,
    evidence_left: usize,
    got: Reported,
    notes_tail: VecDeque<String>,
    notes_left_out: usize,
    /// Performance figures the job asks for, and whether each came.
    perf_asked: Vec<(AskedFigure, bool)>,
}

impl Inbound {
    /// The same guest, asked for these performance figures too.
    pub fn with_perf(mut self, asked: Vec<AskedFigure>) -> Inbound {
        self.perf_asked = asked.into_iter().map(|a| (a, false)).collect();
        self
    }

    /// A guest that must report exactly `asked`: (scenario, backend, check), in the job's order.
    pub fn new(asked: Vec<(String, String, String)>) -> Inbound {
        Inbound::with_evidence_budget(asked, MAX_EVIDENCE)
    }

    pub fn with_evidence_budget(asked: Vec<(String, String, String)>, budget: usize) -> Inbound {
        let by_name = asked
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let runs = asked
            .iter()
            .map(|(s, b, _)| ((s.clone(), b.clone()), false))
            .collect();
        Inbound {
            reported: vec![false; asked.len()],
            asked,
            by_name,
            runs,
            phase: Phase::Waiting,
            running: BTreeSet::new(),
            evidence_left: budget,
            got: Reported::default(),
            notes_tail: VecDeque::new(),
            notes_left_out: 0,
            perf_asked: Vec::new(),
        }
    }

    /// Take one line from the results channel. A blank line is no message
    /// (`None`); anything else is an accepted message or a violation.
    pub fn accept(&mut self, line: &[u8]) -> Result<Option<Event<'_>>, Violation> {
        let line = String::from_utf8_lossy(line);
        if line.trim().is_empty() {
            return Ok(None);
        }
        let msg = GuestMessage::from_line(&line)?;
        let what = kind(&msg);
        match (self.phase, &msg) {
            (Phase::Waiting, GuestMessage::Hello { .. } | GuestMessage::Fatal { .. }) => {}
            (Phase::Waiting, _) => return Err(Violation::BeforeHello(what)),
            (Phase::Done | Phase::GaveUp, _) => return Err(Violation::AfterDone(what)),
            (Phase::Running, _) => {}
        }
        Ok(Some(match msg {
            GuestMessage::Hello {
                version,
                kernel_release,
                uptime_ms,
            } => {
                if self.phase != Phase::Waiting {
                    return Err(Violation::SecondHello);
                }
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version {
                        guest: version,
                        host: PROTOCOL_VERSION,
                    }
                    .into());
                }
                if !is_release(&kernel_release) {
                    return Err(Violation::Release(line_text(&kernel_release, 100)));
                }
                bounded("uptime_ms", "its Hello", uptime_ms)?;
                self.phase = Phase::Running;
                self.got.uptime_ms = Some(uptime_ms);
                Event::Hello {
                    release: self.got.release.insert(kernel_release).as_str(),
                }
            }
            GuestMessage::Note { message } => {
                self.note(line_text(&message, MAX_NOTE));
                Event::Note
            }
            GuestMessage::CheckStarted {
                scenario,
                backend,
                check,
            } => {
                let name = || named(&scenario, &backend, &check);
                let i = *self
                    .by_name
                    .get(&(scenario.clone(), backend.clone(), check.clone()))
                    .ok_or_else(|| Violation::NotAsked(format!("the start of {}", name())))?;
                if self.reported[i] {
                    return Err(Violation::StartedAgain(name()));
                }
                self.running.insert(i);
                Event::CheckStarted {
                    check: &self.asked[i].2,
                }
            }
            GuestMessage::Check(r) => {
                let r = self.result(*r)?;
                self.got.results.push(r);
                match self.got.results.last() {
                    Some(r) => Event::Check(r),
                    None => Event::Note,
                }
            }
            GuestMessage::Perf(f) => {
                let f = self.figure(*f)?;
                self.got.perf.push(f);
                Event::Perf
            }
            GuestMessage::RunDone(t) => {
                let name = format!(
                    "{} [{}]",
                    line_text(&t.scenario, 100),
                    line_text(&t.backend, 100)
                );
                let ended = self
                    .runs
                    .get_mut(&(t.scenario.clone(), t.backend.clone()))
                    .ok_or_else(|| Violation::NotAsked(format!("the end of the run {name}")))?;
                if *ended {
                    return Err(Violation::SecondRunEnd(name));
                }
                bounded("setup_ms", &name, t.setup_ms)?;
                bounded("elapsed_ms", &name, t.elapsed_ms)?;
                *ended = true;
                self.got.scenario_runs.push(t);
                Event::RunDone
            }
            GuestMessage::Done { elapsed_ms } => {
                bounded("elapsed_ms", "its Done", elapsed_ms)?;
                self.got.agent_ms = Some(elapsed_ms);
                self.phase = Phase::Done;
                Event::Done
            }
            GuestMessage::Fatal { error } => {
                self.got.fatal = Some(text(&error, MAX_TEXT));
                self.phase = Phase::GaveUp;
                Event::Fatal
            }
        }))
    }

    fn note(&mut self, note: String) {
        if self.got.notes.len() < MAX_NOTES / 2 {
            self.got.notes.push(note);
            return;
        }
        self.notes_tail.push_back(note);
        if self.notes_tail.len() > MAX_NOTES / 2 {
            self.notes_tail.pop_front();
            self.notes_left_out += 1;
        }
    }

    /// A result, checked against the job and made the host's record.
    fn result(&mut self, r: GuestResult) -> Result<CheckResult, Violation> {
        let name = named(&r.scenario, &r.backend, &r.check);
        let i = *self
            .by_name
            .get(&(r.scenario.clone(), r.backend.clone(), r.check.clone()))
            .ok_or_else(|| Violation::NotAsked(format!("a result for {name}")))?;
        if self.reported[i] {
            return Err(Violation::SecondResult(name));
        }
        bounded("duration_ms", &name, r.duration_ms)?;
        if let Some(s) = &r.series {
            series(s, &name)?;
        }
        if let Some(ev) = &r.evidence {
            captures(ev, &name)?;
        }
        self.reported[i] = true;
        self.running.remove(&i);
        let mut r = CheckResult::from(r);
        r.expected = text(&r.expected, MAX_TEXT);
        r.observed = text(&r.observed, MAX_TEXT);
        if let Some(ev) = r.evidence.as_mut() {
            clean_evidence(ev);
            self.evidence_left = keep_within(ev, self.evidence_left);
        }
        Ok(r)
    }

    /// A performance figure, checked against the job: asked for, once,
    /// its numbers finite and bounded, its unit and direction the host's.
    fn figure(&mut self, mut f: PerfFigure) -> Result<PerfFigure, Violation> {
        let name = named(&f.scenario, &f.backend, &f.probe);
        let key = (f.scenario.clone(), f.backend.clone(), f.probe.clone());
        let Some((asked, came)) = self.perf_asked.iter_mut().find(|(a, _)| a.0 == key) else {
            return Err(Violation::NotAsked(format!(
                "a performance figure for {name}"
            )));
        };
        let bad = |why: String| Violation::Perf {
            what: name.clone(),
            why,
        };
        if *came {
            return Err(bad("came twice".into()));
        }
        if f.samples.len() > MAX_SAMPLES {
            return Err(bad(format!(
                "has {} samples, more than {MAX_SAMPLES}",
                f.samples.len()
            )));
        }
        let fine = |v: f64| v.is_finite() && (0.0..=1e12).contains(&v);
        if !f.value.is_none_or(fine) || !f.samples.iter().all(|v| fine(*v)) {
            return Err(bad(
                "has a number that is negative, not finite or over 10^12".into(),
            ));
        }
        *came = true;
        f.unit = asked.1.clone();
        f.better = asked.2;
        f.note = text(&f.note, MAX_NOTE);
        Ok(f)
    }

    /// Everything the guest reported.
    pub fn finish(mut self) -> Reported {
        if self.notes_left_out > 0 {
            self.got.notes.push(format!(
                "{} more notes from the guest left out (the host keeps its first and last {})",
                self.notes_left_out,
                MAX_NOTES / 2
            ));
        }
        self.got.notes.extend(self.notes_tail);
        self.got.perf_missing = self
            .perf_asked
            .iter()
            .filter(|(_, came)| !came)
            .map(|((k, _, _), _)| named(&k.0, &k.1, &k.2))
            .collect();
        self.got.running = self
            .running
            .iter()
            .map(|&i| {
                let (s, b, c) = &self.asked[i];
                format!("{s} [{b}] {c}")
            })
            .collect();
        self.got
    }
}

/// A message's kind, for violations.
fn kind(msg: &GuestMessage) -> &'static str {
    match msg {
        GuestMessage::Hello { .. } => "a Hello",
        GuestMessage::Note { .. } => "a note",
        GuestMessage::CheckStarted { .. } => "a check's start",
        GuestMessage::Check(_) => "a result",
        GuestMessage::RunDone(_) => "a run's end",
        GuestMessage::Perf(_) => "a performance figure",
        GuestMessage::Done { .. } => "Done",
        GuestMessage::Fatal { .. } => "Fatal",
    }
}

/// A result's name as the guest gave it, safe to show.
fn named(scenario: &str, backend: &str, check: &str) -> String {
    format!(
        "{} [{}] {}",
        line_text(scenario, 100),
        line_text(backend, 100),
        line_text(check, 100)
    )
}

fn bounded(field: &'static str, what: &str, value: u64) -> Result<(), Violation> {
    if value > MAX_GUEST_MS {
        return Err(Violation::Number {
            field,
            what: what.to_string(),
            value,
            max: MAX_GUEST_MS,
        });
    }
    Ok(())
}

/// What `uname -r` can print: a digit first, then letters, digits and `._+~-`.
pub fn is_release(s: &str) -> bool {
    s.len() <= MAX_RELEASE
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
}

fn series(s: &Series, what: &str) -> Result<(), Violation> {
    let why = if s.step_ms == 0 || s.step_ms > MAX_STEP_MS {
        format!(
            "has steps of {} ms (1 to {MAX_STEP_MS} ms allowed)",
            s.step_ms
        )
    } else if s.sent.len() != s.answered.len() {
        format!(
            "has {} steps sent but {} answered",
            s.sent.len(),
            s.answered.len()
        )
    } else if s.sent.len() > MAX_SERIES_STEPS {
        format!("has {} steps, more than {MAX_SERIES_STEPS}", s.sent.len())
    } else if s.stopped_at_ms.is_some_and(|t| t > MAX_GUEST_MS) {
        format!(
            "stopped at {:?} ms, more than {MAX_GUEST_MS}",
            s.stopped_at_ms
        )
    } else {
        return Ok(());
    };
    Err(Violation::Series {
        what: what.to_string(),
        why,
    })
}

/// Capture files become `NAMESPACE-INTERFACE.pcap`: both must be names of
/// the kind a topology declares, and the packets base64.
fn captures(ev: &Evidence, what: &str) -> Result<(), Violation> {
    for c in &ev.captures {
        let name = || {
            format!(
                "{}-{}",
                line_text(&c.namespace, 40),
                line_text(&c.interface, 40)
            )
        };
        let fail = |why| {
            Err(Violation::Capture {
                what: what.to_string(),
                name: name(),
                why,
            })
        };
        let namespace = !c.namespace.is_empty()
            && c.namespace.len() <= 32
            && c.namespace
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !namespace {
            return fail("names no namespace (1-32 of a-z, 0-9 and '-')");
        }
        let interface = !c.interface.is_empty()
            && c.interface.len() <= 15
            && !c.interface.chars().all(|ch| ch == '.')
            && c.interface
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
        if !interface {
            return fail("names no interface (1-15 of A-Z, a-z, 0-9, '.', '_' and '-')");
        }
        if base64::engine::general_purpose::STANDARD
            .decode(&c.pcap_base64)
            .is_err()
        {
            return fail("is not base64");
        }
    }
    Ok(())
}

fn clean_evidence(ev: &mut Evidence) {
    let mut note = std::mem::take(&mut ev.capture_note);
    for t in ev.tables_mut().into_iter().chain([&mut note]) {
        if let Cow::Owned(c) = clean(t, true) {
            *t = c;
        }
    }
    ev.capture_note = note;
    for l in &mut ev.dmesg {
        if let Cow::Owned(c) = clean(l, false) {
            *l = c;
        }
    }
}

fn evidence_size(ev: &Evidence) -> usize {
    ev.conntrack.len()
        + ev.ruleset.len()
        + ev.counters.len()
        + ev.routes.len()
        + ev.wireguard.len()
        + ev.capture_note.len()
        + ev.dmesg.iter().map(|l| l.len()).sum::<usize>()
        + ev.captures
            .iter()
            .map(|c| c.pcap_base64.len())
            .sum::<usize>()
}

/// Keep `ev` within `left` bytes of the run's evidence budget: past it, the
/// captures go and each text is cut to a few KiB. Returns what is left.
fn keep_within(ev: &mut Evidence, left: usize) -> usize {
    let size = evidence_size(ev);
    if size <= left {
        return left - size;
    }
    const SHORT: usize = 4096;
    ev.captures.clear();
    for t in ev.tables_mut() {
        *t = cut(t, SHORT);
    }
    ev.dmesg.truncate(SHORT / 64);
    ev.capture_note = format!(
        "captures left out and texts cut: this run's evidence passed the host's budget of {} MiB; {}",
        MAX_EVIDENCE >> 20,
        cut(&ev.capture_note, SHORT)
    );
    left.saturating_sub(evidence_size(ev))
}

#[cfg(test)]
mod tests;

/// Whatever the guest sends, in whatever pieces, the host takes it line by
/// line and accepts a message or names a violation; it never panics.
#[cfg(test)]
mod fuzz;
