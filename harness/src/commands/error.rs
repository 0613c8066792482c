//! How a command fails, as a type: the exit code comes from the variant.

use crate::report::exit;

/// Why a command gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input was wrong (an option, a spec, a file): nothing ran. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// natvet could not do it (the host, a download, a file it could not
    /// write): no verdict. Exit 3. Any other error becomes this one with `?`.
    #[error("{0:#}")]
    Infra(#[from] anyhow::Error),
}

impl CliError {
    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Infra(_) => exit::INFRA,
        }
    }
}

/// What every command function returns.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// The user's input was wrong: exit 2 with this message.
pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_exit_code_comes_from_the_kind_of_failure() {
        let e = usage("--jobs must be at least 1");
        assert_eq!(e.exit_code(), exit::USAGE);
        assert_eq!(e.to_string(), "--jobs must be at least 1");
        let io: anyhow::Result<()> =
            Err(std::io::Error::other("disk full")).context("writing x.json");
        let e = CliError::from(io.unwrap_err());
        assert_eq!(e.exit_code(), exit::INFRA);
        assert_eq!(e.to_string(), "writing x.json: disk full");
    }
}
