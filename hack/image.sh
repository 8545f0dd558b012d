#!/usr/bin/env bash
# Builds gpulet's release image without a Docker daemon: per platform, the cgo binary (NVML and
# libcuda are loaded with dlopen at run time) on the C library of Debian 12, the same content as the
# Dockerfile's distroless base-debian12 stage needs, from one pinned Debian package per platform
# (libc6_pins below). Like the Dockerfile's nonroot base, the image runs as UID 65532 unless the pod
# says otherwise (the DaemonSet does). `make image` runs it for linux/amd64 and
# linux/arm64 (an OCI image index, hack/mkimage.sh); `make e2e` deploys the amd64 image it makes.
#
# The C library, per platform:
#   amd64  Debian's libc6 package installed on this (amd64) machine
#   arm64  Debian's libc6-arm64-cross (a dependency of libc6-dev-arm64-cross): the same glibc 2.36
#          built for arm64, laid out here as libc6:arm64 lays it out (/usr/lib/aarch64-linux-gnu,
#          the loader /lib/ld-linux-aarch64.so.1)
#
# Two builds of gpulet per platform (make build-release makes both): GPULET_BINARY, the full build,
# goes to /usr/lib/gpulet/gpulet-kube; GPULET_BINARY-lean beside it (tag nokube: no Kubernetes API
# linked) is the entry point /usr/bin/gpulet, which runs as a plain device plugin by itself and
# replaces itself with the full build (exec: same PID, arguments, environment) when node labels or
# DRA are on (internal/kubebin, docs/benchmarks.md).
#
# Usage: hack/image.sh GPULET_BINARY[,ARCH=GPULET_BINARY...] OUT.tar [REF]
#   (REF default ghcr.io/gpulet/gpulet:latest; a binary without ARCH= is the amd64 one)
set -euo pipefail
[[ $# == 2 || $# == 3 ]] || { echo "usage: $0 GPULET_BINARY[,ARCH=GPULET_BINARY...] OUT.tar [REF]" >&2; exit 2; }
bins=$1 out=$2 ref=${3:-ghcr.io/gpulet/gpulet:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v dpkg-query >/dev/null || { echo "image: needs a Debian system (dpkg) to take libc6 from" >&2; exit 1; }
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT
roots='' pinned=''
declare -A libc6_pins=([libc6]=2.36-9+deb12u14 [libc6-arm64-cross]=2.36-8cross1)
IFS=, read -ra specs <<<"$bins"
for spec in "${specs[@]}"; do
	arch=amd64 bin=$spec
	[[ $spec == *=* ]] && { arch=${spec%%=*}; bin=${spec#*=}; }
	lean=$bin-lean
	for b in "$bin" "$lean"; do
		[[ -x $b ]] || { echo "image: $b is not an executable (make build-release builds both)" >&2; exit 1; }
	done
	root=$r/$arch
	case $arch in
	amd64)
		[[ $(dpkg --print-architecture) == amd64 ]] || { echo "image: the amd64 image takes libc6 from an amd64 Debian machine" >&2; exit 1; }
		pkg=libc6 triplet=x86_64-linux-gnu loader=/lib64/ld-linux-x86-64.so.2 machine='X86-64'
		# dpkg path in the package -> path in the image (the same)
		from='^/lib(64)?/[^/]+$|^/lib/x86_64-linux-gnu/[^/]+$' strip='' ;;
	arm64)
		pkg=libc6-arm64-cross triplet=aarch64-linux-gnu loader=/lib/ld-linux-aarch64.so.1 machine='AArch64'
		from='^/usr/aarch64-linux-gnu/lib/[^/]+$' strip=/usr/aarch64-linux-gnu/lib/ ;;
	*) echo "image: unknown architecture $arch: want amd64 or arm64" >&2; exit 1 ;;
	esac
	installed "$pkg" || { echo "image: Debian's $pkg is not installed (test/e2e/lib/deps.sh cross installs the arm64 one)" >&2; exit 1; }
	# The one Debian package each image takes files from, pinned: a different version is a different
	# image. Move a pin deliberately (LIBC6_VERSION=... tries another for every architecture).
	version=$(dpkg-query -W -f='${Version}' "$pkg")
	pin=${LIBC6_VERSION:-${libc6_pins[$pkg]}}
	[[ $version == "$pin" ]] ||
		{ echo "image: Debian's $pkg here is $version, the image pins $pin (hack/image.sh libc6_pins)" >&2; exit 1; }
	pinned+="${pinned:+,}$pkg=$version"
	for b in "$bin" "$lean"; do
		readelf -h "$b" | grep -q "Machine: *.*$machine" || { echo "image: $b is not a linux/$arch binary" >&2; exit 1; }
	done
	mkdir -p "$root"/{usr/bin,etc,tmp,usr/lib64,usr/lib/$triplet,usr/lib/gpulet}
	ln -s usr/lib "$root/lib" # merged /usr, as Debian 12
	ln -s usr/lib64 "$root/lib64"
	# The shared objects of libc (the loader, libc, libm, libdl, libpthread, librt, NSS): what the
	# binary links and what the driver's libraries the runtime mounts (libnvidia-ml, libcuda) link.
	dpkg-query -L "$pkg" | grep -E "$from" | while read -r f; do
		[[ -f $f || -L $f ]] || continue
		[[ $f == *.so* ]] || continue
		if [[ -n $strip ]]; then cp -a "$f" "$root/usr/lib/$triplet/${f#"$strip"}"; else cp -a "$f" "$root$f"; fi
	done
	[[ $arch == arm64 ]] && ln -s "$triplet/ld-linux-aarch64.so.1" "$root/usr/lib/ld-linux-aarch64.so.1"
	install -m 0755 "$lean" "$root/usr/bin/gpulet"
	install -m 0755 "$bin" "$root/usr/lib/gpulet/gpulet-kube"
	first=''
	for b in /usr/bin/gpulet /usr/lib/gpulet/gpulet-kube; do
		# Each binary must find its loader and every library it links inside the image (the loader
		# searches /lib/$triplet and /usr/lib/$triplet by default).
		interp=$(readelf -l "$root$b" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
		[[ $interp == "$loader" && -e $root$interp ]] || { echo "image: $b asks for the loader '$interp', the image has $loader" >&2; exit 1; }
		missing=$(readelf -d "$root$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r l; do
			[[ -e $root/usr/lib/$triplet/$l ]] || echo "$l"; done)
		[[ -z $missing ]] || { echo "image: $b links libraries $pkg does not ship: $missing" >&2; exit 1; }
		# It starts on the image's own C library and says it is this platform's (arm64 under
		# qemu-user when it is installed: test/e2e/lib/deps.sh cross), and both are one version.
		case $arch in
		amd64) run=("$root$loader" --library-path "$root/usr/lib/$triplet" "$root$b") ;;
		arm64) run=(qemu-aarch64-static -L "$root" "$root$b") ;;
		esac
		command -v "${run[0]}" >/dev/null || continue
		v=$("${run[@]}" version 2>&1) || true
		grep -qx "platform: linux/$arch" <<<"$v" || { echo "image: $b does not run on the image's C library: $v" >&2; exit 1; }
		want='kubernetes API: not in this build' # the entry point is the lean build
		[[ $b == */gpulet-kube ]] && want='kubernetes API: in this build'
		grep -q "^$want" <<<"$v" || { echo "image: $b is the wrong build (want '$want'): $v" >&2; exit 1; }
		[[ -z $first || ${v%%$'\n'*} == "$first" ]] ||
			{ echo "image: /usr/bin/gpulet is ${first#gpulet }, $b is ${v%%$'\n'*}: build both from one commit" >&2; exit 1; }
		first=${v%%$'\n'*}
	done
	# Loader search path and cache: the NVIDIA runtime mounts the driver's libraries under
	# /usr/lib/$triplet and refreshes this cache.
	printf '/lib/%s\n/usr/lib/%s\n/usr/local/nvidia/lib64\n' "$triplet" "$triplet" >"$root/etc/ld.so.conf"
	if [[ $arch == amd64 ]]; then
		ldconfig -r "$root" 2>/dev/null || { echo "image: ldconfig -r failed" >&2; exit 1; }
	fi # an amd64 ldconfig does not index arm64 libraries; the loader's default paths find them
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
	# Modes fixed whatever the umask: the same binaries give the same layer.
	find "$root" -type d -exec chmod 0755 {} +
	chmod 0644 "$root/etc/ld.so.conf" "$root/etc/passwd" "$root/etc/group"
	[[ ! -e $root/etc/ld.so.cache ]] || chmod 0644 "$root/etc/ld.so.cache"
	chmod 1777 "$root/tmp"
	roots+="${roots:+,}$arch=$root"
done
"$here/mkimage.sh" "$ref" "$roots" "$out" \
	"{\"Entrypoint\":[\"/usr/bin/gpulet\"],\"Cmd\":[\"run\"],\"User\":\"65532:65532\",\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Labels\":{\"io.gpulet.base.libc6\":\"$pinned\"}}"
