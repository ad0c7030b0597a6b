# Two commands on a fresh machine:  `make demo` (the tuner on the built-in example) and `make test`.
# Each creates .venv and installs the pinned, tested stack (constraints.txt) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DB ?= sqlite:///$(CURDIR)/.demo/tuner.db
EXAMPLE ?= examples/llama-8x1024

.PHONY: demo test benchmarks clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: here it resolves to the local CPU wheel, never the CUDA stack.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The example's weights (594 MiB in fp32) get 300 MiB of RAM: the rest must stream from disk.
demo: $(BIN)/.installed
	mkdir -p .demo
	$(BIN)/tuner hardware --db $(DEMO_DB)
	$(BIN)/tuner optimize $(EXAMPLE) --seq 128 --new-tokens 32 --max-memory cpu=300MiB --trials 100 --db $(DEMO_DB)
	$(BIN)/tuner export latest -o .demo/map.json --db $(DEMO_DB)
	$(BIN)/tuner report latest -o .demo/report.html --db $(DEMO_DB)
	@echo "Map in .demo/map.json, report in .demo/report.html. Run it again: the run now comes from the database."

CHROMIUM := /usr/bin/chromium

# Lint, format, types and the layers contract first (seconds), then the suite, one worker per core
# (pytest-xdist): most tests are single-threaded, and a 2-core machine halves the wait.
test: $(BIN)/.installed $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tuner profiler storage reports
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto

# tests/reports_tests opens the HTML report in Debian's headless Chromium.
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

benchmarks: $(BIN)/.installed
	$(BIN)/python -m benchmarks.profile_accuracy
	$(BIN)/python -m benchmarks.depth_scaling
	$(BIN)/python -m benchmarks.scale_70b
	$(BIN)/python -m benchmarks.costmodel_speed
	$(BIN)/python -m benchmarks.pageable_cache
	$(BIN)/python -m benchmarks.scenarios
	$(BIN)/python -m benchmarks.published
	$(BIN)/python -m benchmarks.api_speed
	$(BIN)/python -m benchmarks.concurrency
	$(BIN)/python -m benchmarks.serve_speed

clean:
	rm -rf $(VENV) .demo
