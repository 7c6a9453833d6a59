# batcher — developer entry points. Every target installs what it needs into .venv first.
#
#   make run     the daemon on embedded PostgreSQL/Redis (or BATCHER_DATABASE_URL / BATCHER_REDIS_URL)
#   make test    the test suite (PYTEST_ARGS="-k foo -x" passes arguments through)
#   make demo    a daemon on embedded servers with demo jobs and a fake DataSync; prints the dashboard URL
#   make deps-browser  Debian's chromium (apt-get) and Playwright, for the browser test
#   make lint    ruff, mypy --strict on batcher/, import-linter contracts
#   make bench   every bench/*.py script in turn; writes bench/RESULTS.md
#   make chaos   3 daemons, 50 random SIGKILLs, exact data checks, failover p50/p99/max (CHAOS_KILLS=N)
#   make clean   remove .venv, caches and the .batcher data dir
#
# The install is skipped while pyproject.toml is older than $(STAMP).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS := dev,embedded
LINT_PATHS := batcher handlers tests bench tools
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint bench clean demo deps-browser chaos

help:
	@sed -n 's/^#   //p' Makefile

# Create the virtualenv once (needs Python 3.11+).
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "batcher needs Python 3.11 or newer ($(PYTHON) is older); set PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Install the project with its extras only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

venv: $(STAMP)

# `exec` replaces the recipe's shell, so the daemon is make's direct child. A SIGTERM to the daemon stops
# it gracefully and make exits 0 when the daemon exits 0 (any other status: GNU make reports "Error N" and
# exits 2). A SIGTERM to make itself is forwarded to the daemon, which still stops gracefully and exits 0,
# but make then dies of the signal: its own status is 143 (128 + SIGTERM).
run: venv
	exec $(VENV)/bin/batcher run

# pytest's own exit status decides, so "no tests collected" (status 5) fails too.
test: venv deps-browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The browser test drives Debian's Chromium (/usr/bin/chromium) through the pinned Playwright package (dev
# extra); `playwright install` is never used. A no-op when both are present; fails loudly when it cannot.
deps-browser: venv
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "deps-browser: /usr/bin/chromium is missing: installing Debian's chromium with apt-get"; \
		if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
		elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; \
		else echo "deps-browser: apt-get needs root and sudo is not available; install chromium yourself" >&2; exit 1; fi; \
		$$sudo apt-get update -q \
			|| { echo "deps-browser: apt-get update failed" >&2; exit 1; }; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
			|| { echo "deps-browser: apt-get install chromium failed" >&2; exit 1; }; \
		[ -x /usr/bin/chromium ] || { echo "deps-browser: chromium is installed but /usr/bin/chromium is not there" >&2; exit 1; }; \
	fi
	@$(PY) -c 'import playwright.async_api' 2>/dev/null \
		|| $(PY) -m pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]' \
		|| { echo "deps-browser: could not install the pinned playwright package" >&2; exit 1; }
	@$(PY) -c 'import playwright.async_api' \
		|| { echo "deps-browser: playwright is still not importable" >&2; exit 1; }

# The demo: a fake DataSync server and a daemon on embedded PostgreSQL/Redis (data in .batcher-demo) with
# deploy/demo.toml; prints the dashboard URL. Ctrl-C stops everything. DEMO_ARGS="--port 8090" passes options.
DEMO_ARGS ?=
demo: venv
	exec $(PY) -m batcher.demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The same test as the bounded form in `make test` (10 kills), with 50 kills and its figures printed.
CHAOS_KILLS ?= 50
chaos: venv
	CHAOS_KILLS=$(CHAOS_KILLS) $(PY) -m pytest -q -s -p no:cacheprovider tests/e2e/test_chaos.py $(PYTEST_ARGS)

# Each script prints its headline figures as `RESULT {json}` lines (bench/common.py emit_result), also
# appended to bench/results/results.jsonl; bench/report.py then writes bench/RESULTS.md from them (also
# when a script failed: the report names it and make still fails).
BENCH_RESULTS := bench/results/results.jsonl
bench: venv
	@set -- $(filter-out bench/common.py bench/report.py,$(wildcard bench/*.py)); \
	if [ -z "$$1" ]; then echo "bench/ has no benchmark scripts yet"; exit 0; fi; \
	mkdir -p bench/results; rm -f $(BENCH_RESULTS); \
	failed=""; \
	for script in "$$@"; do \
		echo "== $$script"; \
		BENCH_RESULTS_FILE=$(BENCH_RESULTS) $(PY) "$$script" || failed="$$failed $$script"; \
	done; \
	$(PY) bench/report.py $(BENCH_RESULTS) --failed "$$failed" --out bench/RESULTS.md; \
	if [ -n "$$failed" ]; then echo "failed:$$failed" >&2; exit 1; fi

# Refuses while an embedded PostgreSQL still runs from .batcher or .batcher-demo (deleting its data dir
# would corrupt it).
clean:
	@for dir in .batcher .batcher-demo; do pidfile=$$dir/postgres/postmaster.pid; \
	if [ -f "$$pidfile" ] && kill -0 "$$(head -n 1 "$$pidfile")" 2>/dev/null; then \
		echo "embedded PostgreSQL is running from $$dir: stop batcher (or the demo) first" >&2; exit 1; fi; done
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .batcher .batcher-demo \
		build dist *.egg-info test-artifacts bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
