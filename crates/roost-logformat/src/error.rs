use std::fmt;

/// Why a line did not parse. The kind is a small closed set so that counts per kind make a
/// metric of bounded cardinality; the column says where in the line parsing stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {at}")]
pub struct ParseError {
    pub kind: ErrorKind,
    pub at: usize,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, at: usize) -> Self {
        ParseError { kind, at }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The line is empty or only whitespace.
    Empty,
    /// The line ended before a required field.
    Truncated,
    /// The client field is not an IPv4 or IPv6 address.
    Client,
    /// The time field is missing or not a date this format writes.
    Time,
    /// A quoted field has no closing quote.
    Quote,
    /// The status is not a number of at most three digits.
    Status,
    /// The byte count is not a number.
    Bytes,
    /// The line does not have the shape of the format (a literal of the template is missing).
    Shape,
    /// The line is not a JSON object.
    Json,
    /// A field the format needs is absent.
    MissingField,
}

impl ErrorKind {
    /// A stable lowercase label, for metrics and summaries.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Empty => "empty",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Client => "client",
            ErrorKind::Time => "time",
            ErrorKind::Quote => "quote",
            ErrorKind::Status => "status",
            ErrorKind::Bytes => "bytes",
            ErrorKind::Shape => "shape",
            ErrorKind::Json => "json",
            ErrorKind::MissingField => "missing_field",
        }
    }

    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Empty,
        ErrorKind::Truncated,
        ErrorKind::Client,
        ErrorKind::Time,
        ErrorKind::Quote,
        ErrorKind::Status,
        ErrorKind::Bytes,
        ErrorKind::Shape,
        ErrorKind::Json,
        ErrorKind::MissingField,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Empty => "empty line",
            ErrorKind::Truncated => "line ends early",
            ErrorKind::Client => "client is not an IP address",
            ErrorKind::Time => "bad or missing time",
            ErrorKind::Quote => "unterminated quoted field",
            ErrorKind::Status => "bad status code",
            ErrorKind::Bytes => "bad byte count",
            ErrorKind::Shape => "line does not match the format",
            ErrorKind::Json => "not a JSON object",
            ErrorKind::MissingField => "a required field is missing",
        })
    }
}

/// Why a format definition (a custom nginx `log_format`, say) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown log format {0:?} (expected auto, combined, common, json, haproxy or nginx)")]
    UnknownFormat(String),
    #[error("format \"nginx\" needs the operator's log_format definition in `log_format`")]
    MissingDefinition,
    #[error("log_format: unterminated quote starting at byte {0}")]
    Unterminated(usize),
    #[error("log_format: variables ${0} and ${1} are not separated by any text, so their values cannot be told apart")]
    AdjacentVariables(String, String),
    #[error("log_format does not log {0}; roost needs it to score requests")]
    Missing(&'static str),
    #[error("log_format: unknown escape mode {0:?} (default, json or none)")]
    Escape(String),
    #[error("log_format: empty variable name at byte {0}")]
    EmptyVariable(usize),
}
