//! A check's evidence as files under the output folder (`--out`): for each
//! failing check (every check with --evidence-always) its result, conntrack
//! table, ruleset, counters, routes, WireGuard state, kernel log and packet
//! captures, in the kernel's folder under the output folder, in the
//! subfolder `report::result_folder` names. Both are host-side names: the
//! kernel's folder is made before the guest starts, and the guest's
//! results were checked to be the job's (`inbound`).

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;

use crate::report::{self, KernelRun};

/// Write each failing (or, on request, every) check's evidence as files
/// under `kernel_dir`, the kernel's folder.
pub fn write(kernel_dir: &Path, run: &mut KernelRun) -> Result<()> {
    for r in run.results.iter_mut() {
        let Some(ev) = &r.evidence else {
            continue;
        };
        let dir = kernel_dir.join(report::result_folder(r));
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
