#!/usr/bin/env bash
# `roost proxy` against nginx on each of the proxy's routes, in one run, one worker each
# (nginx worker_processes 1; roost proxy threads = 1), access logs off, as in
# ../shared/peers/nginx-proxy-baseline.sh:
#   app        roost (client good)      vs nginx proxy_pass            both to one nginx upstream
#   error      roost (client bad → 403) vs nginx `deny all` → 403
#   challenge  roost (client dubious)   vs nginx serving a static page of the challenge's size
#   h2 (TLS)   roost TLS listener, ALPN h2, app route vs nginx `listen ssl http2` proxy_pass,
#              same certificate and upstream, with h2load
# HTTP/1 load: `wrk -t1 -c50 -d$DUR --latency`; HTTP/2: `h2load -t1 -c50 -m10 -D $DUR`;
# REPS rounds, interleaved. The roost proxies hold $VERDICTS verdicts in their caches (10/8,
# none of them the client's). Besides req/s and latency, each server's CPU time per request
# (user+sys of its process over the run, /proc): on 2 cores shared with wrk and the upstream,
# the cost that decides how much of a flood one box absorbs.
# Every server runs in a session of its own, as nginx does once it daemonizes (and as a service
# does under systemd): with the kernel's autogroup scheduling on (`sched_autogroup_enabled`), a
# server left in this script's session would share one CPU group with wrk and get a smaller
# share of the cores than nginx under the same load.
# The bare pingora proxy (benches/pingora_bare.rs) and the prototypes the HTTP/1 data path was
# chosen from (benches/proxy_proto.rs) run in the app round too.
#   bash benches/proxy.sh              # REPS=2 DUR=10 VERDICTS=100000 KEEPALIVE=512
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-2}
DUR=${DUR:-10}
VERDICTS=${VERDICTS:-100000}
PROTOS=${PROTOS:-1}
# idle upstream connections kept: nginx's `keepalive` and roost's `proxy.upstream_keepalive`
# alike. h2load's 500 streams in flight need more than nginx's usual 64 at once: with 64, both
# open a connection for about a third of the requests, and nginx does half the HTTP/2 req/s it
# does with 512 (BENCHMARKS.md), so the default measures against the stronger nginx.
KEEPALIVE=${KEEPALIVE:-512}
WORK=${WORK:-${TMPDIR:-/tmp}/roost-proxy-bench}
scripts/install-test-deps.sh
cargo build --release --quiet -p roost --bin roost -p roost-benches --bin pingora-bare --bin proxy-proto
eval "$(scripts/services.sh start)"
RUN="$WORK/run-$(date +%s)"
N="$RUN/nginx"
mkdir -p "$N/up/logs" "$N/px/logs" "$N/html" "$RUN/out"
PIDS=()
stop() {
  for d in px up; do [ -s "$N/$d/nginx.pid" ] && kill "$(cat "$N/$d/nginx.pid")" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/services.sh stop
}
trap stop EXIT

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

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
nginx -c "$N/upstream.conf" -p "$N/up"

# verdicts: for each roost proxy its own Redis prefix, with $VERDICTS others' verdicts and, for
# the error and challenge proxies, the benchmark client's
PREFIX="bench$(date +%s)"
python3 - "$PREFIX" "$VERDICTS" > "$RUN/verdicts.resp" <<'PY'
import json, sys, time
prefix, n = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
out = sys.stdout
def put(p, ip, verdict, rep):
    rec = json.dumps({"v": 1, "subject": ip, "verdict": verdict, "reputation": rep, "at": now,
                      "expires": now + 7_200_000, "requests": 12, "reasons": ["bench"]}, separators=(",", ":"))
    parts = ["SET", p + "v:" + ip, rec, "PX", "7500000"]
    out.write("*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(x.encode()), x) for x in parts))
for route in ("app", "error", "challenge"):
    p = "%s-%s:" % (prefix, route)
    for i in range(n):
        put(p, "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255), "bad" if i % 3 else "dubious", -0.6)
put(prefix + "-error:", "127.0.0.1", "bad", -0.8)
put(prefix + "-challenge:", "127.0.0.1", "dubious", 0.0)
PY
redis-cli -u "$ROOST_TEST_REDIS" --pipe < "$RUN/verdicts.resp" | tail -1

declare -A PORT=([app]=18090 [error]=18093 [challenge]=18094)
declare -A ROOST
n=0
for route in app error challenge; do
  n=$((n + 1))
  tls=""
  [ "$route" = app ] && tls=$'[[proxy.tls]]\nlisten = "127.0.0.1:18443"\n[[proxy.tls.certs]]\ncert = "'"$RUN/cert.pem"$'"\nkey = "'"$RUN/key.pem"'"'
  cat > "$RUN/$route.toml" <<CONF
[redis]
url = "$ROOST_TEST_REDIS"
prefix = "$PREFIX-$route:"
[proxy]
listen = ["127.0.0.1:${PORT[$route]}"]
upstreams = ["127.0.0.1:18081"]
metrics_listen = "127.0.0.1:1819$n"
threads = 1
upstream_keepalive = $KEEPALIVE
pid_file = "$RUN/$route.pid"
upgrade_sock = "$RUN/$route-upgrade.sock"
$tls
CONF
  ROOST_LOG=warn setsid target/release/roost --config "$RUN/$route.toml" proxy 2>>"$RUN/roost-$route.log" &
  ROOST[$route]=$!
  PIDS+=($!)
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:1819$n/metrics" 2>/dev/null | grep -q '^roost_proxy_redis_up 1' && break
    sleep 0.1
  done
  echo "roost $route proxy: $(curl -sf "http://127.0.0.1:1819$n/metrics" | awk '$1=="roost_proxy_cache_entries"{print $2}') verdicts cached"
done

# nginx's equivalents; its static page is the challenge page roost serves, byte for byte
curl -s "http://127.0.0.1:${PORT[challenge]}/" > "$N/html/challenge.html"
cat > "$N/proxy.conf" <<CONF
worker_processes 1;
pid $N/px/nginx.pid;
error_log $N/px/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18081; keepalive $KEEPALIVE; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:18080;
    listen 127.0.0.1:18444 ssl http2;
    ssl_certificate $RUN/cert.pem;
    ssl_certificate_key $RUN/key.pem;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
  server { listen 127.0.0.1:18083; location / { deny all; } }
  server { listen 127.0.0.1:18084; root $N/html; location / { try_files /challenge.html =404; } }
}
CONF
nginx -c "$N/proxy.conf" -p "$N/px"
NGINX_WORKER=$(pgrep -P "$(cat "$N/px/nginx.pid")")
UP_WORKER=$(pgrep -P "$(cat "$N/up/nginx.pid")")

setsid target/release/pingora-bare 127.0.0.1:18092 127.0.0.1:18081 2>>"$RUN/pingora-bare.log" &
BARE=$!
PIDS+=($BARE)
if [ "$PROTOS" = 1 ]; then
  setsid target/release/proxy-proto raw-pingora 127.0.0.1:18095 127.0.0.1:18081 2>/dev/null &
  RAWP=$!; PIDS+=($RAWP)
  setsid target/release/proxy-proto hyper 127.0.0.1:18096 127.0.0.1:18081 2>/dev/null &
  HYPER=$!; PIDS+=($HYPER)
fi
sleep 0.5
for p in 18080 18083 18084 ${PORT[app]} ${PORT[error]} ${PORT[challenge]}; do
  printf '%s: %s ' "$p" "$(curl -s -o /dev/null -w '%{http_code} %{size_download}B' "http://127.0.0.1:$p/")"
done
echo
curl -sk --http2 -o /dev/null -w 'h2 roost %{http_version} %{http_code}\n' https://127.0.0.1:18443/
curl -sk --http2 -o /dev/null -w 'h2 nginx %{http_version} %{http_code}\n' https://127.0.0.1:18444/

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# label pid command...
measure() {
  local label=$1 pid=$2
  shift 2
  local c0 c1
  c0=$(cpu "$pid")
  "$@" > "$RUN/out/$label.txt" 2>&1 || true
  c1=$(cpu "$pid")
  echo "cpu_ticks $((c1 - c0))" >> "$RUN/out/$label.txt"
}
wrk1() { timeout 120 wrk -t1 -c50 -d"${DUR}s" --latency "http://127.0.0.1:$1/"; }
h2() { timeout 120 h2load -t1 -c50 -m10 -D "$DUR" "https://127.0.0.1:$1/"; }
for i in $(seq "$REPS"); do
  measure "direct.$i" "$UP_WORKER" wrk1 18081
  measure "app.nginx.$i" "$NGINX_WORKER" wrk1 18080
  measure "app.roost.$i" "${ROOST[app]}" wrk1 "${PORT[app]}"
  measure "app.bare.$i" "$BARE" wrk1 18092
  if [ "$PROTOS" = 1 ]; then
    measure "app.raw-pingora.$i" "$RAWP" wrk1 18095
    measure "app.hyper.$i" "$HYPER" wrk1 18096
  fi
  measure "error.nginx.$i" "$NGINX_WORKER" wrk1 18083
  measure "error.roost.$i" "${ROOST[error]}" wrk1 "${PORT[error]}"
  measure "challenge.nginx.$i" "$NGINX_WORKER" wrk1 18084
  measure "challenge.roost.$i" "${ROOST[challenge]}" wrk1 "${PORT[challenge]}"
  measure "h2.nginx.$i" "$NGINX_WORKER" h2 18444
  measure "h2.roost.$i" "${ROOST[app]}" h2 18443
done

python3 - "$RUN/out" "$REPS" "$(getconf CLK_TCK)" <<'PY'
import re, sys
d, reps, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
def parse(name):
    try:
        t = open("%s/%s.txt" % (d, name)).read()
    except FileNotFoundError:
        return None
    ticks = int(re.search(r"cpu_ticks (\d+)", t).group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    if m:  # wrk
        rps = float(m.group(1))
        p = {k: ms(v) for k, v in re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M)}
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
        n = int(re.search(r"(\d+) requests in", t).group(1))
        return dict(rps=rps, p50=p["50"], p99=p["99"], non2xx=int(bad.group(1)) if bad else 0,
                    cpu_us=ticks / hz * 1e6 / max(n, 1))
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t)  # h2load
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", t).group(1))
    ok = re.search(r"status codes: (\d+) 2xx", t)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", t)
    return dict(rps=float(m.group(1)), mean=ms(mean.group(1)), ok=int(ok.group(1)) if ok else 0,
                cpu_us=ticks / hz * 1e6 / max(done, 1))
print("machine: %s, %d cores" % (open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
                                 open("/proc/cpuinfo").read().count("processor\t:")))
for i in range(1, reps + 1):
    a = parse("direct.%d" % i)
    print("run %d: direct %.0f req/s p50 %.3f p99 %.3f ms" % (i, a["rps"], a["p50"], a["p99"]))
    for route in ("app", "error", "challenge"):
        n, r = parse("%s.nginx.%d" % (route, i)), parse("%s.roost.%d" % (route, i))
        line = ("  %-9s nginx %7.0f req/s p50 %.3f p99 %.3f ms %5.1f us cpu/req | roost %7.0f req/s p50 %.3f p99 %.3f ms"
                " %5.1f us cpu/req non2xx %d | roost/nginx %.2f req/s, %.2f cpu/req"
                % (route, n["rps"], n["p50"], n["p99"], n["cpu_us"], r["rps"], r["p50"], r["p99"], r["cpu_us"],
                   r["non2xx"], r["rps"] / n["rps"], r["cpu_us"] / n["cpu_us"]))
        if route == "app":
            line += " | added p99 nginx %+.3f roost %+.3f ms" % (n["p99"] - a["p99"], r["p99"] - a["p99"])
        print(line)
        if route == "app":
            for other in ("bare", "raw-pingora", "hyper"):
                o = parse("app.%s.%d" % (other, i))
                if o:
                    print("  %-9s %-11s %7.0f req/s p50 %.3f p99 %.3f ms %5.1f us cpu/req"
                          % ("", other, o["rps"], o["p50"], o["p99"], o["cpu_us"]))
    n, r = parse("h2.nginx.%d" % i), parse("h2.roost.%d" % i)
    print("  %-9s nginx %7.0f req/s mean %.3f ms %5.1f us cpu/req (%d 2xx) | roost %7.0f req/s mean %.3f ms %5.1f us cpu/req (%d 2xx) | roost/nginx %.2f req/s, %.2f cpu/req"
          % ("h2 TLS", n["rps"], n["mean"], n["cpu_us"], n["ok"], r["rps"], r["mean"], r["cpu_us"], r["ok"],
             r["rps"] / n["rps"], r["cpu_us"] / n["cpu_us"]))
PY
