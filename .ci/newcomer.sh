#!/usr/bin/env bash
# The newcomer's path, as CI runs it: `just run` with nothing configured (embedded PostgreSQL and Valkey),
# /ready answered within 30 s, then Ctrl-C (SIGINT to the process group) and no server process left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

data="$(mktemp -d)"
log="$(mktemp)"
port="${NEWCOMER_PORT:-8080}"
trap 'rm -rf "$data" "$log"' EXIT

probe() {
  .venv/bin/python - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(r.read().decode()); sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

env -u DATABASE_URL -u REDIS_URL -u DB_HOST -u REDIS_HOST APP_ENV=dev DATA_DIR="$data" SERVER_PORT="$port" \
  setsid just run >"$log" 2>&1 &
leader=$!

ready=""
for _ in $(seq 1 60); do
  if body="$(probe "http://127.0.0.1:$port/ready")"; then ready="$body"; break; fi
  sleep 0.5
done
if [ -z "$ready" ]; then
  echo "newcomer: /ready did not answer 200 within 30 s" >&2; cat "$log" >&2
  kill -KILL -- "-$leader" 2>/dev/null || true; exit 1
fi
echo "newcomer: /ready -> $ready"

kill -INT -- "-$leader"
for _ in $(seq 1 60); do kill -0 "$leader" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$leader" 2>/dev/null; then
  echo "newcomer: did not stop within 30 s after SIGINT" >&2; cat "$log" >&2
  kill -KILL -- "-$leader" 2>/dev/null || true; exit 1
fi
left="$(pgrep -f "$data" || true)"
if [ -n "$left" ]; then
  echo "newcomer: processes left behind: $left" >&2; ps -fp $left >&2 || true; exit 1
fi
echo "newcomer: clean stop, nothing left behind"
