//! The one error type of this crate: a command that failed (with what it printed), a plan that
//! cannot be carried out, or an I/O error of a socket or a pipe.

/// What went wrong while converging the host's network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `{command}` failed ({status}): {stderr}
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// The plan cannot be carried out as written.
    #[error("bad network plan: {0}")]
    BadPlan(String),
    /// The kernel or the host lacks something the plan needs.
    #[error("unsupported on this host: {0}")]
    Unsupported(String),
    /// A command printed something we could not parse.
    #[error("cannot parse the output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
    /// An I/O error while talking to a command or a socket.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn bad_plan(msg: impl Into<String>) -> Self {
        NetError::BadPlan(msg.into())
    }
}
