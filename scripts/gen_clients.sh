#!/usr/bin/env bash
# Regenerates every client's committed stubs from protos/, with pinned generators.
#
#   scripts/gen_clients.sh           rewrite the committed stubs in place
#   scripts/gen_clients.sh --check   regenerate into a temp dir; exit 1 with a diff summary
#                                    when the committed stubs differ (CI runs this via make lint)
#   scripts/gen_clients.sh [--check] go python typescript java
#                                    only those languages (default: all of them)
#
# What is generated, and by what (every version pinned, so the output is byte-for-byte
# reproducible):
#   clients/go/gen/vregistry/v1/            protoc (grpcio-tools, pyproject.toml) with
#                                           protoc-gen-go and protoc-gen-go-grpc (below),
#                                           installed by `go install` into .cache/bin
#   clients/python/src/vregistry_client/v1/ protoc (grpcio-tools) python + grpc_python, and
#                                           mypy-protobuf (pyproject.toml) for the .pyi stubs
#   clients/typescript/src/gen/             clients/typescript/generate.sh (its own pins in
#                                           package-lock.json), when that script exists
#   clients/java                            nothing: the protobuf Maven plugin generates at build
#
# Copied, not generated: clients/service_config.json (the one gRPC service config) into each
# client's package (the SC_COPIES list below); --check reports a copy that differs.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12     # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2  # google.golang.org/grpc/cmd/protoc-gen-go-grpc
GRPCIO_TOOLS_VERSION=1.85.1        # must match pyproject.toml's dev pin (protoc 35.1 inside)
MYPY_PROTOBUF_VERSION=5.1.0        # must match pyproject.toml's dev pin

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
GOBIN_DIR="$ROOT/.cache/bin"
GO_DIR="$ROOT/clients/go"
GO_GEN_REL="gen/vregistry/v1"
PY_GEN_REL="src/vregistry_client/v1"
PY_DIR="$ROOT/clients/python"
TS_DIR="$ROOT/clients/typescript"
TS_GEN_REL="src/gen"  # generate.sh's default output directory
JAVA_DIR="$ROOT/clients/java"

mode="write"
LANGS=()
for arg in "$@"; do
  case "$arg" in
    --check) mode="check" ;;
    go | python | typescript | java) LANGS+=("$arg") ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--check] [go] [python] [typescript] [java]" >&2; exit 2 ;;
  esac
done
[ "${#LANGS[@]}" -gt 0 ] || LANGS=(go python typescript java)
wants() { [[ " ${LANGS[*]} " == *" $1 "* ]]; }

die() { echo "gen_clients: $*" >&2; exit 1; }

# --- generators -----------------------------------------------------------------------------

[ -x "$PY" ] || die "$PY not found: run 'make protos' first (it creates .venv)"
"$PY" - "$GRPCIO_TOOLS_VERSION" "$MYPY_PROTOBUF_VERSION" <<'EOF' || die "generator versions differ from the pins: run 'make protos' (pyproject.toml pins them)"
import sys
from importlib.metadata import PackageNotFoundError, version

wanted = {"grpcio-tools": sys.argv[1], "mypy-protobuf": sys.argv[2]}
bad = []
for name, pin in wanted.items():
    try:
        have = version(name)
    except PackageNotFoundError:
        have = "missing"
    if have != pin:
        bad.append(f"{name}: have {have}, want {pin}")
if bad:
    print("gen_clients: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
EOF
VENV_BIN="$(dirname "$PY")"
[ -x "$VENV_BIN/protoc-gen-mypy" ] || die "protoc-gen-mypy not in $VENV_BIN"

command -v go >/dev/null || die "go is not installed"
mkdir -p "$GOBIN_DIR"
go_tool() {  # go_tool BINARY PACKAGE VERSION VERSION_OUTPUT
  local bin="$GOBIN_DIR/$1"
  if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null)" != "$4" ]; then
    echo "gen_clients: go install $2@$3" >&2
    GOBIN="$GOBIN_DIR" GOTOOLCHAIN=local go install "$2@$3"
  fi
}
go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go \
  "$PROTOC_GEN_GO_VERSION" "protoc-gen-go $PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  "$PROTOC_GEN_GO_GRPC_VERSION" "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"

GO_MODULE="$(awk '$1 == "module" {print $2; exit}' "$GO_DIR/go.mod")"
[ -n "$GO_MODULE" ] || die "no module line in $GO_DIR/go.mod"

# Relative proto paths keep absolute paths out of the generated files.
cd "$ROOT/protos"
mapfile -t PROTOS < <(find . -name '*.proto' | LC_ALL=C sort | sed 's|^\./||')
[ "${#PROTOS[@]}" -gt 0 ] || die "no .proto files under protos/"
WELL_KNOWN="$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

protoc() { "$PY" -m grpc_tools.protoc -I. -I"$WELL_KNOWN" "$@"; }

# generate OUT: writes go/, python/ (and typescript/ when the TS client exists) under OUT.
generate() {
  local out="$1" raw
  mkdir -p "$out/go" "$out/python" "$out/raw-py"

  protoc \
    --plugin=protoc-gen-go="$GOBIN_DIR/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$GOBIN_DIR/protoc-gen-go-grpc" \
    --go_out="$out/go" --go_opt=module="$GO_MODULE" \
    --go-grpc_out="$out/go" --go-grpc_opt=module="$GO_MODULE" \
    "${PROTOS[@]}"
  [ -d "$out/go/$GO_GEN_REL" ] || die "Go stubs not in $GO_GEN_REL: check the protos' go_package against module $GO_MODULE"

  raw="$out/raw-py"
  protoc \
    --plugin=protoc-gen-mypy="$VENV_BIN/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$VENV_BIN/protoc-gen-mypy_grpc" \
    --python_out="$raw" --grpc_python_out="$raw" \
    --mypy_out="$raw" --mypy_grpc_out="$raw" \
    "${PROTOS[@]}" 2>"$out/protoc-python.log" \
    || { cat "$out/protoc-python.log" >&2; die "protoc (python) failed"; }
  # The generated modules live in vregistry_client.v1 so that they never collide with the
  # server's vregistry.v1 package; only imports are rewritten. The serialized descriptors are
  # untouched (same proto path "vregistry/v1/...", same bytes), so both packages can be
  # loaded in one process without a duplicate-symbol error.
  mkdir -p "$out/python/$PY_GEN_REL"
  "$PY" - "$raw/vregistry/v1" "$out/python/$PY_GEN_REL" <<'EOF'
import re
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rules = [
    # python/grpc modules: "from vregistry.v1 import x_pb2 as ..."
    (re.compile(r"^from vregistry\.v1 import ", re.M), "from vregistry_client.v1 import "),
    # mypy stubs: "import vregistry.v1.x_pb2" and qualified names
    (re.compile(r"\bvregistry\.v1\.(\w+_pb2)\b"), r"vregistry_client.v1.\1"),
    # _builder's module name (the classes' __module__), a quoted string
    (re.compile(r"'vregistry\.v1\.(\w+_pb2)'"), r"'vregistry_client.v1.\1'"),
]
for path in sorted(src.iterdir()):
    text = path.read_text()
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    (dst / path.name).write_text(text)
(dst / "__init__.py").write_text(
    '"""Generated by scripts/gen_clients.sh from protos/vregistry/v1: do not edit."""\n'
)
EOF
  rm -rf "$raw"

  if wants typescript && [ -f "$TS_DIR/generate.sh" ]; then
    bash "$TS_DIR/generate.sh" "$out/typescript" >&2
  fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
generate "$TMP"

# pairs: "<generated subdir under $TMP>|<committed dir>"
PAIRS=()
wants go && PAIRS+=("go/$GO_GEN_REL|$GO_DIR/$GO_GEN_REL")
wants python && PAIRS+=("python/$PY_GEN_REL|$PY_DIR/$PY_GEN_REL")
[ -d "$TMP/typescript" ] && PAIRS+=("typescript|$TS_DIR/$TS_GEN_REL")

# The gRPC service config (retry of UNAVAILABLE, round_robin) has one definition,
# clients/service_config.json; each client ships a byte-for-byte copy inside its package.
SERVICE_CONFIG="$ROOT/clients/service_config.json"
SC_COPIES=()
wants go && SC_COPIES+=("$GO_DIR/client/service_config.json")
wants python && SC_COPIES+=("$PY_DIR/src/vregistry_client/service_config.json")
# TypeScript imports it as a JSON module (tsconfig resolveJsonModule; tsc emits it into dist/).
wants typescript && SC_COPIES+=("$TS_DIR/src/service_config.json")
# Java reads it from the classpath, next to VRegistryClient.class in the jar.
wants java && SC_COPIES+=("$JAVA_DIR/src/main/resources/dev/vregistry/client/service_config.json")

if [ "$mode" = "write" ]; then
  for pair in "${PAIRS[@]}"; do
    generated="$TMP/${pair%%|*}"
    committed="${pair#*|}"
    rm -rf "$committed"
    mkdir -p "$committed"
    cp -R "$generated"/. "$committed"/
    echo "gen_clients: wrote ${committed#"$ROOT"/}"
  done
  for copy in "${SC_COPIES[@]}"; do
    mkdir -p "$(dirname "$copy")"
    cp "$SERVICE_CONFIG" "$copy"
    echo "gen_clients: wrote ${copy#"$ROOT"/}"
  done
  exit 0
fi

drift=0
for pair in "${PAIRS[@]}"; do
  generated="$TMP/${pair%%|*}"
  committed="${pair#*|}"
  rel="${committed#"$ROOT"/}"
  if [ ! -d "$committed" ]; then
    echo "DRIFT: $rel does not exist (run scripts/gen_clients.sh)"
    drift=1
    continue
  fi
  if ! summary="$(diff -rq "$generated" "$committed" 2>&1)"; then
    drift=1
    echo "DRIFT in $rel (committed stubs differ from what protos/ generates):"
    echo "$summary" | sed "s|$TMP/||g; s|$ROOT/||g; s|^|  |"
    diff -ru "$generated" "$committed" 2>/dev/null | grep -v '^Only in ' | sed "s|$TMP/||g; s|$ROOT/||g" \
      | head -n 40 | sed 's|^|    |' || true
  fi
done
for copy in "${SC_COPIES[@]}"; do
  if ! cmp -s "$SERVICE_CONFIG" "$copy"; then
    drift=1
    echo "DRIFT: ${copy#"$ROOT"/} differs from clients/service_config.json"
  fi
done
if [ "$drift" -ne 0 ]; then
  echo "gen_clients --check: committed stubs or service config copies drifted from protos/ or clients/service_config.json; run scripts/gen_clients.sh and commit the result" >&2
  exit 1
fi
echo "gen_clients --check: committed stubs match protos/ (${#PAIRS[@]} client(s)), service config copies match clients/service_config.json (${#SC_COPIES[@]})"
