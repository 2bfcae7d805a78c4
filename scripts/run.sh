#!/usr/bin/env bash
# `make run`: daphne (API, WebSocket, UI) + qcluster (workers) + sweeper, in the foreground.
# OCR_ROLE: all (default), web (daphne only) or worker (qcluster and sweeper only): any number of
# web and worker nodes share one database and one Redis (README, "Running as several nodes").
# OCR_WEB_PROCESSES: daphne processes on the one port (default 1; scripts/web.py).
# Ctrl-C, SIGTERM or SIGHUP (terminal closed) stops all of them (and a Redis we started) within
# seconds. Each child runs in its own session (a qcluster stops cleanly only when its leader alone
# gets the signal) and with a parent-death signal, so that it also dies if this script is killed.
set -uo pipefail
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
PY=.venv/bin/python
ROLE="${OCR_ROLE:-all}"
case "$ROLE" in all|web|worker) ;; *) echo "OCR_ROLE must be all, web or worker (got '$ROLE')" >&2; exit 2 ;; esac
WEB_PROCESSES="${OCR_WEB_PROCESSES:-1}"
case "$WEB_PROCESSES" in ''|*[!0-9]*|0) echo "OCR_WEB_PROCESSES must be a whole number, 1 or more (got '$WEB_PROCESSES')" >&2; exit 2 ;; esac
redis_pid=$(scripts/ensure_redis.sh) || exit 1
pids=()
child() {  # child COMMAND...: own session; SIGTERM when this script dies, however it dies
  setsid setpriv --pdeathsig TERM -- "$@" &
  pids+=($!)
}
# This instance's OCR processes read their pages from its own slot folder (never pkill -f by
# pattern): `tesseract PAGE ...` or `python -I -S .../ocr/libtesseract.py PAGE ...`.
slot_dir=$($PY manage.py ocr_sweeper --print-slot-dir) || exit 1
kill_own_tesseracts() {
  local proc argv
  for proc in /proc/[0-9]*; do
    argv=$(tr '\0' '\n' < "$proc/cmdline" 2>/dev/null | head -5 | tr '\n' ' ') || continue
    case "$argv" in
      "tesseract $slot_dir/"* | *" -I -S "*"/ocr/libtesseract.py $slot_dir/"*) kill -KILL "${proc#/proc/}" 2>/dev/null ;;
    esac
  done
}
stop() {
  trap - INT TERM HUP
  echo "Stopping ..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 80); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; done
  # tesseracts of this instance's workers (their pages are in its own slot folder), no others
  kill_own_tesseracts
  [ -n "$redis_pid" ] && kill -TERM "$redis_pid" 2>/dev/null
  exit 0
}
trap stop INT TERM HUP
if [ "$ROLE" != web ]; then
  child $PY manage.py qcluster
  child $PY manage.py ocr_sweeper
fi
if [ "$ROLE" != worker ]; then
  if [ "$WEB_PROCESSES" = 1 ]; then
    child .venv/bin/daphne -b "$HOST" -p "$PORT" ocrsite.asgi:application
  else  # one socket, several daphne processes accepting on it (scripts/web.py)
    child $PY scripts/web.py "$HOST" "$PORT" "$WEB_PROCESSES"
  fi
  echo "ocrsite ($ROLE): http://$HOST:$PORT/  (API under /v1/ocr/, admin under /admin/); Ctrl-C stops"
else
  echo "ocrsite (worker node ${OCR_NODE_NAME:-$(hostname)}); Ctrl-C stops"
fi
wait -n "${pids[@]}"
stop
