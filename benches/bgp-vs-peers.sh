#!/usr/bin/env bash
# `roost bgp` in the roost slot of ../shared/peers/bgp-flowspec.sh: the same BIRD 2.0.12 receiving,
# the same 10,000-rule sets, in the same run as GoBGP (gRPC) and ExaBGP. roost is driven the way
# it runs: each add/withdraw phase publishes one verdict per rule to the verdicts topic
# (bgp-bench --publish) and roost bgp turns them into flowspec.
#   bash benches/bgp-vs-peers.sh            # N=10000 RUNS=1 CLI=0 (CLI=1 adds GoBGP's 2×130 s CLI steps)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
scripts/install-test-deps.sh
[ -f /usr/share/gocode/src/github.com/osrg/gobgp/api/gobgp.proto ] && command -v exabgp >/dev/null || bash "$PEERS/setup.sh" bgp
cargo build --release --quiet -p roost --bin roost -p roost-benches --bin bgp-bench
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
RUN=${TMPDIR:-/tmp}/roost-bgp-peers; mkdir -p "$RUN"
TOPIC="peers-verdicts-$(date +%s)"
cat > "$RUN/roost.toml" <<CONF
[kafka]
brokers = "$ROOST_TEST_KAFKA"
[kafka.topics]
verdicts = "$TOPIC"
[bgp]
asn = 65003
router_id = "127.0.0.4"
listen = "127.0.0.1:9796"
protect = ["192.0.2.10/32", "2001:db8:ffff::10/128"]
protocol = 0
ports = []
aggregate_v6 = 128
max_rules = 20000
peers = [{ address = "127.0.0.1:11179", local_address = "127.0.0.4", peer_as = 65000 }]
bad = { kind = "discard" }
CONF
PUB="$ROOT/target/release/bgp-bench --brokers $ROOST_TEST_KAFKA --topic $TOPIC --publish \"\$RULES_FILE\""
SPEAKERS="${SPEAKERS:-gobgp exabgp roost}" CLI=${CLI:-0} RUNS=${RUNS:-1} N=${N:-10000} \
  ROOST_START="env ROOST_LOG=warn $ROOT/target/release/roost --config $RUN/roost.toml bgp" \
  ROOST_ADD="$PUB --to bad" ROOST_DEL="$PUB --to good" \
  bash "$PEERS/bgp-flowspec.sh"
