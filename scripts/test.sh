#!/usr/bin/env bash
# Set up everything the tests need, then run them all:
#  1. Rust unit, property and integration tests — the Kubernetes ones against a real etcd +
#     kube-apiserver (+ controller manager) on loopback, built once from Debian's sources — and
#     the GPU kernels compiled for sm_90 by the real NVRTC (no GPU needed);
#  2. end-to-end tests of the real daemon serving the real SmolLM2 weights, driven over HTTP by
#     the official `openai` client, checked against HF transformers and prometheus_client;
#  3. the real-cluster suite: a one-node Kubernetes on this machine (scripts/cluster-up.sh: kubelet,
#     containerd, kube-proxy, bridge CNI), the daemon and operator images built from the
#     Dockerfiles (scripts/build-images.sh), both charts installed with Helm, and the user path,
#     failures and metrics checked on real Pods (e2e/cluster/).
# Heavy downloads and builds are cached outside the clone (/opt/k8s, ~/.cache/fusedmodel).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== setup" >&2
scripts/setup-k8s.sh --node
PROMETHEUS=$(scripts/setup-prometheus.sh)
scripts/fetch-model.sh >/dev/null
scripts/fetch-tokenizers.sh >/dev/null
scripts/fetch-corpus.sh >/dev/null
PY=$(scripts/setup-python.sh)
NVRTC_LIB=$(scripts/setup-nvrtc.sh "$PY")
echo "== build" >&2
cargo build --release --workspace --bins
echo "== Rust tests" >&2
cargo test --release --workspace -- --nocapture
echo "== GPU kernels: the cuda feature's tests, every kernel compiled by the real NVRTC (no GPU)" >&2
LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo test --release -p fused-kernels --features cuda --lib -- --nocapture
echo "== end-to-end tests (real daemon, real weights, real clients)" >&2
FUSED_PROMETHEUS_BIN="$PROMETHEUS" FUSED_DAEMON_BIN="$PWD/target/release/fused-daemon" "$PY" -m pytest e2e/python -q -rA -s
echo "== real-cluster tests (kubelet, containerd, images built from the Dockerfiles, Helm)" >&2
# The images take the binaries built above for the whole workspace (a per-package build could
# resolve features differently and compile them again).
FUSED_SKIP_CARGO_BUILD=1 FUSED_PROMETHEUS_BIN="$PROMETHEUS" "$PY" -m pytest e2e/cluster -q -rA -s
