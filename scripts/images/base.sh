#!/usr/bin/env bash
# localhost/fused-base:bookworm — the runtime base of the local daemon and operator images, made
# from Debian packages only (no registry): what the binaries need and nothing else, like
# distroless's cc image. From libc6: the loader, libc, libm and friends (no gconv modules, docs
# or locales); from libgcc-s1: libgcc_s; from coreutils: /bin/sleep alone (the daemon Pod's
# preStop hook). Plus /etc/passwd and /etc/group with the non-root user 65532 and a /tmp.
# No shell. Rebuilt only when a package version changes. About 6 MB.
# Usage: scripts/images/base.sh   (root; prints the image name)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
IMAGE=localhost/fused-base:bookworm
PACKAGES=(libc6 libgcc-s1 coreutils)
versions=$(apt-cache policy "${PACKAGES[@]}" | awk '/^[^ ]/{p=$1} /Candidate:/{print p $2}')
inputs=$( { echo "$versions"; cat "$0"; } | sha256sum | cut -c1-16)
if image_current "$IMAGE" "$inputs"; then echo "$IMAGE"; exit 0; fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root="$work/rootfs"; mkdir -p "$root" "$work/debs"
(cd "$work/debs" && apt-get download -q "${PACKAGES[@]}" >/dev/null 2>&1) \
  || { apt-get update -q >/dev/null && (cd "$work/debs" && apt-get download -q "${PACKAGES[@]}" >/dev/null); }
dpkg-deb -x "$work"/debs/libc6_*.deb "$root"
dpkg-deb -x "$work"/debs/libgcc-s1_*.deb "$root"
dpkg-deb --fsys-tarfile "$work"/debs/coreutils_*.deb | tar -x -C "$root" ./bin/sleep
rm -rf "$root"/usr/lib/x86_64-linux-gnu/gconv "$root"/usr/share "$root"/etc/ld.so.conf.d
mkdir -p "$root/etc" "$root/tmp" && chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
cat > "$work/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
LABEL fused.dev/inputs="$inputs" fused.dev/debian-packages="$(echo $versions)"
DOCKERFILE
buildah bud -q --network host -t "$IMAGE" "$work" >/dev/null
echo "$IMAGE"
