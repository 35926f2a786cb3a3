#!/usr/bin/env bash
# Renders the Helm chart into the committed plain manifests, and checks them.
#
#   scripts/render-manifests.sh           rewrite deploy/kubernetes/ from deploy/helm/vregistry
#   scripts/render-manifests.sh --check   render into a temp dir; exit 1 with a diff when the
#                                         committed manifests differ (make lint runs this)
#
# Each run, in both modes:
#   helm lint --strict     with the chart's defaults and with every values file
#   helm template          the defaults -> deploy/kubernetes/default.yaml, and each
#                          deploy/helm/values/NAME.yaml -> deploy/kubernetes/NAME.yaml
#   helm template --set    values the chart must refuse (a Redis password in the values, no
#                          callers Secret, ...) fail, each with its message
#   promtool check rules   on the rules of every rendered PrometheusRule
#   promtool test rules    deploy/helm/tests/*_test.yaml: each alert fires on the server's
#                          series, and only when it should
# HELM and PROMTOOL name the binaries (make builds them, pinned, into bin/; see the Makefile's
# lint-deploy). The release is "vregistry" in namespace "vregistry", rendered for the oldest
# Kubernetes the chart supports (Chart.yaml kubeVersion), so the output depends on the chart,
# the values and the pinned helm only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM="${HELM:-$ROOT/bin/helm}"
PROMTOOL="${PROMTOOL:-$ROOT/bin/promtool}"
PY="${PY:-$ROOT/.venv/bin/python}"
CHART="$ROOT/deploy/helm/vregistry"
VALUES_DIR="$ROOT/deploy/helm/values"
OUT_DIR="$ROOT/deploy/kubernetes"
RELEASE=vregistry
NAMESPACE=vregistry
KUBE_VERSION=1.30.0

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

die() { echo "render-manifests: $*" >&2; exit 1; }
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
HELM="$(absolute "$HELM")"
PROMTOOL="$(absolute "$PROMTOOL")"
[ -x "$HELM" ] || die "$HELM not found: run 'make lint-deploy' (it builds helm into bin/)"
[ -x "$PROMTOOL" ] || die "$PROMTOOL not found: run 'make lint-deploy' (it builds promtool into bin/)"
[ -x "$PY" ] || die "$PY not found: run 'make protos' first (it creates .venv)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"

# name -> values file ("" for the chart's defaults)
variants=(default)
declare -A values_of=([default]="")
for file in "$VALUES_DIR"/*.yaml; do
  name="$(basename "$file" .yaml)"
  [ "$name" != default ] || die "$file: 'default' is the name of the chart's own defaults"
  variants+=("$name")
  values_of[$name]="$file"
done

for name in "${variants[@]}"; do
  args=()
  [ -z "${values_of[$name]}" ] || args=(-f "${values_of[$name]}")
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}" --kube-version "$KUBE_VERSION" >"$work/lint.log" 2>&1 \
    || { cat "$work/lint.log" >&2; die "helm lint --strict failed with the $name values"; }
  shown="${values_of[$name]#"$ROOT/"}"
  {
    echo "# Rendered from deploy/helm/vregistry by scripts/render-manifests.sh: do not edit."
    echo "# helm template $RELEASE deploy/helm/vregistry --namespace $NAMESPACE${shown:+ -f $shown}"
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "${args[@]}"
  } >"$work/out/$name.yaml" || die "helm template failed with the $name values"
done

# Values the chart must refuse (a credential in the values, a pod that could not start): each
# must fail to render, with its message.
refusals=(
  "redis.url=redis://:hunter2@redis:6379/0|must not carry credentials"
  "config.settings.redis_url=redis://redis:6379/0|config.settings.redis_url"
  "callers.secretName=|callers.secretName is required"
  "configService.enabled=true|configService.encryptionKeySecret.name"
  "tls.clientCA.enabled=true|needs tls.enabled"
)
for refusal in "${refusals[@]}"; do
  if "$HELM" template "$RELEASE" "$CHART" --kube-version "$KUBE_VERSION" --set "${refusal%%|*}" \
    >/dev/null 2>"$work/refusal.log"; then
    die "the chart renders with ${refusal%%|*}; it must refuse it"
  fi
  grep -qF -- "${refusal#*|}" "$work/refusal.log" \
    || { cat "$work/refusal.log" >&2; die "${refusal%%|*}: refused without saying '${refusal#*|}'"; }
done

# The rules of each rendered PrometheusRule, as a Prometheus rule file.
"$PY" - "$work/out" "$work/rules" <<'PYEOF' || die "cannot read the rendered manifests"
import pathlib
import sys

import yaml

out, rules = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rules.mkdir()
for manifest in sorted(out.glob("*.yaml")):
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == "PrometheusRule":
            name = f"{manifest.stem}-{doc['metadata']['name']}.rules.yaml"
            (rules / name).write_text(yaml.safe_dump(doc["spec"], sort_keys=False))
PYEOF
rule_files=("$work"/rules/*.rules.yaml)
[ -e "${rule_files[0]}" ] || die "no rendering has a PrometheusRule: enable one in deploy/helm/values/"
"$PROMTOOL" check rules "${rule_files[@]}" >"$work/promtool.log" 2>&1 \
  || { cat "$work/promtool.log" >&2; die "promtool check rules failed"; }
# The alerts' unit tests (deploy/helm/tests/*_test.yaml name the rule files written above).
rule_tests=("$ROOT"/deploy/helm/tests/*_test.yaml)
cp "${rule_tests[@]}" "$work/rules/"
(cd "$work/rules" && "$PROMTOOL" test rules "${rule_tests[@]##*/}") >"$work/promtool.log" 2>&1 \
  || { cat "$work/promtool.log" >&2; die "promtool test rules failed"; }

if [ "$mode" = check ]; then
  if ! diff -ru "$OUT_DIR" "$work/out" >"$work/diff" 2>&1; then
    head -n 80 "$work/diff" >&2
    die "deploy/kubernetes/ differs from the chart's rendering: run 'make manifests' and commit it"
  fi
  echo "render-manifests: ${#variants[@]} renderings match deploy/kubernetes/; helm lint --strict, ${#refusals[@]} refusals, promtool check rules (${#rule_files[@]} rule files) and test rules (${#rule_tests[@]} files) pass"
else
  mkdir -p "$OUT_DIR"
  find "$OUT_DIR" -maxdepth 1 -name '*.yaml' -delete
  cp "$work"/out/*.yaml "$OUT_DIR"/
  echo "render-manifests: wrote ${#variants[@]} manifests to deploy/kubernetes/"
fi
