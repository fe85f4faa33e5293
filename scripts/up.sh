#!/usr/bin/env bash
# The appliance on this machine: installs what the build needs, builds roost and runs `roost up`
# on its embedded defaults (arguments are passed on: `scripts/up.sh --demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-build-deps.sh
exec cargo run --release --locked -p roost -- up "$@"
