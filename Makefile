# Two commands for a newcomer: `make run` and `make test` (see README.md).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHON := $(PY)

.PHONY: run test test-fast lint bench setup system venv migrate clean

run: setup migrate
	scripts/run.sh

test: setup
	$(VENV)/bin/ruff check .
	scripts/ensure_redis.sh >/dev/null
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup migrate
	scripts/ensure_redis.sh >/dev/null
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/cancel_latency.py

setup: system venv

system:
	WITH_BROWSER=1 scripts/ensure_system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

migrate:
	$(PY) manage.py migrate --noinput -v0

clean:
	rm -rf $(VENV) .run media test_*.sqlite3*
