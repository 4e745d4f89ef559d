//! wsgate: a TLS-terminating reverse proxy for WebSocket backends.
//!
//! # Layout
//!
//! One folder per stage, in the order a connection meets them:
//!
//! ```text
//! client ─TCP─▶ server ─────────▶ proxy ──────────────────────────▶ admission
//!               listener: accept,   connection: hyper HTTP/1.1       Origin, subprotocols,
//!                global cap, PROXY   over the framing guard, or      rate limits, caps
//!                header, tls         HTTP/2 (http2); websocket:            │
//!                                     an upgrade or extended CONNECT       │
//!                                   dispatch: route, real_ip,             │
//!                                     headers; upgrade ◀──────────────────┘
//!                                          │
//!        ┌─────────────────────────────────┘
//!        ▼
//!     upstream ───────────────────────▶ tunnel
//!     balance: pick a server            splice: bytes both ways (pool lends buffers)
//!     connect: TCP, TLS; failover       inspect: frames read as they pass
//!     handshake: forward, read the 101  drain: end with a close code
//!     health: active checks
//! ```
//!
//! - [`server`] binds the listeners and accepts connections under the global
//!   cap ([`tls`] builds the rustls configurations); it runs until shutdown,
//!   reloading the configuration on request, with housekeeping and the admin
//!   listener beside it.
//! - [`proxy`] serves a client connection: a first request that is a whole
//!   WebSocket upgrade is answered without hyper (the heads through
//!   [`http1`]); anything else is hyper's, with the framing guard refusing
//!   smuggling shapes below it (or with HTTP/2, each stream is a request).
//!   Each request is routed and either
//!   forwarded as HTTP or, as an upgrade, turned into a tunnel. The code
//!   that wraps the client's stream and the code that unwraps it for the
//!   tunnel sit together in `proxy::connection`.
//! - [`admission`] refuses, before any backend is contacted, what a route
//!   does not admit: foreign origins, unknown subprotocols, clients over
//!   their rate or share of tunnels; with `[cluster]` it asks [`cluster`],
//!   the Redis that every instance of a fleet shares, for the rates and caps.
//! - [`upstream`] keeps each upstream's servers and picks one per request
//!   (the strategy owns the key it balances by), connects with failover
//!   before any byte is sent, forwards the handshake and checks the answer;
//!   health checks use the same connect.
//! - [`tunnel`] splices the two upgraded connections; [`tunnel::inspect`]
//!   reads the frames as they pass and acts on them (close codes,
//!   keepalive, limits, drain); [`tunnel::relocate`] stops a tunnel where
//!   it can be written down, and runs it again from that description.
//! - [`ws`] is RFC 6455 itself: the handshake's rules, the frame reader,
//!   the close codes.
//!
//! Beside the flow: [`config`] loads and validates the TOML file;
//! [`telemetry`] counts what operators read (metrics, stats, the access
//! log); [`lifecycle`] speaks systemd's notification and socket activation
//! protocols, gives memory back after a burst, and hands the listeners and
//! the open tunnels to a new binary at an upgrade
//! ([`lifecycle::handover`], driven by `server::handover`); [`tools`]
//! holds the development tools (certificates, a client, a demo backend).
//!
//! Vocabulary that several stages share lives below all of them, so that no
//! stage imports another for it: [`body`] (the response body type),
//! [`http1`] (request and response heads read and written without hyper,
//! for the handshake's two hops),
//! [`refusal`] (why a client was turned away), `sync` (how a lock is
//! taken), [`snapshot`] (the binary
//! layout a tunnel is written down in for a hand-over) and [`error`]
//! (every failure, and the one place that says what it means: status,
//! body, log level, metric label, whether the connection closes). No file imports a file
//! that imports it back; `tests/module_graph.rs` keeps it so.

pub mod admission;
pub mod body;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http1;
pub mod lifecycle;
pub mod proxy;
pub mod refusal;
pub mod server;
pub mod snapshot;
mod sync;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod tunnel;
pub mod upstream;
pub mod ws;
