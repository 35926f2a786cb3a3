#!/usr/bin/env bash
# Regenerate the TypeScript protobuf/gRPC sources from ../../protos (and the vendored
# google/rpc protos) into OUTDIR (default: src/gen, where they are committed).
#
#   ./generate.sh            # rewrite src/gen
#   ./generate.sh /tmp/out   # write elsewhere, e.g. to diff against src/gen
#
# Generators are pinned in package-lock.json: protoc (npm "protoc", libprotoc 36.2) and
# ts-proto 2.18.0. Output is deterministic: same inputs, byte-identical files.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTOS="$(cd "$HERE/../../protos" && pwd)"
OUTDIR="${1:-$HERE/src/gen}"

if [[ ! -x "$HERE/node_modules/.bin/protoc-gen-ts_proto" || ! -x "$HERE/node_modules/.bin/protoc" ]]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Relative paths inside the include roots keep absolute paths out of the generated files.
cd "$PROTOS"
PROTO_FILES=$(find . -name '*.proto' | LC_ALL=C sort | sed 's|^\./||')
cd "$HERE"
"$HERE/node_modules/.bin/protoc" \
  --plugin=protoc-gen-ts_proto="$HERE/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$TMP" \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,forceLong=number,useDate=true \
  -I "$PROTOS" \
  -I "$HERE/protos-vendor" \
  -I "$HERE/node_modules/protoc/include" \
  $(for f in $PROTO_FILES; do printf '%s ' "$PROTOS/$f"; done) \
  "$HERE/protos-vendor/google/rpc/status.proto" \
  "$HERE/protos-vendor/google/rpc/error_details.proto"

# Replace OUTDIR wholesale (a proto removed upstream must disappear here too), but never
# delete a directory that holds anything other than generated .ts files.
if [[ -d "$OUTDIR" ]] && [[ -n "$(find "$OUTDIR" -type f ! -name '*.ts' -print -quit)" ]]; then
  echo "generate.sh: $OUTDIR holds files other than generated .ts; refusing to replace it" >&2
  exit 1
fi
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
cp -R "$TMP"/. "$OUTDIR"/
