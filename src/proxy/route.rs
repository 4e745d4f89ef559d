//! Which route serves a request: by Host, then by path prefix.

use crate::config::Route;

/// The routes of a configuration, searched per request.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable { routes }
    }

    /// The route at `index`, as [`RouteTable::find`] returned it.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The routes in configuration order (their indexes are [`RouteTable::get`]'s).
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The best route for `host` (lower case, no port) and `path`: a route
    /// naming the host exactly beats a wildcard, which beats a route for any
    /// host; among those, the longest matching path prefix wins, as nginx
    /// chooses its `server` and then its `location`.
    pub fn find(&self, host: &str, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| {
                let host_rank = host_rank(&route.hosts, host)?;
                prefix_matches(&route.path_prefix, path)
                    .then_some(((host_rank, route.path_prefix.len()), (index, route)))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, route)| route)
    }
}

/// 3 for an exact name, 2 for a wildcard, 1 for a route with no hosts;
/// among wildcards, the longest domain (`*.example.com` over `*.com`), as
/// nginx chooses.
fn host_rank(patterns: &[String], host: &str) -> Option<(u8, usize)> {
    if patterns.is_empty() {
        return Some((1, 0));
    }
    patterns
        .iter()
        .filter_map(|pattern| match pattern.strip_prefix("*.") {
            None => (pattern == host).then_some((3, 0)),
            Some(domain) => {
                let matches = host.len() > domain.len() + 1
                    && host.ends_with(domain)
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.';
                matches.then_some((2, domain.len()))
            }
        })
        .max()
}

/// Prefixes match on path segment boundaries: `/chat` serves `/chat` and
/// `/chat/room`, but not `/chatroom`, a surprise nginx's plain string
/// prefixes are known for. A prefix ending in `/` matches as written.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], prefix: &str) -> Route {
        Route {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            upstream: 0,
            admission: Default::default(),
            inspect: None,
            client_bytes: None,
            kernel_splice: false,
        }
    }

    fn find<'a>(table: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        table.find(host, path).map(|(_, r)| &*r.name)
    }

    #[test]
    fn exact_hosts_beat_wildcards_beat_any_host() {
        let table = RouteTable::new(vec![
            route("any", &[], "/"),
            route("wild", &["*.example.com"], "/"),
            route("exact", &["chat.example.com"], "/"),
        ]);
        assert_eq!(find(&table, "chat.example.com", "/"), Some("exact"));
        assert_eq!(find(&table, "a.b.example.com", "/"), Some("wild"));
        assert_eq!(find(&table, "example.com", "/"), Some("any"));
        assert_eq!(find(&table, "badexample.com", "/"), Some("any"));
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let table = RouteTable::new(vec![route("root", &["h"], "/"), route("chat", &["h"], "/chat")]);
        assert_eq!(find(&table, "h", "/chat"), Some("chat"));
        assert_eq!(find(&table, "h", "/chat/room/1"), Some("chat"));
        assert_eq!(find(&table, "h", "/chatroom"), Some("root"));
        assert_eq!(find(&table, "other", "/chat"), None);
    }
}
