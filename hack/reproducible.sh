#!/usr/bin/env bash
# Checks that the release image is reproducible: builds `make image` twice from HEAD, each in a
# clone of its own, and compares the binaries, the image index digest and the tarball byte for byte.
# The second build differs in everything that must not matter: another checkout path (deeper), an
# empty Go build cache, umask 0002 instead of 0022, another TZ and another time of day. The inputs
# that do matter and are the same in both: the commit, the Go toolchain, gcc and the cross gcc, and
# Debian's libc6 / libc6-arm64-cross packages installed on this machine (the image carries them).
#
# Usage: hack/reproducible.sh        (make image-reproducible; several minutes: the second build
#                                     compiles everything, for both architectures)
# Env:   REPRO_KEEP=1 keeps the two build folders.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
commit=$(git -C "$repo" rev-parse HEAD)
git -C "$repo" diff-index --quiet HEAD -- 2>/dev/null ||
	echo "[reproducible] note: uncommitted changes are not built; both builds are of HEAD $commit" >&2
t=$(mktemp -d /tmp/gpulet-repro.XXXXXX)
[[ ${REPRO_KEEP:-} == 1 ]] || trap 'chmod -R u+w "$t" 2>/dev/null; rm -rf "$t"' EXIT
log() { echo "[reproducible $(date +%T)] $*" >&2; }

# build DIR [ENV...]: clones HEAD into DIR and runs make image there; prints the tarball path.
build() {
	local dir=$1; shift
	git clone -q --no-hardlinks "$repo" "$dir"
	git -C "$dir" checkout -q --detach "$commit"
	log "make image in $dir ($*)"
	local start=$SECONDS
	(cd "$dir" && env "$@" make --no-print-directory image >"$dir.log" 2>&1) ||
		{ tail -n 30 "$dir.log" >&2; log "make image failed in $dir"; exit 1; }
	log "built in $((SECONDS - start))s: $(grep '\[mkimage\]' "$dir.log")"
}
build "$t/a" PATH="$PATH"
build "$t/b/a/much/longer/path/to/gpulet" PATH="$PATH" GOCACHE="$t/gocache" TZ=Asia/Kathmandu \
	bash -c 'umask 0002; exec "$@"' _
a=$t/a b=$t/b/a/much/longer/path/to/gpulet
rc=0
for f in _output/gpulet-release{,-lean,-arm64,-arm64-lean} _output/gpulet-image.tar; do
	ha=$(sha256sum "$a/$f" | cut -d' ' -f1) hb=$(sha256sum "$b/$f" | cut -d' ' -f1)
	if [[ $ha == "$hb" ]]; then
		log "same: $f sha256:$ha ($(du -h "$a/$f" | cut -f1))"
	else
		log "DIFFERENT: $f sha256:$ha vs sha256:$hb"
		rc=1
	fi
done
idx() { tar -xOf "$1" index.json | sed 's/.*"digest":"\([^"]*\)".*/\1/'; }
log "image index: $(idx "$a/_output/gpulet-image.tar") and $(idx "$b/_output/gpulet-image.tar")"
[[ $rc == 0 ]] && log "reproducible: commit $commit" || log "NOT reproducible (REPRO_KEEP=1 keeps $t to compare)"
exit $rc
