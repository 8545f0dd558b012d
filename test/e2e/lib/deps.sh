#!/usr/bin/env bash
# Installs Debian packages, if any is missing. Nothing is started: package services are denied by a
# policy-rc.d for the duration of the install.
#
# Usage: deps.sh [SET]   SET: e2e (default) what the e2e cluster needs;
#                             cross the arm64 cross build of the image and its test under qemu-user
set -euo pipefail

case ${1:-e2e} in
e2e) pkgs=(
	runc                                  # OCI runtime under containerd 2 (containerd itself is built: lib/gobins.sh)
	containernetworking-plugins           # bridge/host-local/loopback CNI: the node is not Ready without one
	etcd-server                           # kube-apiserver's store
	iptables conntrack                    # used by the kubelet and the bridge CNI plugin
	busybox-static                        # rootfs of the test images
	openssl                               # cluster PKI
	jq                                    # reading JSON (gpulet list, kubectl -o json)
	iproute2 util-linux                   # ip, unshare, nsenter, flock
) ;;
cross) pkgs=(
	gcc-aarch64-linux-gnu                 # cgo cross compiler for the linux/arm64 binary (and the mock NVML)
	libc6-dev-arm64-cross                 # Debian 12's arm64 libc: linked against, and shipped in the arm64 image
	qemu-user-static                      # runs the arm64 binary in `make test` (qemu-aarch64-static -L)
) ;;
*) echo "[deps] unknown package set $1: want e2e or cross" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	echo "[deps] all packages present (${1:-e2e})"
	exit 0
fi
[[ $(id -u) == 0 ]] || { echo "[deps] missing packages (${missing[*]}) and not root" >&2; exit 1; }

echo "[deps] installing: ${missing[*]}"
created_policy=
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	created_policy=1
fi
cleanup() { [[ -z $created_policy ]] || rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
	echo "[deps] apt-get failed:" >&2
	tail -n 30 "$log" >&2
	rm -f "$log"
	exit 1
fi
rm -f "$log"
echo "[deps] installed ${#missing[@]} package(s)"
