#!/bin/sh
# PID 1 of the e2e cluster's private PID + mount + network namespaces (started by cluster.sh through
# `unshare --pid --fork --mount-proc --mount --net`). It prepares the namespace, then becomes the
# pause binary, which reaps orphans and keeps the namespaces alive. Killing it kills every process
# of the cluster, containers included, and releases all of its mounts and network devices.
#
#   /run              a tmpfs (containerd and CNI state, sockets)
#   /var/lib          bind mount of $W/varlib (kubelet, containerd, etcd, CNI IPAM: the kubelet
#                     hard-codes /var/lib/kubelet/device-plugins and /var/log/pods)
#   /var/log          bind mount of $W/varlog
#   /proc/sys/...     the kernel tunables the kubelet rewrites (kernel.panic, vm.overcommit_memory, ...)
#                     are shadowed by plain files, so the host's values are never changed
#   lo + 10.123.0.1   the node IP (the kubelet refuses a loopback address)
set -eu
W=$1 PAUSE=$2

mount -n -t tmpfs -o mode=0755 tmpfs /run # -n: do not write the host's /run/mount/utab
mount -n --bind "$W/varlib" /var/lib
mount -n --bind "$W/varlog" /var/log

mkdir -p "$W/sysctl"
for t in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
	kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
	f="$W/sysctl/$(echo "$t" | tr / .)"
	cat "/proc/sys/$t" >"$f"
	mount -n --bind "$f" "/proc/sys/$t"
done

ip link set lo up
ip addr add 10.123.0.1/32 dev lo

echo ready >"$W/ns.ready"
exec "$PAUSE"
