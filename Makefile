# tensorwire: `make demo` and `make test` work on a fresh machine (Python 3.11+, pip, make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py src/tensorwire/codec/_fastcast.c
	$(BIN)/pip install -q -e '.[test,bench]'
	# The CPU build of torch lies on these machines' disk; without it torch tests skip.
	$(BIN)/pip install -q torch==2.13.0 || echo "torch unavailable: torch-backend tests will be skipped"
	touch $(STAMP)

# The seed-style report, measured here: report/report.md and its charts (report/*.png).
demo: $(STAMP)
	$(BIN)/tensorwire diagnose --quick --plots report/ --out report/report.md --json report/report.json

# The native cast kernel must have been built here: its absence fails a test, not a fallback.
test: $(STAMP)
	TENSORWIRE_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/pip install -q ruff mypy
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# Ray/gRPC rows in peers.py only when importable (e.g. PYTHONPATH=/tmp/peerlibs make bench).
bench: $(STAMP)
	mkdir -p bench-results
	$(BIN)/python benchmarks/seed_baseline.py --json bench-results/seed_baseline.json
	$(BIN)/python benchmarks/shm.py --json bench-results/shm.json
	$(BIN)/python benchmarks/peers.py --json bench-results/peers.json
	$(BIN)/python benchmarks/seed_workload.py --json bench-results/seed_workload.json
	$(BIN)/python benchmarks/wire.py --json bench-results/wire.json
	$(BIN)/python benchmarks/huge_pages.py --json bench-results/huge_pages.json
	$(BIN)/python benchmarks/call_floor.py --json bench-results/call_floor.json
	$(BIN)/python benchmarks/cast_threads.py --json bench-results/cast_threads.json
	$(BIN)/python benchmarks/spin.py --json bench-results/spin.json

# Fault tests of issue 7 at full size (T1-T8); figures in chaos-results/, see RELIABILITY.md.
chaos: $(STAMP)
	$(BIN)/pip install -q atheris || echo "atheris unavailable: T6 runs the mutation loop only"
	mkdir -p chaos-results
	PYTHONPATH=tests $(BIN)/python -m chaos --json chaos-results/chaos.json

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
