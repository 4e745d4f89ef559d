//! Admission control: whether a request may go on to a backend at all.
//!
//! Checks run cheapest first, and all of them before a backend is contacted
//! (a refusal costs the backend nothing): the Origin allowlist, the
//! subprotocol allowlist, the rate limits, then the connection caps. The
//! global connection cap is not here: it pauses the listeners ([`crate::server`]).

pub mod caps;
pub mod origin;
pub mod rate_limit;
pub mod refusal_log;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, ORIGIN};

use crate::cluster::{Answer, Ask, Cluster, LocalCounts, SharedRate, Unavailable};
use crate::config::{Admission, MissingOrigin, OnUnavailable};
use crate::refusal::RefusalReason;
use crate::ws::handshake::offered_subprotocols;
use caps::{CapExceeded, RouteCaps, TunnelPermit};
use origin::OriginAllowlist;
use rate_limit::{ClientKey, KeyedLimiter, TotalLimiter};

/// Most clients a per-client rate limiter remembers at once (see the README
/// for the memory this bounds).
pub const MAX_TRACKED_CLIENTS: usize = 1_000_000;

/// Why a request was refused; each maps to one status in [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("origin {0:?} is not allowed on this route")]
    Origin(String),
    #[error("a WebSocket without an Origin header is not allowed on this route")]
    MissingOrigin,
    #[error("none of the offered subprotocols is allowed on this route")]
    Subprotocol,
    #[error("rate limit reached; retry in {retry_after}s")]
    RateLimited { retry_after: u64 },
    #[error("this client already holds its maximum of WebSockets on this route")]
    ClientCap,
    #[error("this route holds its maximum of WebSockets")]
    RouteCap,
    #[error("the shared limits cannot be checked now")]
    ClusterUnavailable,
}

impl Refusal {
    pub fn reason(&self) -> RefusalReason {
        match self {
            Refusal::Origin(_) | Refusal::MissingOrigin => RefusalReason::Origin,
            Refusal::Subprotocol => RefusalReason::Subprotocol,
            Refusal::RateLimited { .. } => RefusalReason::RateLimited,
            Refusal::ClientCap => RefusalReason::ClientCap,
            Refusal::RouteCap => RefusalReason::RouteCap,
            Refusal::ClusterUnavailable => RefusalReason::ClusterUnavailable,
        }
    }
}

/// What becomes of the client's `Sec-WebSocket-Protocol` offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubprotocolOffer {
    /// No allowlist: the offer goes to the backend as the client sent it.
    Unchanged,
    /// The allowed part of the offer, in the client's order of preference.
    Replace(HeaderValue),
    /// Nothing allowed was offered and the route does not require a protocol.
    Remove,
}

/// An admitted WebSocket: its place in the caps (held for the tunnel's
/// life) and the subprotocol offer to forward.
#[derive(Debug)]
pub struct Admitted {
    pub permit: TunnelPermit,
    pub subprotocols: SubprotocolOffer,
}

/// A route's admission state: its rules, limiters and counters.
pub struct RouteGate {
    origins: Option<OriginAllowlist>,
    missing_origin: MissingOrigin,
    subprotocols: Option<Vec<String>>,
    require_subprotocol: bool,
    per_client: Option<Arc<KeyedLimiter>>,
    total: Option<TotalLimiter>,
    limit_http: bool,
    pub caps: Arc<RouteCaps>,
    /// With `[cluster]`: the fleet's limits, asked under the route's name.
    shared: Option<Shared>,
}

/// What a route asks of the fleet.
struct Shared {
    cluster: Arc<Cluster>,
    route: Arc<str>,
    rules: Admission,
}

impl RouteGate {
    /// The gate for `rules`. After a reload, `previous` is the same route's
    /// gate of the last configuration: its tunnel counts carry over (under
    /// the new caps), so a reload never lets a route exceed its caps; rate
    /// limiters start afresh with the new rates. With `cluster`, the
    /// route's rates and caps are the fleet's, asked under `route`.
    pub fn new(
        route: &Arc<str>,
        rules: &Admission,
        previous: Option<&RouteGate>,
        cluster: Option<&Arc<Cluster>>,
    ) -> RouteGate {
        let caps = match previous {
            Some(previous) => {
                previous
                    .caps
                    .set_limits(rules.max_websockets, rules.max_websockets_per_client);
                previous.caps.clone()
            }
            None => RouteCaps::new(rules.max_websockets, rules.max_websockets_per_client),
        };
        let shared = cluster.map(|cluster| {
            if rules.max_websockets.is_some() || rules.max_websockets_per_client.is_some() {
                let counts: Arc<dyn LocalCounts> = caps.clone();
                cluster.track(route, Arc::downgrade(&counts));
            }
            Shared {
                cluster: cluster.clone(),
                route: route.clone(),
                rules: rules.clone(),
            }
        });
        RouteGate {
            shared,
            origins: rules.allowed_origins.clone().map(OriginAllowlist::new),
            missing_origin: rules.missing_origin,
            subprotocols: rules.subprotocols.clone(),
            require_subprotocol: rules.require_subprotocol,
            per_client: rules
                .per_client_rate
                .map(|spec| Arc::new(KeyedLimiter::new(&spec, MAX_TRACKED_CLIENTS))),
            total: rules.total_rate.map(|spec| TotalLimiter::new(&spec)),
            limit_http: rules.limit_http,
            caps,
        }
    }

    /// The per-client limiter, whose idle keys the server evicts on a schedule.
    pub fn keyed_limiter(&self) -> Option<&Arc<KeyedLimiter>> {
        self.per_client.as_ref()
    }

    /// Every check for a WebSocket Upgrade, cheapest first: the fleet's
    /// limits last, as they cost a round trip.
    pub async fn admit_websocket(&self, headers: &HeaderMap, client: ClientKey) -> Result<Admitted, Refusal> {
        self.check_origin(headers)?;
        let subprotocols = self.filter_subprotocols(headers)?;
        let permit = match self.ask_fleet(client, true).await {
            Some(Ok(lease)) => self.caps.count(client, lease),
            Some(Err(refusal)) => return Err(refusal),
            None => {
                self.check_rate(client)?;
                self.caps.try_acquire(client).map_err(|cap| match cap {
                    CapExceeded::Route => Refusal::RouteCap,
                    CapExceeded::Client => Refusal::ClientCap,
                })?
            }
        };
        Ok(Admitted { permit, subprotocols })
    }

    /// The place of a tunnel that moved here at a binary upgrade: counted
    /// like one admitted here, never refused (it is open already).
    pub fn adopt(&self, client: ClientKey) -> TunnelPermit {
        let lease = self.shared.as_ref().and_then(|shared| {
            let rules = &shared.rules;
            let per_client = rules.max_websockets_per_client.is_some();
            (rules.max_websockets.is_some() || per_client)
                .then(|| shared.cluster.adopted(&shared.route, &client.to_string(), per_client))
        });
        self.caps.count(client, lease)
    }

    /// Plain HTTP requests meet only the rate limits, and only if asked.
    pub async fn admit_http(&self, client: ClientKey) -> Result<(), Refusal> {
        if !self.limit_http {
            return Ok(());
        }
        match self.ask_fleet(client, false).await {
            Some(answer) => answer.map(drop),
            None => self.check_rate(client),
        }
    }

    /// The fleet's answer with `[cluster]`: a lease when a tunnel place was
    /// taken in its caps. `None`: this instance's own limits decide (no
    /// `[cluster]`, or the store is unreachable under `on_unavailable =
    /// "local"`).
    async fn ask_fleet(
        &self,
        client: ClientKey,
        takes_place: bool,
    ) -> Option<Result<Option<crate::cluster::Lease>, Refusal>> {
        let shared = self.shared.as_ref()?;
        // Boxed: only a fleet's instances wait for it, and a handshake's
        // future need not make room for a store's round trip.
        Box::pin(self.fleet_answer(shared, client, takes_place)).await
    }

    /// [`Self::ask_fleet`] once there is a fleet: the store's round trip.
    async fn fleet_answer(
        &self,
        shared: &Shared,
        client: ClientKey,
        takes_place: bool,
    ) -> Option<Result<Option<crate::cluster::Lease>, Refusal>> {
        let key = client.to_string();
        let rules = &shared.rules;
        let ask = Ask {
            route: &shared.route,
            client: &key,
            per_client_rate: rules.per_client_rate.as_ref().map(shared_rate),
            total_rate: rules.total_rate.as_ref().map(shared_rate),
            max_websockets: rules.max_websockets,
            max_websockets_per_client: rules.max_websockets_per_client,
            takes_place,
        };
        match shared.cluster.admit(ask).await {
            Ok(Answer::Admitted(lease)) => Some(Ok(lease)),
            Ok(Answer::RateLimited(wait)) => Some(Err(rate_limited(wait))),
            Ok(Answer::RouteCap) => Some(Err(Refusal::RouteCap)),
            Ok(Answer::ClientCap) => Some(Err(Refusal::ClientCap)),
            Err(Unavailable) => match shared.cluster.on_unavailable() {
                OnUnavailable::Local => None,
                OnUnavailable::Allow => Some(Ok(None)),
                OnUnavailable::Deny => Some(Err(Refusal::ClusterUnavailable)),
            },
        }
    }

    /// RFC 6455 §10.2: the Origin header is how a server protects itself
    /// from scripts on other sites using a visitor's cookies.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(allowlist) = &self.origins else {
            return match (self.missing_origin, headers.contains_key(ORIGIN)) {
                (MissingOrigin::Reject, false) => Err(Refusal::MissingOrigin),
                _ => Ok(()),
            };
        };
        let mut origins = headers.get_all(ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) if self.missing_origin == MissingOrigin::Allow => Ok(()),
            (None, _) => Err(Refusal::MissingOrigin),
            (Some(origin), None) if allowlist.allows(origin) => Ok(()),
            (Some(origin), _) => Err(Refusal::Origin(String::from_utf8_lossy(origin.as_bytes()).into_owned())),
        }
    }

    fn filter_subprotocols(&self, headers: &HeaderMap) -> Result<SubprotocolOffer, Refusal> {
        let Some(allowed) = &self.subprotocols else {
            return Ok(SubprotocolOffer::Unchanged);
        };
        let kept: Vec<&str> = offered_subprotocols(headers)
            .filter(|offered| allowed.iter().any(|a| a == offered))
            .collect();
        if kept.is_empty() {
            return if self.require_subprotocol {
                Err(Refusal::Subprotocol)
            } else {
                Ok(SubprotocolOffer::Remove)
            };
        }
        // Allowed names are validated tokens, so the joined list is a valid value.
        HeaderValue::from_str(&kept.join(", "))
            .map(SubprotocolOffer::Replace)
            .map_err(|_| Refusal::Subprotocol)
    }

    fn check_rate(&self, client: ClientKey) -> Result<(), Refusal> {
        if let Some(limiter) = &self.per_client {
            limiter.check(client).map_err(rate_limited)?;
        }
        if let Some(limiter) = &self.total {
            limiter.check().map_err(rate_limited)?;
        }
        Ok(())
    }
}

/// A rate limit as the fleet's shared bucket keeps it: the local limiter's cells.
fn shared_rate(spec: &rate_limit::LimitSpec) -> SharedRate {
    let (period, burst) = spec.cells();
    SharedRate {
        period,
        burst: burst.get(),
    }
}

/// Over a rate limit, with `wait` until a retry would be admitted.
fn rate_limited(wait: Duration) -> Refusal {
    Refusal::RateLimited {
        retry_after: rate_limit::retry_after_secs(wait),
    }
}

/// One burst of this size, refilled one per `every`.
pub(crate) fn spec(burst: u32, every: Duration) -> rate_limit::LimitSpec {
    let one = NonZeroU32::MIN;
    rate_limit::LimitSpec {
        rate: rate_limit::Rate { count: one, per: every },
        burst: NonZeroU32::new(burst),
    }
}
