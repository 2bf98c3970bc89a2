#!/usr/bin/env bash
# Runs pytest against a real Redis: the one named by LUMBAR_AI_REDIS_URL, else 127.0.0.1:6379 when it
# answers, else a private redis-server started here on a free port and stopped on exit. With no arguments
# it runs the whole suite, tests/service without torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
started_pid=""
cleanup() { [ -n "$started_pid" ] && kill "$started_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${LUMBAR_AI_REDIS_URL:-}" ]; then
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export LUMBAR_AI_REDIS_URL="redis://127.0.0.1:6379/15"
  elif command -v redis-server >/dev/null; then
    port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize no \
      >"$dir/redis.log" 2>&1 &
    started_pid=$!
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    export LUMBAR_AI_REDIS_URL="redis://127.0.0.1:$port/15"
    echo "started redis-server on port $port for the tests"
  fi
fi
if [ "$#" -gt 0 ]; then
  exec $PY -m pytest "$@"
fi
# The whole suite in two parts: the service's tests with torch made unimportable (the service and its Docker
# images have none, and its tests load committed model directories), then everything else.
PYTHONPATH="$PWD/tests/no_torch${PYTHONPATH:+:$PYTHONPATH}" $PY -m pytest tests/service
$PY -m pytest tests --ignore=tests/service
