# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install system-deps run test lint bench clean

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## make system-deps: the self-hosted RTMP ingest (nginx + Debian's RTMP module), when apt can
## install it; without it everything else runs and the Stream page says streaming is unavailable.
RTMP_MODULE := /usr/lib/nginx/modules/ngx_rtmp_module.so
system-deps:
	@if command -v nginx >/dev/null 2>&1 && test -f $(RTMP_MODULE); then :; \
	elif command -v apt-get >/dev/null 2>&1 && test "$$(id -u)" = 0; then \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends nginx libnginx-mod-rtmp) \
	  || echo "system-deps: could not install nginx + libnginx-mod-rtmp; streaming stays unavailable"; \
	else echo "system-deps: nginx + libnginx-mod-rtmp missing (as root: apt-get install nginx libnginx-mod-rtmp); streaming stays unavailable"; fi

## make run: embedded Redis (unless REDIS_URL is set), migrate, daphne + worker in one terminal.
run: install system-deps
	$(BIN)/python -m streampai.devstack

## make test: the whole suite (starts its own private redis-server).
test: install system-deps
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var/redis var/db.sqlite3 .pytest_cache .ruff_cache
