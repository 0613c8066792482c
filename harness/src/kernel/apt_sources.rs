//! The host's apt sources, read at run time: which archive URIs this
//! machine uses (Debian's main archive and its security archive), with the
//! keyrings their entries name (`Signed-By`) and apt's `Check-Valid-Until`.
//! natvet never names a mirror of its own.

use std::fs;
use std::path::{Path, PathBuf};

use super::openpgp::Keys;

/// One `deb` entry of the host's apt sources (a deb822 paragraph, or a
/// one-line `deb [options] URI SUITE COMPONENT...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AptEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Signed-By` (deb822) / `signed-by=` (one-line), as written.
    pub signed_by: Option<String>,
    /// `Check-Valid-Until: no` turns off the expiry check, as in apt.
    pub check_valid_until: bool,
}

impl AptEntry {
    /// True when every suite is a `-security` one (or the URI says so).
    pub fn is_security(&self) -> bool {
        (!self.suites.is_empty() && self.suites.iter().all(|s| s.ends_with("-security")))
            || self.uris.iter().any(|u| u.ends_with("-security"))
    }

    /// The keys its `Signed-By` names (keyring files, fingerprints, or an
    /// inline key block), if it names any.
    pub fn keys(&self) -> Option<Keys> {
        self.signed_by.as_deref().map(signed_by_keys)
    }

    /// Its first http(s) URI, without a trailing slash.
    pub fn http_uri(&self) -> Option<String> {
        self.uris.iter().find_map(|u| usable_uri(u))
    }
}

fn usable_uri(uri: &str) -> Option<String> {
    let uri = uri.trim().trim_end_matches('/');
    (uri.starts_with("http://") || uri.starts_with("https://")).then(|| uri.to_string())
}

/// What a `Signed-By` value names: keyring paths, fingerprints, or an
/// inline ASCII-armored key block (deb822 only).
pub fn signed_by_keys(value: &str) -> Keys {
    let mut keys = Keys::default();
    if value.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        // deb822 folds the block; a line holding only "." is an empty line.
        let block: String = value
            .split('\n')
            .map(|l| if l.trim() == "." { "" } else { l.trim() })
            .collect::<Vec<_>>()
            .join("\n");
        keys.inline.push(block.into_bytes());
        return keys;
    }
    for tok in value
        .split([',', ' ', '\t', '\n'])
        .filter(|t| !t.is_empty())
    {
        let fpr = tok.trim_end_matches('!');
        if fpr.len() >= 16 && fpr.bytes().all(|b| b.is_ascii_hexdigit()) {
            keys.fingerprints.push(fpr.to_ascii_uppercase());
        } else {
            keys.keyrings.push(PathBuf::from(tok));
        }
    }
    keys
}

/// Every `deb` entry of the host's apt configuration: the deb822 files
/// in /etc/apt/sources.list.d first, then the one-line lists.
pub fn host_entries() -> Vec<AptEntry> {
    entries_in(Path::new("/etc/apt"))
}

fn entries_in(etc_apt: &Path) -> Vec<AptEntry> {
    let mut out = Vec::new();
    let list_d = etc_apt.join("sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(&list_d)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources"))
    {
        if let Ok(text) = fs::read_to_string(p) {
            out.extend(parse_deb822(&text));
        }
    }
    let mut lists = vec![etc_apt.join("sources.list")];
    lists.extend(
        files
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "list")),
    );
    for p in lists {
        if let Ok(text) = fs::read_to_string(&p) {
            out.extend(parse_one_line(&text));
        }
    }
    // apt's own configuration may turn the expiry check off for every
    // source (`Acquire::Check-Valid-Until "false";`, as machines pointed at
    // a snapshot mirror do): natvet then trusts what apt trusts.
    if apt_conf_checks_valid_until(etc_apt) == Some(false) {
        for e in &mut out {
            e.check_valid_until = false;
        }
    }
    out
}

/// `Acquire::Check-Valid-Until` as apt.conf and apt.conf.d set it (the
/// last file to say wins, as in apt), if any does.
fn apt_conf_checks_valid_until(etc_apt: &Path) -> Option<bool> {
    let mut files = vec![etc_apt.join("apt.conf")];
    let mut parts: Vec<PathBuf> = fs::read_dir(etc_apt.join("apt.conf.d"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    parts.sort();
    files.extend(parts);
    let mut found = None;
    for p in files {
        if let Ok(text) = fs::read_to_string(&p) {
            if let Some(v) = check_valid_until_in(&text) {
                found = Some(v);
            }
        }
    }
    found
}

/// The value of `Acquire::Check-Valid-Until` in one apt.conf text (written
/// flat, `Acquire::Check-Valid-Until "false";`, or inside `Acquire { ... }`).
fn check_valid_until_in(text: &str) -> Option<bool> {
    let lower = text.to_ascii_lowercase();
    let mut found = None;
    for (i, _) in lower.match_indices("check-valid-until") {
        let before = lower[..i].trim_end();
        let flat = before.ends_with("acquire::");
        let nested =
            before.ends_with('{') && before[..before.len() - 1].trim_end().ends_with("acquire");
        if !(flat || nested) {
            continue;
        }
        let rest = lower[i + "check-valid-until".len()..].trim_start();
        let value: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        found = Some(!is_no(&value));
    }
    found
}

/// The enabled `deb` paragraphs of a deb822 sources file.
pub fn parse_deb822(text: &str) -> Vec<AptEntry> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push('\n');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(fk, _)| fk == k)
                .map(|(_, v)| v.as_str())
        };
        let words = |k: &str| -> Vec<String> {
            get(k)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        if !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        if get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        out.push(AptEntry {
            uris: words("uris"),
            suites: words("suites"),
            components: words("components"),
            signed_by: get("signed-by").map(str::to_string),
            check_valid_until: !get("check-valid-until").is_some_and(is_no),
        });
    }
    out
}

fn is_no(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "no" | "false" | "0" | "off"
    )
}

/// The `deb` lines of a one-line sources file.
pub fn parse_one_line(text: &str) -> Vec<AptEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let (opts, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((o, rest)) => (o, rest),
                None => continue,
            },
            None => ("", rest),
        };
        let mut toks = rest.split_whitespace();
        let Some(uri) = toks.next() else { continue };
        let suite = toks.next().unwrap_or("").to_string();
        let mut e = AptEntry {
            uris: vec![uri.to_string()],
            suites: vec![suite],
            components: toks.map(str::to_string).collect(),
            check_valid_until: true,
            ..Default::default()
        };
        for opt in opts.split_whitespace() {
            match opt.split_once('=') {
                Some(("signed-by", v)) => e.signed_by = Some(v.to_string()),
                Some(("check-valid-until", v)) => e.check_valid_until = !is_no(v),
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Check-Valid-Until: no
Signed-By: /k1.gpg, /k2.asc

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
Enabled: no
URIs: http://off.example/debian
Suites: bookworm
";

    #[test]
    fn apt_conf_can_turn_the_expiry_check_off() {
        assert_eq!(
            check_valid_until_in("Acquire::Check-Valid-Until \"false\";\n"),
            Some(false)
        );
        assert_eq!(
            check_valid_until_in("Acquire { Check-Valid-Until \"0\"; };"),
            Some(false)
        );
        assert_eq!(
            check_valid_until_in("Acquire::Check-Valid-Until \"true\";"),
            Some(true)
        );
        assert_eq!(check_valid_until_in("APT::Get::Assume-Yes \"true\";"), None);
        assert_eq!(
            check_valid_until_in("Foo::Check-Valid-Until \"false\";"),
            None
        );
    }

    #[test]
    fn reads_deb822() {
        let e = parse_deb822(DEB822);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].http_uri().as_deref(),
            Some("http://mirror.example/debian")
        );
        assert!(!e[0].is_security() && e[0].check_valid_until);
        assert_eq!(
            e[0].keys().unwrap().keyrings,
            [PathBuf::from(
                "/usr/share/keyrings/debian-archive-keyring.gpg"
            )]
        );
        assert!(e[1].is_security() && !e[1].check_valid_until);
        assert_eq!(
            e[1].keys().unwrap().keyrings,
            [PathBuf::from("/k1.gpg"), PathBuf::from("/k2.asc")]
        );
    }

    #[test]
    fn reads_one_line_lists() {
        let text = "# comment\ndeb http://sec.example/debian-security bookworm-security main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg check-valid-until=no] http://m.example/debian bookworm main contrib\n\
                    deb cdrom:[x]/ bookworm main\n";
        let e = parse_one_line(text);
        assert_eq!(e.len(), 3);
        assert!(e[0].is_security());
        assert_eq!(e[1].http_uri().as_deref(), Some("http://m.example/debian"));
        assert_eq!(e[1].components, ["main", "contrib"]);
        assert_eq!(e[1].signed_by.as_deref(), Some("/k.gpg"));
        assert!(!e[1].check_valid_until);
        assert_eq!(e[2].http_uri(), None);
    }

    #[test]
    fn signed_by_forms() {
        let k = signed_by_keys("A4285295FC7B1A81600062A9605C66F00D6C9793!, /etc/k.gpg");
        assert_eq!(k.fingerprints, ["A4285295FC7B1A81600062A9605C66F00D6C9793"]);
        assert_eq!(k.keyrings, [PathBuf::from("/etc/k.gpg")]);
        let inline =
            "\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n.\nmDMEZ\n-----END PGP PUBLIC KEY BLOCK-----";
        let k = signed_by_keys(inline);
        assert_eq!(k.inline.len(), 1);
        assert!(String::from_utf8_lossy(&k.inline[0]).contains("\n\nmDMEZ\n"));
    }
}
