#!/usr/bin/env bash
# Starts a local Redis only when none answers at REDIS_URL; prints the PID of one it started.
set -euo pipefail
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
py="${PYTHON:-.venv/bin/python}"
answers() { "$py" -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()" "$url" >/dev/null 2>&1; }
answers && exit 0
port=$("$py" -c "from urllib.parse import urlparse; import sys; print(urlparse(sys.argv[1]).port or 6379)" "$url")
mkdir -p .run
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir .run --daemonize no >.run/redis.log 2>&1 &
pid=$!
for _ in $(seq 50); do answers && { echo "$pid"; exit 0; }; sleep 0.1; done
echo "Redis did not start on port $port; see .run/redis.log" >&2
exit 1
