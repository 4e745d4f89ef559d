//! Choosing the backend server for each new connection.

mod backend;
mod round_robin_legacy;

pub use backend::{Backend, BackendGuard, HealthChange};
pub use round_robin_legacy::RoundRobin;
