//! Log sources as the daemons that follow them (`roost tail`, `roost up`) read them.

use roost_logformat::Parser;

/// The parser for a source whose format is `auto`, from the lines there were when it was first
/// read, by `roost_logformat::detect`'s one policy. Undetectable, the daemons read the source as
/// combined (logged as an error), so no line vanishes: each that does not parse is counted as
/// malformed (and `roost tail` dead-letters it).
pub fn detect_or_combined<'a>(path: &str, lines: impl IntoIterator<Item = &'a str>) -> Parser {
    match roost_logformat::detect(lines) {
        Ok(p) => {
            tracing::info!(path, format = p.name(), "detected log format");
            p
        }
        Err(e) => {
            tracing::error!(path, error = %e, "reading it as combined; lines that do not parse are counted as malformed");
            Parser::Clf
        }
    }
}
