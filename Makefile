# seglake — the README's two commands are `make demo` and `make test`.
# Both set everything up first (virtualenv, pinned packages, Delta jars from Maven Central).
PYTHON    ?= python3
VENV      ?= .venv
EVENTS    ?= 100000
LAKEHOUSE ?= ./lakehouse
BENCH_EVENTS ?= 1000000
SOAK_ROUNDS ?= 24
STREAM_EVENTS ?= 20000
STREAM_LAKEHOUSE ?= ./lakehouse-stream
BIN       := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo demo-stream bench-stream bench-export test test-slow test-all soak bench compare report clean-lakehouse

setup: $(VENV)/.seglake-setup

$(VENV)/.seglake-setup: setup.py
	@command -v java >/dev/null || { echo "Java 17 is needed (apt-get install openjdk-17-jre-headless)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/seglake setup
	@touch $@

demo: setup
	$(BIN)/seglake demo --events $(EVENTS) --lakehouse $(LAKEHOUSE)

# the real-time triggers: history in batch, then the same events live through a Kafka broker the
# demo starts (and stops), the triggers printed with their latency
demo-stream: setup
	$(BIN)/seglake demo --stream --events $(STREAM_EVENTS) --lakehouse $(STREAM_LAKEHOUSE)

# the everyday suite (every test not marked slow); CI runs it, then test-slow
test: setup
	$(BIN)/pytest -m "not slow"

# the longer end-to-end tests: the shared pipeline run, reliability (kill, concurrency), cluster, S3
test-slow: setup
	$(BIN)/pytest -m slow

test-all: setup
	$(BIN)/pytest

# on demand: randomized kill -9 soak of the chain (tests/reliability/test_soak.py, figures in
# test-artifacts/soak.json), and a real process killed at every commit boundary of every stage
soak: setup
	SEGLAKE_SOAK_ROUNDS=$(SOAK_ROUNDS) SEGLAKE_KILL_PROCESSES=1 $(BIN)/pytest \
	  tests/reliability/test_soak.py tests/reliability/test_kill_stages.py tests/reliability/test_kill_ingest.py \
	  tests/reliability/test_kill_models.py tests/reliability/test_kill_stream.py

compare: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/compare.py --events $(BENCH_EVENTS)

report: setup
	$(BIN)/seglake report --lakehouse $(LAKEHOUSE)

# stream throughput and trigger latency at increasing rates (its own broker; run it alone)
bench-stream: setup
	$(BIN)/python bench/stream_latency.py

# activation throughput: webhook deliveries/s and PostgreSQL rows/s at 100k and 1M outbox rows (run it alone)
bench-export: setup
	$(BIN)/python bench/export_throughput.py

bench: setup
	$(BIN)/python bench/run.py --events $(BENCH_EVENTS)

clean-lakehouse:
	rm -rf $(LAKEHOUSE)
