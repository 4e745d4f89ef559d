//! Close codes (RFC 6455 §7.4.1 and the IANA "WebSocket Close Code Number
//! Registry", §11.7), by name: the codes wsgate sends, and which codes a
//! peer may send at all.

/// 1000: the purpose of the connection is fulfilled.
pub const NORMAL: u16 = 1000;
/// 1001: an endpoint is going away: a server shutting down, a client
/// leaving (or found gone).
pub const GOING_AWAY: u16 = 1001;
/// 1002: a protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1007: data inconsistent with its type (here: a close reason that is not
/// UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: a message that violates the endpoint's policy (here: a client
/// past its route's message rate).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: a message too big to process.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: the server met a condition that kept it from fulfilling the
/// request (here: the backend failed, broke the protocol or stopped
/// answering).
pub const INTERNAL_ERROR: u16 = 1011;
/// 1012: the service is restarting; reconnect (IANA registry).
pub const SERVICE_RESTART: u16 = 1012;
/// 1014: a gateway got an invalid answer from upstream (IANA registry): the
/// backend does not speak WebSocket.
pub const BAD_GATEWAY: u16 = 1014;

/// Whether an endpoint may put `code` in a close frame (RFC 6455 §7.4 and the
/// IANA "WebSocket Close Code Number Registry", §11.7).
pub fn is_allowed(code: u16) -> bool {
    match code {
        // 0-999: "not used" (§7.4.2).
        0..=999 => false,
        // Normal closure, going away, protocol error, unsupported data (§7.4.1).
        1000..=1003 => true,
        // 1004 is reserved; 1005 (no status) and 1006 (abnormal closure) "MUST
        // NOT be set as a status code in a Close control frame by an endpoint".
        1004..=1006 => false,
        // 1007-1011 from §7.4.1; 1012 service restart, 1013 try again later,
        // 1014 bad gateway from the IANA registry.
        1007..=1014 => true,
        // 1015 (TLS handshake) is never sent either; the rest up to 2999 is
        // "reserved for definition by this protocol" (§7.4.2).
        1015..=2999 => false,
        // 3000-3999 registered for libraries and frameworks, 4000-4999 private use.
        3000..=4999 => true,
        _ => false,
    }
}
