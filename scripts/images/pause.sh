#!/usr/bin/env bash
# localhost/pause:3.2 — the Pod sandbox image (containerd's sandbox_image), with no registry:
# Kubernetes' own pause.c from the source tree scripts/setup-k8s.sh unpacked, compiled static,
# alone in a scratch image running as 65535. Rebuilt only when pause.c changes.
# Usage: scripts/images/pause.sh   (prints the image name)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
IMAGE=localhost/pause:3.2
SRC=${FUSED_K8S_BUILD_DIR:-/opt/k8s}/src/kubernetes-1.20.2/build/pause/linux/pause.c
[ -f "$SRC" ] || { echo "pause.sh: $SRC missing: run scripts/setup-k8s.sh --node" >&2; exit 1; }
inputs=$( { cat "$SRC"; cat "$0"; } | sha256sum | cut -c1-16)
if image_current "$IMAGE" "$inputs"; then echo "$IMAGE"; exit 0; fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
gcc -Os -static -DVERSION=v3.2-fused -o "$work/pause" "$SRC"
strip "$work/pause"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\nLABEL fused.dev/inputs="%s"\n' \
  "$inputs" > "$work/Dockerfile"
buildah bud -q --network host -t "$IMAGE" "$work" >/dev/null
echo "$IMAGE"
