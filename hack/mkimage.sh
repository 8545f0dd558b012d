#!/usr/bin/env bash
# Writes a one-layer container image as a docker-archive tarball (what `ctr images import` and
# `docker load` take), without a Docker daemon, a registry or the network.
#
# Usage: hack/mkimage.sh REF ROOTFS_DIR OUT.tar CONFIG_JSON
#   CONFIG_JSON is the image's "config" object, e.g. '{"Entrypoint":["/usr/bin/gpulet"]}'.
# The layer is reproducible: sorted names, mtime 0, owner root.
set -euo pipefail
[[ $# == 4 ]] || { echo "usage: $0 REF ROOTFS_DIR OUT.tar CONFIG_JSON" >&2; exit 2; }
ref=$1 rootfs=$2 tarball=$3 config=$4
[[ -d $rootfs ]] || { echo "mkimage: $rootfs is not a folder" >&2; exit 1; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$d/layer.tar" .
diff=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"gpulet hack/mkimage.sh"}]}' \
	"$config" "$diff" >"$d/config.json"
cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1)
mv "$d/config.json" "$d/$cfg.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$cfg" "$ref" >"$d/manifest.json"
tar -C "$d" -cf "$tarball" manifest.json "$cfg.json" layer.tar
echo "[mkimage] $ref -> $tarball ($(du -h "$tarball" | cut -f1))"
