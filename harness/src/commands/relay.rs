//! `natvet relay`: a production relay as a bundle. `show` prints the
//! scenario natvet derives from a bundle (its topology, sysctls and checks),
//! so an operator sees what `vet --relay` will prove before it boots.

use std::path::PathBuf;

use super::error::Result;
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
}

pub fn exec(cmd: RelayCmd) -> Result<i32> {
    match cmd {
        RelayCmd::Show { bundle, promise_of } => {
            let derived = super::options::relay_derived(&bundle, promise_of.as_deref())?;
            print!("{}", derived.toml);
            Ok(exit::PASS)
        }
    }
}
