//! Errors of the command-line tool and the exit codes they map to.

/// What went wrong, grouped by who can fix it; [`CliError::exit_code`] gives the process status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or a recipe is invalid (exit code 2, like clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    /// An input file is missing, unreadable or malformed: model, text, recipe, task file
    /// (exit code 3).
    #[error("{0}")]
    Input(String),
    /// The work itself failed: a compressor, an evaluation, writing the output (exit code 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Input(_) => 3,
            CliError::Failed(_) => 1,
        }
    }

    /// A usage error from any message.
    pub fn usage(e: impl std::fmt::Display) -> Self {
        CliError::Usage(e.to_string())
    }

    /// An input error from any message.
    pub fn input(e: impl std::fmt::Display) -> Self {
        CliError::Input(e.to_string())
    }

    /// A failure from any message.
    pub fn failed(e: impl std::fmt::Display) -> Self {
        CliError::Failed(e.to_string())
    }
}

/// Result of a command.
pub type CliResult<T> = Result<T, CliError>;
