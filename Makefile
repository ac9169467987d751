# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install run test lint bench clean nemesis

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## make run: embedded Redis (unless REDIS_URL is set), migrate, daphne + worker in one terminal.
run: install
	$(BIN)/python -m streampai.devstack

## make test: the whole suite (starts its own private redis-server).
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks

## make nemesis SEED=1 MINUTES=2: faults against real processes, then the history checker (docs/reliability.md).
SEED ?= 1
MINUTES ?= 2
nemesis: install
	$(BIN)/python -m devtools.nemesis --seed $(SEED) --minutes $(MINUTES)

clean:
	rm -rf $(VENV) var/redis var/db.sqlite3 .pytest_cache .ruff_cache
