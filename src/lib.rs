//! wsgate: a TLS-terminating reverse proxy for WebSocket backends.
//!
//! # Layout
//!
//! A connection flows through the modules in this order:
//!
//! ```text
//! client ─TCP─▶ server ─▶ tls ─▶ http ─▶ route ─▶ handshake ─▶ balance ─▶ upstream ─▶ tunnel
//!               (accept,  (rustls, (hyper    (Host +  (RFC 6455   (pick a    (connect,     (splice
//!                spawn)    SNI)     HTTP/1.1) path)    checks)     server)    forward,      bytes both
//!                                                                             check 101)    ways)
//! ```
//!
//! - [`server`] binds the listeners, accepts connections and owns shutdown.
//! - [`tls`] builds the rustls server configuration and picks a certificate by SNI.
//! - [`http`] serves each connection with hyper and dispatches every request:
//!   a WebSocket upgrade or an ordinary HTTP request.
//! - [`route`] maps Host and path to a route and its upstream.
//! - [`handshake`] validates a client's opening handshake (RFC 6455 §4.2.1) and
//!   checks the backend's answer (§4.1).
//! - [`headers`] removes hop-by-hop headers and writes the forwarding headers.
//! - [`balance`] picks the server of an upstream for each request.
//! - [`upstream`] connects to backends, forwards handshakes and HTTP requests.
//! - [`tunnel`] splices the two upgraded connections byte for byte.
//! - [`error`] turns every failure into the one HTTP answer the client gets.
//!
//! Beside the flow: [`config`] loads and validates the TOML file,
//! [`certgen`] makes development certificates, [`demo`] is a small echo
//! backend for the quick start and [`client`] a command-line WebSocket client.

pub mod admission;
pub mod balance;
pub mod certgen;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod handshake;
pub mod headers;
pub mod inspect;
pub mod health;
pub mod http;
pub mod real_ip;
pub mod route;
pub mod server;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upstream;
