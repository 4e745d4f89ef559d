//! What operators read beside the logs: Prometheus metrics ([`metrics`]),
//! the admin listener that serves them with health and readiness
//! (served by the admin listener, `crate::server::admin`), the counters
//! behind them ([`stats`]), and the access log of plain HTTP requests
//! ([`access`]), the writer every log line goes through ([`log_writer`])
//! and how a line's fields and time are written ([`line_format`]).

pub mod access;
pub mod line_format;
pub mod log_writer;
pub mod metrics;
pub mod stats;

pub use metrics::{FirstClose, Metrics, TunnelMetrics};
