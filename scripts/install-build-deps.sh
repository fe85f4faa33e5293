#!/usr/bin/env bash
# Installs what building roost needs on a fresh Debian machine (idempotent; quick when all is
# there): a C toolchain, pkg-config, cmake and libcurl (rdkafka builds its bundled librdkafka),
# OpenSSL (pingora's TLS). Rust itself comes from rustup (https://rustup.rs).
# Arguments name more Debian packages to install with them (scripts/install-test-deps.sh).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES=(build-essential pkg-config cmake libcurl4-openssl-dev libssl-dev ca-certificates curl "$@")
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  # services some of them bring (the tests run their own on loopback ports) are not wanted
  $SUDO systemctl disable --now haproxy bird gobgpd prometheus prometheus-alertmanager prometheus-node-exporter softflowd nfdump stunnel4 >/dev/null 2>&1 || true
fi
command -v cargo >/dev/null || {
  echo "install-build-deps: cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
}
