#!/usr/bin/env bash
# gpu-check: gpulet on a real GPU machine, in one call, one table.
#
#   make gpu-check-build                        # here: _output/gpulet (cgo) and _output/kubeletstub
#   hack/gpu-check.sh                           # there: no Go needed; results in $OUT (default ./gpu-check-out)
#
# It checks, against NVIDIA's own tools and CUDA:
#   1. `gpulet list --backend=nvml -o json` against `nvidia-smi -q -x` (and
#      --query-gpu for compute capability) and against what CUDA reports,
#      field by field: UUID, name, memory, bus ID, minor, driver, CUDA, MIG
#      mode, compute capability; and how long NVML discovery takes.
#   2. `gpulet run` against a stub kubelet (kubeletstub): registration,
#      ListAndWatch, GetPreferredAllocation and Allocate for 1 GPU.
#   3. `gpulet validate` (CUDA kernel + bandwidth) run with exactly the
#      environment Allocate returned: CUDA must see exactly that one GPU.
#      And with an unknown UUID: CUDA must see none.
#   4. SIGTERM: `gpulet run` exits 0 and removes its socket; its health
#      watch ran without failing; the kubelet side saw the stream end.
#
# Writes $OUT/gpu-check.txt (the table and the details) and every raw
# output beside it. Exit status: 0 when every check passes, 1 when one
# fails, 2 when the machine cannot run the check (no GPU, no binaries).
#
# Rehearsal without a GPU (not a GPU check): GPU_CHECK_BACKEND=sim runs
# gpulet on its simulated h200 node, with GPU_CHECK_NVIDIA_SMI naming a
# stand-in nvidia-smi and LD_LIBRARY_PATH a stand-in libcuda.so.1.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${GPU_CHECK_BIN:-$root/_output}
OUT=${OUT:-./gpu-check-out}
BACKEND=${GPU_CHECK_BACKEND:-nvml}
SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
GPULET=$BIN/gpulet
STUB=$BIN/kubeletstub
BOGUS_UUID=GPU-00000000-0000-0000-0000-000000000000

export LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$PATH:/usr/local/nvidia/bin

if ! mkdir -p "$OUT" || ! OUT=$(cd "$OUT" && pwd); then
	echo "gpu-check: cannot create $OUT" >&2
	exit 2
fi
report=$OUT/gpu-check.txt
: >"$report"

die() {
	echo "gpu-check: $*" | tee -a "$report" >&2
	exit 2
}

# --- can this machine run the check at all? Fail fast and say why. ---
[[ -x $GPULET && -x $STUB ]] ||
	die "missing $GPULET or $STUB: build them with 'make gpu-check-build' (CGO_ENABLED=1) and bring _output to the GPU machine"
command -v "$SMI" >/dev/null 2>&1 ||
	die "nvidia-smi not found (PATH=$PATH): this machine has no NVIDIA driver, or its tools are not on PATH. The GPU check needs a GPU machine; for a rehearsal without one, see the header of $0"
if ! "$SMI" -L >"$OUT/nvidia-smi-L.txt" 2>&1; then
	die "nvidia-smi -L failed, so the NVIDIA driver is not usable here: $(head -3 "$OUT/nvidia-smi-L.txt" | tr '\n' ' ')"
fi
ngpu=$(grep -c '^GPU ' "$OUT/nvidia-smi-L.txt")
((ngpu > 0)) || die "nvidia-smi -L lists no GPU: $(head -3 "$OUT/nvidia-smi-L.txt" | tr '\n' ' ')"

dpdir=$(mktemp -d /tmp/gpuchk.XXXXXX) || die "cannot create a folder in /tmp" # short: unix socket paths are limited
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	rm -rf "$dpdir"
}
trap cleanup EXIT

simflags=()
if [[ $BACKEND == sim ]]; then
	simflags=(--sim-profile=h200 --sim-root="$dpdir/sim")
	echo "gpu-check: REHEARSAL on the simulated h200 node (GPU_CHECK_BACKEND=sim): nothing here tests real GPUs" | tee -a "$report" >&2
fi

results=()
fails=0
check() { # name PASS|FAIL detail
	results+=("$1"$'\t'"$2"$'\t'"$3")
	[[ $2 == PASS ]] || ((fails++))
	printf 'gpu-check: %-40s %s  %s\n' "$1" "$2" "$3" >&2
}
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
# json_int KEY FILE: a top-level integer of our own indented JSON ("" if null or absent).
json_int() { sed -n "s/^  \"$1\": \([0-9][0-9]*\),\{0,1\}\$/\1/p" "$2" | head -1; }
# env_cmd FILE CMD...: run CMD with exactly the KEY=VALUE lines of FILE, plus PATH and LD_LIBRARY_PATH.
env_cmd() {
	local f=$1
	shift
	local vars=()
	[[ -s $f ]] && mapfile -t vars <"$f"
	env -i PATH="$PATH" LD_LIBRARY_PATH="$LD_LIBRARY_PATH" "${vars[@]}" "$@"
}
# wait_pid PID SECONDS: wait for a child to exit; its status, or 124 after SECONDS.
wait_pid() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		if ! kill -0 "$1" 2>/dev/null; then
			wait "$1"
			return
		fi
		sleep 0.1
	done
	return 124
}

# --- 1. nvidia-smi, gpulet list, CUDA: field by field ---
"$SMI" -q -x >"$OUT/nvidia-smi-q.xml" 2>"$OUT/nvidia-smi-q-x.err"
"$SMI" -q >"$OUT/nvidia-smi-q.txt" 2>&1
"$SMI" --query-gpu=index,uuid,name,pci.bus_id,memory.total,compute_cap,mig.mode.current,driver_version --format=csv \
	>"$OUT/nvidia-smi-query.csv" 2>"$OUT/nvidia-smi-query.err"
"$SMI" topo -m >"$OUT/nvidia-smi-topo.txt" 2>&1

t0=$(now_ns)
"$GPULET" list --backend="$BACKEND" "${simflags[@]}" -o json >"$OUT/gpulet-list.json" 2>"$OUT/gpulet-list.err"
rc=$?
list_ms=$(ms_since "$t0")
"$GPULET" list --backend="$BACKEND" "${simflags[@]}" >"$OUT/gpulet-list.txt" 2>&1
if ((rc == 0)); then
	check "gpulet list --backend=$BACKEND" PASS "${list_ms} ms for the whole command (load NVML, discover, probe)"
else
	check "gpulet list --backend=$BACKEND" FAIL "exit $rc: $(head -c 300 "$OUT/gpulet-list.err")"
fi

t0=$(now_ns)
env -u NVIDIA_VISIBLE_DEVICES -u CUDA_VISIBLE_DEVICES "$GPULET" validate -o json >"$OUT/validate-all.json" 2>"$OUT/validate-all.err"
rc=$?
validate_ms=$(ms_since "$t0")
env -u NVIDIA_VISIBLE_DEVICES -u CUDA_VISIBLE_DEVICES "$GPULET" validate >"$OUT/validate-all.txt" 2>&1
all_count=$(json_int cudaDeviceCount "$OUT/validate-all.json")
if ((rc == 0)) && [[ $all_count == "$ngpu" ]]; then
	check "validate, every GPU visible" PASS "CUDA sees ${all_count} of ${ngpu} GPUs; kernel and copies pass (${validate_ms} ms)"
else
	check "validate, every GPU visible" FAIL "exit $rc, CUDA sees ${all_count:-unknown} of ${ngpu}: $(head -c 300 "$OUT/validate-all.err")"
fi

"$STUB" compare --list="$OUT/gpulet-list.json" --smi-xml="$OUT/nvidia-smi-q.xml" --smi-csv="$OUT/nvidia-smi-query.csv" \
	--cuda="$OUT/validate-all.json" >"$OUT/compare.txt" 2>"$OUT/compare.err"
rc=$?
fields=$(grep -cE '[[:space:]]ok$' "$OUT/compare.txt")
if ((rc == 0)); then
	check "list vs nvidia-smi vs CUDA" PASS "$fields fields agree"
else
	check "list vs nvidia-smi vs CUDA" FAIL "$(head -c 300 "$OUT/compare.err") (see compare table)"
fi

# --- 2. gpulet run against a stub kubelet; Allocate 1 GPU ---
"$STUB" allocate --dir="$dpdir" --count=1 --hold --timeout=60s \
	--env-out="$OUT/allocate.env" --json-out="$OUT/allocate.json" >"$OUT/kubeletstub.out" 2>"$OUT/kubeletstub.log" &
stub_pid=$!
pids+=("$stub_pid")
run_start=$(now_ns)
"$GPULET" run --backend="$BACKEND" "${simflags[@]}" --device-plugin-path="$dpdir" >"$OUT/gpulet-run.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
for ((i = 0; i < 650; i++)); do
	[[ -s $OUT/allocate.json ]] && break
	kill -0 "$stub_pid" 2>/dev/null || break
	sleep 0.1
done
discovered=$(grep -m1 'msg="GPUs discovered"' "$OUT/gpulet-run.log" | sed -n 's/.* took=\([^ ]*\).*/\1/p')
if [[ -s $OUT/allocate.json ]]; then
	reg_ns=$(json_int registeredAtUnixNano "$OUT/allocate.json")
	reg_ms=$(((reg_ns - run_start) / 1000000))
	endpoint=$(sed -n 's/^  "endpoint": "\(.*\)",$/\1/p' "$OUT/allocate.json")
	check "gpulet run: NVML discovery" PASS "${discovered:-?} (from the daemon's log)"
	check "gpulet run: registered with kubelet" PASS "nvidia.com/gpu at $endpoint, ${reg_ms} ms after start"
	alloc=$(grep '^NVIDIA_VISIBLE_DEVICES=' "$OUT/allocate.env")
	if [[ $alloc =~ ^NVIDIA_VISIBLE_DEVICES=GPU-[0-9a-f-]+$ ]]; then
		check "Allocate(1 GPU)" PASS "$(tr '\n' ' ' <"$OUT/allocate.env")"
	else
		check "Allocate(1 GPU)" FAIL "want one GPU UUID in NVIDIA_VISIBLE_DEVICES, got: $(tr '\n' ' ' <"$OUT/allocate.env")"
	fi
else
	check "gpulet run: registered and allocated" FAIL "$(tail -3 "$OUT/kubeletstub.log" | tr '\n' ' ') / gpulet: $(grep -m3 -E 'level=(ERROR|WARN)' "$OUT/gpulet-run.log" | tr '\n' ' ')"
fi

# --- 3. validate with exactly Allocate's environment, and with an unknown UUID ---
if [[ -s $OUT/allocate.env ]]; then
	uuid=${alloc#NVIDIA_VISIBLE_DEVICES=}
	env_cmd "$OUT/allocate.env" "$GPULET" validate -o json >"$OUT/validate-allocated.json" 2>"$OUT/validate-allocated.err"
	rc=$?
	env_cmd "$OUT/allocate.env" "$GPULET" validate >"$OUT/validate-allocated.txt" 2>&1
	count=$(json_int cudaDeviceCount "$OUT/validate-allocated.json")
	if ((rc == 0)) && [[ $count == 1 ]] && grep -q "\"uuid\": \"$uuid\"" "$OUT/validate-allocated.json"; then
		check "validate with Allocate's env" PASS "CUDA sees exactly 1 GPU ($uuid) of $ngpu; kernel and copies pass"
	else
		check "validate with Allocate's env" FAIL "exit $rc, CUDA sees ${count:-unknown} GPUs: $(head -c 300 "$OUT/validate-allocated.err")"
	fi
fi
echo "NVIDIA_VISIBLE_DEVICES=$BOGUS_UUID" >"$OUT/bogus.env"
env_cmd "$OUT/bogus.env" "$GPULET" validate -o json >"$OUT/validate-unknown-uuid.json" 2>"$OUT/validate-unknown-uuid.err"
rc=$?
count=$(json_int cudaDeviceCount "$OUT/validate-unknown-uuid.json")
if ((rc != 0)) && [[ $count == 0 ]]; then
	check "validate with an unknown UUID" PASS "CUDA sees 0 GPUs and validate fails, as it must"
else
	check "validate with an unknown UUID" FAIL "exit $rc, CUDA sees ${count:-unknown} GPUs (want 0 and a failure)"
fi

# --- 4. SIGTERM ---
ran_s=$((($(now_ns) - run_start) / 1000000000))
if kill -0 "$run_pid" 2>/dev/null; then
	kill -TERM "$run_pid"
	wait_pid "$run_pid" 20
	rc=$?
	if ((rc == 0)); then
		check "SIGTERM: gpulet run exits" PASS "exit 0"
	else
		check "SIGTERM: gpulet run exits" FAIL "exit $rc (124: still running after 20s)"
	fi
else
	wait "$run_pid"
	check "SIGTERM: gpulet run exits" FAIL "gpulet run had already exited ($?) before SIGTERM: $(tail -3 "$OUT/gpulet-run.log" | tr '\n' ' ')"
fi
left=$(find "$dpdir" -maxdepth 1 -name 'gpulet-*.sock' 2>/dev/null)
if [[ -z $left ]] && grep -q 'msg="device plugin stopped"' "$OUT/gpulet-run.log"; then
	check "SIGTERM: plugin socket removed" PASS "no gpulet-*.sock left in the plugin folder"
else
	check "SIGTERM: plugin socket removed" FAIL "left: ${left:-none}; 'device plugin stopped' logged: $(grep -c 'msg="device plugin stopped"' "$OUT/gpulet-run.log")"
fi
watch_errors=$(grep -E 'health watch failed|event watch|level=ERROR' "$OUT/gpulet-run.log")
if [[ -z $watch_errors ]]; then
	check "health watch" PASS "ran ${ran_s}s with the daemon, no failure or error logged, stopped with it"
else
	check "health watch" FAIL "$(echo "$watch_errors" | head -3 | tr '\n' ' ')"
fi
if grep -q 'ListAndWatch stream ended' "$OUT/kubeletstub.log"; then
	check "kubelet side: stream ended on stop" PASS "$(grep -m1 'ListAndWatch stream ended' "$OUT/kubeletstub.log" | cut -c1-120)"
else
	check "kubelet side: stream ended on stop" FAIL "the stub saw no end of the ListAndWatch stream"
fi
kill -TERM "$stub_pid" 2>/dev/null
wait_pid "$stub_pid" 10
rc=$?
((rc == 0)) || check "kubeletstub exits on SIGTERM" FAIL "exit $rc"

# --- the report ---
{
	echo "gpulet GPU check  $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  backend $BACKEND"
	echo "gpulet: $("$GPULET" version 2>&1)"
	sed 's/^/nvidia-smi: /' "$OUT/nvidia-smi-L.txt"
	echo
	printf '%-38s %-6s %s\n' CHECK RESULT DETAIL
	for r in "${results[@]}"; do
		IFS=$'\t' read -r name result detail <<<"$r"
		printf '%-38s %-6s %s\n' "$name" "$result" "$detail"
	done
	echo
	if ((fails == 0)); then echo "ALL ${#results[@]} CHECKS PASSED"; else echo "$fails OF ${#results[@]} CHECKS FAILED"; fi
	echo
	echo "== gpulet list (NVML) vs nvidia-smi vs CUDA"
	cat "$OUT/compare.txt"
	echo
	echo "== gpulet validate, every GPU visible"
	cat "$OUT/validate-all.txt"
	echo
	echo "== the environment Allocate returned for 1 GPU"
	cat "$OUT/allocate.env" 2>/dev/null
	echo
	echo "== gpulet validate with exactly that environment"
	cat "$OUT/validate-allocated.txt" 2>/dev/null
	echo
	echo "== gpulet run log"
	cat "$OUT/gpulet-run.log"
	echo
	echo "== kubeletstub log"
	cat "$OUT/kubeletstub.log"
} >>"$report"
cat "$report"
((fails == 0))
