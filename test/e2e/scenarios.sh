# shellcheck shell=bash
# The e2e scenarios. Sourced by run.sh, which provides W, LOGS, BIN, IMG, GPULET and the helpers of
# lib/common.sh and lib/cluster.sh. Each scenario runs in a subshell with `set -e`; `fail` ends it.

GPU_NS="gpu-resources"
DS_NAME=gpulet
SIM_ROOT=/var/lib/gpulet/sim # inside the cluster's namespace (the node's filesystem)
SIM_PROFILE=dgx-h100
SIM_GPUS=8
MANIFESTS=$E2E_DIR/manifests
DEPLOY_DIR=${GPULET_E2E_DEPLOY:-$REPO_ROOT/deploy}
# What users apply: kubectl apply -f deploy/namespace.yaml -f deploy/gpulet-rbac.yaml -f deploy/gpulet-daemonset.yaml
DEPLOY_FILES=(namespace.yaml gpulet-rbac.yaml gpulet-daemonset.yaml)

# id|description|prerequisite scenario ids
SCENARIOS=(
	"ds|DaemonSet Ready; describe node: nvidia.com/gpu 8 in Capacity and Allocatable|"
	"two-node|a CPU-only second node: gpulet Running there, advertises and labels nothing; GPU pods and the product selector go to the GPU node only; admission keeps each gpulet to its node|ds"
	"seed-job|the guide's Job (1 GPU) completes 1/1; its log shows exactly one GPU|ds"
	"sharing|two 4-GPU Jobs run without sharing; a 1-GPU Job Pends (Insufficient) then runs|ds"
	"fault|fault on one GPU: Allocatable 7, Capacity 8; cleared: back to 8|ds"
	"restarts|kubelet restart, gpulet pod deletion: capacity returns, running pods keep GPUs|ds"
	"no-gpu|a pod that requests no GPU sees no GPU|ds"
	"cdi|cdi-cri and cdi-annotations: containerd injects exactly the pod's GPUs from gpulet's CDI spec; a gpulet restart changes nothing|ds"
	"cdi-video|a pod with NVIDIA_DRIVER_CAPABILITIES=compute,utility,video (cdi-cri) and a DRA claim's pod see the video libraries mounted from the simulated driver root|ds"
	"labels|GFD's labels and accelerator=nvidia on the node; survive a gpulet restart unwritten; follow a sharing change; admission refuses other keys and nodes|ds"
	"metrics|/metrics: dcgm-exporter series per GPU, a pod's GPUs attributed then released, an XID counted; /readyz and Ready follow the driver down and up|ds"
	"dra|DRA (gpu.nvidia.com): slices from gpulet, claims get exactly their GPUs, CEL selectors, no sharing, an NVLink pair, a gpulet restart, a fault taints a GPU (a tolerating claim may have it)|ds"
	"dra-ext|DRA extendedResourceName: nvidia.com/gpu: 2 on a DRA-owned node runs with exactly 2 GPUs of a claim; with --dra-devices=0,1 the device plugin serves nvidia.com/gpu and DRA's GPUs are claims-only|ds"
	"dra-mig|DRA dynamic MIG on GPU 0: every placement published with counters; a 3g.40gb and a 2g.20gb claim run on GPU 0 with their caps nodes; a whole-GPU claim waits until they end; a gpulet restart changes nothing for them|ds"
	"dra-quickstart|NVIDIA's DRA quickstart claims (testdata/quickstart, busybox instead of CUDA samples): whole GPUs, shared claims, TimeSlicing Long and MPS applied and undone, an unmatched selector unschedulable, MIG devices on an A100 profile|ds"
	"dra-capacity|DRA consumable capacity: one pod of 100 claims asking 6Gi each is scheduled by the real scheduler on the GPU node (shares of its 8 GPUs, none over its memory) and runs; times recorded|ds"
	"dra-migrate|migration recipe (docs/dra.md): the CPU-only node gets simulated GPUs and the device plugin, then moves to DRA (a second DaemonSet on a label) while the GPU node keeps the device plugin; one Deployment asking nvidia.com/gpu: 1 runs on both|ds"
	"policy|two gpulet tokens, one per node: each may write its own node's labels, ResourceSlices and NodeFeature; everything aimed at the other node, another driver or all nodes is Forbidden by the admission policies|ds"
	"mig|MIG sim profile, mig-strategy=mixed: capacity per MIG resource; a mig-1g.10gb.me pod gets one MIG device and its caps nodes; back to 8 GPUs|ds"
	"nvml|--backend nvml on NVIDIA's mock NVML (H100 profile) mounted as the driver root: 8 GPUs, the seed Job gets one; an XID from nvml-mock-ctl: Allocatable 7, /metrics shows it; back to the simulator|ds"
	"upgrade|rolling upgrade A -> B -> A (RollingUpdate) with pods holding GPUs and a prepared DRA claim: pods keep GPUs and /dev nodes, the claim stays prepared and is unprepared by the next version, capacity returns (measured), labels not rewritten, nothing held handed out again|ds"
	"node-config|per-node config (NVIDIA's nvidia.com/device-plugin.config label, a ConfigMap of named configs): ts4 -> Allocatable 32 (gpulet applies in < 2 s; the kubelet reports within its 10 s status period) without a restart while a pod keeps its GPU, CPU node untouched; missing/broken config keeps capacity, Event + annotation + metric + /readyz say why; ConfigMap edit picked up; no API writes while idle; mig-mixed on the MIG profile|ds"
)
SCENARIO_IDS=()
for s in "${SCENARIOS[@]}"; do SCENARIO_IDS+=("${s%%|*}"); done
# Scenarios that run only when GPULET_E2E_ONLY names them (not yet part of the default run).
OPT_IN_SCENARIOS=""

K() { "$W/kubectl" "$@"; }
gpulet_node() { "$W/nsrun" "$GPULET" "$@"; } # gpulet CLI on the node (inside the cluster namespace)
gpulet_node2() { "$W/nsrun2" "$GPULET" "$@"; } # on the CPU-only second node (its own /var/lib)

# timing NAME SECONDS: a measurement for docs/benchmarks.md.
timing() {
	printf '%s\t%s\n' "$1" "$2" >>"$LOGS/timings.tsv"
	log "timing: $1 = $2 s"
}

# ---------------------------------------------------------------------------------------------
# Node and workload helpers

# node_gpus: "CAPACITY/ALLOCATABLE" of nvidia.com/gpu as the API server reports it.
node_gpus() {
	K get node "$NODE_NAME" -o 'jsonpath={.status.capacity.nvidia\.com/gpu}/{.status.allocatable.nvidia\.com/gpu}'
}
node_gpus_are() { local got; got=$(node_gpus) && [[ $got == "$1" ]] || { echo "nvidia.com/gpu capacity/allocatable is '$got', want '$1'"; return 1; }; }

# inventory: "INDEX UUID MINOR" per simulated GPU, from `gpulet list -o json` (what the node has;
# MINOR is the N of /dev/nvidiaN).
inventory() {
	gpulet_node list --backend=sim --sim-profile="$SIM_PROFILE" --sim-root="$SIM_ROOT" -o json |
		jq -r '.node.gpus[] | "\(.index) \(.uuid) \(.minor)"'
}
uuid_minor() { awk -v u="$1" '$2 == u { print $3; found = 1 } END { exit !found }' "${INVENTORY:-$W/inventory.txt}"; }

# render_hold_job NAME GPUS: the hold Job manifest.
render_hold_job() { sed -e "s/__NAME__/$1/g" -e "s/__GPUS__/$2/g" "$MANIFESTS/gpu-hold-job.yaml"; }

job_pod() { K get pods -l "job-name=$1" -o 'jsonpath={.items[0].metadata.name}'; }
pod_phase() { K get pod "$1" -o 'jsonpath={.status.phase}'; }
pod_phase_is() { local p; p=$(pod_phase "$1") && [[ $p == "$2" ]] || { echo "pod $1 is '$p', want $2"; return 1; }; }
job_pod_running() { local p; p=$(job_pod "$1") && [[ -n $p ]] && pod_phase_is "$p" Running && grep -q '^holding' <<<"$(K logs "$p")"; }
# completions JOB: the COMPLETIONS column of `kubectl get job`.
completions() {
	K get job "$1" | awk 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "COMPLETIONS") c = i; next } c { print $c }'
}
job_complete() { local c; c=$(completions "$1") && [[ $c == 1/1 ]] || { echo "job $1 COMPLETIONS=$c"; return 1; }; }
release() { K exec "$1" -- touch /tmp/release; }

# pod_gpus POD: the UUIDs in NVIDIA_VISIBLE_DEVICES of the pod's log, one per line, sorted.
pod_gpus() { K logs "$1" | sed -n 's/^NVIDIA_VISIBLE_DEVICES=//p' | sed -n 1p | tr ',' '\n' | sed '/^$/d' | sort; }

# check_pod_devices POD N: the pod's log names exactly N distinct GPUs of the node, and for each
# the matching /dev/nvidiaINDEX node (and no other /dev/nvidiaN).
check_pod_devices() {
	local pod=$1 want=$2 logs uuids n u idx devs expect
	logs=$(K logs "$pod")
	uuids=$(pod_gpus "$pod")
	n=$(echo "$uuids" | sed '/^$/d' | sort -u | wc -l)
	[[ $n == "$want" ]] || fail "pod $pod: NVIDIA_VISIBLE_DEVICES names $n distinct GPU(s), want $want; log:"$'\n'"$logs"
	expect=
	for u in $uuids; do
		idx=$(uuid_minor "$u") || fail "pod $pod: $u is not a GPU of the node (inventory: $(tr '\n' ' ' <"$W/inventory.txt"))"
		expect+="/dev/nvidia$idx"$'\n'
	done
	devs=$(echo "$logs" | sed -n 's/^device: .* \(\/dev\/nvidia[0-9][0-9]*\)$/\1/p' | sort)
	expect=$(echo -n "$expect" | sort)
	[[ $devs == "$expect" ]] || fail "pod $pod: GPU device nodes are [$(echo $devs)], want [$(echo $expect)] for $(echo $uuids); log:"$'\n'"$logs"
	grep -q '^device: c.* /dev/nvidia[0-9]' <<<"$logs" ||
		fail "pod $pod: /dev/nvidiaN is not a character device; log:"$'\n'"$logs"
}

GPULET_SELECTOR=
gpulet_selector() { [[ -n $GPULET_SELECTOR ]] || GPULET_SELECTOR=$(cat "$W/gpulet.selector" 2>/dev/null); echo "${GPULET_SELECTOR:-name=gpulet}"; }
# gpulet_pod_on NODE: the DaemonSet's pod on NODE; gpulet_pod: the one on the GPU node.
gpulet_pod_on() {
	K -n "$GPU_NS" get pods -l "$(gpulet_selector)" --field-selector "spec.nodeName=$1" -o 'jsonpath={.items[0].metadata.name}'
}
gpulet_pod() { gpulet_pod_on "$NODE_NAME"; }
# gpulet_stable [NODE]: the gpulet pod's container on NODE (default the GPU node) has not restarted
# (exits ABORT when it has: waiting on is pointless, the diagnostics show its log).
gpulet_stable() {
	local p st
	p=$(gpulet_pod_on "${1:-$NODE_NAME}") && [[ -n $p ]] || return 0
	st=$(K -n "$GPU_NS" get pod "$p" -o 'jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason}{.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].lastState.terminated.exitCode}') || return 0
	[[ ${st%% *} == 0 || -z ${st%% *} ]] && return 0
	echo "gpulet pod $p restarted: restartCount/reason/exit code = $st"
	return $ABORT
}
# The DaemonSet has a pod on each of the DS_NODES nodes. The one on the CPU-only node ($NODE2_NAME)
# waits for a driver that never comes, serving nothing, and is Ready (gpulet's /readyz: an idle node
# must not hold up a rolling update). Both must be Ready and neither may restart.
DS_NODES=2
gpulet_pod_ready() {
	local p r
	p=$(gpulet_pod) && [[ -n $p ]] || { echo "no gpulet pod on $NODE_NAME"; return 1; }
	r=$(K -n "$GPU_NS" get pod "$p" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')
	[[ $r == True ]] || { echo "gpulet pod $p on $NODE_NAME: Ready=$r"; return 1; }
}
gpus_8_and_stable() { gpulet_stable || return; node_gpus_are 8/8; }

# gpulet_logged_ms SINCE_MS MSG [DEVICE]: when (epoch ms) the gpulet pod's JSON log first says MSG (for
# DEVICE) at or after SINCE_MS. Best effort: prints nothing when the log has no such line. The log is
# read through the kubelet, which may refuse for a moment after its own restart: retried (bounded).
# The jq filter sticks to jq 1.6 (Debian 12): non-JSON lines (klog, partial writes) are skipped.
gpulet_logged_ms() {
	local since=$1 msg=$2 dev=${3:-} p t ms lines
	p=$(gpulet_pod) || return 0
	lines=$(retry_output 30 K -n "$GPU_NS" logs "$p") || return 0
	while read -r t; do
		[[ -n $t ]] || continue
		ms=$(date -d "$t" +%s%3N 2>/dev/null) || continue
		((ms >= since)) && { echo "$ms"; return 0; }
	done < <(jq -Rr --arg m "$msg" --arg d "$dev" \
		'try fromjson catch empty | select(type == "object" and .msg == $m and ($d == "" or .device == $d)) | .time // empty' \
		<<<"$lines" || true)
	return 0
}

# gpulet_timing NAME SINCE_MS MSG [DEVICE]: records how long after SINCE_MS gpulet logged MSG.
gpulet_timing() {
	local name=$1 since=$2 at
	at=$(gpulet_logged_ms "$since" "$3" "${4:-}")
	if [[ -n $at ]]; then
		timing "$name" "$(awk -v d=$((at - since)) 'BEGIN { printf "%.3f", d / 1000 }')"
	else
		warn "gpulet's log has no '$3' line after the event; no timing for: $name"
	fi
}

cleanup_workloads() {
	K delete jobs -l app=gpulet-e2e --ignore-not-found --wait=false >/dev/null 2>&1 || true
	K delete job samples-gpu-demo --ignore-not-found --wait=false >/dev/null 2>&1 || true
	K delete pods -l app=gpulet-e2e --ignore-not-found --grace-period=1 --timeout=90s >/dev/null 2>&1 || true
	K delete pods -l app=samples-gpu-demo --ignore-not-found --grace-period=1 --timeout=90s >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# Diagnostics

# diag_tail: the component log tails that explain most failures.
diag_tail() {
	echo "===== diagnostics ====="
	K get pods -A -o wide 2>&1 | tail -n 30
	echo "----- node nvidia.com/gpu capacity/allocatable: $(node_gpus 2>&1)"
	echo "----- events (last 25)"
	K get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 25
	local p
	p=$(gpulet_pod 2>/dev/null) || p=
	if [[ -n $p ]]; then
		echo "----- gpulet: kubectl -n $GPU_NS logs $p --tail=40"
		K -n "$GPU_NS" logs "$p" --tail=40 2>&1
		local prev
		prev=$(K -n "$GPU_NS" logs "$p" --previous --tail=20 2>&1) || true
		[[ -z $prev ]] || printf '%s\n' "$prev" | sed 's/^/[previous] /'
	else
		echo "----- gpulet: no pod"
	fi
	tail_file kubelet "$W/logs/kubelet.log" 40
	tail_file containerd "$W/logs/containerd.log" 20
	tail_file kubelet-node2 "$W/logs/kubelet-node2.log" 15
	echo "===== end of diagnostics (all logs: $LOGS) ====="
}

# collect_diag: the cluster state into logs/diag/ (called before teardown).
collect_diag() {
	local d=$LOGS/diag
	mkdir -p "$d"
	K get all,events -A -o wide >"$d/get-all.txt" 2>&1
	K describe node "$NODE_NAME" >"$d/describe-node.txt" 2>&1
	K describe node "$NODE2_NAME" >"$d/describe-node2.txt" 2>&1
	K describe pods -A >"$d/describe-pods.txt" 2>&1
	K -n "$GPU_NS" logs -l "$(gpulet_selector)" --tail=-1 --prefix >"$d/gpulet.log" 2>&1
	"$W/nsrun" sh -c "find $SIM_ROOT -maxdepth 3 -exec ls -ld {} +" >"$d/sim-root.txt" 2>&1
	"$W/nsrun2" sh -c "find $SIM_ROOT -maxdepth 3 -exec ls -ld {} +; cat $SIM_ROOT/*.json" >"$d/sim-root-node2.txt" 2>&1
}

# ---------------------------------------------------------------------------------------------
# Deployment: deploy/ as users apply it, plus the test overlay (test/e2e/overlay).

# render_manifests OUT: kustomize (built into kubectl): a base with deploy/'s files as they are, and
# the test overlay's patches on top. The base alone and the diff are kept in the logs.
render_manifests() {
	local out=$1 m=$W/manifests f
	rm -rf "$m"; mkdir -p "$m/deploy" "$m/overlay"
	for f in "${DEPLOY_FILES[@]}"; do
		[[ -f $DEPLOY_DIR/$f ]] || fail "$DEPLOY_DIR/$f is missing"
		cp "$DEPLOY_DIR/$f" "$m/deploy/"
	done
	printf 'resources:\n' >"$m/deploy/kustomization.yaml"
	printf -- '- %s\n' "${DEPLOY_FILES[@]}" >>"$m/deploy/kustomization.yaml"
	cp "$E2E_DIR"/overlay/*.yaml "$m/overlay/"
	{
		echo "resources:"
		echo "- deploy"
		echo "patches:"
		for f in "$m"/overlay/*.yaml; do echo "- path: overlay/$(basename "$f")"; done
	} >"$m/kustomization.yaml"
	"$BIN/kubectl" kustomize "$m" >"$out"
	"$BIN/kubectl" kustomize "$m/deploy" >"$LOGS/deploy-as-is.yaml"
	diff -u "$LOGS/deploy-as-is.yaml" "$out" >"$LOGS/overlay.diff" || true
}

# ---------------------------------------------------------------------------------------------
# Scenarios written in Go (test/e2e/scenarios): run.sh builds their test binary ($W/e2e.test) once.
# A scenario of SCENARIOS without a scenario_<id> function here runs there.

# go_scenario ID: runs the Go scenario ID in the cluster's network namespace (the API server listens
# on 127.0.0.1:6443 there) and the host's mount namespace (so it runs node commands through
# $W/nsrun and $W/nsrun2, as the bash helpers do). Its timings go to $LOGS/timings.tsv.
go_scenario() {
	[[ -x $W/e2e.test ]] || fail "no $W/e2e.test (run.sh's setup step 'e2e-test' builds it)"
	(
		cd "$E2E_DIR/scenarios"
		nsenter --target "$(cat "$W/pids/ns.pid")" --net -- env \
			GPULET_E2E_SCENARIO="$1" GPULET_E2E_W="$W" GPULET_E2E_LOGS="$LOGS" GPULET_E2E_GPULET="$GPULET" \
			KUBECONFIG="$W/pki/kubeconfig" GPULET_E2E_NODE="$NODE_NAME" GPULET_E2E_NODE2="$NODE2_NAME" \
			GPULET_E2E_NAMESPACE="$GPU_NS" GPULET_E2E_DAEMONSET="$DS_NAME" GPULET_E2E_SIM_ROOT="$SIM_ROOT" \
			GPULET_E2E_SIM_PROFILE="$SIM_PROFILE" GPULET_E2E_MANIFESTS="$MANIFESTS" GPULET_E2E_DEPLOY="$DEPLOY_DIR" \
			"$W/e2e.test" -test.run '^TestScenarios$' -test.v -test.timeout 30m
	)
}

# ---------------------------------------------------------------------------------------------
# Scenarios

scenario_ds() {
	[[ -d $DEPLOY_DIR ]] || fail "no $DEPLOY_DIR directory"
	render_manifests "$LOGS/gpulet-e2e.yaml"
	log "rendered deploy/ + test overlay: $LOGS/gpulet-e2e.yaml"

	# The simulated driver: device nodes under the sim root on the node, as the NVIDIA driver
	# creates /dev/nvidia* on a real GPU node (gpulet itself keeps its dropped capabilities).
	gpulet_node sim devices --sim-root="$SIM_ROOT" --sim-profile="$SIM_PROFILE" ||
		fail "gpulet sim devices failed"
	inventory >"$W/inventory.txt" || fail "gpulet list failed"
	[[ $(wc -l <"$W/inventory.txt") == "$SIM_GPUS" ]] || fail "inventory has $(wc -l <"$W/inventory.txt") GPUs, want $SIM_GPUS"
	log "inventory: $(tr '\n' ' ' <"$W/inventory.txt")"
	# The CPU-only node has no driver: its own sim root (the same hostPath, its own /var/lib) says so.
	gpulet_node2 sim driver down --sim-root="$SIM_ROOT" || fail "gpulet sim driver down on $NODE2_NAME failed"

	local t0
	t0=$(now_ms)
	K apply -f "$LOGS/gpulet-e2e.yaml"
	K -n "$GPU_NS" get ds "$DS_NAME" -o json |
		jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")' >"$W/gpulet.selector"
	# The checks (DaemonSet Ready on both nodes, 8 GPUs under Capacity and Allocatable): Go (ds_test.go).
	GPULET_E2E_DEPLOYED_MS=$t0 go_scenario ds
	K -n "$GPU_NS" get ds "$DS_NAME"
	K describe node "$NODE_NAME" | sed -n '/^Capacity:/,/^System Info:/p' | sed '$d; s/^/    /'

}

# pod_minors POD: the N of every /dev/nvidiaN the pod's log lists (its view of /dev), sorted.
pod_minors() { K logs "$1" | sed -n 's/^device: .* \/dev\/nvidia\([0-9][0-9]*\)$/\1/p' | sort -n; }

# ---------------------------------------------------------------------------------------------
# Node labels (GPU Feature Discovery's, published by gpulet) and metrics

# node_labels: the node's labels as key=value lines, sorted.
node_labels() { K get node "$NODE_NAME" -o json | jq -r '.metadata.labels | to_entries[] | "\(.key)=\(.value)"' | sort; }

# metrics_scrape: gpulet's /metrics through the API server's pod proxy.
metrics_scrape() { K get --raw "/api/v1/namespaces/$GPU_NS/pods/$(gpulet_pod):9401/proxy/metrics"; }
slice_count_is() { local n; n=$(slice_devices | wc -l) && [[ $n == "$1" ]] || { echo "$n devices published, want $1"; return 1; }; }

# claim_devices POD: the devices (names in the slice) the pod's claim was allocated, sorted.
claim_devices() {
	local c
	c=$(K get pod "$1" -o 'jsonpath={.status.resourceClaimStatuses[0].resourceClaimName}') && [[ -n $c ]] || return 1
	K get resourceclaim "$c" -o json | jq -r --arg d "$DRA_DRIVER" '.status.allocation.devices.results[] | select(.driver == $d) | .device' | sort
}

# example_template FILE: the ResourceClaimTemplate document of an example in deploy/examples/dra.
example_template() { awk 'BEGIN { RS = "\n---\n" } /kind: ResourceClaimTemplate/ { print; exit }' "$DEPLOY_DIR/examples/dra/$1"; }

# check_dra_pod POD N: the pod's claim holds N devices gpu-<minor>, and the pod sees exactly their
# /dev/nvidia<minor> (from the claim's CDI spec); prints the device names.
check_dra_pod() {
	local pod=$1 want=$2 devs minors got
	devs=$(claim_devices "$pod") || fail "pod $pod has no allocated claim"
	[[ $(wc -l <<<"$devs") == "$want" ]] || fail "pod $pod's claim holds [$(echo $devs)], want $want device(s)"
	minors=$(sed -n 's/^gpu-\([0-9][0-9]*\)$/\1/p' <<<"$devs" | sort -n)
	got=$(pod_minors "$pod")
	[[ $got == "$minors" ]] || fail "pod $pod sees /dev/nvidia[$(echo $got)], its claim holds [$(echo $devs)]; log:"$'\n'"$(K logs "$pod")"
	echo "$devs"
}

# ds_rolled: the DaemonSet controller has seen its latest spec and both pods run it, the GPU node's
# Ready (the CPU-only node's never is: see ds_ready).
ds_rolled() {
	local s
	s=$(K -n "$GPU_NS" get ds "$DS_NAME" -o 'jsonpath={.metadata.generation}/{.status.observedGeneration} {.status.desiredNumberScheduled}/{.status.numberReady}/{.status.updatedNumberScheduled}/{.status.numberAvailable}')
	local gen=${s%% *} counts=${s#* }
	[[ ${gen%/*} == "${gen#*/}" && $counts == "$DS_NODES/$DS_NODES/$DS_NODES/$DS_NODES" ]] ||
		{ echo "DaemonSet generation/observed = $gen, desired/ready/updated/available = $counts, want $DS_NODES/$DS_NODES/$DS_NODES/$DS_NODES"; return 1; }
	gpulet_stable "$NODE2_NAME" || return
	gpulet_pod_ready || return
	gpulet_stable
}

# ---------------------------------------------------------------------------------------------
# Two nodes: the GPU node and a CPU-only one ($NODE2_NAME, lib/cluster.sh), gpulet on both.


# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Rolling upgrade: image A (this code stamped with an older version) -> image B (the e2e image) ->
# back to A, with the DaemonSet's default RollingUpdate, while pods hold GPUs through the device
# plugin and a DRA claim is prepared.

UPGRADE_A_VERSION=v0.0.0-20000101000000-e2eprevious0
UPGRADE_A_IMAGE=ghcr.io/gpulet/gpulet:e2e-previous
UPGRADE_B_IMAGE=ghcr.io/gpulet/gpulet:e2e
UPGRADE_DRA_GPUS=2 # GPULET_DRA_DEVICES=0,1: two GPUs for DRA, six for the device plugin
UPGRADE_DP_GPUS=$((SIM_GPUS - UPGRADE_DRA_GPUS))

# build_info_version: the version label of gpulet_build_info on the GPU node's gpulet.
build_info_version() { metrics_scrape | sed -n 's/^gpulet_build_info{.*[{,]version="\([^"]*\)".*/\1/p'; }
build_info_is() { local v; v=$(build_info_version) && [[ $v == "$1" ]] || { echo "gpulet_build_info version is '$v', want $1"; return 1; }; }
# label_writes: who last wrote the Node's nvidia.com/ labels, and when (managedFields): a write
# that changes nothing is not persisted, so this moves only when a label was really rewritten.
label_writes() {
	K get node "$NODE_NAME" -o json --show-managed-fields |
		jq -c '[.metadata.managedFields[]? | select((.fieldsV1["f:metadata"]["f:labels"] // {}) | keys | any(startswith("f:nvidia.com/"))) | {manager, operation, time}]'
}
claim_uid_of() { K get resourceclaim "$(K get pod "$1" -o 'jsonpath={.status.resourceClaimStatuses[0].resourceClaimName}')" -o 'jsonpath={.metadata.uid}'; }
dra_checkpoint_claims() { "$W/nsrun" cat /var/lib/kubelet/plugins/gpu.nvidia.com/gpulet-checkpoint.json 2>/dev/null | jq -r '.claims | keys[]' 2>/dev/null || true; }
claim_spec_files() { "$W/nsrun" sh -c "ls /var/run/cdi/ 2>/dev/null" | grep "claim_$1" || true; }
# claim_prepared UID: the claim's CDI spec is on the node and gpulet's checkpoint lists it.
claim_prepared() {
	[[ -n $(claim_spec_files "$1") ]] || { echo "no CDI spec for claim $1 in /var/run/cdi"; return 1; }
	dra_checkpoint_claims | grep -qx "$1" || { echo "claim $1 is not in gpulet's DRA checkpoint"; return 1; }
}
claim_unprepared() {
	[[ -z $(claim_spec_files "$1") ]] || { echo "claim $1's CDI spec is still in /var/run/cdi"; return 1; }
	! dra_checkpoint_claims | grep -qx "$1" || { echo "claim $1 is still in gpulet's DRA checkpoint"; return 1; }
}
# pod_view POD: what a running pod has: its container, its GPUs and its /dev/nvidia* nodes.
pod_view() {
	local cid env devs
	pod_phase_is "$1" Running >/dev/null || { echo "$1 is $(pod_phase "$1")"; return 1; }
	cid=$(K get pod "$1" -o 'jsonpath={.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}')
	env=$(retry_output 60 K exec "$1" -- sh -c 'echo "$NVIDIA_VISIBLE_DEVICES"') || return 1
	devs=$(retry_output 60 K exec "$1" -- sh -c 'ls -l /dev/nvidia[0-9]* | awk "{ print \$1, \$5, \$6, \$NF }"') || return 1
	printf '%s\n%s\n%s\n' "$cid" "$env" "$devs"
}
dp_alloc_is() { local a; a=$(K get node "$NODE_NAME" -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}') && [[ $a == "$1" ]] || { echo "Allocatable nvidia.com/gpu is '$a', want $1"; return 1; }; }
upgrade_capacity_full() { gpulet_stable || return; dp_alloc_is "$UPGRADE_DP_GPUS" && slice_count_is "$UPGRADE_DRA_GPUS"; }

upgrade_restore() {
	[[ -n ${UPGRADE_POLL_PID:-} ]] && kill "$UPGRADE_POLL_PID" 2>/dev/null
	K delete jobs -l app=gpulet-e2e --ignore-not-found --wait=true >/dev/null 2>&1 || true
	# The pods go while gpulet still serves DRA: a claim's pod ends only after its Unprepare.
	K delete pods -l app=gpulet-e2e --ignore-not-found --grace-period=1 --wait=true --timeout=90s >/dev/null 2>&1 || true
	K delete resourceclaimtemplates --all --ignore-not-found >/dev/null 2>&1 || true
	awk 'BEGIN { RS = "\n---\n" } /kind: DaemonSet/ { print; exit }' "$LOGS/gpulet-e2e.yaml" | K replace -f - >/dev/null || return 1
	wait_until 120 "DaemonSet back to the e2e image without DRA" ds_rolled || return 1
	wait_until 120 "Allocatable nvidia.com/gpu 8" gpus_8_and_stable
}

# upgrade_roll IMAGE VERSION NAME: (NAME: lowercase, it names Jobs) sets the DaemonSet's image (RollingUpdate), then checks that
# every held GPU, device node and prepared claim survived, capacity came back, labels were not
# rewritten and nothing a running pod holds is handed out again. Measures the time capacity was
# below full on the node as the API server shows it (polled every 0.2 s).
upgrade_roll() {
	local image=$1 version=$2 name=$3 old t0 hold_view0 dra_view0 labels0 writes0 uid poll tsec gp
	uid=$(claim_uid_of "$UPGRADE_DRA_POD")
	claim_prepared "$uid" || fail "before $name: the DRA claim is not prepared: $(claim_prepared "$uid")"
	hold_view0=$(pod_view "$UPGRADE_HOLD_POD") || fail "cannot read $UPGRADE_HOLD_POD"
	dra_view0=$(pod_view "$UPGRADE_DRA_POD") || fail "cannot read $UPGRADE_DRA_POD"
	labels0=$(node_labels) writes0=$(label_writes)
	old=$(gpulet_pod)

	poll=$W/upgrade-poll-$name.txt
	(while :; do echo "$(now_ms) $(K get node "$NODE_NAME" -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}' 2>/dev/null) $(slice_devices 2>/dev/null | wc -l)"; sleep 0.2; done) >"$poll" &
	UPGRADE_POLL_PID=$!
	sleep 1
	log "$name: kubectl set image ds/$DS_NAME gpulet=$image"
	t0=$(now_ms)
	K -n "$GPU_NS" set image "ds/$DS_NAME" "gpulet=$image" >/dev/null
	new_pod() { local p; p=$(gpulet_pod) && [[ -n $p && $p != "$old" ]] || { echo "no new gpulet pod yet"; return 1; }; ds_rolled; }
	wait_until 180 "DaemonSet rolled to $image" new_pod || fail "$name: the DaemonSet did not roll to $image"
	timing "upgrade $name: set image -> both nodes' pods updated and Ready" "$(secs_since "$t0")"
	wait_until 120 "Allocatable $UPGRADE_DP_GPUS and $UPGRADE_DRA_GPUS DRA devices after $name" upgrade_capacity_full ||
		fail "$name: capacity did not return"
	timing "upgrade $name: set image -> Allocatable and ResourceSlice full again (API server)" "$(secs_since "$t0")"
	gp=$(gpulet_pod)
	gpulet_timing "upgrade $name: set image -> new gpulet registered with the kubelet (its log)" "$t0" "registered with kubelet"
	# Stable for 3 s more: capacity stays full.
	sleep 3
	kill "$UPGRADE_POLL_PID" 2>/dev/null; wait "$UPGRADE_POLL_PID" 2>/dev/null || true
	UPGRADE_POLL_PID=
	upgrade_capacity_full >/dev/null || fail "$name: capacity dropped again: $(upgrade_capacity_full)"
	# Time below full: the first poll below full to the first poll full again after the last dip.
	tsec=$(awk -v full="$UPGRADE_DP_GPUS" -v dra="$UPGRADE_DRA_GPUS" -v t0="$t0" '
		$1 < t0 { next }
		$2 != full || $3 != dra { if (!down) down = $1; last = $1; up = 0; next }
		down && !up { up = $1 }
		END { if (!down) print "0.000"; else printf "%.3f\n", ((up ? up : last) - down) / 1000 }' "$poll")
	timing "upgrade $name: capacity below full on the node (API server, 0.2 s polls)" "$tsec"
	log "$name: allocatable/slice polls below full: $(awk -v full="$UPGRADE_DP_GPUS" -v dra="$UPGRADE_DRA_GPUS" -v t0="$t0" '$1 >= t0 && ($2 != full || $3 != dra)' "$poll" | wc -l) (log: $poll)"

	build_info_is "$version" || fail "$name: $(build_info_is "$version")"
	[[ $(K -n "$GPU_NS" get pod "$gp" -o 'jsonpath={.spec.containers[0].image}') == "$image" ]] || fail "$name: the new gpulet pod does not run $image"
	log "$name: gpulet pod $gp runs $image, gpulet_build_info version=$version"

	# Running pods keep their containers, GPUs and device nodes; the claim stays prepared.
	[[ $(pod_view "$UPGRADE_HOLD_POD") == "$hold_view0" ]] ||
		fail "$name: $UPGRADE_HOLD_POD changed: before [$hold_view0] after [$(pod_view "$UPGRADE_HOLD_POD")]"
	[[ $(pod_view "$UPGRADE_DRA_POD") == "$dra_view0" ]] ||
		fail "$name: $UPGRADE_DRA_POD changed: before [$dra_view0] after [$(pod_view "$UPGRADE_DRA_POD")]"
	claim_prepared "$uid" || fail "$name: $(claim_prepared "$uid")"
	log "$name: $UPGRADE_HOLD_POD and $UPGRADE_DRA_POD keep their containers, GPUs and /dev nodes; claim $uid still prepared"

	# Labels: the same, and not written again.
	[[ $(node_labels) == "$labels0" ]] || fail "$name: the Node's labels changed: $(diff <(echo "$labels0") <(node_labels) | tr '\n' ' ')"
	[[ $(label_writes) == "$writes0" ]] || fail "$name: the Node's labels were rewritten: before $writes0 after $(label_writes)"

	# Nothing a running pod holds is handed out: the other device-plugin GPUs go to a new pod, one
	# more waits; the other DRA GPU goes to a new claim, one more waits.
	local free=$((UPGRADE_DP_GPUS - 2)) pn gn g0 dn
	render_hold_job "up-$name-rest" "$free" | K apply -f - >/dev/null
	sed -e "s/__NAME__/up-$name-dra/" -e 's/__TEMPLATE__/one-gpu/' "$MANIFESTS/dra-hold-job.yaml" | K apply -f - >/dev/null
	wait_until 90 "up-$name-rest Running" job_pod_running "up-$name-rest" || fail "$name: a $free-GPU pod did not run next to the held GPUs"
	wait_until 90 "up-$name-dra Running" job_pod_running "up-$name-dra" || fail "$name: a new DRA claim did not run"
	pn=$(job_pod "up-$name-rest")
	check_pod_devices "$pn" "$free"
	gn=$(pod_gpus "$pn") g0=$(pod_gpus "$UPGRADE_HOLD_POD")
	[[ -z $(comm -12 <(echo "$g0") <(echo "$gn")) ]] || fail "$name: GPUs of $UPGRADE_HOLD_POD were handed out again: $(comm -12 <(echo "$g0") <(echo "$gn"))"
	dn=$(check_dra_pod "$(job_pod "up-$name-dra")" 1)
	[[ $dn != "$(claim_devices "$UPGRADE_DRA_POD")" ]] || fail "$name: the new claim got $dn, which $UPGRADE_DRA_POD holds"
	render_hold_job "up-$name-more" 1 | K apply -f - >/dev/null
	sed -e "s/__NAME__/up-$name-dra-more/" -e 's/__TEMPLATE__/one-gpu/' "$MANIFESTS/dra-hold-job.yaml" | K apply -f - >/dev/null
	pending() {
		local q
		q=$(job_pod "$1") && [[ -n $q ]] || return 1
		pod_phase_is "$q" Pending >/dev/null || return 1
		K get pod "$q" -o 'jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}' | grep -qx Unschedulable
	}
	wait_until 60 "up-$name-more unschedulable" pending "up-$name-more" || fail "$name: a device-plugin GPU was handed out twice"
	wait_until 60 "up-$name-dra-more unschedulable" pending "up-$name-dra-more" || fail "$name: a DRA GPU was handed out twice"
	log "$name: a new $free-GPU pod got [$(echo $gn)], a new claim $dn; one more GPU of either kind stays Pending"
	release "$pn"; release "$(job_pod "up-$name-dra")"
	K delete job "up-$name-more" "up-$name-dra-more" --wait=false >/dev/null
	wait_until 60 "up-$name-rest COMPLETIONS 1/1" job_complete "up-$name-rest" || fail "up-$name-rest did not complete"
	wait_until 60 "up-$name-dra COMPLETIONS 1/1" job_complete "up-$name-dra" || fail "up-$name-dra did not complete"

	# Unprepare by the new version of what the old one prepared.
	local cj
	cj=$(K get pod "$UPGRADE_DRA_POD" -o 'jsonpath={.metadata.labels.job-name}')
	release "$UPGRADE_DRA_POD"
	wait_until 60 "$cj COMPLETIONS 1/1" job_complete "$cj" || fail "$cj did not complete"
	K delete job "$cj" "up-$name-rest" "up-$name-dra" --wait=true >/dev/null
	wait_until 60 "claim $uid unprepared by $version" claim_unprepared "$uid" || fail "$name: $(claim_unprepared "$uid")"
	log "$name: the claim prepared before the upgrade was unprepared after it (CDI spec and checkpoint entry gone)"
}

# upgrade_new_claim NAME: a DRA pod that holds one GPU (its claim prepared by the running gpulet).
upgrade_new_claim() {
	sed -e "s/__NAME__/$1/" -e 's/__TEMPLATE__/one-gpu/' "$MANIFESTS/dra-hold-job.yaml" | K apply -f - >/dev/null
	wait_until 90 "$1 Running" job_pod_running "$1" || fail "a one-GPU claim did not run"
	UPGRADE_DRA_POD=$(job_pod "$1")
	check_dra_pod "$UPGRADE_DRA_POD" 1 >/dev/null
	wait_until 30 "claim of $1 prepared" claim_prepared "$(claim_uid_of "$UPGRADE_DRA_POD")" || fail "the claim of $1 is not prepared"
}

scenario_upgrade() {
	trap 'upgrade_restore || echo "could not restore the DaemonSet" >&2' EXIT
	# Image A: this code, stamped with an older version (as make builds a release), imported on both nodes.
	local a=$W/gpulet-previous t0 b_version
	t0=$(now_ms)
	make -C "$REPO_ROOT" --no-print-directory build-release VERSION="$UPGRADE_A_VERSION" RELEASE_BIN="$a" >"$LOGS/upgrade-build.log" 2>&1 ||
		{ tail -n 20 "$LOGS/upgrade-build.log"; fail "could not build image A's binary"; }
	"$REPO_ROOT/hack/image.sh" "$a" "$W/gpulet-previous.tar" "$UPGRADE_A_IMAGE" >>"$LOGS/upgrade-build.log" 2>&1 ||
		{ tail -n 20 "$LOGS/upgrade-build.log"; fail "could not build image A"; }
	for n in "$W/nsrun" "$W/nsrun2"; do
		"$n" "$CBIN/ctr" -n k8s.io images import "$W/gpulet-previous.tar" >>"$LOGS/upgrade-build.log" 2>&1 ||
			{ tail -n 20 "$LOGS/upgrade-build.log"; fail "ctr images import of image A failed"; }
	done
	timing "upgrade: build and import image A" "$(secs_since "$t0")"
	b_version=$("$GPULET" version | sed -n 's/^gpulet //p')
	[[ -n $b_version && $b_version != "$UPGRADE_A_VERSION" ]] || fail "image B's version '$b_version' is not distinct from A's"
	log "image A: $UPGRADE_A_IMAGE ($UPGRADE_A_VERSION); image B: $UPGRADE_B_IMAGE ($b_version)"

	# The cluster on image A, with DRA for GPUs 0 and 1 and the device plugin for the rest.
	K apply -f "$DEPLOY_DIR/dra-deviceclasses.yaml" -f "$DEPLOY_DIR/gpulet-dra-rbac.yaml" >/dev/null
	example_template one-gpu.yaml | K apply -f - >/dev/null
	K -n "$GPU_NS" patch ds "$DS_NAME" --patch-file "$DEPLOY_DIR/gpulet-dra-daemonset-patch.yaml" >/dev/null
	K -n "$GPU_NS" set env "ds/$DS_NAME" GPULET_DRA_DEVICES=0,1 >/dev/null
	K -n "$GPU_NS" set image "ds/$DS_NAME" "gpulet=$UPGRADE_A_IMAGE" >/dev/null
	[[ $(K -n "$GPU_NS" get ds "$DS_NAME" -o 'jsonpath={.spec.updateStrategy.type}') == RollingUpdate ]] || fail "the DaemonSet's strategy is not RollingUpdate"
	wait_until 180 "DaemonSet on image A with DRA" ds_rolled || fail "gpulet did not roll out on image A"
	wait_until 120 "Allocatable $UPGRADE_DP_GPUS and $UPGRADE_DRA_GPUS DRA devices on image A" upgrade_capacity_full || fail "capacity on image A"
	build_info_is "$UPGRADE_A_VERSION" || fail "$(build_info_is "$UPGRADE_A_VERSION")"

	# Workloads: 2 GPUs through the device plugin, 1 through a DRA claim; labels set.
	render_hold_job up-hold 2 | K apply -f - >/dev/null
	wait_until 90 "up-hold Running" job_pod_running up-hold || fail "a 2-GPU pod did not run"
	UPGRADE_HOLD_POD=$(job_pod up-hold)
	check_pod_devices "$UPGRADE_HOLD_POD" 2
	upgrade_new_claim up-claim-a
	has_labels() { node_labels | grep -q '^nvidia.com/gpu.product=' && node_labels | grep -q '^nvidia.com/gfd.timestamp='; }
	wait_until 60 "GFD labels on the node" has_labels || fail "labels not set on image A: $(node_labels | tr '\n' ' ')"
	log "on image A: $UPGRADE_HOLD_POD holds $(pod_gpus "$UPGRADE_HOLD_POD" | tr "\n" " ")and $UPGRADE_DRA_POD holds $(claim_devices "$UPGRADE_DRA_POD")"

	upgrade_roll "$UPGRADE_B_IMAGE" "$b_version" a-to-b
	upgrade_new_claim up-claim-b
	upgrade_roll "$UPGRADE_A_IMAGE" "$UPGRADE_A_VERSION" b-to-a

	release "$UPGRADE_HOLD_POD"
	wait_until 60 "up-hold COMPLETIONS 1/1" job_complete up-hold || fail "up-hold did not complete"
}

run_scenarios() {
	local entry id desc prereqs t0 rc p status skip
	declare -A passed=()
	for entry in "${SCENARIOS[@]}"; do
		IFS='|' read -r id desc prereqs <<<"$entry"
		if [[ -n ${GPULET_E2E_ONLY:-} && " $GPULET_E2E_ONLY " != *" $id "* && $id != ds ]]; then
			record "$id" - 0 "$desc (not selected)"
			continue
		fi
		if [[ -z ${GPULET_E2E_ONLY:-} && " $OPT_IN_SCENARIOS " == *" $id "* ]]; then
			record "$id" - 0 "$desc (opt-in: GPULET_E2E_ONLY=$id)"
			continue
		fi
		skip=
		for p in $prereqs; do [[ -n ${passed[$p]:-} ]] || skip=$p; done
		if [[ -n $skip ]]; then
			record "$id" SKIP 0 "$desc (needs '$skip', which failed)"
			continue
		fi
		echo
		log "${C_BOLD}=== scenario $id: $desc${C_OFF}"
		t0=$(now_ms)
		CURRENT_SCENARIO=$id
		# Not `( ... ) || rc=$?`: bash ignores set -e inside a subshell that is part of a || list.
		set +e
		(
			set -eEuo pipefail
			trap 'echo "command failed (rc $?): $BASH_COMMAND" >&2' ERR
			if declare -F "scenario_${id//-/_}" >/dev/null; then "scenario_${id//-/_}"; else go_scenario "$id"; fi
		)
		rc=$?
		set -e
		[[ -n $INTERRUPTED ]] && exit 130
		if ((rc == 0)); then
			status=PASS
			passed[$id]=1
		else
			status=FAIL
			diag_tail || true
			cleanup_workloads
		fi
		# shellcheck disable=SC2034 # read by run.sh's interrupt handler
		CURRENT_SCENARIO=
		log "=== scenario $id: $status ($(secs_since "$t0")s)"
		record "$id" "$status" "$(secs_since "$t0")" "$desc"
	done
}
