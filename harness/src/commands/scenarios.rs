//! `natvet scenarios`: list the shipped scenarios, show one, or validate a file.

use clap::Subcommand;

use super::error::{usage, Result};
use crate::report::exit;
use crate::scenario::{Scenario, SHIPPED};

#[derive(Subcommand, Debug)]
pub enum ScenariosCmd {
    /// List the shipped scenarios.
    List,
    /// Print a shipped scenario's TOML.
    Show { name: String },
    /// Validate a scenario file without running it.
    Check { path: String },
}

pub fn exec(cmd: ScenariosCmd) -> Result<i32> {
    match cmd {
        ScenariosCmd::List => list(),
        ScenariosCmd::Show { name } => show(name),
        ScenariosCmd::Check { path } => check(path),
    }
}

fn list() -> Result<i32> {
    for (name, _) in SHIPPED {
        let s = Scenario::load(name).map_err(|e| usage(e.to_string()))?;
        let slow = if s.slow {
            " (slow: runs only when named)"
        } else {
            ""
        };
        println!("{name:<20} {}{slow}", s.description);
    }
    Ok(exit::PASS)
}

fn show(name: String) -> Result<i32> {
    match SHIPPED.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => {
            print!("{text}");
            let s = Scenario::load(&name).map_err(|e| usage(e.to_string()))?;
            let own = s.topology != natvet_default_topology();
            println!(
                "\n# The topology it runs in ({}), as built:",
                if own {
                    "its own [topology]"
                } else {
                    "the default: see the README's scenario reference"
                }
            );
            for line in s.topology.describe(&s.relay.families).lines() {
                println!("#{line}");
            }
            Ok(exit::PASS)
        }
        None => Err(usage(
            Scenario::load(&name)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        )),
    }
}

fn check(path: String) -> Result<i32> {
    let s = Scenario::load(&path).map_err(|e| usage(e.to_string()))?;
    let backends: Vec<String> = s.backends.iter().map(|b| b.to_string()).collect();
    let families: Vec<String> = s.relay.families.iter().map(|f| f.to_string()).collect();
    println!(
            "{path}: scenario '{}' is valid: {} results per backend ({}), over {}, in {} namespaces ({})",
            s.name,
            s.result_names().len(),
            backends.join(", "),
            families.join(" and "),
            s.topology.namespaces.len(),
            s.topology.namespace_names().join(", ")
        );
    Ok(exit::PASS)
}

fn natvet_default_topology() -> crate::scenario::topology::TopologySpec {
    crate::scenario::topology::TopologySpec::default()
}
