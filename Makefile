# Two commands on a fresh Debian machine, as root: `make run` and `make test`.
# Everything they need is set up here; nothing has to be installed by hand.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zstream-installed
# The bench extra (nats-py, matplotlib) on top of dev: only `make bench` needs it.
BENCH_STAMP := $(VENV)/.zstream-bench-installed
PACKAGES := storage replication clients broker zstream

.PHONY: run test lint typecheck pytest bench bench-deps system-deps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

system-deps:
	@sh scripts/system-deps.sh

# nats-server for bench/peers.py; kept out of system-deps so `make test` never waits on it.
bench-deps:
	@sh scripts/bench-deps.sh

run: $(STAMP) system-deps
	$(VENV)/bin/zstream dev --data-dir zstream-dev-data

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PACKAGES) tests bench
	$(VENV)/bin/ruff format --check $(PACKAGES) tests bench

# mypy reads the code through zstream/ (the symlinked subpackages), so each module
# has one name, zstream.broker._server, as it has once installed.
typecheck: $(STAMP)
	$(VENV)/bin/mypy zstream tests/support

pytest: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Each benchmark prints its figure beside the limit it chases; BENCH_ARGS=--quick
# gives the short runs. Results go to bench/results/ (git-ignored).
BENCHES := storage_bench raft_core_bench zmq_baseline replication_bench failover_bench idle_bench dlog_bench produce_consume peers security_bench

bench: $(BENCH_STAMP) bench-deps
	@for b in $(BENCHES); do echo "== bench/$$b.py $(BENCH_ARGS)"; $(PY) bench/$$b.py $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
