//! Debian version ordering (`dpkg --compare-versions`), as described in
//! deb-version(7): `[epoch:]upstream[-revision]`, compared part by part;
//! within a part, alternating non-digit and digit runs, where `~` sorts
//! before everything (even the end of the string) and letters sort before
//! other characters. Also the numeric parts of a kernel release
//! (`6.12.95+deb12-amd64` → 6.12.95) and its version line.

use std::cmp::Ordering;

/// A parsed Debian version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion<'a> {
    pub epoch: u64,
    pub upstream: &'a str,
    pub revision: &'a str,
}

impl<'a> DebVersion<'a> {
    pub fn parse(v: &'a str) -> DebVersion<'a> {
        let v = v.trim();
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
                (e.parse().unwrap_or(0), rest)
            }
            _ => (0, v),
        };
        let (upstream, revision) = match rest.rfind('-') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        DebVersion {
            epoch,
            upstream,
            revision,
        }
    }
}

impl Ord for DebVersion<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(self.upstream, other.upstream))
            .then_with(|| compare_part(self.revision, other.revision))
    }
}

impl PartialOrd for DebVersion<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two Debian version strings.
pub fn compare(a: &str, b: &str) -> Ordering {
    DebVersion::parse(a).cmp(&DebVersion::parse(b))
}

fn char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = char_order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = char_order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Digit run: compare numerically, ignoring leading zeros.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

// ---------------------------------------------------------------- releases

/// Numeric upstream components of a release: 6.12.95+deb12-amd64 → [6, 12, 95].
pub fn release_components(release: &str) -> Vec<u64> {
    let head = release.split(['-', '+', '~']).next().unwrap_or("");
    head.split('.').map_while(|c| c.parse().ok()).collect()
}

/// True when `release` is of `line` (`6.12.95+deb12-amd64` is of `[6, 12]` and `[6]`).
pub fn line_matches(release: &str, line: &[u64]) -> bool {
    release_components(release).starts_with(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0a", Less),
            ("1.0a", "1.0+", Less),
            ("1:0.1", "2.0", Greater),
            ("0:2.0", "2.0", Equal),
            ("2.0-1", "2.0-2", Less),
            ("2.0-10", "2.0-9", Greater),
            ("001.0", "1.0", Equal),
            ("6.12.95-1~bpo12+1", "6.12.43-1~bpo12+1", Greater),
            ("6.12.117-1", "6.12.95-1~bpo12+1", Greater),
            ("7.3~rc7-1~exp1", "7.3-1", Less),
            ("7.3~rc7-1~exp1", "7.2.13-1", Greater),
            ("7.3.4-1~bpo13+1", "7.3~rc7-1~exp1", Greater),
            ("6.1.170-1", "6.1.158-1", Greater),
            ("1.2-3-4", "1.2-3-5", Less),
            ("a", "", Greater),
            ("", "~", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn parse_parts() {
        let v = DebVersion::parse("2:1.2-3-4");
        assert_eq!(v.epoch, 2);
        assert_eq!(v.upstream, "1.2-3");
        assert_eq!(v.revision, "4");
    }
}
