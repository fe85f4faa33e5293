#!/usr/bin/env bash
# The Kafka pipeline end to end on this machine, with fail2ban watching the same files in the
# same run: log file → roost tail → broker (tansu) → roost score → Redis, against
# log file → fail2ban-server (pyinotify backend) → ban action.
#   bash benches/pipeline.sh            # LINES=1000000 RATE=10000 SECONDS=30
# Installs what it needs: scripts/install-test-deps.sh (tansu, redis) and the peer, Debian's
# fail2ban + python3-pyinotify (its system service is left stopped: the bench runs its own).
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${LINES:-1000000}
RATE=${RATE:-10000}
SECS=${SECONDS_RUN:-30}
WORK=${WORK:-${TMPDIR:-/tmp}/roost-pipeline-bench}
scripts/install-test-deps.sh
if ! command -v fail2ban-server >/dev/null || ! /usr/bin/python3 -c 'import pyinotify' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends fail2ban python3-pyinotify
  $SUDO systemctl disable --now fail2ban >/dev/null 2>&1 || true
fi
cargo build --release --quiet -p roost -p roost-benches --bin roost --bin pipeline-bench
eval "$(scripts/services.sh start)"
trap 'fail2ban-client -c "$F2B" stop >/dev/null 2>&1 || true; scripts/services.sh stop' EXIT
RUN="$WORK/run-$(date +%s)"
F2B="$RUN/fail2ban"
mkdir -p "$F2B/filter.d" "$F2B/action.d"
: > "$RUN/throughput.log"
: > "$RUN/latency.log"
# generated logs are reused between runs
[ -f "$WORK/generated-$LINES.log" ] || target/release/roost generate --lines "$LINES" --out "$WORK/generated-$LINES.log"
ln -sf "$WORK/generated-$LINES.log" "$RUN/generated.log"

# fail2ban: its own instance, one jail per file, the same SQL-injection probe roost's R-3001
# blocks at once, banned at the first match; the ban action logs "IP UNIXTIME".
cat > "$F2B/fail2ban.conf" <<CONF
[Definition]
loglevel = NOTICE
logtarget = $F2B/fail2ban.log
socket = $F2B/fail2ban.sock
pidfile = $F2B/fail2ban.pid
dbfile = :memory:
CONF
cat > "$F2B/filter.d/roost-probe.conf" <<'CONF'
[Definition]
failregex = ^<HOST> \S+ \S+ \[\] "GET /item\?id=1%%20UNION%%20SELECT
ignoreregex =
datepattern = ^[^\[]*\[({DATE})
CONF
cat > "$F2B/action.d/banlog.conf" <<CONF
[Definition]
actionstart =
actionstop =
actioncheck =
actionban = echo "<ip> \$(date +%%s.%%N)" >> $RUN/bans.txt
actionunban =
CONF
cat > "$F2B/jail.conf" <<CONF
[DEFAULT]
backend = pyinotify
usedns = no
maxretry = 1
findtime = 3600
bantime = 86400
banaction = banlog
action = banlog
[tput]
enabled = true
filter = roost-probe
logpath = $RUN/throughput.log
[latency]
enabled = true
filter = roost-probe
logpath = $RUN/latency.log
CONF
fail2ban-client -c "$F2B" -x start >/dev/null
for _ in $(seq 1 50); do fail2ban-client -c "$F2B" ping >/dev/null 2>&1 && break; sleep 0.2; done
fail2ban-client -c "$F2B" status
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/pipeline-bench --roost target/release/roost --kafka "$ROOST_TEST_KAFKA" --redis "$ROOST_TEST_REDIS" \
  --dir "$RUN" --lines "$LINES" --rate "$RATE" --seconds "$SECS" --fail2ban-banfile "$RUN/bans.txt" | tee "$RUN/figures.txt"
