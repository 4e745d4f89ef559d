//! `[cluster]`: the shared store's address, credentials and clocks.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawCluster;
use crate::config::ClusterSettings;

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(25);
const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// A lease is renewed five times per period (see `crate::cluster`); below a
/// second, a busy Redis or a paused VM would make live instances look dead.
const MIN_LEASE: Duration = Duration::from_secs(1);

impl Checker<'_> {
    pub(super) fn cluster(&mut self, raw: &Spanned<RawCluster>) -> Option<ClusterSettings> {
        let raw = raw.get_ref();
        let redis = self.redis_url(raw)?;
        let instance = match &raw.instance {
            Some(name) if name.get_ref().trim().is_empty() || name.get_ref().contains(char::is_whitespace) => {
                self.error(
                    name,
                    "cluster.instance",
                    "must be a name without spaces (omit it for host name and process ID)",
                );
                None
            }
            Some(name) => Some(name.get_ref().clone()),
            None => None,
        };
        let timeout = self.timeout(raw.timeout.clone(), "cluster.timeout", DEFAULT_TIMEOUT);
        let lease = match &raw.lease {
            Some(lease) if lease.get_ref().0 < MIN_LEASE => {
                self.error(
                    lease,
                    "cluster.lease",
                    "must be at least 1s: shorter, a slow heartbeat would make a live instance look dead",
                );
                DEFAULT_LEASE
            }
            Some(lease) => lease.get_ref().0,
            None => DEFAULT_LEASE,
        };
        Some(ClusterSettings {
            redis,
            instance,
            timeout,
            lease,
            on_unavailable: raw.on_unavailable.unwrap_or_default(),
        })
    }

    /// The URL as the client library reads it, with the password of
    /// `password_file` (one line) put in.
    fn redis_url(&mut self, raw: &RawCluster) -> Option<String> {
        let text = raw.redis.get_ref();
        let mut url = match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.host().is_some() => url,
            _ => {
                self.error(
                    &raw.redis,
                    "cluster.redis",
                    "must be a URL such as \"redis://127.0.0.1:6379/0\" (or rediss:// for TLS)",
                );
                return None;
            }
        };
        if let Some(file) = &raw.password_file {
            if url.password().is_some() {
                self.error(
                    file,
                    "cluster.password_file",
                    "the URL in cluster.redis already has a password; keep one of the two",
                );
                return None;
            }
            let path = self.relative_to_config(file.get_ref());
            let password = match std::fs::read_to_string(&path) {
                Ok(text) => text.trim_end_matches(['\r', '\n']).to_owned(),
                Err(e) => {
                    self.error(
                        file,
                        "cluster.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            };
            if password.is_empty() || url.set_password(Some(&password)).is_err() {
                self.error(file, "cluster.password_file", "holds no password");
                return None;
            }
        }
        if let Err(e) = redis::Client::open(url.as_str()) {
            self.error(&raw.redis, "cluster.redis", e.to_string());
            return None;
        }
        Some(url.into())
    }
}
