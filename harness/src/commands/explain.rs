//! `natvet explain CHECK`: what a check proves (its catalogue entry), the
//! behaviour of docs/checks.md it belongs to and that behaviour's negative
//! control, how it can fail and where to look first (docs/checks.md's
//! table, or words derived from the catalogue for a kind without a row),
//! how it runs, and the last evidence natvet kept for it under `--out`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::{usage, Result};
use crate::checks::{Info, Phase, CATALOGUE};
use crate::report::{exit, sanitize};

/// The checks' documentation, compiled in: the behaviours and how each kind can fail.
const CHECKS_MD: &str = include_str!("../../../docs/checks.md");

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// A result's name (handshake/53, ipv6/conntrack/redirect-4000) or a
    /// kind of check (handshake, conntrack-redirect).
    pub check: String,
    /// The output folder of earlier runs, searched for the check's last evidence.
    #[arg(long, value_name = "DIR", default_value = "natvet-out")]
    pub out: PathBuf,
}

pub fn exec(args: ExplainArgs) -> Result<i32> {
    let Some((kind, info)) = find_kind(&args.check) else {
        let kinds: Vec<&str> = CATALOGUE.iter().map(|(k, _)| *k).collect();
        return Err(usage(format!(
            "no check is named {}: give a result's name such as handshake/53 or a kind: {}",
            args.check,
            kinds.join(", ")
        )));
    };
    print!("{}", explain(&args.check, kind, info));
    print!("{}", last_evidence(&args.out, &args.check, kind, info));
    Ok(exit::PASS)
}

/// The kind a name belongs to: a kind's own name, or a result its pattern
/// matches (with or without the `ipv6/` prefix).
pub fn find_kind(name: &str) -> Option<(&'static str, &'static Info)> {
    let bare = name.strip_prefix("ipv6/").unwrap_or(name);
    CATALOGUE
        .iter()
        .find(|(k, _)| *k == bare)
        .or_else(|| {
            CATALOGUE
                .iter()
                .find(|(_, i)| patterns(i).any(|p| matches(p, bare)))
        })
        .map(|(k, i)| (*k, *i))
}

fn patterns(info: &Info) -> impl Iterator<Item = &'static str> {
    info.results.split(", ")
}

/// Does `name` fit `pattern`, whose upper-case words (PORT, SIZE, NS) stand
/// for any non-empty text?
fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(c) if c.is_ascii_uppercase() => {
                let len = p.iter().take_while(|c| c.is_ascii_uppercase()).count();
                (1..=n.len()).any(|i| go(&p[len..], &n[i..]))
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// docs/checks.md's table rows whose first cell satisfies `key`, split into cells.
fn table_rows(key: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    CHECKS_MD
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.first().is_some_and(|c| key(c)))
        .collect()
}

/// How a kind can fail and where to look first, from docs/checks.md.
pub fn how_it_fails(kind: &str) -> Option<(String, String)> {
    let cell = format!("`{kind}`");
    table_rows(|c| c == cell)
        .into_iter()
        .find(|cells| cells.len() >= 3)
        .map(|cells| (cells[1].clone(), cells[2].clone()))
}

/// Behaviour `n` of docs/checks.md: what it is and its negative control.
fn behaviour(n: &str) -> Option<(String, String)> {
    table_rows(|c| c == n)
        .into_iter()
        .find(|cells| cells.len() >= 4)
        .map(|cells| (cells[1].clone(), cells[3].clone()))
}

/// Long lines folded at about 78 columns under an indent.
fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + word.len() + 1 > 78 {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Everything but the evidence.
pub fn explain(name: &str, kind: &str, info: &Info) -> String {
    let mut out = String::new();
    let title = if name == kind {
        format!("{kind} (results {})", info.results)
    } else {
        format!("{name}: a check of kind {kind} (results {})", info.results)
    };
    out.push_str(&format!("{title}\n\nWhat it proves\n"));
    out.push_str(&wrap(&format!("passes when {}.", info.description), "  "));
    out.push_str("\nThe behaviour it belongs to (docs/checks.md)\n");
    for n in info.behaviours.split(',').map(str::trim) {
        match behaviour(n) {
            Some((what, control)) => {
                out.push_str(&wrap(&format!("{n}. {what}"), "  "));
                if !control.is_empty() {
                    out.push_str(&wrap(&format!("negative control: {control}"), "     "));
                }
            }
            None => out.push_str(&format!("  {n}.\n")),
        }
    }
    out.push_str("\nHow it runs\n");
    let mut how = vec!["once per NAT backend of the scenario".to_string()];
    if info.per_family {
        how.push(format!(
            "and per address family (IPv6 results are named ipv6/{})",
            info.results.split(", ").next().unwrap_or(info.results)
        ));
    }
    how.push(match info.phase {
        Phase::BeforeTunnel => {
            "before the WireGuard tunnel is up (plain UDP, the listen port free)".into()
        }
        Phase::AfterTunnel => "once the tunnel is up".into(),
    });
    if !info.timeout.is_zero() {
        how.push(format!(
            "waits up to {} s per result",
            info.timeout.as_secs()
        ));
    }
    if info.needs_wireguard {
        how.push("needs WireGuard in the kernel (unsupported without it)".into());
    }
    out.push_str(&wrap(&format!("{}.", how.join("; ")), "  "));
    let example = if info.example.is_empty() {
        format!("[[check]] kind = \"{kind}\"")
    } else {
        format!(
            "[[check]] kind = \"{kind}\", {}",
            info.example.replace('\n', ", ")
        )
    };
    out.push_str(&format!("  in a scenario: {example}\n"));
    if !info.limits.is_empty() {
        out.push_str("\nIts limits (checked before any VM boots)\n");
        for l in info.limits {
            out.push_str(&wrap(
                &format!("{} is {}: {}", l.what, l.range(), l.why),
                "  ",
            ));
        }
    }
    out.push_str("\nHow it can fail\n");
    match how_it_fails(kind) {
        Some((how, look)) => {
            out.push_str(&wrap(&how.replace('`', ""), "  "));
            out.push_str(&wrap(
                &format!("look first at: {}", look.replace('`', "")),
                "  ",
            ));
        }
        None => out.push_str(&wrap(
            &format!(
                "FAIL when the kernel does not do what it should: it passes only when {}; \
                 unsupported when the kernel lacks what it needs{}; ERROR when natvet itself \
                 could not run it. Look first at the evidence: packet captures, the relay's \
                 conntrack table and ruleset.",
                info.description,
                if info.needs_wireguard {
                    " (WireGuard)"
                } else {
                    ""
                }
            ),
            "  ",
        )),
    }
    out
}

/// The newest evidence folder under `out` for the name (or, given a kind,
/// for any of its results): its result and files.
fn last_evidence(out: &Path, name: &str, kind: &str, info: &Info) -> String {
    let wanted = |folder: &str| -> bool {
        if name != kind {
            return folder == sanitize(name);
        }
        let folder = folder.strip_prefix("ipv6_").unwrap_or(folder);
        patterns(info).any(|p| matches(&sanitize(p), folder))
    };
    let mut found: Vec<(SystemTime, PathBuf)> = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    // OUT/KERNEL/SCENARIO-BACKEND/CHECK/result.txt
    for k in dirs(out) {
        for run in dirs(&k) {
            for check in dirs(&run) {
                let folder = check.file_name().and_then(|f| f.to_str()).unwrap_or("");
                let result = check.join("result.txt");
                if wanted(folder) {
                    if let Ok(t) = result.metadata().and_then(|m| m.modified()) {
                        found.push((t, check));
                    }
                }
            }
        }
    }
    found.sort();
    let Some((when, dir)) = found.pop() else {
        return format!(
            "\nLast evidence\n  none under {} for {name}: natvet keeps evidence for checks that do not pass (and for all with --evidence-always); --out DIR looks elsewhere.\n",
            out.display()
        );
    };
    let mut s = format!(
        "\nLast evidence ({} folder(s) under {}; the newest)\n  {}\n",
        found.len() + 1,
        out.display(),
        dir.display()
    );
    if let Ok(m) = when.duration_since(SystemTime::UNIX_EPOCH) {
        if let Some(t) = chrono::DateTime::from_timestamp(m.as_secs() as i64, 0) {
            s.push_str(&format!("  written {}\n", t.format("%Y-%m-%d %H:%M UTC")));
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("result.txt")) {
        for l in text.lines() {
            s.push_str(&format!("  {l}\n"));
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|f| f != "result.txt")
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if !files.is_empty() {
        s.push_str(&wrap(&format!("files: {}", files.join(" ")), "  "));
    }
    if let Ok(ct) = std::fs::read_to_string(dir.join("conntrack.txt")) {
        let lines: Vec<&str> = ct.lines().take(6).collect();
        if !lines.is_empty() {
            s.push_str("  conntrack (first lines):\n");
            for l in lines {
                s.push_str(&format!("    {l}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_their_kind() {
        let kind = |n: &str| find_kind(n).map(|(k, _)| k);
        assert_eq!(kind("handshake/53"), Some("handshake"));
        assert_eq!(kind("ipv6/handshake/53"), Some("handshake"));
        assert_eq!(kind("no-handshake/33434"), Some("no-handshake"));
        assert_eq!(kind("conntrack/redirect-4000"), Some("conntrack-redirect"));
        assert_eq!(kind("conntrack-redirect"), Some("conntrack-redirect"));
        assert_eq!(kind("forward/icmp"), Some("forward"));
        assert_eq!(kind("roaming/home:up"), Some("roaming"));
        assert_eq!(kind("udp-gso/4x40"), Some("udp-gso"));
        assert_eq!(kind("port-forward/tcp-8443"), Some("port-forward"));
        assert_eq!(kind("nat-clash/port-shadow"), Some("port-shadow"));
        assert_eq!(kind("kernel-health"), Some("kernel-health"));
        assert_eq!(kind("handshake"), Some("handshake"));
        assert_eq!(kind("nonsense/1"), None);
    }

    #[test]
    fn every_kind_explains_itself() {
        for (kind, info) in CATALOGUE {
            let text = explain(kind, kind, info);
            assert!(text.contains("What it proves"), "{kind}");
            assert!(text.contains("How it can fail"), "{kind}");
            for n in info.behaviours.split(',').map(str::trim) {
                assert!(
                    behaviour(n).is_some(),
                    "{kind}: behaviour {n} not in docs/checks.md"
                );
            }
        }
    }

    #[test]
    fn the_failure_table_names_only_real_kinds() {
        let rows = table_rows(|c| c.starts_with('`'));
        assert!(rows.len() >= 20);
        for cells in rows {
            let kind = cells[0].trim_matches('`');
            assert!(
                CATALOGUE.iter().any(|(k, _)| *k == kind),
                "docs/checks.md explains {kind}, which is no check kind"
            );
        }
    }

    #[test]
    fn finds_the_newest_evidence() {
        let out = tempfile::tempdir().unwrap();
        let dir = out
            .path()
            .join("6.12.95/extended-ports-nftables/handshake_53");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("result.txt"),
            "status: FAIL\nexpected: x\nobserved: y\n",
        )
        .unwrap();
        std::fs::write(dir.join("conntrack.txt"), "udp 17 29 src=192.0.2.2\n").unwrap();
        let (kind, info) = find_kind("handshake/53").unwrap();
        let text = last_evidence(out.path(), "handshake/53", kind, info);
        assert!(
            text.contains("handshake_53") && text.contains("status: FAIL"),
            "{text}"
        );
        assert!(text.contains("udp 17 29 src=192.0.2.2"), "{text}");
        let by_kind = last_evidence(out.path(), "handshake", kind, info);
        assert!(by_kind.contains("handshake_53"), "{by_kind}");
        let none = last_evidence(out.path(), "handshake/4000", kind, info);
        assert!(none.contains("none under"), "{none}");
    }
}
