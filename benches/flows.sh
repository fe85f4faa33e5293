#!/usr/bin/env bash
# `roost flows` against nfcapd (nfdump 1.7.1, Debian) on the same input, in one run: softflowd's
# captured export of a 200,000-conversation pcap (../shared/peers/flows-setup.sh makes it:
# export-v9.pcap, export-v10.pcap = IPFIX, export-v5.pcap) replayed by flows_send.py at a fixed
# flow-record rate for DUR seconds into each collector on 127.0.0.1, both with a 32 MiB receive
# buffer.
#   received  = records the collector decoded (roost: roost_flows_records_total; nfcapd: nfdump -I)
#   published = roost only: records acknowledged by the broker (tansu, in memory, on loopback)
#               once the queue drained (nfcapd writes local files instead)
#   CPU µs/flow = the collector's CPU per flow sent; CPU % = that CPU as % of one core over the
#               send. nfcapd's: from the send's start until its socket's queue drained (flows_send.py).
#               roost's: until its queue to the broker drained, so the work its decoding threads
#               catch up on after the send counts too
#   backlog drops = roost only: datagrams read off the socket but dropped because a decoding
#               thread was flows.backlog_bytes behind (roost_flows_backlog_dropped_datagrams_total;
#               part of the loss, as kernel drops are)
#   skipped by features = roost only: records the features thread was too far behind to take
#               (roost_flows_features_skipped_total; published all the same)
#   broker CPU % = roost only: the broker's (tansu's) CPU from the send's start until the queue
#               drained, as % of one core over the send: it shares the two cores with the sender
#               and the collector here (in the field it is elsewhere)
# First a correctness pass (50k flows/s, every record once: the exact counts flows-setup.sh
# checks), then the RATES ramp per version. Needs root (sysctl net.core.rmem_max) and
# `bash ../shared/peers/setup.sh flows && bash ../shared/peers/flows-setup.sh` (WORK=/tmp/roost-peers).
#   bash benches/flows.sh            VERSIONS="9 10 5" RATES="..." DUR=3
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PEERS=$ROOT/../shared/peers
F=${WORK:-/tmp/roost-peers}/flows
DUR=${DUR:-3}
VERSIONS=${VERSIONS:-"9 10 5"}
RATES=${RATES:-"100000 250000 500000 1000000 1500000 2000000 3000000"}
RMEM=33554432
for v in $VERSIONS; do [ -s "$F/export-v$v.pcap" ] || { echo "$F/export-v$v.pcap missing: run $PEERS/flows-setup.sh"; exit 1; }; done
scripts/install-test-deps.sh >/dev/null
cargo build --release --quiet -p roost --bin roost
eval "$(scripts/services.sh start)"
OLD_RMEM=$(sysctl -n net.core.rmem_max)
sysctl -q -w net.core.rmem_max=$RMEM
RUN=$(mktemp -d /tmp/roost-flows-bench.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sysctl -q -w net.core.rmem_max="$OLD_RMEM" || true
  scripts/services.sh stop
}
trap cleanup EXIT
{ dpkg -l nfdump softflowd | grep '^ii' | awk '{print $2, $3}'; nproc; grep -m1 'model name' /proc/cpuinfo; uptime; } | tee "$RUN/machine.txt"

TANSU_PID=$(cat "${ROOST_TEST_RUN:-$ROOT/target/test-services}/tansu.pid")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user+system, in clock ticks

metric() { # port name → sum over label sets
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d\n", s}'
}

start_roost() { # tag → sets RP (pid) MP (metrics port) FP (flow port)
  FP=$((21000 + RANDOM % 2000)); MP=$((23000 + RANDOM % 2000))
  cat > "$RUN/$1.toml" <<CONF
[kafka]
brokers = "$ROOST_TEST_KAFKA"
[kafka.topics]
flows = "bench-flows-$1-$(date +%s%N)"
requests = "bench-requests-$1-$(date +%s%N)"
[flows]
listen = ["127.0.0.1:$FP"]
receive_buffer_bytes = $RMEM
queue = 4000000
metrics_listen = "127.0.0.1:$MP"
CONF
  ROOST_LOG=warn "${ROOST_BIN:-target/release/roost}" --config "$RUN/$1.toml" flows > "$RUN/$1.log" 2>&1 &
  RP=$!; PIDS+=("$RP")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$MP/healthz" >/dev/null && return; sleep 0.1; done
  echo "roost flows did not start"; cat "$RUN/$1.log"; exit 1
}

wait_drained() { # until published stops growing (queue empty), at most 120 s
  local last=-1 now
  for _ in $(seq 1 240); do
    now=$(metric "$MP" roost_flows_published_total)
    [ "$now" = "$last" ] && [ "$(metric "$MP" roost_flows_queued_records)" = 0 ] && return
    last=$now; sleep 0.5
  done
}

echo "== correctness: every record once at 50k flows/s"
for v in $VERSIONS; do
  n=$(python3 "$PEERS/flows_send.py" info --pcap "$F/export-v$v.pcap" | python3 -c 'import json,sys; print(json.load(sys.stdin)["flow_records"])')
  start_roost "check-v$v"
  python3 "$PEERS/flows_send.py" send --pcap "$F/export-v$v.pcap" --port "$FP" --rate 50000 --count "$n" > "$RUN/check-v$v.send.json"
  sleep 1; wait_drained
  echo "v$v: sent $n records; roost decoded $(metric "$MP" roost_flows_records_total), packets $(metric "$MP" roost_flows_packets_total), bytes $(metric "$MP" roost_flows_bytes_total), published $(metric "$MP" roost_flows_published_total), decode errors $(metric "$MP" roost_flows_decode_errors_total)"
  kill "$RP"; wait "$RP" 2>/dev/null || true
done

echo
echo "== throughput (DUR=${DUR}s per run)"
echo "| version | rate (flows/s) | collector | sent | achieved rate | received | loss | kernel drops | backlog drops | published (roost) | published/s | CPU % | CPU µs/flow | skipped by features | broker CPU % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for v in $VERSIONS; do
  for r in $RATES; do
    # roost
    start_roost "tp-v$v-$r"
    b0=$(ticks "$TANSU_PID"); r0=$(ticks "$RP")
    python3 "$PEERS/flows_send.py" send --pcap "$F/export-v$v.pcap" --port "$FP" --rate "$r" --duration "$DUR" --pid "$RP" > "$RUN/roost-v$v-$r.json"
    t0=$(date +%s.%N); sleep 0.5; wait_drained; t1=$(date +%s.%N)
    b1=$(ticks "$TANSU_PID"); r1=$(ticks "$RP")
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sent_flows"])' "$RUN/roost-v$v-$r.json")
    send_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["send_s"])' "$RUN/roost-v$v-$r.json")
    cpu=$(python3 -c "print(round(($r1 - $r0) * 100 / $(getconf CLK_TCK) / $send_s))")
    bd=$(metric "$MP" roost_flows_backlog_dropped_datagrams_total)
    recv=$(metric "$MP" roost_flows_records_total); pub=$(metric "$MP" roost_flows_published_total)
    pubs=$(python3 -c "print(round($pub / ($DUR + $t1 - $t0)))")
    loss=$(python3 -c "print('%.2f %%' % (100 * (1 - $recv / $sent)))")
    ach=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["achieved_rate"])' "$RUN/roost-v$v-$r.json")
    kd=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_drops"])' "$RUN/roost-v$v-$r.json")
    skip=$(metric "$MP" roost_flows_features_skipped_total)
    per=$(python3 -c "print('%.2f' % (($r1 - $r0) * 1e6 / $(getconf CLK_TCK) / $sent))")
    bcpu=$(python3 -c "print(round(($b1 - $b0) * 100 / $(getconf CLK_TCK) / $send_s))")
    echo "| v$v | $r | roost | $sent | $ach | $recv | $loss | $kd | $bd | $pub | $pubs | $cpu | $per | $skip | $bcpu |"
    kill "$RP"; wait "$RP" 2>/dev/null || true
    # nfcapd
    D="$RUN/nfcapd-v$v-$r"; mkdir -p "$D"; NP_PORT=$((25000 + RANDOM % 2000))
    nfcapd -w "$D" -p "$NP_PORT" -b 127.0.0.1 -B "$RMEM" > "$D.log" 2>&1 &
    NP=$!; PIDS+=("$NP"); sleep 1
    python3 "$PEERS/flows_send.py" send --pcap "$F/export-v$v.pcap" --port "$NP_PORT" --rate "$r" --duration "$DUR" --pid "$NP" > "$RUN/nfcapd-v$v-$r.json"
    sleep 0.5; kill "$NP"; wait "$NP" 2>/dev/null || true
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sent_flows"])' "$RUN/nfcapd-v$v-$r.json")
    cpu=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(round(d.get("collector_cpu_pct") or 0))' "$RUN/nfcapd-v$v-$r.json")
    recv=$(nfdump -R "$D" -I | awk '/^Flows:/ {print $2}')
    rm -rf "$D" # (a few GB a run: counted, then gone)
    loss=$(python3 -c "print('%.2f %%' % (100 * (1 - ${recv:-0} / $sent)))")
    ach=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["achieved_rate"])' "$RUN/nfcapd-v$v-$r.json")
    kd=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_drops"])' "$RUN/nfcapd-v$v-$r.json")
    per=$(python3 -c "print('%.2f' % ($cpu * 10000 / $ach))")
    echo "| v$v | $r | nfcapd | $sent | $ach | $recv | $loss | $kd | – | – | – | $cpu | $per | – | – |"
  done
done
echo "runs in $RUN"
