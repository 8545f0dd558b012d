#!/usr/bin/env bash
# Writes a container image, one layer per platform, as a tarball that both `ctr images import` and
# `docker load` take, without a Docker daemon, a registry or the network. The tarball is an OCI
# image layout (oci-layout, index.json -> an image index with one manifest per platform, blobs/)
# that also carries Docker's manifest.json, as `docker save` of Docker 25+ writes it:
#   - containerd (`ctr images import`, and Docker with the containerd image store) reads the OCI
#     layout: REF names the index, and each machine runs its own platform's manifest;
#   - Docker's classic store reads manifest.json: a one-platform image is tagged REF, a multi-platform
#     one REF-amd64 and REF-arm64 (that store keeps one platform per tag; `docker tag` the one you run).
#
# Usage: hack/mkimage.sh REF [ARCH=]ROOTFS_DIR[,ARCH=ROOTFS_DIR...] OUT.tar CONFIG_JSON
#   ARCH is amd64 (the default) or arm64; CONFIG_JSON is the image's "config" object,
#   e.g. '{"Entrypoint":["/usr/bin/gpulet"]}'.
# Reproducible: names sorted, owner root, every mtime SOURCE_DATE_EPOCH (0 when unset), gzip without
# name or time, JSON written byte for byte here; the same folders give the same digests.
set -euo pipefail
[[ $# == 4 ]] || { echo "usage: $0 REF [ARCH=]ROOTFS_DIR[,ARCH=ROOTFS_DIR...] OUT.tar CONFIG_JSON" >&2; exit 2; }
ref=$1 roots=$2 tarball=$3 config=$4
epoch=${SOURCE_DATE_EPOCH:-0}
[[ $epoch =~ ^[0-9]+$ ]] || { echo "mkimage: SOURCE_DATE_EPOCH=$epoch is not a number of seconds" >&2; exit 1; }
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
tag=${ref##*/}; [[ $tag == *:* ]] && tag=${tag##*:} || tag=latest

d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/blobs/sha256"
# blob FILE: moves FILE into blobs/ under its digest; prints "DIGEST SIZE".
blob() {
	local h s
	h=$(sha256sum "$1" | cut -d' ' -f1)
	s=$(stat -c %s "$1")
	mv "$1" "$d/blobs/sha256/$h"
	echo "$h $s"
}

IFS=, read -ra specs <<<"$roots"
manifests='' docker='' sizes=''
for spec in "${specs[@]}"; do
	arch=amd64 rootfs=$spec
	[[ $spec == *=* ]] && { arch=${spec%%=*}; rootfs=${spec#*=}; }
	case $arch in
	amd64) platform='"architecture":"amd64","os":"linux"' ;;
	arm64) platform='"architecture":"arm64","os":"linux","variant":"v8"' ;;
	*) echo "mkimage: unknown architecture $arch: want amd64 or arm64" >&2; exit 1 ;;
	esac
	[[ -d $rootfs ]] || { echo "mkimage: $rootfs is not a folder" >&2; exit 1; }
	tar --sort=name --mtime="@$epoch" --numeric-owner --owner=0 --group=0 --format=gnu \
		-C "$rootfs" -cf "$d/layer.tar" .
	diff=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
	gzip -n "$d/layer.tar"
	read -r layer layer_size < <(blob "$d/layer.tar.gz")
	printf '{%s,"created":"%s","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"gpulet hack/mkimage.sh"}]}' \
		"$platform" "$created" "$config" "$diff" "$created" >"$d/config"
	read -r cfg cfg_size < <(blob "$d/config")
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
		"$cfg" "$cfg_size" "$layer" "$layer_size" >"$d/manifest"
	read -r mf mf_size < <(blob "$d/manifest")
	manifests+="${manifests:+,}$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{%s}}' "$mf" "$mf_size" "$platform")"
	tags=$ref
	((${#specs[@]} == 1)) || tags=$ref-$arch
	docker+="${docker:+,}$(printf '{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}' "$cfg" "$tags" "$layer")"
	sizes+="${sizes:+, }linux/$arch $(numfmt --to=iec "$layer_size")"
done

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$manifests" >"$d/index"
read -r idx idx_size < <(blob "$d/index")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
	"$idx" "$idx_size" "$ref" "$tag" >"$d/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
printf '[%s]' "$docker" >"$d/manifest.json"
# Directories 0755 and blobs 0644 whatever the umask, so that the tarball is the same everywhere.
chmod 0755 "$d/blobs" "$d/blobs/sha256"
chmod 0644 "$d/index.json" "$d/oci-layout" "$d/manifest.json" "$d"/blobs/sha256/*
tar --sort=name --mtime="@$epoch" --numeric-owner --owner=0 --group=0 --format=gnu \
	-C "$d" -cf "$tarball" oci-layout index.json manifest.json blobs
echo "[mkimage] $ref -> $tarball ($(du -h "$tarball" | cut -f1)): index sha256:$idx; compressed layers: $sizes"
