//! Logging refusals without flooding: a client hammering a closed door
//! gets a few lines, then a periodic summary of how many more were refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::rate_limit::{ClientKey, KeyedLimiter};
use crate::refusal::RefusalReason;

/// How often the suppressed refusals are summarised.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

pub struct RefusalLog {
    /// Three lines per client, then one per 10 seconds.
    gate: Arc<KeyedLimiter>,
    suppressed: [AtomicU64; RefusalReason::ALL.len()],
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        let spec = super::spec(3, SUMMARY_INTERVAL);
        RefusalLog {
            gate: Arc::new(KeyedLimiter::new(&spec, 100_000)),
            suppressed: Default::default(),
        }
    }
}

impl RefusalLog {
    /// Logs one refusal, or counts it for the next summary.
    pub fn refused(&self, client: ClientKey, reason: RefusalReason, route: &str, why: &dyn std::fmt::Display) {
        if self.gate.check(client).is_ok() {
            info!(%client, reason = reason.as_str(), route, "refused: {why}");
        } else {
            self.suppressed[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs how many refusals were not logged one by one since the last call.
    pub fn summarise(&self) {
        for reason in RefusalReason::ALL {
            let count = self.suppressed[reason as usize].swap(0, Ordering::Relaxed);
            if count > 0 {
                info!(
                    reason = reason.as_str(),
                    count, "refusals not logged one by one in the last interval"
                );
            }
        }
    }

    pub fn limiter(&self) -> &Arc<KeyedLimiter> {
        &self.gate
    }
}
