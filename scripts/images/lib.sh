# Shared by the image scripts (sourced): where buildah keeps its images and how images reach the
# cluster's containerd. Everything is cached outside the clone, under $FUSED_IMAGES_DIR.
FUSED_IMAGES_DIR=${FUSED_IMAGES_DIR:-/opt/k8s/images}
# containerd of scripts/cluster-up.sh (its own socket: a containerd of the host is left alone).
FUSED_CONTAINERD_SOCK=${FUSED_CONTAINERD_SOCK:-/run/fused-k8s/containerd/containerd.sock}
mkdir -p "$FUSED_IMAGES_DIR/buildah"
# buildah's image store lives in the cache; overlay on the host filesystem.
export CONTAINERS_STORAGE_CONF="$FUSED_IMAGES_DIR/buildah/storage.conf"
[ -f "$CONTAINERS_STORAGE_CONF" ] || printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
  "$FUSED_IMAGES_DIR/buildah/storage" /run/fused-k8s/buildah > "$CONTAINERS_STORAGE_CONF"

# Does buildah hold <image> built from inputs with this digest (its label fused.dev/inputs)?
image_current() { # <image> <inputs-digest>
  [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "fused.dev/inputs"}}' "$1" 2>/dev/null)" = "$2" ]
}

# Copies <image> from buildah into containerd's k8s.io namespace, where the kubelet finds it
# (importing an image containerd already holds only re-tags it).
image_to_containerd() { # <image>
  local tar
  tar="$FUSED_IMAGES_DIR/$(echo "$1" | tr '/:' '__').tar"
  rm -f "$tar"
  buildah push -q "$1" "docker-archive:$tar:$1" >/dev/null
  ctr -a "$FUSED_CONTAINERD_SOCK" -n k8s.io images import "$tar" >/dev/null
  rm -f "$tar"
}

# Uncompressed size of <image> in MB (the sum of its layers, as buildah stores them).
image_size_mb() { # <image>
  buildah images --format '{{.Size}}' "$1" | head -1
}
