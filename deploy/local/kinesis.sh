#!/usr/bin/env bash
# Kinesis emulator (npm `kinesis-local`, the JavaScript build of kinesis-mock) for tests and laptops.
#
#   kinesis.sh install                 npm-install the pinned emulator into deploy/local/kinesis/
#   kinesis.sh run PORT [TLS_PORT]     run it in the foreground (test harnesses spawn this and kill it)
#   kinesis.sh start PORT [STATE_DIR]  run it in the background, wait until it answers, pid in STATE_DIR
#   kinesis.sh stop [STATE_DIR]        stop what `start` started
#
# The emulator reads server.json from its working directory, so it is started from its own package folder.
# It serves plain HTTP on PORT and TLS on TLS_PORT (default PORT+1). Credentials: any; region us-east-1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pkg="$here/kinesis"
bin="$pkg/node_modules/kinesis-local/main.js"

install() {
  if [ ! -f "$bin" ]; then
    command -v npm >/dev/null || { echo "kinesis.sh: npm is required (Node.js 20+)" >&2; exit 1; }
    (cd "$pkg" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "kinesis.sh: emulator did not open port $1 within 60 s" >&2
  return 1
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  run)
    port="${1:?usage: kinesis.sh run PORT [TLS_PORT]}"; tls="${2:-$((port + 1))}"
    install
    cd "$(dirname "$bin")"
    export KINESIS_MOCK_PLAIN_PORT="$port" KINESIS_MOCK_TLS_PORT="$tls"
    export LOG_LEVEL="${LOG_LEVEL:-WARN}" CREATE_STREAM_DURATION="${CREATE_STREAM_DURATION:-100ms}"
    export SPLIT_SHARD_DURATION="${SPLIT_SHARD_DURATION:-100ms}" MERGE_SHARDS_DURATION="${MERGE_SHARDS_DURATION:-100ms}"
    exec node "$bin"
    ;;
  start)
    port="${1:?usage: kinesis.sh start PORT [STATE_DIR]}"; state="${2:-$here/.state}"
    mkdir -p "$state"
    install
    nohup "$0" run "$port" >"$state/kinesis.log" 2>&1 &
    echo $! >"$state/kinesis.pid"
    wait_port "$port"
    echo "Kinesis emulator on http://127.0.0.1:$port (pid $(cat "$state/kinesis.pid"), log $state/kinesis.log)"
    ;;
  stop)
    state="${1:-$here/.state}"
    if [ -f "$state/kinesis.pid" ]; then kill "$(cat "$state/kinesis.pid")" 2>/dev/null || true; rm -f "$state/kinesis.pid"; fi
    ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
