//! Limits on the numbers a user gives natvet: a scenario's values and the
//! command line's options. Each limit names the value, its range and why
//! the range is what it is (what a value beyond it would cost the guest or
//! break), and a value outside it is one message that says all three. A
//! scenario's limits are checked on the host before anything boots; each
//! check lists its own in its catalogue entry (`Info::limits`), which
//! `natvet explain` prints and docs/checks.md tabulates.
//!
//! Imports nothing of natvet: the checks, the scenario and the command line
//! all use it.

use std::fmt;

/// The range a number the user gives must fall in, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Where the value is written: a scenario key (`flows`) or an option
    /// (`--timeout`); the line of a scenario's error is this key's.
    pub key: &'static str,
    /// What is limited, as the message names it: the key itself, `the
    /// number of ports`, or an expression of keys (`ports x duration`).
    pub what: &'static str,
    pub min: u64,
    pub max: u64,
    /// Written after a number: "" or " s", " bytes", " MiB".
    pub unit: &'static str,
    /// Why: what a value beyond the range would cost or break.
    pub why: &'static str,
}

impl Limit {
    /// A limit on the value written at `key`.
    pub const fn new(key: &'static str, min: u64, max: u64, why: &'static str) -> Limit {
        Limit {
            key,
            what: key,
            min,
            max,
            unit: "",
            why,
        }
    }

    /// The same limit, its numbers in `unit` (" s", " bytes").
    pub const fn unit(self, unit: &'static str) -> Limit {
        Limit { unit, ..self }
    }

    /// The same limit, on something other than the key's value itself
    /// (`the number of ports`, `ports x duration`).
    pub const fn on(self, what: &'static str) -> Limit {
        Limit { what, ..self }
    }

    /// Whether `value` falls in the range.
    pub fn holds(&self, value: u64) -> bool {
        (self.min..=self.max).contains(&value)
    }

    /// `value` within the range, or the message that says it is not.
    pub fn check<T>(&self, value: T) -> Result<(), OutOfRange>
    where
        T: TryInto<u64> + fmt::Display + Copy,
    {
        // A value too large for u64 (none of natvet's are) is beyond any limit.
        let shown = value.to_string();
        match value.try_into() {
            Ok(v) if self.holds(v) => Ok(()),
            _ => Err(self.out_of_range(shown, vec![self.key.to_string()])),
        }
    }

    /// A value computed from several (`ports x duration`): `shown` is how
    /// the message writes it ("7 x 86400 = 604800").
    pub fn check_derived(&self, value: u64, shown: String) -> Result<(), OutOfRange> {
        if self.holds(value) {
            return Ok(());
        }
        Err(self.out_of_range(shown, vec![self.key.to_string()]))
    }

    /// A value written elsewhere than in the table of whoever checks it
    /// (a check that limits `relay.masquerade_ports`): `path` is from the
    /// scenario's top.
    pub fn check_at<T>(&self, value: T, path: &[&str]) -> Result<(), OutOfRange>
    where
        T: TryInto<u64> + fmt::Display + Copy,
    {
        self.check(value).map_err(|mut e| {
            e.path = path.iter().map(|s| s.to_string()).collect();
            e.absolute = true;
            e
        })
    }

    /// The length of the list at `key`; the message points at the first
    /// entry too many.
    pub fn check_len(&self, len: usize) -> Result<(), OutOfRange> {
        if self.holds(len as u64) {
            return Ok(());
        }
        let mut path = vec![self.key.to_string()];
        if len as u64 > self.max {
            path.push(self.max.to_string());
        }
        Err(self.out_of_range(len.to_string(), path))
    }

    /// The range as people write it: "1-10000 s".
    pub fn range(&self) -> String {
        format!("{}-{}{}", self.min, self.max, self.unit)
    }

    fn out_of_range(&self, value: String, path: Vec<String>) -> OutOfRange {
        OutOfRange(Box::new(Detail {
            path,
            what: self.what.to_string(),
            value,
            limit: *self,
            absolute: false,
        }))
    }

    /// Parse a command-line number and check it against the limit: for
    /// clap's `value_parser` (a bad value is clap's usage error, exit 2).
    pub fn parse_arg(&self, text: &str) -> Result<u64, String> {
        let value: u64 = text.trim().parse().map_err(|_| {
            format!(
                "{} takes a whole number from {} to {}{}",
                self.key, self.min, self.max, self.unit
            )
        })?;
        self.check(value).map_err(|e| e.to_string())?;
        Ok(value)
    }
}

/// A value outside its limit: what, the value, the range and why (boxed:
/// errors stay small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange(Box<Detail>);

/// What an `OutOfRange` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// Where the value is written, below the table that holds it: keys,
    /// and list positions as numbers (`["faults", "2", "at"]`).
    pub path: Vec<String>,
    pub what: String,
    pub value: String,
    pub limit: Limit,
    /// `path` is from the scenario's top, not below the table of whoever
    /// checked it.
    pub absolute: bool,
}

impl std::ops::Deref for OutOfRange {
    type Target = Detail;
    fn deref(&self) -> &Detail {
        &self.0
    }
}

impl std::ops::DerefMut for OutOfRange {
    fn deref_mut(&mut self) -> &mut Detail {
        &mut self.0
    }
}

impl OutOfRange {
    /// The same error, the value's path below `prefix` (its table).
    pub fn under(mut self, prefix: &[&str]) -> OutOfRange {
        if self.absolute {
            return self;
        }
        let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        path.append(&mut self.0.path);
        self.0.path = path;
        self
    }
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.limit;
        write!(
            f,
            "value out of range: {} = {} must be between {} and {}{} because {}",
            self.what, self.value, l.min, l.max, l.unit, l.why
        )
    }
}

impl std::error::Error for OutOfRange {}

/// Why a scenario's value cannot be used: a message that says what is
/// wrong and how to mend it, or a value out of its range (whose path gives
/// the line at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Says(String),
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
}

impl Invalid {
    /// The same error, a value's path below `prefix` (its table).
    pub fn under(self, prefix: &[&str]) -> Invalid {
        match self {
            Invalid::OutOfRange(e) => Invalid::OutOfRange(e.under(prefix)),
            says => says,
        }
    }
}

impl From<String> for Invalid {
    fn from(s: String) -> Invalid {
        Invalid::Says(s)
    }
}

impl From<&str> for Invalid {
    fn from(s: &str) -> Invalid {
        Invalid::Says(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: Limit = Limit::new("flows", 1, 10_000, "each flow is a socket in the guest");

    #[test]
    fn a_value_out_of_range_says_what_where_and_why() {
        assert!(FLOWS.check(1u32).is_ok() && FLOWS.check(10_000u32).is_ok());
        let e = FLOWS.check(1_000_000_000u32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value out of range: flows = 1000000000 must be between 1 and 10000 because each flow is a socket in the guest"
        );
        assert_eq!(e.path, ["flows"]);
        assert_eq!(e.under(&["check", "3"]).path, ["check", "3", "flows"]);
        assert!(FLOWS.check(0u64).is_err());
        // Signed values below zero are out of every range.
        assert!(FLOWS.check(-1i64).is_err());
    }

    #[test]
    fn lists_and_derived_values() {
        let ports = Limit::new("ports", 1, 2, "each port waits").on("the number of ports");
        assert!(ports.check_len(2).is_ok());
        let e = ports.check_len(5).unwrap_err();
        assert_eq!(e.path, ["ports", "2"], "points at the first one too many");
        assert!(e
            .to_string()
            .starts_with("value out of range: the number of ports = 5"));
        assert_eq!(ports.check_len(0).unwrap_err().path, ["ports"]);
        let product = Limit::new("duration", 1, 100, "memory").on("ports x duration");
        let e = product
            .check_derived(7 * 86_400, "7 x 86400 = 604800".into())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("ports x duration = 7 x 86400 = 604800"),
            "{e}"
        );
    }

    #[test]
    fn command_line_numbers_are_parsed_and_checked() {
        let t = Limit::new("--timeout", 1, 86_400, "a day is the longest run").unit(" s");
        assert_eq!(t.parse_arg("600"), Ok(600));
        let e = t.parse_arg("0").unwrap_err();
        assert!(
            e.contains("--timeout = 0 must be between 1 and 86400 s because"),
            "{e}"
        );
        assert!(t.parse_arg("99999999999999999999").is_err());
        assert!(t.parse_arg("ten").unwrap_err().contains("whole number"));
        assert_eq!(t.range(), "1-86400 s");
    }

    #[test]
    fn invalid_keeps_the_path() {
        let i: Invalid = FLOWS.check(0u32).unwrap_err().into();
        match i.under(&["check", "0"]) {
            Invalid::OutOfRange(e) => assert_eq!(e.path, ["check", "0", "flows"]),
            other => panic!("{other:?}"),
        }
        let at = FLOWS
            .check_at(0u32, &["relay", "masquerade_ports"])
            .unwrap_err()
            .under(&["check", "1"]);
        assert_eq!(at.path, ["relay", "masquerade_ports"]);
        let s: Invalid = "plain".into();
        assert_eq!(s.under(&["x"]).to_string(), "plain");
    }
}
