#!/usr/bin/env bash
# roost's whole test suite, as CI runs it (.ci/run calls this): installs what the tests need,
# checks formatting and lints, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# Real servers on loopback, started once for the whole run (tansu, redis-server) and stopped after.
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
