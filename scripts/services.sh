#!/usr/bin/env bash
# Starts (or stops) the real servers roost's tests talk to, on loopback, once per test run:
# a Kafka-protocol broker (tansu, in-memory storage) and Redis. Prints the environment the
# tests read (ROOST_TEST_KAFKA, ROOST_TEST_REDIS); scripts/test.sh evals it.
#   scripts/services.sh start   # idempotent; prints `export …` lines
#   scripts/services.sh stop
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="${ROOST_TEST_RUN:-$ROOT/target/test-services}"
KAFKA_PORT="${ROOST_TEST_KAFKA_PORT:-19092}"
REDIS_PORT="${ROOST_TEST_REDIS_PORT:-16379}"
TANSU="${ROOST_CACHE:-$HOME/.cache/roost}/$("$ROOT/scripts/tansu/build.sh" --name)/bin/tansu"
mkdir -p "$RUN"

wait_port() { # host port what
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "services: $3 did not start on $1:$2 (see $RUN)" >&2
  return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-start}" in
  start)
    [ -x "$TANSU" ] || { echo "services: $TANSU missing (scripts/install-test-deps.sh builds it)" >&2; exit 1; }
    if ! alive "$RUN/tansu.pid"; then
      setsid "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
        >"$RUN/tansu.log" 2>&1 < /dev/null &
      echo $! > "$RUN/tansu.pid"
    fi
    if ! alive "$RUN/redis.pid"; then
      setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$RUN" --daemonize no >"$RUN/redis.log" 2>&1 < /dev/null &
      echo $! > "$RUN/redis.pid"
    fi
    wait_port 127.0.0.1 "$KAFKA_PORT" tansu
    wait_port 127.0.0.1 "$REDIS_PORT" redis-server
    echo "export ROOST_TEST_KAFKA=127.0.0.1:$KAFKA_PORT"
    echo "export ROOST_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT"
    echo "export ROOST_TEST_TANSU=$TANSU"
    ;;
  stop)
    for p in tansu redis; do
      if alive "$RUN/$p.pid"; then kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true; fi
      rm -f "$RUN/$p.pid"
    done
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
