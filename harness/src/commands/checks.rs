//! `natvet checks`: the check catalogue.

use clap::Subcommand;

use super::error::Result;
use crate::report::exit;

#[derive(Subcommand, Debug)]
pub enum ChecksCmd {
    /// List every check kind a scenario can use.
    List,
}

pub fn exec(cmd: ChecksCmd) -> Result<i32> {
    match cmd {
        ChecksCmd::List => {
            print!("{}", crate::catalogue::render());
            Ok(exit::PASS)
        }
    }
}
