#!/usr/bin/env bash
# roost replay vs fail2ban-regex and CrowdSec, on the same generated nginx combined log, in one run.
#
#   bash ../shared/peers/setup.sh          # once: fail2ban, crowdsec, hyperfine from Debian
#   bash benches/replay-vs-peers.sh        # LINES=1000000 CS_LINES=100000 RUNS=5
#
# Prints wall time, lines/s and peak RSS of each, the ratios, and who each flagged (by the
# generator's ground truth). CrowdSec replays about 450 lines/s here, so it gets the first
# CS_LINES lines and roost is timed on that same slice too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
export WORK=${WORK:-${TMPDIR:-/tmp}/roost-bench}
LINES=${LINES:-1000000}
CS_LINES=${CS_LINES:-100000}
RUNS=${RUNS:-5}
mkdir -p "$WORK"
for t in fail2ban-regex crowdsec cscli hyperfine; do
  command -v $t >/dev/null || { echo "missing $t: run bash $PEERS/setup.sh"; exit 1; }
done
(cd "$ROOT" && cargo build --release -q -p roost)
R=$ROOT/target/release/roost
LOG=$WORK/bench-$LINES.log
# always regenerate: the generator may have changed since the last run
$R generate --lines "$LINES" --seed 42 --out "$LOG" --truth "$LOG.truth"
head -n "$CS_LINES" "$LOG" > "$WORK/cs.log"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "== log: $LOG ($(wc -l < "$LOG") lines, $(du -h "$LOG" | cut -f1))"

peak_rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }

echo "== roost replay, $LINES lines"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$WORK/roost.json" "$R replay $LOG -o $WORK/roost.out" | sed -n '1,4p'
echo "peak RSS: $(peak_rss $R replay "$LOG" -o "$WORK/roost.out") KB"
echo "== roost replay, first $CS_LINES lines"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$WORK/roost-cs.json" "$R replay $WORK/cs.log -o $WORK/roost-cs.out" | sed -n '1,4p'

echo "== fail2ban-regex (nginx-botsearch filter), $LINES lines"
F2B_FILTER=/etc/fail2ban/filter.d/nginx-botsearch.conf
hyperfine -N --runs 1 --export-json "$WORK/f2b.json" "fail2ban-regex $LOG $F2B_FILTER" | sed -n '1,4p'
echo "peak RSS: $(peak_rss fail2ban-regex "$LOG" "$F2B_FILTER") KB"
fail2ban-regex -o ip "$LOG" "$F2B_FILTER" 2>/dev/null | grep -E '^[0-9a-f.:]+$' | sort | uniq -c | awk '$1 >= 5 {print $2}' > "$WORK/f2b.flagged" || true

echo "== CrowdSec 1.4.6 replay (-type nginx), first $CS_LINES lines"
# shellcheck disable=SC1091
. "$PEERS/crowdsec-offline.sh"
cs_fresh; lapi_start
start=$(date +%s.%N)
crowdsec -c "$CFG" -dsn "file://$WORK/cs.log" -type nginx -no-api >"$WORK/cs.stdout" 2>&1 || true
end=$(date +%s.%N)
cscli -c "$CFG" alerts list -o json -l 0 > "$WORK/cs-alerts.json" 2>/dev/null || echo '[]' > "$WORK/cs-alerts.json"
lapi_stop
echo "crowdsec: $(echo "$end - $start" | bc) s"
echo "$end - $start" | bc > "$WORK/cs.seconds"

python3 - "$WORK" "$LINES" "$CS_LINES" "$LOG.truth" <<'PY'
import json, sys, collections
work, lines, cs_lines, truth_p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mean = lambda f: json.load(open(f"{work}/{f}"))["results"][0]["mean"]
roost, roost_cs, f2b = mean("roost.json"), mean("roost-cs.json"), mean("f2b.json")
cs = float(open(f"{work}/cs.seconds").read())
print("\n== throughput")
print(f"{'tool':<34}{'lines':>10}{'seconds':>10}{'lines/s':>12}{'roost is':>12}")
for name, n, s, ref in [("roost replay", lines, roost, roost), ("fail2ban-regex (botsearch)", lines, f2b, roost),
                        ("roost replay", cs_lines, roost_cs, roost_cs), ("crowdsec -type nginx -no-api", cs_lines, cs, roost_cs)]:
    print(f"{name:<34}{n:>10}{s:>10.2f}{n/s:>12,.0f}{s/ref:>11.0f}x")
truth = dict(l.rstrip("\n").split("\t") for l in open(truth_p))
def roles(ips):
    c = collections.Counter(truth.get(ip, "?") for ip in ips); return dict(sorted(c.items()))
seen_cs = set(l.split(" ")[0] for l in open(f"{work}/cs.log"))
population = lambda ips: dict(sorted(collections.Counter(truth[ip] for ip in ips if ip in truth).items()))
roost_flag = [json.loads(l)["ip"] for l in open(f"{work}/roost.out") if json.loads(l)["worst"] != "good"]
roost_cs_flag = [json.loads(l)["ip"] for l in open(f"{work}/roost-cs.out") if json.loads(l)["worst"] != "good"]
f2b_flag = [l.strip() for l in open(f"{work}/f2b.flagged")]
cs_flag = set()
for a in json.load(open(f"{work}/cs-alerts.json")) or []:
    v = a.get("source", {}).get("value") or a.get("source", {}).get("ip")
    if v: cs_flag.add(v)
print("\n== who was flagged (ground truth roles)")
print(f"population, {lines} lines: {population(truth.keys())}")
print(f"roost:    {roles(roost_flag)}")
print(f"fail2ban: {roles(f2b_flag)}  (IPs with >= 5 botsearch matches: an upper bound on bans)")
print(f"population, first {cs_lines} lines: {population(seen_cs)}")
print(f"roost:    {roles(roost_cs_flag)}")
print(f"crowdsec: {roles(cs_flag)}")
PY
