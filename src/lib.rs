//! wsgate: a TLS-terminating reverse proxy for WebSocket backends.
//!
//! # Layout
//!
//! A connection flows through the modules in this order:
//!
//! ```text
//! client ─TCP─▶ server ──▶ real_ip ──▶ tls ──▶ http ──▶ route ──▶ handshake ──▶ admission
//!               (accept,    (PROXY     (rustls, (hyper,   (Host +   (RFC 6455     (Origin, subprotocols,
//!                global     header)     SNI)     HTTP/1.1) path)     §4.2.1)       rate limits, caps)
//!                cap)                                                                  │
//!        ┌─────────────────────────────────────────────────────────────────────────────┘
//!        ▼
//!     balance ──▶ upstream ──▶ backend ──▶ tunnel
//!     (strategy,  (connect,                (splice bytes both ways
//!      health)     failover, TLS,           until both sides end)
//!                  forward, check 101)
//! ```
//!
//! - [`server`] binds the listeners, holds the global connection cap, accepts
//!   connections, and runs: reloads while it serves, shutdown at the end.
//! - [`real_ip`] decides who the client is: the TCP peer, or what a trusted
//!   proxy says (PROXY protocol, `X-Forwarded-For`, `Forwarded`).
//! - [`tls`] builds the rustls configurations: certificates by SNI toward
//!   clients, verified connections toward backends.
//! - [`http`] serves each connection with hyper and dispatches every request:
//!   a WebSocket upgrade or an ordinary HTTP request.
//! - [`route`] maps Host and path to a route and its upstream.
//! - [`handshake`] validates a client's opening handshake (RFC 6455 §4.2.1) and
//!   checks the backend's answer (§4.1).
//! - [`admission`] refuses, before any backend is contacted, what a route does
//!   not admit: foreign origins, unknown subprotocols, clients over their rate
//!   or share of tunnels.
//! - [`balance`] keeps each upstream's servers and picks one per connection;
//!   [`health`] checks them actively.
//! - [`upstream`] connects to backends (with failover before any byte is
//!   sent), forwards handshakes and HTTP requests.
//! - [`tunnel`] splices the two upgraded connections byte for byte;
//!   [`inspect`] reads the frames as they pass and acts on them (close
//!   codes, keepalive, limits, drain).
//! - [`headers`] removes hop-by-hop headers and writes the forwarding headers;
//!   [`error`] turns every failure into the one HTTP answer the client gets.
//!
//! Beside the flow: [`config`] loads and validates the TOML file, [`stats`]
//! counts what operators read and [`telemetry`] serves it (Prometheus
//! metrics, health and readiness on the admin listener); [`lifecycle`]
//! drains tunnels with a close code, reloads the configuration without
//! dropping a socket, and speaks systemd's notification and socket
//! activation protocols; [`certgen`] makes development certificates,
//! [`demo`] is a small echo backend for the quick start and [`client`] a
//! command-line WebSocket client.

pub mod admission;
pub mod body;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod proxy;
pub mod refusal;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod tunnel;
pub mod upstream;
pub mod ws;
