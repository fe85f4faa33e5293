#!/usr/bin/env bash
# `roost bgp` announcing RULES flowspec rules (default 10,000; one bad verdict each, published to
# the verdicts topic) to a real gobgpd (Debian) on loopback, timed until gobgpd's ipv4-flowspec
# table holds them all, then withdrawn (the verdicts turn good) until it holds none.
#   bash benches/bgp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RULES=${RULES:-10000}
WORK=${WORK:-${TMPDIR:-/tmp}/roost-bgp-bench}
scripts/install-test-deps.sh
cargo build --release --quiet -p roost --bin roost -p roost-benches --bin bgp-bench
eval "$(scripts/services.sh start)"
RUN="$WORK/run-$(date +%s)"; mkdir -p "$RUN"
BGP_PORT=11479; API_PORT=50351; LISTEN=127.0.0.1:9795
TOPIC="bench-verdicts-$(date +%s)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; scripts/services.sh stop' EXIT
cat > "$RUN/gobgpd.toml" <<CONF
[global.config]
  as = 65000
  router-id = "127.0.0.1"
  port = $BGP_PORT
  local-address-list = ["127.0.0.1"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.4"
    peer-as = 65003
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 2
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-flowspec"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-flowspec"
CONF
cat > "$RUN/roost.toml" <<CONF
[kafka]
brokers = "$ROOST_TEST_KAFKA"
[kafka.topics]
verdicts = "$TOPIC"
[bgp]
listen = "$LISTEN"
protect = ["192.0.2.10/32"]
max_rules = $RULES
peers = [{ address = "127.0.0.1:$BGP_PORT", local_address = "127.0.0.4", peer_as = 65000 }]
bad = { kind = "discard" }
CONF
gobgpd -f "$RUN/gobgpd.toml" --api-hosts "127.0.0.1:$API_PORT" --pprof-disable -p -l warn > "$RUN/gobgpd.log" 2>&1 &
PIDS+=($!)
sleep 1
ROOST_LOG=warn target/release/roost --config "$RUN/roost.toml" bgp > "$RUN/roost-bgp.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  curl -sf "http://$LISTEN/metrics" | grep -q '^roost_bgp_session_up{.*} 1' && break
  sleep 0.1
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); gobgpd $(gobgpd --version 2>&1 | head -1)"
target/release/bgp-bench --brokers "$ROOST_TEST_KAFKA" --topic "$TOPIC" --api-port "$API_PORT" --rules "$RULES" | tee "$RUN/figures.txt"
echo "roost bgp RSS: $(awk '/VmHWM/{print $2, $3}' /proc/${PIDS[1]}/status)"
