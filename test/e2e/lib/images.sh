#!/usr/bin/env bash
# Builds the container images of the e2e test offline, as OCI image layout tarballs (hack/mkimage.sh) that
# `ctr images import` accepts (no registry, no network):
#   pause.tar    registry.k8s.io/pause:3.10         sandbox image (test/e2e/images/pause)
#   busybox.tar  docker.io/library/busybox:e2e      workload image (Debian's busybox-static)
#   gpulet.tar   ghcr.io/gpulet/gpulet:e2e           the release image (hack/image.sh) of this gpulet
#
# Usage: images.sh OUT_DIR GPULET_BINARY
set -euo pipefail

out=$1 gpulet=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

PAUSE_IMAGE=registry.k8s.io/pause:3.10
BUSYBOX_IMAGE=docker.io/library/busybox:e2e
GPULET_IMAGE=ghcr.io/gpulet/gpulet:e2e

# mkimage REF ROOTFS OUT CONFIG_JSON: one-layer image (the project's own image writer).
mkimage() { "$here/../../../hack/mkimage.sh" "$@" | sed 's/^\[mkimage\]/[images]/'; }

# busybox_rootfs DIR: a minimal root filesystem with busybox and its applets in /bin.
busybox_rootfs() {
	local r=$1 a
	mkdir -p "$r"/{bin,dev,etc,proc,sys,tmp,var,root,usr/bin}
	chmod 1777 "$r/tmp"
	cp /bin/busybox "$r/bin/busybox"
	for a in $("$r/bin/busybox" --list); do
		[[ -e $r/bin/$a ]] || ln -s busybox "$r/bin/$a"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
}

[[ -x /bin/busybox ]] || { echo "[images] /bin/busybox missing (package busybox-static)" >&2; exit 1; }
[[ -x $gpulet ]] || { echo "[images] gpulet binary $gpulet missing" >&2; exit 1; }

# pause
mkdir -p "$work/pause/rootfs"
(cd "$here/../images/pause" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o "$work/pause/rootfs/pause" .)
cp "$work/pause/rootfs/pause" "$out/pause" # also the init process of the cluster's namespaces
mkimage "$PAUSE_IMAGE" "$work/pause/rootfs" "$out/pause.tar" '{"Entrypoint":["/pause"]}'

# busybox
busybox_rootfs "$work/busybox"
mkimage "$BUSYBOX_IMAGE" "$work/busybox" "$out/busybox.tar" \
	'{"Cmd":["sh"],"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}'

# gpulet: the release image, as `make image` builds it (the cgo binary on Debian 12's libc6).
"$here/../../../hack/image.sh" "$gpulet" "$out/gpulet.tar" "$GPULET_IMAGE" | sed 's/^\[mkimage\]/[images]/'
