//! The kernel sets shipped with natvet (vm-images/matrix.toml): named lists of
//! kernel specs, `default` the one `vet` runs without --kernel.

use anyhow::{bail, Context, Result};

/// The default kernel sets, shipped with natvet.
pub const KERNEL_SETS: &str = include_str!("../../vm-images/matrix.toml");

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sets {
    set: std::collections::BTreeMap<String, Set>,
    /// `[[repository]]` entries, read by `kernel::repository`.
    #[serde(default, rename = "repository")]
    _repositories: Vec<toml::Table>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Set {
    kernels: Vec<String>,
}

fn kernel_sets() -> Result<Sets> {
    toml::from_str(KERNEL_SETS).context("vm-images/matrix.toml is malformed")
}

/// The names of the kernel sets in vm-images/matrix.toml.
pub fn kernel_set_names() -> Result<Vec<String>> {
    Ok(kernel_sets()?.set.into_keys().collect())
}

/// The kernels of a named set in vm-images/matrix.toml.
pub fn kernel_set(name: &str) -> Result<Vec<String>> {
    let sets = kernel_sets()?;
    match sets.set.get(name) {
        Some(s) => Ok(s.kernels.clone()),
        None => bail!(
            "no kernel set named '{name}'; sets: {}",
            sets.set.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}
