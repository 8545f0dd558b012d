#!/usr/bin/env bash
# Builds the Kubernetes binaries the e2e cluster runs (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl) from Go module source, pinned by test/e2e/k8sbins/go.mod,
# and caches them under $GPULET_E2E_CACHE/k8s/<hash of go.mod+go.sum>/bin.
#
# Usage: k8sbins.sh            prints the bin directory on stdout (builds it first if needed)
# Env:   GPULET_E2E_CACHE      cache root (default /var/cache/gpulet-e2e)
#        K8SBINS_NICE          nice level for the build (default 10)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/../k8sbins"
cache=${GPULET_E2E_CACHE:-/var/cache/gpulet-e2e}
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

log() { echo "[k8sbins $(date +%T)] $*" >&2; }

version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$mod/go.mod")
[[ $version =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { log "cannot read k8s.io/kubernetes version from $mod/go.mod"; exit 1; }
minor=${BASH_REMATCH[1]}
key=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
dest="$cache/k8s/$version-$key"

complete() { [[ -f $dest/bin/.complete ]]; }

if complete; then echo "$dest/bin"; exit 0; fi

mkdir -p "$cache/k8s"
# One build at a time on this machine; a second caller waits and then reuses the result.
exec 9>"$cache/k8s/.build.lock"
if ! flock -n 9; then
	log "another build of the Kubernetes binaries is running; waiting for it"
	flock 9
fi
if complete; then echo "$dest/bin"; exit 0; fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT

ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
done
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"

pkgs=()
for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done

log "building Kubernetes $version (${bins[*]}) into $dest; this takes about 7 minutes on 2 cores the first time"
start=$SECONDS
(
	cd "$mod"
	# -mod=readonly: go.sum in the module is the pin; never rewrite it during a test run.
	CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw -mod=readonly" \
		nice -n "${K8SBINS_NICE:-10}" go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" "${pkgs[@]}"
) >"$tmp/build.log" 2>&1 || { log "build failed:"; tail -n 50 "$tmp/build.log" >&2; exit 1; }

for b in "${bins[@]}"; do [[ -x $tmp/bin/$b ]] || { log "build produced no $b"; exit 1; }; done
"$tmp/bin/kubectl" version --client=true -o yaml >"$tmp/bin/.version" 2>&1 || true
touch "$tmp/bin/.complete"
rm -rf "$dest"; mv "$tmp" "$dest"
trap - EXIT
# Keep this build and the most recent other one (another branch may pin another version).
ls -1dt "$cache"/k8s/v*/ 2>/dev/null | grep -v '\.tmp\.' | tail -n +3 | xargs -r rm -rf
log "built in $((SECONDS - start))s"
echo "$dest/bin"
