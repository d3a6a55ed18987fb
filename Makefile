# Lanner's two set-up commands are `make demo` and `make test`; the rest are developer helpers.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := mariadb-server stilts
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages python-packages jars demo test test-fast lint typecheck bench \
        services-up services-down lock clean

install: system-packages python-packages jars  ## everything the broker and its tests need

system-packages:  ## Debian packages: MariaDB server (catalog shards) and STILTS (taplint)
	@missing=""; \
	[ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v stilts >/dev/null || missing="$$missing stilts"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,faust]'
	touch $@

python-packages: $(VENV)/.installed

jars: python-packages  ## resolve the Kafka and Cassandra jars from Maven Central (cached)
	$(BIN)/lanner services fetch

demo: install  ## run the broker embedded on bundled and simulated data
	$(BIN)/lanner demo

test: install  ## start the real services, run every test, stop the services (even on failure)
	@status=0; \
	$(BIN)/lanner services up || status=$$?; \
	if [ $$status = 0 ]; then $(BIN)/pytest || status=$$?; fi; \
	$(BIN)/lanner services down || true; \
	exit $$status

# tests/conftest.py marks `services` every test that needs a server; pytest says how many it left
# out ("collected N items / M deselected / K selected", and "M deselected" in the last line).
test-fast: python-packages  ## the tests that need no service
	$(BIN)/pytest -m "not services"

lint: python-packages  ## ruff over the whole tree, mypy, and felis over the table description
	$(BIN)/ruff check .
	$(BIN)/mypy broker consumers api
	$(BIN)/felis validate schemas/felis/lanner.yaml

typecheck: python-packages
	$(BIN)/mypy broker consumers api

bench: python-packages
	$(BIN)/python bench/decode.py

services-up: jars
	$(BIN)/lanner services up

services-down:
	$(BIN)/lanner services down

lock: $(BIN)/python  ## refresh constraints.txt from a clean resolution of pyproject.toml
	rm -rf $(VENV)/lock && $(PYTHON) -m venv $(VENV)/lock && \
	$(VENV)/lock/bin/pip install -q --upgrade pip && $(VENV)/lock/bin/pip install -q '.[dev,faust]' && \
	$(VENV)/lock/bin/pip freeze --all --exclude-editable | grep -v -E '^(lanner|pip)==' \
	  > constraints.txt && \
	rm -rf $(VENV)/lock

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
