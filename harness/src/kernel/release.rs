//! A suite's `Release` file (the text its InRelease signs): which suite it
//! is, until when it may be used (`Valid-Until`), and the size and SHA-256
//! of every index it lists. natvet reads indexes only through it: an index
//! whose hash the signed Release does not list is never used.

use chrono::{DateTime, NaiveDate, Utc};

/// One index file a Release lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// Relative to the suite's folder (`main/binary-amd64/Packages.xz`).
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What natvet reads of a Release file.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub date: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    /// `Acquire-By-Hash: yes`: indexes can be fetched by their hash, which
    /// cannot change under a mirror's sync.
    pub by_hash: bool,
    pub sha256: Vec<FileHash>,
}

/// Why a Release cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseProblem {
    #[error("its Release is malformed: {0}")]
    Malformed(String),
    #[error("its Release expired on {until} ({days} day(s) ago, Valid-Until): the mirror serves a stale copy, which could hide newer (security) kernels")]
    Expired { until: String, days: i64 },
    #[error("its Release is for suite {found}, not {wanted}: the mirror answers with another suite's index")]
    WrongSuite { wanted: String, found: String },
}

impl Release {
    /// Parse a Release text (one deb822 paragraph).
    pub fn parse(text: &str) -> Result<Release, ReleaseProblem> {
        let mut r = Release::default();
        let mut field = String::new();
        let mut seen_any = false;
        for line in text.lines() {
            if line.trim().is_empty() {
                if seen_any {
                    break;
                }
                continue;
            }
            if let Some(cont) = line.strip_prefix([' ', '\t']) {
                if field.eq_ignore_ascii_case("SHA256") {
                    r.sha256.push(parse_hash_line(cont)?);
                }
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| ReleaseProblem::Malformed(format!("line `{line}` has no field")))?;
            seen_any = true;
            field = k.trim().to_string();
            let v = v.trim();
            match field.to_ascii_lowercase().as_str() {
                "suite" => r.suite = Some(v.to_string()),
                "codename" => r.codename = Some(v.to_string()),
                "date" => r.date = Some(parse_date(v)?),
                "valid-until" => r.valid_until = Some(parse_date(v)?),
                "acquire-by-hash" => r.by_hash = v.eq_ignore_ascii_case("yes"),
                _ => {}
            }
        }
        if !seen_any {
            return Err(ReleaseProblem::Malformed("it is empty".into()));
        }
        Ok(r)
    }

    /// May this Release be used for `suite` at `now`? (`check_valid_until`
    /// false: apt's `Check-Valid-Until: no`, for snapshot mirrors.)
    pub fn check(
        &self,
        suite: &str,
        now: DateTime<Utc>,
        check_valid_until: bool,
    ) -> Result<(), ReleaseProblem> {
        let names: Vec<&str> = [&self.suite, &self.codename]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !names.is_empty() && !names.contains(&suite) {
            return Err(ReleaseProblem::WrongSuite {
                wanted: suite.to_string(),
                found: names.join(" / "),
            });
        }
        if let Some(until) = self.valid_until.filter(|_| check_valid_until) {
            if until < now {
                return Err(ReleaseProblem::Expired {
                    until: until.format("%Y-%m-%d %H:%M UTC").to_string(),
                    days: (now - until).num_days(),
                });
            }
        }
        Ok(())
    }

    /// The entry of one index file, if the Release lists it.
    pub fn entry(&self, path: &str) -> Option<&FileHash> {
        self.sha256.iter().find(|f| f.path == path)
    }
}

fn parse_hash_line(line: &str) -> Result<FileHash, ReleaseProblem> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let bad = || ReleaseProblem::Malformed(format!("SHA256 line `{}`", line.trim()));
    match f.as_slice() {
        [hash, size, path] if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(FileHash {
                path: path.to_string(),
                size: size.parse().map_err(|_| bad())?,
                sha256: hash.to_ascii_lowercase(),
            })
        }
        _ => Err(bad()),
    }
}

/// `Sat, 11 Jul 2026 10:16:37 UTC` (RFC 2822 with `UTC`, as Debian writes
/// it; `GMT`, `Z` and `+0000` too).
pub fn parse_date(v: &str) -> Result<DateTime<Utc>, ReleaseProblem> {
    let bad = || ReleaseProblem::Malformed(format!("date `{v}`"));
    let v = v.trim();
    let v = v.split_once(", ").map(|(_, rest)| rest).unwrap_or(v);
    let f: Vec<&str> = v.split_whitespace().collect();
    let [day, month, year, time, zone] = f.as_slice() else {
        return Err(bad());
    };
    if !matches!(*zone, "UTC" | "GMT" | "Z" | "UT" | "+0000" | "-0000") {
        return Err(bad());
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))
    .ok_or_else(bad)? as u32
        + 1;
    let t: Vec<u32> = time
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [h, m, s] = t[..] else { return Err(bad()) };
    let date = NaiveDate::from_ymd_opt(
        year.parse().map_err(|_| bad())?,
        month,
        day.parse().map_err(|_| bad())?,
    )
    .ok_or_else(bad)?;
    Ok(date.and_hms_opt(h, m, s.min(59)).ok_or_else(bad)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::openpgp::tests::RELEASE;

    #[test]
    fn parses_a_release() {
        let r = Release::parse(std::str::from_utf8(RELEASE).unwrap()).unwrap();
        assert_eq!(r.suite.as_deref(), Some("stable"));
        assert_eq!(r.codename.as_deref(), Some("testing"));
        let e = r.entry("main/binary-amd64/Packages.xz").unwrap();
        assert_eq!(e.size, 312);
        assert_eq!(e.sha256.len(), 64);
        assert!(r.entry("main/binary-i386/Packages.xz").is_none());
        let now = parse_date("Tue, 01 Dec 2026 21:00:00 UTC").unwrap();
        assert!(r.check("stable", now, true).is_ok());
        assert!(r.check("testing", now, true).is_ok());
        assert!(matches!(
            r.check("sid", now, true),
            Err(ReleaseProblem::WrongSuite { .. })
        ));
    }

    #[test]
    fn an_expired_release_is_refused() {
        let text = "Suite: sid\nDate: Fri, 30 Oct 2026 08:08:01 UTC\nValid-Until: Fri, 06 Nov 2026 08:08:01 UTC\nSHA256:\n";
        let r = Release::parse(text).unwrap();
        let now = parse_date("Tue, 01 Dec 2026 21:00:00 UTC").unwrap();
        let e = r.check("sid", now, true).unwrap_err();
        assert_eq!(
            e,
            ReleaseProblem::Expired {
                until: "2026-11-06 08:08 UTC".into(),
                days: 25
            }
        );
        assert!(e.to_string().contains("expired on 2026-11-06"), "{e}");
        // Check-Valid-Until: no.
        assert!(r.check("sid", now, false).is_ok());
        // Without Valid-Until (Debian's stable suites) nothing expires.
        let r = Release::parse("Suite: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n").unwrap();
        assert!(r.check("bookworm", now, true).is_ok());
    }

    #[test]
    fn malformed_releases() {
        assert!(Release::parse("").is_err());
        assert!(Release::parse("<html><body>404</body></html>").is_err());
        assert!(Release::parse("Suite: x\nSHA256:\n nothex 12 main/x\n").is_err());
        assert!(Release::parse("Suite: x\nDate: yesterday\n").is_err());
        assert_eq!(
            parse_date("Mon, 07 Dec 2026 00:22:33 UTC")
                .unwrap()
                .to_rfc3339(),
            "2026-12-07T00:22:33+00:00"
        );
    }
}
