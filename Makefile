# The two commands of the README. Both create .venv and install FLOW-DC into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup browser

# FLOW-DC alone: all that `make demo` runs (the dev extra's Dask, moto, Jupyter and datasets
# took about 100 s to install before the demo's first image).
$(BIN)/flowdc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $(BIN)/flowdc

# The dev extra, for the tests and the linters.
$(VENV)/.dev-installed: $(BIN)/flowdc
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.dev-installed

demo: $(BIN)/flowdc
	$(BIN)/flowdc demo

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports  # the layers of docs/architecture.md, in pyproject.toml

# The report test opens report.html in Debian's headless Chromium; install it where apt-get can.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the report test ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			>/dev/null) || echo "could not install chromium: the report's browser test will skip"; \
	else echo "no /usr/bin/chromium and no root apt-get: the report's browser test will skip"; fi

# TaskVine (vine_worker, ndcctools.taskvine) for its engine's tests: cctools is built once from
# ../shared/vendor into ~/.cache/flowdc and linked into the venv; where it can't, the tests skip.
.PHONY: taskvine
taskvine: setup
	bash tools/build_taskvine.sh $(VENV)

test: setup lint browser taskvine
	$(BIN)/pytest -q
