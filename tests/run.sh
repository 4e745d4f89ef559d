#!/usr/bin/env bash
# The README's test command: what the tests need beyond the Rust toolchain,
# then `cargo test` (arguments are passed on: `bash tests/run.sh --test
# cluster`). Some tests use real parts from Debian's packages: `ip` and
# `nft` (iproute2, nftables: tests/dead_host.rs makes a network namespace
# and drops its packets, as root), `redis-server` (tests/cluster.rs
# starts its own) and `chromium` (tests/browser.rs, headless). Installed
# with apt-get when missing, as root; without them those tests fail and
# say what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "tests/run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${missing[*]} (not root, or no apt-get): the tests that need them will fail" >&2
  fi
fi
exec cargo test --locked "$@"
