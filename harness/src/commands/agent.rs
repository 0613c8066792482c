//! `natvet agent` (hidden): the agent of `natvet verify`, which natvet starts
//! as its own child process. The one place the host side calls into the
//! guest side.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[arg(long)]
    pub job: PathBuf,
    #[arg(long)]
    pub results_fd: i32,
}

pub fn exec(args: AgentArgs) -> i32 {
    crate::agent::main_host(&args.job, args.results_fd)
}
