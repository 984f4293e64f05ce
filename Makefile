# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geofuse demo --workdir demo_output

# Headless Chromium for tests/test_html_chromium.py: installed once, only when missing and
# running as root; otherwise that test skips (and fails with CI=true).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		apt-get update -q && apt-get install -y -q chromium; } || \
		echo "chromium missing and not installed: the HTML rendering test skips (fails in CI)"

# Two pytest-xdist workers (one torch thread each); tests that start processes, clusters or
# signal timings run one at a time in one worker (tests/conftest.py: PROCESS_MODULES).
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=20

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/patch_sampling.py

clean:
	rm -rf demo_output .pytest_cache
