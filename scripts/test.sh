#!/usr/bin/env bash
# roost's whole test suite, as CI runs it (.ci/run calls this): installs what the tests need,
# checks formatting and lints, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# Real servers on loopback, started once for the whole run (tansu, redis-server) and stopped after.
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
# Builds here never clean cargo's shared cache (.cargo/config.toml says why); should another cargo
# on the machine clean it mid-build anyway, the sources it removed are gone from under rustc
# ("could not execute process ... (never executed)"), and the step runs once more: cargo
# extracts them again. Any other failure fails the run.
export CARGO_CACHE_AUTO_CLEAN_FREQUENCY=never
# A CI run builds once from a fresh clone: incremental state would only cost disk (gigabytes).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
step() {
  local log status=0
  log=$(mktemp)
  "$@" 2>&1 | tee "$log" || status=$?
  if [ "$status" != 0 ] && grep -q '(never executed)' "$log"; then
    echo "test.sh: a crate's sources vanished under cargo; running '$*' once more" >&2
    status=0
    "$@" || status=$?
  fi
  rm -f "$log"
  return "$status"
}
step cargo fmt --all --check
step cargo clippy --workspace --all-targets --locked -- -D warnings
# the fuzz targets (their own workspace) must keep building: a refactor cannot break them unseen
step env CARGO_TARGET_DIR=target cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
# (no doc tests: the examples are in the tests, so there is no `cargo test --doc` step that would
# run nothing)
if cargo nextest --version >/dev/null 2>&1; then
  step cargo nextest run --workspace --locked --no-fail-fast
else
  step cargo test --workspace --locked --no-fail-fast
fi
