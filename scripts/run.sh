#!/usr/bin/env bash
# `make run`: daphne (API, WebSocket, UI) + qcluster (workers) + deadline sweeper, in the
# foreground; Ctrl-C or SIGTERM stops all of them (and a Redis we started) within seconds.
set -uo pipefail
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
PY=.venv/bin/python
redis_pid=$(scripts/ensure_redis.sh) || exit 1
pids=()
stop() {
  trap - INT TERM
  echo "Stopping ..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 80); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; done
  pkill -KILL -f "tesseract .*${OCR_QUEUE_NAME:-ocrsite}" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill -TERM "$redis_pid" 2>/dev/null
  exit 0
}
trap stop INT TERM
setsid $PY manage.py qcluster & pids+=($!)
setsid $PY manage.py ocr_sweeper & pids+=($!)
setsid .venv/bin/daphne -b "$HOST" -p "$PORT" ocrsite.asgi:application & pids+=($!)
echo "ocrsite: http://$HOST:$PORT/  (API under /v1/ocr/, admin under /admin/); Ctrl-C stops"
wait -n "${pids[@]}"
stop
