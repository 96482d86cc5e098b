#!/usr/bin/env bash
# Build the daemon and operator images from the repository's Dockerfiles with buildah, with no
# registry, and load them into the local cluster's containerd (k8s.io namespace) when it runs:
#   localhost/fused-base:bookworm   runtime base from Debian packages    (scripts/images/base.sh)
#   localhost/pause:3.2             Pod sandbox image                      (scripts/images/pause.sh)
#   localhost/fused-daemon:<ver>    daemon/Dockerfile, BINARIES=prebuilt, RUNTIME=fused-base
#   localhost/fused-operator:<ver>  operator/Dockerfile, likewise
# The binaries are this checkout's `cargo build --release` (the Dockerfiles' default path
# compiles in a Rust image, which cannot be fetched here: see daemon/Dockerfile). An image is
# rebuilt only when its binary, Dockerfile or base changed. Prints each image and its size.
# Usage: scripts/build-images.sh    (root; buildah from scripts/setup-k8s.sh --node)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=images/lib.sh
. "$ROOT/scripts/images/lib.sh"
cd "$ROOT"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
BASE=$(scripts/images/base.sh)
PAUSE=$(scripts/images/pause.sh)
if [ -z "${FUSED_SKIP_CARGO_BUILD:-}" ]; then
  echo "build-images: cargo build --release -p fused-daemon -p fused-operator" >&2
  cargo build --release -q -p fused-daemon -p fused-operator
fi

# <binary> <Dockerfile> <image>: builds <image> from <Dockerfile> with <binary> as its only input
build_app_image() {
  local binary=$1 dockerfile=$2 image=$3 base_id inputs stage
  base_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE")
  inputs=$(cat "target/release/$binary" "$dockerfile" <(echo "$base_id") | sha256sum | cut -c1-16)
  if image_current "$image" "$inputs"; then return 0; fi
  stage=$(mktemp -d)
  # The profile's line tables are for local debugging: the image keeps symbols (readable
  # backtraces) but not the debug sections, 100 MB -> 18 MB.
  objcopy --strip-debug "target/release/$binary" "$stage/$binary"
  buildah bud -q --network host -f "$ROOT/$dockerfile" \
    --build-arg BINARIES=prebuilt --build-arg RUNTIME="$BASE" \
    --label fused.dev/inputs="$inputs" -t "$image" "$stage" >/dev/null
  rm -rf "$stage"
}
DAEMON=localhost/fused-daemon:$VERSION
OPERATOR=localhost/fused-operator:$VERSION
build_app_image fused-daemon daemon/Dockerfile "$DAEMON"
build_app_image fused-operator operator/Dockerfile "$OPERATOR"

if ctr -a "$FUSED_CONTAINERD_SOCK" version >/dev/null 2>&1; then
  for image in "$PAUSE" "$DAEMON" "$OPERATOR"; do image_to_containerd "$image"; done
  where="loaded into containerd (k8s.io) at $FUSED_CONTAINERD_SOCK"
else
  where="in buildah's store; containerd is not running, so scripts/cluster-up.sh loads them"
fi
echo "build-images: $where:" >&2
for image in "$BASE" "$PAUSE" "$DAEMON" "$OPERATOR"; do
  printf '  %-34s %s\n' "$image" "$(image_size_mb "$image")" >&2
done
