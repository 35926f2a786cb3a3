# Two commands set up a fresh machine:
#   make serve   starts the service with the example config (in-memory token cache)
#   make test    installs what the tests need and runs every check and test
#   make bench   benchmarks against a bare gRPC baseline (not part of make test; see benchmarks/)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint lint-imports lint-clients lint-protos clients typecheck pytest protos system-deps clean
.PHONY: bench soak leak bench-deps bench-reload bench-tarpit

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

lint: protos lint-clients lint-protos lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The layer contracts (pyproject.toml [tool.importlinter]): no cycles, oci without gRPC or
# Prometheus, the model a leaf, the generated stubs only in rpc/ and runtime/.
lint-imports: $(STAMP)
	cd server && ../$(VENV)/bin/lint-imports ../pyproject.toml --no-cache

# The contract is lint-clean under buf's standard rules plus comments on everything
# (buf's prebuilt binary comes from npm, pinned here).
BUF_VERSION := 1.50.0
lint-protos:
	cd protos && npx --yes @bufbuild/buf@$(BUF_VERSION) lint

# The committed client stubs must match protos/ (fails with a diff summary when they drift),
# and the hand-written client code is formatted (each client's own config).
lint-clients: protos
	scripts/gen_clients.sh --check
	cd clients/python && ../../$(VENV)/bin/ruff check . && ../../$(VENV)/bin/ruff format --check .
	@unformatted="$$(gofmt -l clients/go)"; [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted"; exit 1; }

# Regenerate every client's committed stubs from protos/ (pinned generators).
clients: protos
	scripts/gen_clients.sh

typecheck: protos
	$(VENV)/bin/mypy

pytest: protos system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) server/vregistry .pytest_cache .mypy_cache .ruff_cache

# ---------------------------------------------------------------- benchmarks (not part of `make test`)
# ghz, the gRPC load generator, is built from the Go module proxy into benchmarks/bin (gitignored).
GHZ_VERSION := v0.120.0
GHZ := benchmarks/bin/ghz
BENCH_STAMP := $(VENV)/.bench-stamp

$(GHZ):
	@command -v go >/dev/null 2>&1 || { echo "make bench needs Go >= 1.21 to build ghz (e.g. apt-get install golang-go)"; exit 1; }
	GOBIN=$(CURDIR)/benchmarks/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=compat
	touch $@

bench-deps: protos system-deps $(BENCH_STAMP) $(GHZ)

# Every scenario against the baseline, about 8 minutes: table on stdout, JSON in benchmarks/out/.
bench: bench-deps
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# 10 minutes at 70 % of the measured capacity: zero errors and flat memory, or exit 1.
soak: bench-deps
	$(PY) -m benchmarks.run --soak 600 $(BENCH_ARGS)

# The longest event-loop stall during a store reload of 5,000 credentialed upstreams (a few
# minutes: every fingerprint is a PBKDF2 derivation); exit 1 above 50 ms. RELOAD_ARGS="--upstreams 500".
bench-reload: protos
	$(PY) -m benchmarks.reload_blocking $(RELOAD_ARGS)

# A tarpit upstream holding 20 calls vs a second upstream's ResolveUpstream p50/p99 (real
# docker-registry; about 20 s); exit 1 when p99 exceeds 2x its no-tarpit baseline. TARPIT_ARGS="--rounds 1".
bench-tarpit: protos system-deps
	$(PY) -m benchmarks.tarpit $(TARPIT_ARGS)

# RSS after 100,000 and after 1,000,000 hot-path calls (within 10 %, or exit 1); about 6 minutes.
leak: bench-deps
	$(PY) -m benchmarks.run --leak $(BENCH_ARGS)
