#!/usr/bin/env bash
# Builds NVIDIA's mock NVML (../shared/third_party/nvml-mock, read-only) out of tree, into a cache
# keyed by the hash of its source, and prints the cache folder on stdout. In it:
#   lib/libnvidia-ml.so.1 (and .so, .so.550.163.01)   the mock library, loaded by dlopen
#   configs/mock-nvml-config-*.yaml                    the 7 profiles
#   nvml-mock-ctl                                      the run-time fault injector
#
# Usage: hack/nvml-mock.sh [ARCH]   ARCH: amd64 (default) or arm64 (cross-built with
#                                   aarch64-linux-gnu-gcc)
# Env:   NVML_MOCK_SRC   the source (default: ../shared/third_party/nvml-mock beside the repo)
#        NVML_MOCK_CACHE cache root (default /var/cache/nvml-mock)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
arch=${1:-amd64}
src=${NVML_MOCK_SRC:-$("$here/shared-dir.sh")/third_party/nvml-mock}
cache=${NVML_MOCK_CACHE:-/var/cache/nvml-mock}
log() { echo "[nvml-mock $(date +%T)] $*" >&2; }

[[ -d $src/pkg/gpu/mocknvml ]] || { log "no mock NVML source at $src: set NVML_MOCK_SRC"; exit 1; }
src=$(cd "$src" && pwd)
key=$(cd "$src" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
dest="$cache/$key-$arch"
complete() { [[ -f $dest/.complete ]]; }
if complete; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9
if complete; then echo "$dest"; exit 0; fi

goarch=$arch cc=gcc
case $arch in
amd64) ;;
arm64) cc=aarch64-linux-gnu-gcc ;;
*) log "unknown arch $arch: want amd64 or arm64"; exit 2 ;;
esac
command -v "$cc" >/dev/null || { log "$cc is not installed (Debian: gcc${arch/amd64/}${arch/arm64/-aarch64-linux-gnu})"; exit 1; }

tmp="$dest.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
cp -r "$src" "$tmp/src"; chmod -R u+w "$tmp/src"
log "building the mock NVML ($arch) from $src into $dest (about a minute the first time)"
start=$SECONDS
(
	cd "$tmp/src/pkg/gpu/mocknvml"
	export GOFLAGS="-buildvcs=false -modcacherw" CGO_ENABLED=1 GOARCH=$goarch CC=$cc
	nice -n 10 make NO_PADDING=1
	cd "$tmp/src"
	# The control tool runs on the build machine.
	env -u GOARCH CC=gcc CGO_ENABLED=1 nice -n 10 go build -o "$tmp/nvml-mock-ctl" ./cmd/nvml-mock-ctl
) >"$tmp/build.log" 2>&1 || { log "build failed:"; tail -n 40 "$tmp/build.log" >&2; exit 1; }

mkdir -p "$tmp/lib"
for f in "$tmp"/src/pkg/gpu/mocknvml/libnvidia-ml.so*; do [[ $f == *.h ]] || cp -P "$f" "$tmp/lib/"; done
[[ -e $tmp/lib/libnvidia-ml.so.1 ]] || { log "the build produced no libnvidia-ml.so.1"; exit 1; }
cp -r "$tmp/src/pkg/gpu/mocknvml/configs" "$tmp/configs"
rm -rf "$tmp/src"
touch "$tmp/.complete"
rm -rf "$dest"; mv "$tmp" "$dest"
trap - EXIT
log "built in $((SECONDS - start))s"
echo "$dest"
