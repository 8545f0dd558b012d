#!/usr/bin/env bash
# Builds gpulet's release image without a Docker daemon: the cgo binary (NVML and libcuda are
# loaded with dlopen at run time) on the C library of Debian 12's libc6 package, the same content
# as the Dockerfile's distroless base-debian12 stage needs. `make image` runs it; `make e2e`
# deploys the image it makes.
#
# Usage: hack/image.sh GPULET_BINARY OUT.tar [REF]     (REF default ghcr.io/gpulet/gpulet:latest)
set -euo pipefail
[[ $# == 2 || $# == 3 ]] || { echo "usage: $0 GPULET_BINARY OUT.tar [REF]" >&2; exit 2; }
bin=$1 out=$2 ref=${3:-ghcr.io/gpulet/gpulet:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -x $bin ]] || { echo "image: $bin is not an executable (make build)" >&2; exit 1; }
command -v dpkg-query >/dev/null || { echo "image: needs a Debian system (dpkg) to take libc6 from" >&2; exit 1; }
[[ $(dpkg-query -W -f='${Status}' libc6 2>/dev/null) == "install ok installed" ]] ||
	{ echo "image: Debian's libc6 is not installed" >&2; exit 1; }

r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT
mkdir -p "$r"/{usr/bin,etc,tmp,usr/lib64,usr/lib/x86_64-linux-gnu}
ln -s usr/lib "$r/lib" # merged /usr, as Debian 12
ln -s usr/lib64 "$r/lib64"
chmod 1777 "$r/tmp"
# The shared objects of libc6 (the loader, libc, libm, libdl, libpthread, librt, NSS): what the
# binary links and what the driver's libraries the runtime mounts (libnvidia-ml, libcuda) link.
dpkg-query -L libc6 | grep -E '^/lib(64)?/[^/]+$|^/lib/x86_64-linux-gnu/[^/]+$' | while read -r f; do
	[[ -f $f || -L $f ]] || continue
	[[ $f == *.so* ]] || continue
	cp -a "$f" "$r$f"
done
install -m 0755 "$bin" "$r/usr/bin/gpulet"
# The binary must resolve every library it links inside the image.
missing=$(ldd "$bin" | awk '$2 == "=>" && $3 != "" { print $3 }' | while read -r l; do
	[[ -e $r$l || -e $r$(readlink -f "$l") ]] || echo "$l"; done)
[[ -z $missing ]] || { echo "image: the binary links libraries libc6 does not ship: $missing" >&2; exit 1; }
# Loader search path and cache: the NVIDIA runtime mounts the driver's libraries under
# /usr/lib/x86_64-linux-gnu and refreshes this cache.
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n/usr/local/nvidia/lib64\n' >"$r/etc/ld.so.conf"
ldconfig -r "$r" 2>/dev/null || { echo "image: ldconfig -r failed" >&2; exit 1; }
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
"$here/mkimage.sh" "$ref" "$r" "$out" \
	'{"Entrypoint":["/usr/bin/gpulet"],"Cmd":["run"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'
