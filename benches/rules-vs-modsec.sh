#!/usr/bin/env bash
# roost's known-bad rules vs ModSecurity + OWASP CRS 3.3.4, on the same requests, in one run:
# detection per attack family on the CRS regression tests (../shared/data/crs-tests) and the
# payload lists (../shared/data/payloads), each split by file into a tuning part and a held-out
# part (benches/detection_corpora.py says how), false positives on a real server's log, and
# evaluation cost per request.
#
#   bash ../shared/peers/setup.sh modsec     # once: nginx + ModSecurity v3 + CRS, wrk, python3-yaml
#   bash benches/rules-vs-modsec.sh          # QUICK=1 shortens ModSecurity's throughput run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
DATA=${DATA:-$ROOT/../shared/data}
export WORK=${WORK:-${TMPDIR:-/tmp}/roost-peers}
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release -q -p roost)
R=$ROOT/target/release/roost
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); roost rules $($R rules lint | sed 's/.*(version \(.*\))/\1/')"

echo "== detection: CRS regression tests and payload lists, split by file into tuning and held-out parts"
python3 "$ROOT/benches/detection_corpora.py" render "$DATA" "$WORK/det"
$R replay "$WORK/det/crs.log" -o "$WORK/det/crs.roost.jsonl" | sed -n '1,3p'
$R replay "$WORK/det/payloads.log" -o "$WORK/det/payloads.roost.jsonl" | sed -n '1p'
# each modsec-replay.sh run starts its instance afresh (and its output folder with it)
RAW=1 bash "$PEERS/modsec-replay.sh" "$WORK/det/crs.log" crs > "$WORK/crs.modsec.txt" 2>&1
cp "$WORK/modsec/replay/crs.rules.tsv" "$WORK/det/crs.modsec.tsv"
bash "$PEERS/modsec-replay.sh" "$WORK/det/payloads.log" payloads > "$WORK/payloads.modsec.txt" 2>&1
cp "$WORK/modsec/replay/payloads.rules.tsv" "$WORK/det/payloads.modsec.tsv"
python3 "$ROOT/benches/detection_corpora.py" report "$WORK/det" "$WORK/det/crs.roost.jsonl" "$WORK/det/payloads.roost.jsonl" \
  "$WORK/det/crs.modsec.tsv" "$WORK/det/payloads.modsec.tsv"

echo; echo "== false positives: a real server's log ($DATA/logs), 890 clients"
REAL=$DATA/logs/semicomplete-apache-2015-05-17_18.log
$R replay "$REAL" -o "$WORK/real.roost.jsonl" | sed -n '5,6p'
bash "$PEERS/modsec-replay.sh" "$REAL" real > "$WORK/real.modsec.txt" 2>&1
grep -E '^blocked' "$WORK/real.modsec.txt" | sed 's/^/modsec: /'
python3 - "$REAL" "$WORK/real.roost.jsonl" "$WORK/modsec/replay/real.rules.tsv" <<'PY'
import json, sys
log, roost, ms = sys.argv[1:4]
reqs = {}
for l in open(log):
    ip = l.split(" ")[0]; parts = l.split('"')
    reqs.setdefault(ip, []).append(parts[1] if len(parts) > 1 else "")
probe = lambda ip: any(("/wp-" in r or "/wp/" in r or "/administrator" in r) for r in reqs.get(ip, []))
flag = [json.loads(l)["ip"] for l in open(roost) if json.loads(l)["worst"] != "good"]
blocked = {l.split("\t")[1] for l in open(ms) if l.split("\t")[3] == "403"}
probers = {ip for ip in reqs if probe(ip)}
print(f"probers (asked for WordPress/Joomla admin paths on a site that has neither): {len(probers)}")
print(f"roost:  flagged {len(flag)} clients: {sum(probe(i) for i in flag)} probers, {sum(not probe(i) for i in flag)} others")
print(f"modsec: blocked {len(blocked)} clients: {sum(probe(i) for i in blocked)} probers, {sum(not probe(i) for i in blocked)} others")
PY

echo; echo "== evaluation cost per request"
(cd "$ROOT" && cargo bench -q -p roost-benches --bench rules 2>&1 | grep -E '^(rules|parse)|thrpt' )
if [ "${QUICK:-0}" = 1 ]; then export REPS=1 DUR=5s DUR1=3s; fi
bash "$PEERS/modsec-throughput.sh" 2>&1 | grep -E "^== wrk|median|crs/plain|per request"
