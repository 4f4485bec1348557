#!/usr/bin/env bash
# Installs what the test suite needs (on a fresh machine too) and runs the whole suite.
#
#   ./deploy/test.sh            everything
#   ./deploy/test.sh -E 'test(kinesis)'   extra arguments go to cargo-nextest (or cargo test)
#
# Needs: Rust (cargo), Node.js + npm, Python 3 + pip. Installs: DuckDB (PyPI, tests/requirements.txt),
# the Kinesis emulator (npm `kinesis-local`, pinned in deploy/local/kinesis/package-lock.json),
# playwright-core and the web players hls.js, dash.js, Shaka Player, video.js (npm, pinned in
# tests/browser/package-lock.json), the player SDK's build tools (npm, sdk/web/package-lock.json) and, as
# root via apt (one `apt-get update`), ClickHouse server (Debian `clickhouse-server`), Chromium (Debian
# `chromium`), ffmpeg (Debian `ffmpeg`, which makes the SDK tests' media), and Prometheus and its
# Alertmanager (Debian `prometheus`, `prometheus-alertmanager`: the alerting and monitoring tests).
# Tests start their own instances on free loopback ports.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==> installing test services"
missing=()
command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "deploy/test.sh: run as root to install ${missing[*]} (or install them yourself)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash deploy/local/clickhouse.sh install
bash deploy/local/kinesis.sh install
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
(cd sdk/web && npm ci --no-audit --no-fund --loglevel=error)
# A Debian system Python refuses pip installs outside a venv (PEP 668) unless told otherwise.
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt

echo "==> running the test suite"
# A one-shot build gains nothing from incremental state, which would add gigabytes to target/.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -1 | awk '{print "    disk free here: " $4}'
# The embedded default without the Kinesis client (the README's first command) must keep building.
cargo build -q -p qoeflow --no-default-features
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  exec cargo test --workspace --all-targets --no-fail-fast "$@"
fi
