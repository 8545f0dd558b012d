# shellcheck shell=bash
# A real two-node Kubernetes cluster (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler; per node a containerd and a kubelet) inside private PID + mount + network
# namespaces, so that nothing of it is visible on, or left behind on, the host. Sourced by run.sh.
#
# The nodes:
#   e2e-node   10.123.0.1  the GPU node (simulated dgx-h100): the control plane's mount namespace,
#              kubelet ports 10250/10248, bridge cni0 10.244.0.0/24, pod cgroups under /kubepods
#   e2e-node2  10.123.0.2  a CPU-only node (no driver): a mount namespace of its own (its own /run,
#              /var/lib, /var/log: lib/nsinit-node.sh), the same network namespace, kubelet ports
#              10260/10258, bridge cni1 10.244.1.0/24 (both bridges are local to the one network
#              namespace, so the two pod subnets reach each other), pod cgroups under
#              /gpulet-e2e-node2/kubepods (the kubelet's cgroupRoot: a kubelet removes the pod
#              cgroups it does not know under its own root, so the two must not share one)
#
# Layout of the work directory $W:
#   nsrun          runs a command inside the namespaces (the cluster's "host")
#   kubectl        kubectl with the cluster's admin kubeconfig (runs inside the namespaces)
#   logs/          one log per component (etcd, containerd, kube-*, kubelet)
#   pids/          host PIDs of the components
#   pki/           CA, serving certificate, service-account keys, token file, kubeconfig
#   varlib/ varlog/  /var/lib and /var/log of the cluster's (first) node
#   nsrun2         runs a command in the second node's mount namespace (same PID and network)
#   node2/         varlib/, varlog/, cni/ of the second node
#
# Needs: the binaries dirs $BIN (kube-*, kubectl) and $CBIN (containerd 2, its shim, ctr), and the
# image dir $IMG (pause, *.tar).

NODE_NAME=e2e-node
NODE_IP=10.123.0.1
NODE2_NAME=e2e-node2
NODE2_IP=10.123.0.2
NODE2_CGROUP_ROOT=gpulet-e2e-node2 # under the root of every cgroup hierarchy of the host

# cluster_check_paths: the namespaces shadow /run, /var/lib and /var/log; nothing the test needs
# from the host may live there.
cluster_check_paths() {
	local p
	for p in "$W" "$BIN" "$CBIN" "$IMG" "$REPO_ROOT"; do
		case $(readlink -f "$p")/ in
		/run/* | /var/run/* | /var/lib/* | /var/log/*)
			fail "$p is under /run, /var/lib or /var/log, which the cluster namespace hides; use another folder" ;;
		esac
	done
}

# start_component NAME CMD...: runs CMD inside the namespaces in the background, log in logs/NAME.log.
# NSRUN=$W/nsrun2 start_component ...: in the second node's mount namespace.
start_component() {
	local name=$1; shift
	echo "=== $(date '+%F %T') start: $*" >>"$W/logs/$name.log"
	# setsid: a Ctrl-C in the terminal goes to run.sh, whose teardown stops the cluster; the
	# components (Go programs re-enable SIGINT) must not get it first.
	# 8>&-: the components must not hold run.sh's lock (fd 8) after it exits.
	nohup setsid "${NSRUN:-$W/nsrun}" "$@" >>"$W/logs/$name.log" 2>&1 </dev/null 8>&- &
	echo $! >"$W/pids/$name.pid"
}

# component_pid NAME: PID of the component's main process (the child of the nsenter wrapper).
component_pid() {
	local wrapper
	wrapper=$(cat "$W/pids/$1.pid" 2>/dev/null) || return 1
	# nsenter forks once to enter the PID namespace; the component is its only child.
	local c
	c=$(cat "/proc/$wrapper/task/$wrapper/children" 2>/dev/null) || return 1
	c=${c%% *}
	[[ -n $c ]] && echo "$c"
}

# stop_component NAME [TIMEOUT_S]: SIGTERM, then SIGKILL after TIMEOUT_S (default 15) seconds.
stop_component() {
	local name=$1 timeout=${2:-15} pid wrapper
	wrapper=$(cat "$W/pids/$name.pid" 2>/dev/null) || return 0
	pid=$(component_pid "$name") || pid=
	[[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null
	local i
	for ((i = 0; i < timeout * 5; i++)); do
		kill -0 "$wrapper" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$wrapper" 2>/dev/null; then
		[[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
		kill -KILL "$wrapper" 2>/dev/null
	fi
	wait "$wrapper" 2>/dev/null || true
	rm -f "$W/pids/$name.pid"
	echo "=== $(date '+%F %T') stopped" >>"$W/logs/$name.log"
}

# component_alive NAME: true while the component's process runs.
component_alive() {
	local wrapper
	wrapper=$(cat "$W/pids/$1.pid" 2>/dev/null) || return 1
	kill -0 "$wrapper" 2>/dev/null
}

# start_namespaces: the holder process; writes $W/nsrun.
start_namespaces() {
	mkdir -p "$W"/{varlib,varlog,pids,logs,pki,cni}
	rm -f "$W/ns.ready"
	nohup setsid unshare --pid --fork --mount-proc --mount --net --propagation private \
		sh "$E2E_DIR/lib/nsinit.sh" "$W" "$IMG/pause" >"$W/logs/namespace.log" 2>&1 </dev/null 8>&- &
	echo $! >"$W/pids/unshare.pid"
	local i ns=
	for ((i = 0; i < 50; i++)); do
		[[ -f $W/ns.ready ]] && ns=$(cat "/proc/$!/task/$!/children" 2>/dev/null) && [[ -n $ns ]] && break
		kill -0 $! 2>/dev/null || break
		sleep 0.1
	done
	ns=${ns%% *}
	[[ -f $W/ns.ready && -n $ns ]] || { tail_file namespace "$W/logs/namespace.log"; fail "could not create the cluster namespaces"; }
	echo "$ns" >"$W/pids/ns.pid"
	cat >"$W/nsrun" <<-EOF
		#!/bin/sh
		# Runs a command inside the e2e cluster's namespaces (PID 1 there is host PID $ns).
		exec nsenter --target $ns --mount --net --pid --wd="\$PWD" -- "\$@"
	EOF
	chmod +x "$W/nsrun"
}

write_pki() {
	local P=$W/pki
	(
		cd "$P"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=gpulet-e2e-ca
		printf '[req]\ndistinguished_name=dn\n[dn]\n[ext]\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >san.cnf
		openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 \
			-extfile san.cnf -extensions ext
		openssl genrsa -out sa.key 2048
		openssl rsa -in sa.key -pubout -out sa.pub
	) >"$W/logs/pki.log" 2>&1 || { tail_file pki "$W/logs/pki.log"; fail "could not create the cluster PKI"; }
	local token
	token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	echo "$token,e2e-admin,e2e-admin,\"system:masters\"" >"$P/tokens.csv"
	chmod 600 "$P/tokens.csv"
	cat >"$P/kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:6443", certificate-authority: $P/ca.crt}}]
		users: [{name: e2e-admin, user: {token: $token}}]
		contexts: [{name: e2e, context: {cluster: e2e, user: e2e-admin}}]
		current-context: e2e
	EOF
	chmod 600 "$P/kubeconfig"
	cat >"$W/kubectl" <<-EOF
		#!/bin/sh
		# kubectl against the e2e cluster (runs inside its namespaces).
		exec $W/nsrun $BIN/kubectl --kubeconfig $P/kubeconfig "\$@"
	EOF
	chmod +x "$W/kubectl"
}

# write_containerd_config [OUT CNI_DIR NETWORK BRIDGE SUBNET]: containerd's config and its CNI
# network (default: the first node's).
write_containerd_config() {
	local out=${1:-$W/containerd.toml} cni=${2:-$W/cni} net=${3:-e2e} bridge=${4:-cni0} subnet=${5:-10.244.0.0/24}
	mkdir -p "$cni"
	cat >"$cni/10-e2e-bridge.conflist" <<-EOF
		{"cniVersion": "0.4.0", "name": "$net", "plugins": [
		  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
		   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
		  {"type": "loopback"}]}
	EOF
	# containerd 2 (config version 4), built from module source (lib/gobins.sh containerd).
	# root (/var/lib/containerd) and state (/run/containerd) are already private to the namespace.
	# restrict_oom_score_adj: this VM does not let runc lower oom_score_adj ("can't get final child's
	# PID from pipe: EOF" otherwise). CDI specs are read from /var/run/cdi only (private /run of the
	# node), where gpulet writes them; no host config is imported.
	"$CBIN/containerd" config default | sed \
		-e "s#^imports = .*#imports = []#" \
		-e "s#sandbox = 'registry.k8s.io/pause:.*'#sandbox = 'registry.k8s.io/pause:3.10'#" \
		-e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' \
		-e "s#bin_dirs = \['/opt/cni/bin'\]#bin_dirs = ['/usr/lib/cni']#" \
		-e "s#conf_dir = '/etc/cni/net.d'#conf_dir = '$cni'#" \
		-e "s#cdi_spec_dirs = .*#cdi_spec_dirs = ['/var/run/cdi']#" \
		-e "s#path = '/opt/containerd'#path = '/var/lib/containerd-opt'#" \
		>"$out"
	local want
	for want in 'restrict_oom_score_adj = true' "bin_dirs = ['/usr/lib/cni']" "cdi_spec_dirs = ['/var/run/cdi']" \
		"sandbox = 'registry.k8s.io/pause:3.10'" "conf_dir = '$cni'"; do
		grep -qF "$want" "$out" || fail "unexpected containerd default config: no \"$want\" after editing"
	done
}

# write_kubelet_config [OUT]: the kubelet's config (default: the first node's, $W/kubelet.yaml);
# the second node's adds its ports and cgroup root to it.
write_kubelet_config() {
	cat >"${1:-$W/kubelet.yaml}" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
		cgroupDriver: cgroupfs
		failCgroupV1: false
		failSwapOn: false
		authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
		authorization: {mode: AlwaysAllow}
		readOnlyPort: 0
		evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
	EOF
}

start_kubelet() {
	start_component kubelet "$BIN/kubelet" --kubeconfig="$W/pki/kubeconfig" --config="$W/kubelet.yaml" \
		--hostname-override="$NODE_NAME" --node-ip="$NODE_IP"
}

# node_ready [NODE]: true when the node (default $NODE_NAME) reports Ready.
node_ready() {
	[[ $("$W/kubectl" get node "${1:-$NODE_NAME}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# import_images NSRUN: the images of $IMG into the containerd of a node.
import_images() {
	local t
	for t in "$IMG"/*.tar; do
		"$1" "$CBIN/ctr" -n k8s.io images import "$t" >>"$W/logs/images.log" 2>&1 ||
			{ tail_file images "$W/logs/images.log"; fail "could not import $t into containerd ($1)"; }
	done
	"$1" "$CBIN/ctr" -n k8s.io images ls -q >>"$W/logs/images.log" 2>&1
}

# node2_cgroup_dirs: the second kubelet's cgroup root in every cgroup hierarchy of the host.
node2_cgroup_dirs() {
	if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
		echo "/sys/fs/cgroup/$NODE2_CGROUP_ROOT"
		return
	fi
	local h
	for h in /sys/fs/cgroup/*/cgroup.procs; do echo "${h%/cgroup.procs}/$NODE2_CGROUP_ROOT"; done
}

# make_node2_cgroups: the kubelet wants its cgroupRoot to exist in every hierarchy; cpuset's needs
# CPUs and memory nodes before anything can join it (cgroup v1).
make_node2_cgroups() {
	local d
	for d in $(node2_cgroup_dirs); do
		mkdir -p "$d"
		if [[ -f $d/cpuset.cpus && -z $(cat "$d/cpuset.cpus") ]]; then
			cat "${d%/*}/cpuset.cpus" >"$d/cpuset.cpus"
			cat "${d%/*}/cpuset.mems" >"$d/cpuset.mems"
		fi
	done
}

start_kubelet_node2() {
	NSRUN=$W/nsrun2 start_component kubelet-node2 "$BIN/kubelet" --kubeconfig="$W/pki/kubeconfig" \
		--config="$W/kubelet-node2.yaml" --hostname-override="$NODE2_NAME" --node-ip="$NODE2_IP"
}

# node2_up: the second, CPU-only node: its mount namespace, containerd (own CNI bridge and subnet)
# with the same images, and a kubelet on other ports under its own cgroup root.
node2_up() {
	local D=$W/node2 i h=
	mkdir -p "$D"/{varlib,varlog,cni}
	rm -f "$D/ns.ready"
	start_component node2-ns unshare --mount --propagation private \
		sh "$E2E_DIR/lib/nsinit-node.sh" "$D" "$IMG/pause" "$NODE2_IP"
	for ((i = 0; i < 50; i++)); do
		[[ -f $D/ns.ready ]] && h=$(component_pid node2-ns) && break
		component_alive node2-ns || break
		sleep 0.1
	done
	[[ -f $D/ns.ready && -n $h ]] || { tail_file node2-ns "$W/logs/node2-ns.log"; fail "could not create the second node's mount namespace"; }
	cat >"$W/nsrun2" <<-EOF
		#!/bin/sh
		# Runs a command on the e2e cluster's second node ($NODE2_NAME): its mount namespace (held by
		# host PID $h), the cluster's PID and network namespaces.
		exec nsenter --target $h --mount --net --pid --wd="\$PWD" -- "\$@"
	EOF
	chmod +x "$W/nsrun2"

	write_containerd_config "$W/containerd-node2.toml" "$D/cni" e2e-node2 cni1 10.244.1.0/24
	NSRUN=$W/nsrun2 start_component containerd-node2 env PATH="$CBIN:$PATH" "$CBIN/containerd" --config "$W/containerd-node2.toml"
	wait_until 30 "containerd socket of $NODE2_NAME" "$W/nsrun2" test -S /run/containerd/containerd.sock ||
		{ tail_file containerd-node2 "$W/logs/containerd-node2.log"; fail "containerd of $NODE2_NAME did not start"; }
	import_images "$W/nsrun2"

	make_node2_cgroups
	write_kubelet_config "$W/kubelet-node2.yaml"
	cat >>"$W/kubelet-node2.yaml" <<-EOF
		port: 10260
		healthzPort: 10258
		cgroupRoot: /$NODE2_CGROUP_ROOT
	EOF
	start_kubelet_node2
}

cluster_up() {
	local t0 K=$W/kubectl
	t0=$(now_ms)
	cluster_check_paths
	start_namespaces
	write_pki

	start_component etcd etcd --name e2e --data-dir /var/lib/etcd \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster e2e=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381

	write_containerd_config
	# The shim (containerd-shim-runc-v2) is found on PATH.
	start_component containerd env PATH="$CBIN:$PATH" "$CBIN/containerd" --config "$W/containerd.toml"
	wait_until 30 "containerd socket" "$W/nsrun" test -S /run/containerd/containerd.sock ||
		{ tail_file containerd "$W/logs/containerd.log"; fail "containerd did not start"; }
	import_images "$W/nsrun"

	start_component kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--bind-address=0.0.0.0 --advertise-address=127.0.0.1 --secure-port=6443 --endpoint-reconciler-type=none \
		--tls-cert-file="$W/pki/apiserver.crt" --tls-private-key-file="$W/pki/apiserver.key" \
		--client-ca-file="$W/pki/ca.crt" --token-auth-file="$W/pki/tokens.csv" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$W/pki/sa.pub" --service-account-signing-key-file="$W/pki/sa.key" \
		--service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --allow-privileged=true \
		--kubelet-preferred-address-types=InternalIP
	# No kube-proxy here: pods reach the API server at the kubernetes Service (10.0.0.1:443, what
	# in-cluster clients such as gpulet's label publisher and DRA driver use) through one DNAT rule
	# to the API server on the node's address, as kube-proxy would route it.
	local chain
	for chain in PREROUTING OUTPUT; do
		"$W/nsrun" iptables -t nat -A "$chain" -d 10.0.0.1/32 -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:6443" ||
			fail "could not route the kubernetes Service to the API server (iptables)"
	done
	wait_until 90 "kube-apiserver /readyz" "$K" get --raw /readyz ||
		{ tail_file etcd "$W/logs/etcd.log" 20; tail_file kube-apiserver "$W/logs/kube-apiserver.log"; fail "kube-apiserver did not become ready"; }

	start_component kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$W/pki/kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=false \
		--service-account-private-key-file="$W/pki/sa.key" --root-ca-file="$W/pki/ca.crt"
	start_component kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$W/pki/kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false

	write_kubelet_config
	start_kubelet
	wait_until 120 "node $NODE_NAME Ready" node_ready ||
		{ tail_file containerd "$W/logs/containerd.log" 20; tail_file kubelet "$W/logs/kubelet.log"; fail "the node did not become Ready"; }
	wait_until 60 "default ServiceAccount" "$K" get serviceaccount default ||
		{ tail_file kube-controller-manager "$W/logs/kube-controller-manager.log"; fail "no default ServiceAccount"; }
	log "node $NODE_NAME up in $(secs_since "$t0")s"

	node2_up
	wait_until 120 "node $NODE2_NAME Ready" node_ready "$NODE2_NAME" ||
		{ tail_file containerd-node2 "$W/logs/containerd-node2.log" 20; tail_file kubelet-node2 "$W/logs/kubelet-node2.log"; fail "the second node did not become Ready"; }
	log "cluster up in $(secs_since "$t0")s:"$'\n'"$("$K" get nodes -o wide 2>&1)"
}

# cluster_down: kills PID 1 of the cluster's PID namespace, which kills every process of the
# cluster (containers included) and releases its mounts and network; then removes the cgroups
# the kubelet and containerd created on the host. Safe to call more than once.
cluster_down() {
	local ns ino i
	ns=$(cat "$W/pids/ns.pid" 2>/dev/null) || ns=
	if [[ -n $ns ]] && ino=$(readlink "/proc/$ns/ns/pid" 2>/dev/null); then
		# Give the kubelet and containerd a moment to stop on their own; they are killed anyway.
		stop_component kubelet-node2 5 || true
		stop_component kubelet 5 || true
		kill -KILL "$ns" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			local left=0 p
			for p in /proc/[0-9]*; do
				[[ $(readlink "$p/ns/pid" 2>/dev/null) == "$ino" ]] && { left=1; break; }
			done
			((left == 0)) && break
			sleep 0.1
		done
	fi
	local u
	u=$(cat "$W/pids/unshare.pid" 2>/dev/null) && { kill -KILL "$u" 2>/dev/null || true; }
	rm -f "$W"/pids/*.pid "$W/ns.ready"
	cleanup_cgroups
}

# cleanup_cgroups: the kubelet (cgroupDriver cgroupfs) puts pods under /kubepods of every cgroup
# v1 hierarchy (or of the unified one), the second node's kubelet under /gpulet-e2e-node2/kubepods;
# remove those trees, deepest first, once they are empty.
cleanup_cgroups() {
	local d i
	for ((i = 0; i < 50; i++)); do
		local left=0
		for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods \
			/sys/fs/cgroup/*/"$NODE2_CGROUP_ROOT" /sys/fs/cgroup/"$NODE2_CGROUP_ROOT"; do
			[[ -d $d ]] || continue
			find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
			[[ -d $d ]] && left=1
		done
		((left == 0)) && return 0
		sleep 0.1
	done
	warn "could not remove all kubepods cgroups: $(ls -d /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods \
		/sys/fs/cgroup/*/"$NODE2_CGROUP_ROOT" /sys/fs/cgroup/"$NODE2_CGROUP_ROOT" 2>/dev/null | tr '\n' ' ')"
}
