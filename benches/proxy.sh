#!/usr/bin/env bash
# `roost proxy` against nginx `proxy_pass` in one run, both in front of the same nginx upstream
# (`return 200 "ok\n"`), every client "app", with wrk (Debian) as in ../shared/peers/nginx-proxy-baseline.sh:
# one worker each (nginx worker_processes 1, roost proxy threads = 1), access logs off, keep-alive
# to the upstream, `wrk -t1 -c50 -d15s --latency`, direct / nginx / roost interleaved, REPS times;
# then again with 100,000 verdicts in the proxy's cache (none of them the benchmark client's).
# A bare pingora proxy (benches/pingora_bare.rs) runs beside them: the floor roost builds on.
#   bash benches/proxy.sh              # REPS=2 DUR=15s VERDICTS=100000
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-2}
DUR=${DUR:-15s}
VERDICTS=${VERDICTS:-100000}
WORK=${WORK:-${TMPDIR:-/tmp}/roost-proxy-bench}
scripts/install-test-deps.sh
cargo build --release --quiet -p roost --bin roost -p roost-benches --bin pingora-bare
eval "$(scripts/services.sh start)"
RUN="$WORK/run-$(date +%s)"
N="$RUN/nginx"
mkdir -p "$N/up/logs" "$N/px/logs" "$RUN/wrk"
PREFIX="bench$(date +%s):"
PIDS=()
stop() {
  for d in px up; do [ -s "$N/$d/nginx.pid" ] && kill "$(cat "$N/$d/nginx.pid")" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/services.sh stop
}
trap stop EXIT

cat > "$N/upstream.conf" <<CONF
worker_processes 1;
pid $N/up/nginx.pid;
error_log $N/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18081; location / { return 200 "ok\n"; } }
}
CONF
cat > "$N/proxy.conf" <<CONF
worker_processes 1;
pid $N/px/nginx.pid;
error_log $N/px/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18081; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:18080;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
cat > "$RUN/roost.toml" <<CONF
[redis]
url = "$ROOST_TEST_REDIS"
prefix = "$PREFIX"
[proxy]
listen = ["127.0.0.1:18090"]
upstreams = ["127.0.0.1:18081"]
metrics_listen = "127.0.0.1:18091"
threads = 1
pid_file = "$RUN/roost-proxy.pid"
upgrade_sock = "$RUN/roost-upgrade.sock"
CONF
nginx -c "$N/upstream.conf" -p "$N/up"
nginx -c "$N/proxy.conf" -p "$N/px"

start_roost() {
  ROOST_LOG=warn target/release/roost --config "$RUN/roost.toml" proxy 2>>"$RUN/roost-proxy.log" &
  ROOST_PID=$!
  PIDS+=($ROOST_PID)
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:18091/metrics 2>/dev/null | grep -q '^roost_proxy_redis_up 1' && return 0
    sleep 0.1
  done
  echo "roost proxy did not start (see $RUN/roost-proxy.log)" >&2
  exit 1
}
cache_entries() { curl -sf http://127.0.0.1:18091/metrics | awk '$1=="roost_proxy_cache_entries"{print $2}'; }

start_roost
# the floor: pingora proxying with nothing of roost's (benches/pingora_bare.rs)
target/release/pingora-bare 127.0.0.1:18092 127.0.0.1:18081 2>>"$RUN/pingora-bare.log" &
PIDS+=($!)
sleep 0.5
curl -sS -i http://127.0.0.1:18090/ | head -1
curl -sS -i http://127.0.0.1:18080/ | head -1

round() { # label
  for i in $(seq "$REPS"); do
    for t in direct:18081 nginx:18080 bare:18092 roost:18090; do
      timeout 60 wrk -t1 -c50 -d"$DUR" --latency "http://127.0.0.1:${t#*:}/" > "$RUN/wrk/$1.${t%%:*}.$i.txt"
    done
  done
}
round empty

# 100k verdicts in Redis (dubious and bad, 10.0.0.0/8; the benchmark client is 127.0.0.1), then
# a restarted proxy loads them all
python3 - "$PREFIX" "$VERDICTS" > "$RUN/verdicts.resp" <<'PY'
import json, sys, time
prefix, n = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
out = sys.stdout
for i in range(n):
    ip = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
    rec = json.dumps({"v": 1, "subject": ip, "verdict": "bad" if i % 3 else "dubious", "reputation": -0.6,
                      "at": now, "expires": now + 7_200_000, "requests": 12, "reasons": ["bench"]}, separators=(",", ":"))
    parts = ["SET", prefix + "v:" + ip, rec, "PX", "7500000"]
    out.write("*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(p.encode()), p) for p in parts))
PY
redis-cli -u "$ROOST_TEST_REDIS" --pipe < "$RUN/verdicts.resp" | tail -1
kill -INT "$ROOST_PID"; wait "$ROOST_PID" 2>/dev/null || true
start_roost
echo "roost proxy cache entries: $(cache_entries)"
round cached

python3 - "$RUN/wrk" "$REPS" <<'PY'
import re, sys
d, reps = sys.argv[1], int(sys.argv[2])
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
def parse(f):
    t = open(f).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p = {k: ms(v) for k, v in re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, p["50"], p["99"], int(bad.group(1)) if bad else 0
print("machine: %s" % open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip())
for label in ("empty", "cached"):
    for i in range(1, reps + 1):
        a, n, b, r = (parse("%s/%s.%s.%d.txt" % (d, label, w, i)) for w in ("direct", "nginx", "bare", "roost"))
        print("%s run %d: direct %.0f req/s p50 %.3f p99 %.3f ms | nginx %.0f req/s p50 %.3f p99 %.3f (+%.3f/+%.3f) non2xx %d"
              " | pingora-bare %.0f req/s p50 %.3f p99 %.3f (+%.3f/+%.3f)"
              " | roost %.0f req/s p50 %.3f p99 %.3f (+%.3f/+%.3f) non2xx %d | roost/nginx %.2f roost/bare %.2f"
              % (label, i, a[0], a[1], a[2], n[0], n[1], n[2], n[1] - a[1], n[2] - a[2], n[3],
                 b[0], b[1], b[2], b[1] - a[1], b[2] - a[2],
                 r[0], r[1], r[2], r[1] - a[1], r[2] - a[2], r[3], r[0] / n[0], r[0] / b[0]))
PY
