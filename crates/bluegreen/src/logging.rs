//! Structured logs to stderr via `tracing`, as text or JSON lines.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the level.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let default = match verbose {
        0 if quiet => "error",
        0 => "info,hyper=warn",
        1 => "debug,hyper=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a person at a terminal, never into files or
    // journald (NO_COLOR is honoured too).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
    };
    if installed.is_ok() {
        use tracing_log::AsLog;
        // Libraries that log through `log` (rustls) reach the same output.
        if log::set_boxed_logger(Box::new(Demote(tracing_log::LogTracer::new()))).is_ok() {
            log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
        }
    }
}

/// rustls logs what a client got wrong at WARN ("Received a ApplicationData
/// message while expecting [Handshake]", "TLS alert warning received"):
/// one line per connection a scanner opens. Those come at debug instead;
/// the handshake failure itself is counted
/// (`bluegreen_tls_handshake_failures_total`) and logged at debug with its
/// reason. rustls's errors stay errors.
struct Demote(tracing_log::LogTracer);

impl Demote {
    fn level(target: &str, level: log::Level) -> log::Level {
        let rustls = target == "rustls" || target.starts_with("rustls::");
        if rustls && level == log::Level::Warn {
            log::Level::Debug
        } else {
            level
        }
    }
}

impl log::Log for Demote {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        let level = Demote::level(m.target(), m.level());
        self.0.enabled(
            &log::Metadata::builder()
                .level(level)
                .target(m.target())
                .build(),
        )
    }

    fn log(&self, r: &log::Record<'_>) {
        let level = Demote::level(r.target(), r.level());
        if level == r.level() {
            return self.0.log(r);
        }
        self.0.log(
            &log::Record::builder()
                .args(*r.args())
                .level(level)
                .target(r.target())
                .module_path(r.module_path())
                .file(r.file())
                .line(r.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::Demote;
    use log::Level;

    #[test]
    fn rustls_warnings_come_at_debug_and_nothing_else_changes() {
        assert_eq!(Demote::level("rustls::check", Level::Warn), Level::Debug);
        assert_eq!(Demote::level("rustls", Level::Warn), Level::Debug);
        assert_eq!(Demote::level("rustls::conn", Level::Error), Level::Error);
        assert_eq!(Demote::level("rustls_pemfile", Level::Warn), Level::Warn);
        assert_eq!(Demote::level("hyper::proto", Level::Warn), Level::Warn);
    }
}
