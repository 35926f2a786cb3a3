#!/usr/bin/env bash
# Installs the real servers the test suite starts: redis-server and Debian's
# docker-registry (distribution 2.8); buildah + mmdebstrap, which build and run the
# container image without a Docker engine (scripts/test-image.sh); and skopeo, the real OCI
# client that pulls through examples/pull-front (tests/system/test_pull_front.py). Skips apt
# when all are there.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing ${need[*]} from Debian's packages"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start nothing here (no systemd); the test fixtures start their own instances.
