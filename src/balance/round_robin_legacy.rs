//! Choosing the server of an upstream for each new connection.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over an upstream's servers; lock-free, so picks never wait.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next server, or `None` for an empty pool.
    pub fn pick<'a, T>(&self, servers: &'a [T]) -> Option<&'a T> {
        if servers.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        servers.get(turn % servers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddress;

    #[test]
    fn takes_turns() {
        let servers: Vec<ServerAddress> = (1..=3)
            .map(|port| ServerAddress {
                host: "127.0.0.1".into(),
                port,
            })
            .collect();
        let balancer = RoundRobin::default();
        let ports: Vec<u16> = (0..6).map(|_| balancer.pick(&servers).unwrap().port).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        assert!(balancer.pick::<ServerAddress>(&[]).is_none());
    }
}
