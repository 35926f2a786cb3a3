# Two commands set up a fresh machine:
#   make serve   starts the service with the example config (in-memory token cache)
#   make test    installs what the tests need and runs every check and test
#   make bench   benchmarks against a bare gRPC baseline (not part of make test; see benchmarks/)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint lint-imports lint-clients lint-protos clients typecheck pytest protos system-deps clean
.PHONY: bench soak leak bench-deps bench-reload bench-tarpit bench-fleet bench-pull
.PHONY: image test-image
.PHONY: lint-deploy manifests

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

lint: protos lint-clients lint-protos lint-imports lint-deploy
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
# and the hand-written client code is formatted (each client's own config); the Go pull front
# (examples/pull-front) is gofmt- and go-vet-clean.
lint-clients: protos
	scripts/gen_clients.sh --check
	cd clients/python && ../../$(VENV)/bin/ruff check . && ../../$(VENV)/bin/ruff format --check .
	@unformatted="$$(gofmt -l clients/go examples/pull-front)"; [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted"; exit 1; }
	cd examples/pull-front && go vet ./...

# The Helm chart: `helm lint --strict` and a rendering with each values file in deploy/helm/values/
# (and the defaults), compared with the committed plain manifests in deploy/kubernetes/ (fails with
# a diff when they drift; `make manifests` rewrites them), values it must refuse, and promtool
# `check rules` on every rendered PrometheusRule and `test rules` on deploy/helm/tests/.
# helm and promtool are built from the Go module proxy into bin/
# (gitignored), pinned; the ldflags are the ones helm's own release build sets (version, and the
# default Kubernetes version: client-go v0.37 in helm v3.22.0's go.mod gives 1.37). promtool is
# built without Prometheus' service-discovery plugins (tag remove_all_sd): rule checks need none.
HELM_VERSION := v3.22.0
PROMTOOL_VERSION := v0.316.0
HELM_PKG := helm.sh/helm/v3
HELM_LDFLAGS := -X $(HELM_PKG)/internal/version.version=$(HELM_VERSION) \
	-X $(HELM_PKG)/pkg/chartutil.k8sVersionMajor=1 -X $(HELM_PKG)/pkg/chartutil.k8sVersionMinor=37 \
	-X $(HELM_PKG)/pkg/lint/rules.k8sVersionMajor=1 -X $(HELM_PKG)/pkg/lint/rules.k8sVersionMinor=37
DEPLOY_TOOLS := bin/.helm-$(HELM_VERSION) bin/.promtool-$(PROMTOOL_VERSION)

bin/.helm-$(HELM_VERSION):
	@command -v go >/dev/null 2>&1 || { echo "make lint needs Go >= 1.26 to build helm (e.g. apt-get install golang-go)"; exit 1; }
	GOBIN=$(CURDIR)/bin go install -ldflags '$(HELM_LDFLAGS)' $(HELM_PKG)/cmd/helm@$(HELM_VERSION)
	touch $@

bin/.promtool-$(PROMTOOL_VERSION):
	@command -v go >/dev/null 2>&1 || { echo "make lint needs Go >= 1.26 to build promtool (e.g. apt-get install golang-go)"; exit 1; }
	GOBIN=$(CURDIR)/bin go install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	touch $@

lint-deploy: $(STAMP) $(DEPLOY_TOOLS)
	HELM=$(CURDIR)/bin/helm PROMTOOL=$(CURDIR)/bin/promtool scripts/render-manifests.sh --check

# Rewrite deploy/kubernetes/ from the chart (after a change under deploy/helm/).
manifests: $(STAMP) $(DEPLOY_TOOLS)
	HELM=$(CURDIR)/bin/helm PROMTOOL=$(CURDIR)/bin/promtool scripts/render-manifests.sh

# Regenerate every client's committed stubs from protos/ (pinned generators).
clients: protos
	scripts/gen_clients.sh

typecheck: protos
	$(VENV)/bin/mypy

# crane (go-containerregistry), a real OCI client that pulls through examples/pull-front in
# tests/system/test_pull_front.py and benchmarks/pull_front.py; built into bin/ (gitignored), pinned.
CRANE_VERSION := v0.22.1

bin/.crane-$(CRANE_VERSION):
	@command -v go >/dev/null 2>&1 || { echo "make pytest needs Go >= 1.26 to build crane (e.g. apt-get install golang-go)"; exit 1; }
	GOBIN=$(CURDIR)/bin go install github.com/google/go-containerregistry/cmd/crane@$(CRANE_VERSION)
	touch $@

pytest: protos system-deps bin/.crane-$(CRANE_VERSION)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest test-image

# The container image: built with docker when an engine answers, else with buildah (on a
# Debian stand-in for python:3.11-slim when that cannot be pulled). IMAGE=, BASE=, ENGINE=.
image:
	scripts/build-image.sh

# Builds the image with buildah and runs it: uid, health, UrlFor, check-config, SIGTERM
# (scripts/test-image.sh; about a minute when the base and the layers are cached).
test-image: protos system-deps
	scripts/test-image.sh

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

# 3 processes on a 6-node Redis Cluster (token requests for 600 cold callers of one key and for
# 300 keys), hot GetAuthHeaders through the cluster vs the baseline, and a Sentinel master
# SIGKILLed under load (errors, p50/p99 per window); about 2 minutes; exit 3 when a target is
# missed. FLEET_ARGS="--only fleet --duration 3 --rounds 1".
bench-fleet: bench-deps
	$(PY) -m benchmarks.fleet $(FLEET_ARGS)

# Pulls of a 10-layer image with crane through examples/pull-front (built once), resolution cache
# cold then warm: wall time, upstream requests by kind, token requests, RPCs and bytes per pull
# (about a minute after the first Go build). PULL_ARGS="--pulls 3".
bench-pull: protos system-deps bin/.crane-$(CRANE_VERSION)
	$(PY) -m benchmarks.pull_front $(PULL_ARGS)

# RSS after 100,000 and after 1,000,000 hot-path calls (within 10 %, or exit 1); about 6 minutes.
leak: bench-deps
	$(PY) -m benchmarks.run --leak $(BENCH_ARGS)
