#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for a bounded time with libFuzzer.
#
#   fuzz/run.sh [SECONDS-PER-TARGET] [TARGET...]     (default: 30, all targets)
#
# Works on the stable toolchain: cargo-fuzz's coverage instrumentation
# (-Cpasses=sancov-module and -Cllvm-args=-sanitizer-coverage-*) is made of
# stable flags; only the sanitizers need nightly, so the targets are built
# with --sanitizer none (safe Rust: a panic is the bug; debug assertions and
# overflow checks stay on). Installs cargo-fuzz with `cargo install` when it
# is missing. Each target starts from its seeds in fuzz/corpus/TARGET
# (read only: the corpus libFuzzer grows goes to the target directory) and
# from what earlier runs found. Exits 1 if any target found a crash, after
# printing the input that crashed it and the command that replays it.
#
# Environment: CARGO_TARGET_DIR (default fuzz/target) holds the build and the
# grown corpora; FUZZ_ARGS adds libFuzzer flags (e.g. "-jobs=2 -workers=2");
# FUZZ_SANITIZER=address builds with AddressSanitizer instead (about 4 times
# slower; use another CARGO_TARGET_DIR, the flags differ).
set -euo pipefail
invoked=$PWD
cd "$(dirname "$0")"
here=$PWD

seconds=${1:-30}
shift || true
case $seconds in '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS-PER-TARGET] [TARGET...]" >&2; exit 2 ;; esac
all_targets=(frame_reader handshake origin config)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

export CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$invoked/$CARGO_TARGET_DIR ;; esac
work=$CARGO_TARGET_DIR/fuzz-corpus

for tool in cargo c++; do
  command -v "$tool" >/dev/null || { echo "fuzz/run.sh: $tool is missing (libFuzzer is C++, built by libfuzzer-sys)" >&2; exit 1; }
done
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# Built once for all targets: release, debug assertions, no sanitizer; 16 codegen
# units (cargo-fuzz defaults to 1): the build takes half the time on 2 cores
# and the targets run as fast (measured).
fuzz_flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --codegen-units 16)
# A sanitizer is a -Z flag: on stable, RUSTC_BOOTSTRAP=1 lets rustc take it
# (the toolchain ships the sanitizer runtimes).
[ "${FUZZ_SANITIZER:-none}" = none ] || export RUSTC_BOOTSTRAP=1
start=$SECONDS
echo "== cargo fuzz build ${fuzz_flags[*]}"
cargo fuzz build "${fuzz_flags[@]}"
echo "== built in $((SECONDS - start)) s"

failed=()
for target in "${targets[@]}"; do
  [ -d "corpus/$target" ] || { echo "fuzz/run.sh: no target $target (have: ${all_targets[*]})" >&2; exit 2; }
  mkdir -p "$work/$target" "artifacts/$target"
  stamp=$(mktemp)
  log=$(mktemp)
  echo "== $target: $seconds s"
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: libFuzzer's default, stated.
  dict=()
  [ -f "dict/$target.dict" ] && dict=(-dict="dict/$target.dict")
  # shellcheck disable=SC2086
  if cargo fuzz run "${fuzz_flags[@]}" "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} \
    >"$log" 2>&1; then
    grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tr '\n' ' ' || true
    echo
  else
    tail -n 60 "$log"
    crash=$(find "artifacts/$target" -type f -newer "$stamp" | head -n 1)
    echo "!! $target crashed on: fuzz/${crash:-artifacts/$target/ (no artifact written)}"
    [ -n "$crash" ] && echo "   replay: (cd fuzz && cargo fuzz run ${fuzz_flags[*]} $target $crash)"
    failed+=("$target")
  fi
  rm -f "$stamp" "$log"
done

echo "== done in $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: crashes in: ${failed[*]} (see fuzz/README.md: a crash becomes a regression test)" >&2
  exit 1
fi
