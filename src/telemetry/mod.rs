//! Tracing set-up (`RUST_LOG` filters, `WALLET_LOG_FORMAT=json` for JSON lines) and the
//! Prometheus [`metrics`].

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, from `main`.
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // Every enclosing span, so each line carries the request's id.
            .with_span_list(true)
            .init();
    } else {
        // Colour only for a terminal: a log file or a collector gets plain text.
        builder.with_ansi(std::io::stdout().is_terminal()).init();
    }
}
