//! `natvet relay`: a production relay as a bundle. `capture` writes one
//! from the running relay (read-only); `show` prints the scenario natvet
//! derives from a bundle (its topology, sysctls and checks), so an operator
//! sees what `vet --relay` will prove before it boots.

use std::path::PathBuf;

use super::error::{usage, Result};
use crate::report::exit;

#[derive(clap::Subcommand, Debug)]
pub enum RelayCmd {
    /// Print the scenario derived from a bundle (TOML, as `--scenario` takes
    /// it, the ruleset apart): what `natvet vet --relay BUNDLE` will check.
    ///
    /// Exit codes: 0 the bundle is valid, 2 it is not (file and line said).
    Show {
        /// The bundle's folder (with relay.toml).
        bundle: PathBuf,
        /// Derive the checks from this bundle's ruleset instead (what a
        /// ruleset gate holds the candidate to).
        #[arg(long, value_name = "BUNDLE")]
        promise_of: Option<PathBuf>,
    },
    /// Write this relay down as a bundle: its active ruleset (nft, or
    /// iptables-save / ip6tables-save), its net.* settings for forwarding,
    /// NAT and conntrack, its interfaces by role with addresses and MTUs,
    /// routes, policy rules, WireGuard's listen port and peer count, and the
    /// UDP ports its redirects promise. Read-only: it changes nothing on the
    /// host and never reads a private key. Run it as root on the relay (or
    /// in its namespace: `ip netns exec NS natvet relay capture ...`).
    ///
    /// Exit codes: 0 written and valid, 2 the host or the options do not say
    /// enough (or the bundle needs an edit, said by file and line), 3 a
    /// command failed.
    Capture {
        /// The new bundle's folder (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// The bundle's name (default: this host's name, or "relay" with --redact).
        #[arg(long)]
        name: Option<String>,
        /// The tool the relay's boot loads its rules with (default: the one
        /// whose tables hold rules).
        #[arg(long, value_name = "nftables|iptables-nft|iptables-legacy")]
        backend: Option<crate::nat::BackendKind>,
        /// The interface clients' packets arrive on (default: the default route's).
        #[arg(long, value_name = "IFACE")]
        public: Option<String>,
        /// Where masqueraded traffic leaves, if not the public interface
        /// (default: the ruleset's masquerade interface, if another).
        #[arg(long, value_name = "IFACE")]
        wan: Option<String>,
        /// The clients' WireGuard interface (default: the only one here). On
        /// a host without it, this names production's, with
        /// --wireguard-address and --listen-port.
        #[arg(long, value_name = "NAME")]
        wireguard: Option<String>,
        /// The WireGuard interface's address with prefix (repeatable;
        /// default: its addresses here).
        #[arg(long, value_name = "CIDR")]
        wireguard_address: Vec<crate::types::IpNet>,
        /// WireGuard's listen port (default: `wg show`'s, or the port every
        /// redirect sends to).
        #[arg(long)]
        listen_port: Option<u16>,
        /// Map public addresses onto documentation ranges, the same way in
        /// the manifest, the routes and the ruleset; leave out the host name.
        #[arg(long)]
        redact: bool,
    },
}

pub fn exec(cmd: RelayCmd) -> Result<i32> {
    match cmd {
        RelayCmd::Show { bundle, promise_of } => {
            let derived = super::options::relay_derived(&bundle, promise_of.as_deref())?;
            print!("{}", derived.toml);
            Ok(exit::PASS)
        }
        RelayCmd::Capture {
            out,
            name,
            backend,
            public,
            wan,
            wireguard,
            wireguard_address,
            listen_port,
            redact,
        } => {
            use crate::relay::capture::{self, CaptureError};
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err(usage(
                    "relay capture reads the ruleset, which needs root (CAP_NET_ADMIN): run it with sudo",
                ));
            }
            let hostname = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default();
            let from_host: String = hostname
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .take(40)
                .collect();
            let name = name.unwrap_or_else(|| {
                if redact || from_host.trim_matches('-').is_empty() {
                    "relay".into()
                } else {
                    from_host.trim_matches('-').to_string()
                }
            });
            let o = capture::Options {
                name,
                backend,
                public,
                wan,
                wireguard,
                wireguard_addresses: wireguard_address,
                listen_port,
                redact,
                when: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
                hostname,
            };
            let fail = |e: CaptureError| match e {
                CaptureError::Input(m) => usage(format!("relay capture: {m}")),
                CaptureError::Host(m) => anyhow::anyhow!("relay capture: {m}").into(),
            };
            let captured = capture::capture(&capture::LiveHost, &o).map_err(fail)?;
            capture::write(&out, &captured).map_err(fail)?;
            let derived = super::options::relay_derived(&out, None).map_err(|e| {
                usage(format!(
                    "the bundle is written to {}, but it needs an edit before natvet can use it: {e}; then check it with `natvet relay show {}`",
                    out.display(),
                    out.display()
                ))
            })?;
            let m = &captured.manifest;
            eprintln!(
                "natvet: captured relay '{}' into {}: {} ruleset ({}), public {}, WireGuard {} on port {}, {} checks derived",
                m.name,
                out.display(),
                m.backend,
                captured
                    .files
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .filter(|n| *n != "sysctl.conf")
                    .collect::<Vec<_>>()
                    .join(", "),
                m.interfaces.public.name,
                m.interfaces.wireguard.name,
                m.interfaces.wireguard.listen_port,
                derived.scenario.result_names().len()
            );
            for n in &captured.notes {
                eprintln!("natvet: {n}");
            }
            eprintln!(
                "natvet: next: `natvet relay show {0}` to read what will be checked, `natvet vet --relay {0}` to vet it",
                out.display()
            );
            Ok(exit::PASS)
        }
    }
}
