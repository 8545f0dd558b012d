#!/bin/sh
# Holder of the second node's own mount namespace (e2e-node2, CPU-only). cluster.sh starts it inside
# the cluster's PID and network namespaces with `unshare --mount`, so it starts from a copy of the
# first node's mounts (the shadowed kernel tunables included) and shares its network namespace.
# It gives the node its own filesystem where a kubelet and containerd keep their state, then
# becomes the pause binary, which keeps the namespace alive (killing the cluster's PID 1 ends it).
#
#   /run              a tmpfs of its own (containerd's socket and state, /var/run/cdi)
#   /var/lib          bind mount of $D/varlib (kubelet, containerd, CNI IPAM, gpulet's sim root)
#   /var/log          bind mount of $D/varlog (/var/log/pods: a kubelet removes pod logs it does not know)
#   lo + NODE_IP      the node's address, next to the first node's, in the shared network namespace
set -eu
D=$1 PAUSE=$2 NODE_IP=$3

mount -n -t tmpfs -o mode=0755 tmpfs /run
mount -n --bind "$D/varlib" /var/lib
mount -n --bind "$D/varlog" /var/log

ip addr add "$NODE_IP/32" dev lo

echo ready >"$D/ns.ready"
exec "$PAUSE"
