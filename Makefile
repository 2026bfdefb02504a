# seglake — the README's two commands are `make demo` and `make test`.
# Both set everything up first (virtualenv, pinned packages, Delta jars from Maven Central).
PYTHON    ?= python3
VENV      ?= .venv
EVENTS    ?= 100000
LAKEHOUSE ?= ./lakehouse
BENCH_EVENTS ?= 1000000
SOAK_ROUNDS ?= 24
BIN       := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test test-slow test-all soak bench compare report clean-lakehouse

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
	  tests/reliability/test_soak.py tests/reliability/test_kill_stages.py tests/reliability/test_kill_ingest.py

compare: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/compare.py --events $(BENCH_EVENTS)

report: setup
	$(BIN)/seglake report --lakehouse $(LAKEHOUSE)

bench: setup
	$(BIN)/python bench/run.py --events $(BENCH_EVENTS)

clean-lakehouse:
	rm -rf $(LAKEHOUSE)
