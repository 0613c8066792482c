//! The check catalogue as a table (`natvet checks list`): every kind a
//! scenario can name, what it proves, which behaviour of docs/checks.md it
//! covers and how long it may take. Each entry is the check's own
//! (`checks/KIND.rs`); this only renders them.

use crate::checks::CATALOGUE;

/// The catalogue as a table.
pub fn render() -> String {
    let mut out = format!(
        "{:<21} {:<40} {:>8}  {:<9} {}\n",
        "kind", "results", "timeout", "behaviour", "what passes"
    );
    for (kind, c) in CATALOGUE {
        let timeout = if c.timeout.is_zero() {
            "-".to_string()
        } else {
            format!("{} s", c.timeout.as_secs())
        };
        let wg = if c.needs_wireguard {
            " (needs WireGuard)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<21} {:<40} {:>8}  {:<9} {}{wg}\n",
            kind, c.results, timeout, c.behaviours, c.description
        ));
    }
    out
}

/// Every limit on a scenario's values as a Markdown table, as
/// docs/checks.md lists them (a test keeps the two the same).
pub fn limits_table() -> String {
    let mut out = String::from("| where | value | range | why |\n|---|---|---|---|\n");
    for (place, l) in crate::scenario::all_limits() {
        let place = match place {
            "scenario" | "relay" | "topology" => place.to_string(),
            perf if perf.starts_with("perf") => format!("[{perf}]"),
            kind => format!("`{kind}`"),
        };
        out.push_str(&format!(
            "| {place} | `{}` | {} | {} |\n",
            l.what,
            l.range(),
            l.why.replace('|', "/")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, SHIPPED};

    #[test]
    fn shipped_scenarios_use_only_catalogued_kinds() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap();
            for c in &s.checks {
                assert!(CATALOGUE.iter().any(|(k, _)| *k == c.kind()));
            }
        }
    }

    #[test]
    fn one_row_per_kind() {
        assert_eq!(render().lines().count(), CATALOGUE.len() + 1);
    }

    #[test]
    fn docs_list_every_limit() {
        let docs = include_str!("../../docs/checks.md");
        let table = limits_table();
        assert!(
            docs.contains(&table),
            "docs/checks.md must list the limits as natvet has them; the table:\n{table}"
        );
    }
}
