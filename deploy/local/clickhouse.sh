#!/usr/bin/env bash
# ClickHouse server (Debian `clickhouse-server`) for tests and laptops, as any user, in its own directory.
#
#   clickhouse.sh install                          apt-get install clickhouse-server if it is missing
#   clickhouse.sh run HTTP_PORT TCP_PORT DIR       run in the foreground (test harnesses spawn this)
#   clickhouse.sh start HTTP_PORT TCP_PORT DIR     run in the background, wait until /ping answers
#   clickhouse.sh stop DIR                         stop what `start` started
#
# All state (data, tmp, logs) lives under DIR; the packaged config is used with its paths and ports
# overridden on the command line, so several servers can run side by side.
set -euo pipefail

install() {
  if ! command -v clickhouse-server >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "clickhouse.sh: run as root (or install clickhouse-server yourself)" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null
  fi
}

run() {
  local http="$1" tcp="$2" dir="$3"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/log" "$dir/format_schemas"
  dir="$(cd "$dir" && pwd)"
  exec clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$dir/data/" --tmp_path="$dir/tmp/" --user_files_path="$dir/user_files/" \
    --format_schema_path="$dir/format_schemas/" \
    --logger.log="$dir/log/clickhouse-server.log" --logger.errorlog="$dir/log/clickhouse-server.err.log" \
    --logger.level=warning --http_port="$http" --tcp_port="$tcp" --listen_host=127.0.0.1 \
    --interserver_http_port=0 --mysql_port=0
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  run) install; run "${1:?HTTP_PORT}" "${2:?TCP_PORT}" "${3:?DIR}" ;;
  start)
    http="${1:?HTTP_PORT}"; tcp="${2:?TCP_PORT}"; dir="${3:?DIR}"
    install; mkdir -p "$dir"
    nohup "$0" run "$http" "$tcp" "$dir" >"$dir/stdout.log" 2>&1 &
    echo $! >"$dir/clickhouse.pid"
    for _ in $(seq 1 600); do
      if [ "$(curl -fsS "http://127.0.0.1:$http/ping" 2>/dev/null)" = "Ok." ]; then
        echo "ClickHouse on http://127.0.0.1:$http (tcp $tcp, pid $(cat "$dir/clickhouse.pid"), dir $dir)"; exit 0
      fi
      sleep 0.1
    done
    echo "clickhouse.sh: server did not answer on port $http within 60 s; see $dir/log" >&2; exit 1
    ;;
  stop)
    dir="${1:?DIR}"
    if [ -f "$dir/clickhouse.pid" ]; then kill "$(cat "$dir/clickhouse.pid")" 2>/dev/null || true; rm -f "$dir/clickhouse.pid"; fi
    ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
