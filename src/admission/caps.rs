//! Connection caps per route and per client: counted when a tunnel is
//! admitted, released by a guard however the tunnel ends. With
//! `[cluster]`, the fleet's count decides (the guard then also holds the
//! tunnel's [`Lease`]) and these counts are what this instance writes back
//! when the shared copy must be rebuilt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::rate_limit::ClientKey;
use crate::cluster::{Lease, LocalCounts};
use crate::lifecycle::sparse_table::shrink_when_sparse;

/// Which cap a new tunnel would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    Route,
    Client,
}

/// A route's open tunnels, in total and per client.
#[derive(Debug, Default)]
pub struct RouteCaps {
    open: AtomicUsize,
    /// The caps, `usize::MAX` for none; atomics so a reload can change them
    /// while the tunnels counted here stay counted.
    max: AtomicUsize,
    per_client_max: AtomicUsize,
    /// Only kept when `per_client_max` is set; an entry lives while its
    /// client has a tunnel, so the table never outgrows the open tunnels.
    per_client: Mutex<HashMap<ClientKey, usize>>,
}

impl RouteCaps {
    pub fn new(max: Option<usize>, per_client_max: Option<usize>) -> Arc<RouteCaps> {
        let caps = Arc::new(RouteCaps::default());
        caps.set_limits(max, per_client_max);
        caps
    }

    /// New caps from a reloaded configuration; tunnels already open keep
    /// counting against them.
    pub fn set_limits(&self, max: Option<usize>, per_client_max: Option<usize>) {
        self.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
        self.per_client_max
            .store(per_client_max.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Open tunnels now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Clients with at least one open tunnel (when a per-client cap is set).
    pub fn client_entries(&self) -> usize {
        self.table().len()
    }

    /// Takes a place for one tunnel of `client`, or says which cap is full.
    pub fn try_acquire(self: &Arc<Self>, client: ClientKey) -> Result<TunnelPermit, CapExceeded> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Route);
        }
        let per_client_max = self.per_client_max.load(Ordering::Relaxed);
        if per_client_max == usize::MAX {
            return Ok(self.permit(None));
        }
        let mut table = self.table();
        let held = table.entry(client).or_insert(0);
        if *held >= per_client_max {
            if *held == 0 {
                table.remove(&client);
            }
            drop(table);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Client);
        }
        *held += 1;
        Ok(self.permit(Some(client)))
    }

    /// Counts a tunnel the fleet admitted (or that `on_unavailable =
    /// "allow"` let through), whatever this instance's own count says.
    pub fn count(self: &Arc<Self>, client: ClientKey, lease: Option<Lease>) -> TunnelPermit {
        self.open.fetch_add(1, Ordering::AcqRel);
        let tracked = self.per_client_max.load(Ordering::Relaxed) != usize::MAX;
        if tracked {
            *self.table().entry(client).or_insert(0) += 1;
        }
        let mut permit = self.permit(tracked.then_some(client));
        permit.lease = lease.map(Box::new);
        permit
    }

    fn permit(self: &Arc<Self>, client: Option<ClientKey>) -> TunnelPermit {
        TunnelPermit {
            caps: self.clone(),
            client,
            lease: None,
        }
    }

    /// The table's lock is held only to add or remove one tunnel; a panic
    /// elsewhere cannot leave it inconsistent, so poisoning is ignored.
    fn table(&self) -> MutexGuard<'_, HashMap<ClientKey, usize>> {
        self.per_client.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LocalCounts for RouteCaps {
    fn counts(&self) -> (u64, Vec<(String, u64)>) {
        let clients = self
            .table()
            .iter()
            .map(|(client, held)| (client.to_string(), *held as u64))
            .collect();
        (self.open() as u64, clients)
    }
}

/// One tunnel's place in its route's caps, given back on drop (and in the
/// fleet's, through its lease).
#[derive(Debug)]
pub struct TunnelPermit {
    caps: Arc<RouteCaps>,
    client: Option<ClientKey>,
    /// Boxed: only a fleet's tunnels have one, and every tunnel's task holds
    /// a permit (memory per idle tunnel).
    lease: Option<Box<Lease>>,
}

impl Drop for TunnelPermit {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut table = self.caps.table();
            if let Some(held) = table.get_mut(&client) {
                *held -= 1;
                if *held == 0 {
                    table.remove(&client);
                    shrink_when_sparse(&mut table);
                }
            }
        }
        self.caps.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> ClientKey {
        ClientKey::new(std::net::IpAddr::from([192, 0, 2, last]), 64)
    }

    #[test]
    fn route_cap_counts_and_releases() {
        let caps = RouteCaps::new(Some(2), None);
        let a = caps.try_acquire(key(1)).unwrap();
        let _b = caps.try_acquire(key(2)).unwrap();
        assert_eq!(caps.try_acquire(key(3)).unwrap_err(), CapExceeded::Route);
        assert_eq!(caps.open(), 2);
        drop(a);
        assert!(caps.try_acquire(key(3)).is_ok());
    }

    #[test]
    fn client_cap_is_per_client_and_its_table_empties() {
        let caps = RouteCaps::new(None, Some(1));
        let a = caps.try_acquire(key(1)).unwrap();
        assert_eq!(caps.try_acquire(key(1)).unwrap_err(), CapExceeded::Client);
        let b = caps.try_acquire(key(2)).unwrap();
        assert_eq!((caps.open(), caps.client_entries()), (2, 2));
        drop((a, b));
        assert_eq!((caps.open(), caps.client_entries()), (0, 0));
    }
}
