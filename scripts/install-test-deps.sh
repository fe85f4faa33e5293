#!/usr/bin/env bash
# Installs what roost's tests need on a fresh Debian machine (idempotent; quick when all is there).
# Called by scripts/test.sh. Real programs only: tests never skip a part that is missing.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Debian packages the tests run or build against.
# (what the build needs: scripts/install-build-deps.sh) redis-server: verdict store;
# nginx: serves feed snapshots to `roost feeds` in the tests, and is the peer and upstream of the
# proxy tests; wrk, h2load (nghttp2-client): proxy load over HTTP/1 and HTTP/2; chromium: solves the challenge,
# and with chromium-driver (WebDriver) drives the admin UI;
# gobgpd, bird2: the routers `roost bgp` peers with; prometheus (+ promtool), prometheus-alertmanager
# (+ amtool): the alerting rules' tests and the end-to-end alert test; softflowd (a real NetFlow
# exporter, reading pcaps) and nfdump (nfcapd, the reference collector) for `roost flows` (system services
# left stopped); haproxy: its log format snippet is run for real; systemd: systemd-analyze verify
# checks the units in deploy/systemd; dnsmasq-base: the DNS server crawler verification (FCrDNS) asks in tests; stunnel4 (+ openssl for its certificate): the TLS endpoint in front
# of tansu for the Kafka TLS/SASL tests (tansu 0.6 serves no TLS itself).
"$(dirname "$0")/install-build-deps.sh" procps systemd docker-compose yamllint redis-server nginx haproxy wrk nghttp2-client chromium chromium-driver gobgpd bird2 prometheus prometheus-alertmanager softflowd nfdump stunnel4 openssl dnsmasq-base

# Shared real-world test data (../shared/data, next to the checkout): the tests read it.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$ROOT/../shared/data/logs/semicomplete-apache-2015-05-17_18.log" ]; then
  echo "install-test-deps: ../shared/data is missing next to the checkout ($ROOT/../shared/data); the tests need it" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "install-test-deps: cargo is missing (install Rust with rustup)" >&2; exit 1; }

# A Kafka-protocol broker: tansu (crates.io) with a fix to its consumer-group coordinator
# (scripts/tansu/build.sh says why), built once and cached outside the clone (about 10 minutes on
# 2 cores the first time; later runs reuse it). dynostore gives the in-memory broker most tests
# share; libsql gives sqlite:// storage, for the test that stops and restarts a broker.
# The cache is named after the build script and patch, so changing either rebuilds it.
TANSU_ROOT="${ROOST_CACHE:-$HOME/.cache/roost}/$("$ROOT/scripts/tansu/build.sh" --name)"
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  echo "install-test-deps: building tansu 0.6.0 (patched) into $TANSU_ROOT (one time, ~10 min)"
  "$ROOT/scripts/tansu/build.sh" "$TANSU_ROOT"
fi
