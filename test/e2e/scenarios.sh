# shellcheck shell=bash
# The e2e scenarios. Sourced by run.sh, which provides W, LOGS, BIN, IMG, GPULET and the helpers of
# lib/common.sh and lib/cluster.sh. Each scenario runs in a subshell with `set -e`; `fail` ends it.

GPU_NS="gpu-resources"
DS_NAME=gpulet
SIM_ROOT=/var/lib/gpulet/sim # inside the cluster's namespace (the node's filesystem)
SIM_PROFILE=dgx-h100
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

# ---------------------------------------------------------------------------------------------
# Node and workload helpers

# node_gpus: "CAPACITY/ALLOCATABLE" of nvidia.com/gpu as the API server reports it.
node_gpus() {
	K get node "$NODE_NAME" -o 'jsonpath={.status.capacity.nvidia\.com/gpu}/{.status.allocatable.nvidia\.com/gpu}'
}

GPULET_SELECTOR=
gpulet_selector() { [[ -n $GPULET_SELECTOR ]] || GPULET_SELECTOR=$(cat "$W/gpulet.selector" 2>/dev/null); echo "${GPULET_SELECTOR:-name=gpulet}"; }
# gpulet_pod_on NODE: the DaemonSet's pod on NODE; gpulet_pod: the one on the GPU node.
gpulet_pod_on() {
	K -n "$GPU_NS" get pods -l "$(gpulet_selector)" --field-selector "spec.nodeName=$1" -o 'jsonpath={.items[0].metadata.name}'
}
gpulet_pod() { gpulet_pod_on "$NODE_NAME"; }

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
			GPULET_E2E_SCENARIO="$1" GPULET_E2E_W="$W" GPULET_E2E_LOGS="$LOGS" GPULET_E2E_GPULET="$GPULET" GPULET_E2E_CBIN="$CBIN" \
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

# ---------------------------------------------------------------------------------------------
# Node labels (GPU Feature Discovery's, published by gpulet) and metrics

# ---------------------------------------------------------------------------------------------
# Two nodes: the GPU node and a CPU-only one ($NODE2_NAME, lib/cluster.sh), gpulet on both.


# ---------------------------------------------------------------------------------------------

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
