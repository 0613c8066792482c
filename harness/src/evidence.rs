//! A check's evidence as files under the output folder (`--out`): for each
//! failing check (every check with --evidence-always) its result, conntrack
//! table, ruleset, counters, routes, WireGuard state, kernel log and packet
//! captures, in the folder `report::evidence_path` names.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;

use crate::report::{self, KernelRun};

/// Write each failing (or, on request, every) check's evidence as files.
pub fn write(out_dir: &Path, run: &mut KernelRun) -> Result<()> {
    let paths: Vec<Option<String>> = run
        .results
        .iter()
        .map(|r| r.evidence.as_ref().map(|_| report::evidence_path(run, r)))
        .collect();
    for (r, path) in run.results.iter_mut().zip(paths) {
        let (Some(ev), Some(path)) = (&r.evidence, path) else {
            continue;
        };
        let dir = out_dir.join(path);
        r.evidence_dir = Some(dir.display().to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            (
                "result.txt",
                format!(
                    "status: {}\nexpected: {}\nobserved: {}\n",
                    r.status.label(),
                    r.expected,
                    r.observed
                ),
            ),
            ("conntrack.txt", ev.conntrack.clone()),
            ("ruleset.txt", ev.ruleset.clone()),
            ("counters.txt", ev.counters.clone()),
            ("routes.txt", ev.routes.clone()),
            ("wireguard.txt", ev.wireguard.clone()),
            ("dmesg.txt", ev.dmesg.join("\n")),
            ("captures.txt", ev.capture_note.clone()),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        for c in &ev.captures {
            let name = format!(
                "{}-{}.pcap",
                report::sanitize(&c.namespace),
                report::sanitize(&c.interface)
            );
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&c.pcap_base64)
                .with_context(|| format!("decoding the capture {name} from the guest"))?;
            std::fs::write(dir.join(&name), bytes)
                .with_context(|| format!("writing {}", dir.join(&name).display()))?;
        }
    }
    Ok(())
}
