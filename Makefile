# Two commands set up a fresh machine:
#   make serve   starts the service with the example config (in-memory token cache)
#   make test    installs what the tests need and runs every check and test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint typecheck pytest protos system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

server/vregistry/v1/upstream_service_pb2.py: $(STAMP) $(wildcard protos/vregistry/v1/*.proto) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py

protos: server/vregistry/v1/upstream_service_pb2.py

serve: protos
	$(VENV)/bin/vregistry-server --config examples/config.yaml $(ARGS)

system-deps:
	scripts/install-system-deps.sh

lint: protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: protos
	$(VENV)/bin/mypy

pytest: protos system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) server/vregistry .pytest_cache .mypy_cache .ruff_cache
