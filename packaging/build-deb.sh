#!/usr/bin/env bash
# Builds the Debian package: the binary, then its shell completions and man
# pages (written by the binary itself, `wsgate generate`, from its clap
# definitions), then cargo-deb (`cargo install cargo-deb --locked`) packs
# what [package.metadata.deb] in Cargo.toml lists. Prints the .deb's path as
# its last line.
#
#   bash packaging/build-deb.sh                       # release build
#   WSGATE_DEB_PROFILE=dev bash packaging/build-deb.sh   # quicker, for checking the packaging
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || {
  echo "packaging/build-deb.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
}
profile=${WSGATE_DEB_PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-target}
case $profile in dev) profile_dir=debug ;; *) profile_dir=$profile ;; esac

cargo build --locked --profile "$profile" --bin wsgate >&2
rm -rf packaging/generated
"$target_dir/$profile_dir/wsgate" generate --out-dir packaging/generated >&2
mkdir -p "$target_dir/debian"
cargo deb --locked --no-build --profile "$profile" --output "$target_dir/debian/" | tail -n 1
