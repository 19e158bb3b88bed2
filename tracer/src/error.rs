//! The error kinds the commands tell apart when they exit.

/// A mistake in what the user asked for (as opposed to a problem with the machine): reported
/// with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<crate::filter::FilterError> for UsageError {
    fn from(err: crate::filter::FilterError) -> Self {
        UsageError(err.to_string())
    }
}

impl From<anyhow::Error> for UsageError {
    fn from(err: anyhow::Error) -> Self {
        UsageError(format!("{err:#}"))
    }
}

/// A command that worked and whose answer is "no": `tracer probe` whose packets were not
/// delivered. Reported in one line with exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Negative(pub String);
