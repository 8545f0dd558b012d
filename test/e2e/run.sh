#!/usr/bin/env bash
# gpulet end-to-end test on a real two-node Kubernetes (a GPU node and a CPU-only node) (see test/e2e/README.md).
#
#   make e2e                 # or: sudo test/e2e/run.sh
#
# Installs what is missing (Debian packages; Kubernetes binaries built from Go module source,
# cached), builds gpulet and its image offline, starts a private cluster, deploys gpulet from
# deploy/ with a test overlay (simulated dgx-h100), runs the scenarios, tears everything down
# (also on failure and Ctrl-C) and prints a PASS/FAIL table and where the logs are.
#
# Environment:
#   GPULET_E2E_CACHE    cache of built Kubernetes binaries (default /var/cache/gpulet-e2e)
#   GPULET_E2E_WORKDIR  parent of the per-run work/log directories (default /var/tmp/gpulet-e2e)
#   GPULET_E2E_KEEP     1: leave the cluster running at the end (tear down with test/e2e/down.sh)
#   GPULET_E2E_ONLY     space-separated scenario ids to run (default: all), e.g. "ds seed-job"
#   GPULET_BIN          use this gpulet binary (and GPULET_BIN-lean beside it) instead of building ./cmd/gpulet
#   GPULET_E2E_LOCK_WAIT seconds to wait for another e2e run on this machine (default 1800)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$E2E_DIR/lib/cluster.sh"
source "$E2E_DIR/scenarios.sh"

[[ $(id -u) == 0 ]] || { echo "the e2e test needs root (namespaces, mounts, containerd); run it with sudo" >&2; exit 2; }

run_id=$(date +%Y%m%d-%H%M%S)
work_root=${GPULET_E2E_WORKDIR:-/var/tmp/gpulet-e2e}
W=$work_root/$run_id
LOGS=$W/logs
mkdir -p "$LOGS"
ln -sfn "$run_id" "$work_root/latest"
export W LOGS

# Everything printed also goes to logs/e2e.log.
# tee ignores SIGINT/SIGTERM so that the teardown and the table after a Ctrl-C are still shown.
exec > >(trap '' INT TERM; exec tee -a "$LOGS/e2e.log") 2>&1
TEE_PID=$!

# One e2e run per machine at a time: the kubelet's cgroups (/kubepods) are host-wide.
mkdir -p "$E2E_CACHE"
exec 8>"$E2E_CACHE/run.lock"
if ! flock -n 8; then
	log "another gpulet e2e run holds $E2E_CACHE/run.lock; waiting up to ${GPULET_E2E_LOCK_WAIT:-1800}s"
	flock -w "${GPULET_E2E_LOCK_WAIT:-1800}" 8 || { echo "gave up waiting for the e2e lock" >&2; exit 1; }
fi

# A run that was killed (SIGKILL, lost shell) may have left its cluster behind: take it down.
for old in "$work_root"/*/pids/ns.pid; do
	[[ -e $old ]] || continue
	old_w=${old%/pids/ns.pid}
	[[ $old_w == "$W" ]] && continue
	warn "taking down a cluster left by an earlier run in $old_w"
	(W=$old_w cluster_down) || true
	rm -rf "$old_w/varlib" "$old_w/node2" "$old_w/images"
done
# Keep the logs of the last 5 runs.
ls -1dt "$work_root"/2* 2>/dev/null | tail -n +6 | xargs -r rm -rf

declare -a RESULT_ID=() RESULT_STATUS=() RESULT_TIME=() RESULT_NOTE=()
INTERRUPTED=
SETUP_FAILED=

# record ID STATUS SECONDS [NOTE]
record() { RESULT_ID+=("$1"); RESULT_STATUS+=("$2"); RESULT_TIME+=("$3"); RESULT_NOTE+=("${4:-}"); }

print_table() {
	local i s color n_pass=0 n_fail=0 n_skip=0
	echo
	echo "${C_BOLD}gpulet e2e results ($run_id)${C_OFF}"
	printf '  %-12s %-6s %8s  %s\n' SCENARIO RESULT TIME DESCRIPTION
	for i in "${!RESULT_ID[@]}"; do
		s=${RESULT_STATUS[$i]}
		case $s in
		PASS) color=$C_GREEN n_pass=$((n_pass + 1)) ;;
		FAIL) color=$C_RED n_fail=$((n_fail + 1)) ;;
		*) color=$C_YELLOW n_skip=$((n_skip + 1)) ;;
		esac
		printf '  %-12s %s%-6s%s %7ss  %s\n' "${RESULT_ID[$i]}" "$color" "$s" "$C_OFF" "${RESULT_TIME[$i]}" "${RESULT_NOTE[$i]}"
	done
	if [[ -s $LOGS/timings.tsv ]]; then
		echo
		echo "${C_BOLD}timings${C_OFF}"
		awk -F'\t' '{ printf "  %-60s %7.2fs\n", $1, $2 }' "$LOGS/timings.tsv"
	fi
	echo
	echo "logs: $LOGS  (e2e.log = this output; <component>.log per component; diag/ = cluster state at the end)"
	echo "e2e: $n_pass passed, $n_fail failed, $n_skip skipped"
}

teardown() {
	local rc=$? s
	trap - EXIT INT TERM
	set +e
	[[ -n $INTERRUPTED ]] && rc=130
	# Scenarios that an interruption or a failed setup left without a result.
	local id seen
	for id in "${SCENARIO_IDS[@]}"; do
		seen=
		for s in "${RESULT_ID[@]}"; do [[ $s == "$id" ]] && seen=1; done
		[[ -n $seen ]] && continue
		if [[ $id == "${CURRENT_SCENARIO:-}" ]]; then
			record "$id" FAIL 0 "interrupted while running"
		else
			record "$id" SKIP 0 "not run${INTERRUPTED:+ (interrupted)}"
		fi
	done
	if [[ -f $W/pids/ns.pid ]]; then
		collect_diag >/dev/null 2>&1
		if [[ ${GPULET_E2E_KEEP:-} == 1 ]]; then
			log "GPULET_E2E_KEEP=1: cluster left running; kubectl: $W/kubectl; tear down: W=$W $E2E_DIR/down.sh"
		else
			log "tearing down the cluster"
			cluster_down
			# Free the disk (images, etcd, container layers); keep the logs.
			rm -rf "$W/varlib" "$W/node2" "$W/images"
		fi
	fi
	print_table
	local failed=0
	# FAIL, and SKIP (a prerequisite failed), fail the run; "-" (not selected) does not.
	for s in "${RESULT_STATUS[@]}"; do [[ $s == PASS || $s == - ]] || failed=1; done
	((${#RESULT_STATUS[@]} > 0)) || failed=1
	if ((rc == 0 && failed)); then rc=1; fi
	# Let tee print the last lines before make (or CI) goes on.
	exec >&- 2>&-
	wait "$TEE_PID" 2>/dev/null
	exit "$rc"
}
trap teardown EXIT
trap 'INTERRUPTED=1; echo; warn "interrupted"; exit 130' INT TERM

# setup_step ID DESCRIPTION FUNCTION: a setup step; on failure every scenario is skipped.
setup_step() {
	local id=$1 desc=$2 fn=$3 t0 rc=0
	[[ -n $SETUP_FAILED ]] && return 0
	log "setup: $desc"
	t0=$(now_ms)
	# Not `( ... ) || rc=$?`: bash ignores set -e inside a subshell that is part of a || list.
	set +e
	(set -eEuo pipefail; trap 'echo "command failed (rc $?): $BASH_COMMAND" >&2' ERR; "$fn")
	rc=$?
	set -e
	[[ -n $INTERRUPTED ]] && exit 130
	if ((rc != 0)); then
		record "$id" FAIL "$(secs_since "$t0")" "setup: $desc"
		SETUP_FAILED=$id
	fi
	return 0
}

do_deps() { "$E2E_DIR/lib/deps.sh"; }
do_k8sbins() {
	local b
	b=$("$E2E_DIR/lib/gobins.sh" k8s)
	echo "$b" >"$W/bin.path"
	"$b/kubectl" version --client 2>/dev/null | sed -n 1p
}
do_containerdbins() {
	local b
	b=$("$E2E_DIR/lib/gobins.sh" containerd)
	echo "$b" >"$W/cbin.path"
	"$b/containerd" --version
}
do_gpulet() {
	if [[ -n ${GPULET_BIN:-} ]]; then
		[[ -x $GPULET_BIN ]] || fail "GPULET_BIN=$GPULET_BIN is not an executable"
		[[ -x $(readlink -f "$GPULET_BIN")-lean ]] || fail "no $(readlink -f "$GPULET_BIN")-lean beside GPULET_BIN: the image's entry point (make build-release builds both)"
		readlink -f "$GPULET_BIN" >"$W/gpulet.path"
		return 0
	fi
	# The binaries that ship: cgo, NVML-capable (they run the simulated backend here); the full build
	# and, beside it, the image's entry point without the Kubernetes API (-lean, hack/image.sh).
	make -C "$REPO_ROOT" --no-print-directory build-release || fail "could not build gpulet (make build-release)"
	echo "$REPO_ROOT/_output/gpulet-release" >"$W/gpulet.path"
}
# The Go scenarios (test/e2e/scenarios) as one test binary, run by scenarios.sh's go_scenario.
do_e2e_test() { (cd "$REPO_ROOT" && go test -c -o "$W/e2e.test" ./test/e2e/scenarios) || fail "could not build the Go scenarios (go test -c ./test/e2e/scenarios)"; }
do_images() { "$E2E_DIR/lib/images.sh" "$W/images" "$(cat "$W/gpulet.path")"; }
do_cluster() {
	BIN=$(cat "$W/bin.path") CBIN=$(cat "$W/cbin.path") IMG=$W/images
	cluster_up
}

setup_step deps "Debian packages" do_deps
setup_step k8sbins "Kubernetes binaries (cached)" do_k8sbins
setup_step containerdbins "containerd 2 binaries (cached)" do_containerdbins
setup_step gpulet "build gpulet" do_gpulet
setup_step e2e-test "build the Go scenarios" do_e2e_test
setup_step images "container images (offline)" do_images
setup_step cluster "start the cluster" do_cluster

if [[ -z $SETUP_FAILED ]]; then
	BIN=$(cat "$W/bin.path") CBIN=$(cat "$W/cbin.path") IMG=$W/images GPULET=$(cat "$W/gpulet.path")
	export BIN CBIN IMG GPULET
	run_scenarios
else
	for id in "${SCENARIO_IDS[@]}"; do record "$id" SKIP 0 "not run: setup step '$SETUP_FAILED' failed"; done
fi
