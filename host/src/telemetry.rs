//! Logging setup: text or JSON lines, filtered like `RUST_LOG`; and how an
//! error and its causes read in a log line or a message ([`error_chain`]).

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// `error` and its causes, joined with `: ` like anyhow's `{:#}`, each cause
/// said once: many errors (lapin's `IO error: {0}`, wasmtime's traps) already
/// show their source in their own text and return it as `source()` too, which
/// `{:#}` would print twice (`Connection refused (os error 111): Connection
/// refused (os error 111)`). A cause whose text the chain so far already ends
/// with is left out.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !shown.is_empty() && !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// Installs the global subscriber. `filter` wins over `RUST_LOG`; the default is
/// `info`.
pub fn init(format: LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colours only for a person at a terminal: journald and log files get plain
    // text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_shown_by_its_error_is_said_once() {
        let io = std::io::Error::from_raw_os_error(111);
        let shown = io.to_string();
        let lapin_like = anyhow::Error::new(io)
            .context(format!("IO error: {shown}"))
            .context("connecting to RabbitMQ (connection `rabbit`)");
        assert_eq!(
            format!("{lapin_like:#}"),
            format!("connecting to RabbitMQ (connection `rabbit`): IO error: {shown}: {shown}"),
            "the doubling this helper exists for"
        );
        assert_eq!(
            error_chain(lapin_like.as_ref()),
            format!("connecting to RabbitMQ (connection `rabbit`): IO error: {shown}")
        );
        let plain = anyhow::anyhow!("refused").context("opening");
        assert_eq!(error_chain(plain.as_ref()), "opening: refused");
    }
}
