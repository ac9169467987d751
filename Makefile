# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per requirements file content: an edit to either re-installs.
STAMP     := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
# Debian packages the tests and `make run` need (installed by `make system-deps` when root).
# Chromium: the browser tests (tests/browser.py); they skip with the reason without it.
# nginx + its RTMP module: the self-hosted RTMP ingest (broadcast/ingest.py, docs/broadcast.md);
# without them `make run` runs everything else and the Stream page says streaming is unavailable.
SYSTEM_PACKAGES := chromium nginx libnginx-mod-rtmp

.PHONY: install install-dev system-deps run test test-fast lint bench clean nemesis

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-[0-9]* && touch $(STAMP)

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-dev-* && touch $(DEV_STAMP)

## make install: production requirements only; make install-dev: plus the tools.
install: $(STAMP)
install-dev: $(DEV_STAMP)

## make system-deps: apt-get install what is missing of SYSTEM_PACKAGES (root only; else one line).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "system-deps: no apt-get; not installing:$$missing"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "system-deps: not root; not installing:$$missing (sudo make system-deps)"; exit 0; fi; \
	echo "system-deps: installing$$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

## make run: embedded Redis (unless REDIS_URL is set), migrate, daphne + worker in one terminal.
## PORT=8001 make run when 8000 is taken.
run: install system-deps
	$(BIN)/python -m streampai.devstack

## make test: the whole suite, in TEST_WORKERS pytest-xdist processes (each starts its own private
## redis-server). Most tests wait on real processes and timers, so 3 fit on 2 cores
## (the README has the timings); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: install-dev system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

## make test-fast: no processes, no browser, no redis-server (well under 30 s).
test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not processes and not browser and not redis"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install-dev
	$(BIN)/python -m benchmarks

## make nemesis SEED=1 MINUTES=2: faults against real processes, then the history checker (docs/reliability.md).
SEED ?= 1
MINUTES ?= 2
nemesis: install-dev
	$(BIN)/python -m devtools.nemesis --seed $(SEED) --minutes $(MINUTES)

clean:
	rm -rf $(VENV) var/redis var/db.sqlite3 .pytest_cache .ruff_cache
