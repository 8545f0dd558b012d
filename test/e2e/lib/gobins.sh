#!/usr/bin/env bash
# Builds binaries the e2e cluster runs from Go module source, pinned by a module of their own under
# test/e2e, and caches them under $GPULET_E2E_CACHE/<set>/<version>-<hash of go.mod+go.sum>/bin:
#   k8s         kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#               (test/e2e/k8sbins, k8s.io/kubernetes)
#   containerd  containerd, containerd-shim-runc-v2, ctr: containerd 2 with CDI
#               (test/e2e/containerdbins, github.com/containerd/containerd/v2)
#   nvidia      nvidia-device-plugin, gpu-feature-discovery: NVIDIA's own, for the side-by-side tests
#               and benchmarks on the mock NVML (test/e2e/nvidiabins, github.com/NVIDIA/k8s-device-plugin)
#   ctk         nvidia-ctk: NVIDIA's CDI generator, for the CDI side-by-side test
#               (test/e2e/ctkbins, github.com/NVIDIA/nvidia-container-toolkit)
#
# Usage: gobins.sh SET         prints the bin directory on stdout (builds it first if needed)
# Env:   GPULET_E2E_CACHE      cache root (default /var/cache/gpulet-e2e)
#        K8SBINS_NICE          nice level for the build (default 10)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
set_name=${1:?usage: gobins.sh k8s|containerd|nvidia|ctk}
cache=${GPULET_E2E_CACHE:-/var/cache/gpulet-e2e}

log() { echo "[gobins:$set_name $(date +%T)] $*" >&2; }

tags='' cgo=0
case $set_name in
k8s)
	mod="$here/../k8sbins" main=k8s.io/kubernetes
	bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
	pkgs=(); for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
	minutes=4
	;;
containerd)
	mod="$here/../containerdbins" main=github.com/containerd/containerd/v2
	bins=(containerd containerd-shim-runc-v2 ctr)
	pkgs=(); for b in "${bins[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b"); done
	# Snapshotters that need cgo or kernel features the e2e does not use.
	tags="no_btrfs no_devmapper no_zfs"
	minutes=1
	;;
nvidia)
	mod="$here/../nvidiabins" main=github.com/NVIDIA/k8s-device-plugin
	bins=(nvidia-device-plugin gpu-feature-discovery)
	pkgs=(); for b in "${bins[@]}"; do pkgs+=("$main/cmd/$b"); done
	# go-nvml loads libnvidia-ml with dlopen through cgo, as in NVIDIA's images.
	cgo=1 minutes=2
	;;
ctk)
	mod="$here/../ctkbins" main=github.com/NVIDIA/nvidia-container-toolkit
	bins=(nvidia-ctk)
	pkgs=("$main/cmd/nvidia-ctk")
	cgo=1 minutes=2
	;;
*) log "unknown set $set_name: want k8s, containerd, nvidia or ctk"; exit 2 ;;
esac

version=$(awk -v m="$main" '$1 == "require" && $2 == m { print $3 }' "$mod/go.mod")
[[ $version =~ ^v[0-9]+\.([0-9]+)\.[0-9]+ ]] || { log "cannot read the $main version from $mod/go.mod"; exit 1; }
minor=${BASH_REMATCH[1]}
key=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
dest="$cache/$set_name/$version-$key"

complete() { [[ -f $dest/bin/.complete ]]; }

if complete; then echo "$dest/bin"; exit 0; fi

mkdir -p "$cache/$set_name"
# One build at a time on this machine; a second caller waits and then reuses the result.
exec 9>"$cache/$set_name/.build.lock"
if ! flock -n 9; then
	log "another build of these binaries is running; waiting for it"
	flock 9
fi
if complete; then echo "$dest/bin"; exit 0; fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT

ldflags="-s -w"
if [[ $set_name == k8s ]]; then
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
	done
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
elif [[ $set_name == containerd ]]; then
	ldflags+=" -X github.com/containerd/containerd/v2/version.Version=$version"
elif [[ $set_name == nvidia ]]; then
	ldflags+=" -X github.com/NVIDIA/k8s-device-plugin/internal/info.version=$version"
fi

log "building $main $version (${bins[*]}) into $dest; this takes about $minutes minutes on 2 cores the first time"
start=$SECONDS
(
	cd "$mod"
	# -mod=readonly: go.sum in the module is the pin; never rewrite it during a test run.
	CGO_ENABLED=$cgo CGO_CFLAGS="-Wno-deprecated-declarations" GOFLAGS="-buildvcs=false -modcacherw -mod=readonly" \
		nice -n "${K8SBINS_NICE:-10}" go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/bin/" "${pkgs[@]}"
) >"$tmp/build.log" 2>&1 || { log "build failed:"; tail -n 50 "$tmp/build.log" >&2; exit 1; }

for b in "${bins[@]}"; do [[ -x $tmp/bin/$b ]] || { log "build produced no $b"; exit 1; }; done
"$tmp/bin/${bins[0]}" --version >"$tmp/bin/.version" 2>&1 || true
touch "$tmp/bin/.complete"
rm -rf "$dest"; mv "$tmp" "$dest"
trap - EXIT
# Keep this build and the most recent other one (another branch may pin another version).
# shellcheck disable=SC2010 # by time, newest first; the names are v<version>[.tmp.N]/
ls -1dt "$cache/$set_name"/v*/ 2>/dev/null | grep -v '\.tmp\.' | tail -n +3 | xargs -r rm -rf
log "built in $((SECONDS - start))s"
echo "$dest/bin"
