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
#   5. Metrics (issue 13): while step 3's validate loads the GPU, /metrics
#      of that `gpulet run` (--metrics-address=$METRICS_ADDR) is scraped
#      next to `nvidia-smi --query-gpu=utilization.gpu,memory.used,...`:
#      the dcgm-exporter series are there for the allocated GPU, no sample
#      failed, no NVML call timed out. Both saved under $OUT/metrics/.
#   6. MPS (issue 9): `gpulet run` with sharing.mps (nvidia.com/gpu, 4
#      replicas, --mps-root under a temporary folder, the driver's
#      nvidia-cuda-mps-control); a pod of 2 containers gets 1 replica each;
#      two `gpulet validate` run at once, each with its container's
#      environment (the MPS pipe folder mapped to its host path); both pass
#      and ran through the MPS daemon (its control.log, or an M+C process in
#      nvidia-smi); on SIGTERM gpulet quits the daemon.
#   7. Labels (issue 12): `gpulet labels --no-timestamp`; with
#      gpu-feature-discovery beside this script, in $BIN or on PATH, its
#      --oneshot labels and the diff.
#   8. CDI (issue 11): `gpulet cdi generate`; every host path in it exists
#      here; what /dev/nvidia* and the driver's lib64 have that it lacks.
#   9. DRA (issue 14): `gpulet dra slice` (the ResourceSlice gpulet would
#      publish) next to `nvidia-smi -q`; SKIP while gpulet has no such
#      command.
#
# A check that cannot run here is SKIP (not a failure): no
# gpu-feature-discovery binary, or a rehearsal.
#
# Writes $OUT/gpu-check.txt (the table and the details) and every raw
# output beside it. Exit status: 0 when every check passes, 1 when one
# fails, 2 when the machine cannot run the check (no GPU, no binaries).
#
# Rehearsal without a GPU (not a GPU check): GPU_CHECK_BACKEND=sim runs
# gpulet on its simulated h200 node, with GPU_CHECK_NVIDIA_SMI naming a
# stand-in nvidia-smi and LD_LIBRARY_PATH a stand-in libcuda.so.1. Checks
# that need the real thing (clients of a real MPS daemon) are then SKIP.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${GPU_CHECK_BIN:-$root/_output}
OUT=${OUT:-./gpu-check-out}
BACKEND=${GPU_CHECK_BACKEND:-nvml}
SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
GPULET=$BIN/gpulet
STUB=$BIN/kubeletstub
BOGUS_UUID=GPU-00000000-0000-0000-0000-000000000000
METRICS_ADDR=${GPU_CHECK_METRICS_ADDRESS:-127.0.0.1:9401}
MPS_REPLICAS=4

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
	# An MPS control daemon gpulet failed to quit must not outlive the check.
	if [[ -n ${mpsctl:-} && -n ${mps_uuid:-} && -d $dpdir/mps/$mps_uuid/pipe ]]; then
		echo quit | CUDA_MPS_PIPE_DIRECTORY=$dpdir/mps/$mps_uuid/pipe timeout 10 "$mpsctl" >/dev/null 2>&1
	fi
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
skips=0
check() { # name PASS|FAIL|SKIP detail
	results+=("$1"$'\t'"$2"$'\t'"$3")
	case $2 in
	PASS) ;;
	SKIP) ((skips++)) ;;
	*) ((fails++)) ;;
	esac
	printf 'gpu-check: %-40s %s  %s\n' "$1" "$2" "$3" >&2
}
# tool NAME: NAME beside this script, in $BIN, or on PATH ("" if none).
tool() {
	local d
	for d in "$root/hack" "$BIN"; do
		[[ -x $d/$1 ]] && { echo "$d/$1"; return; }
	done
	command -v "$1" 2>/dev/null
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
"$GPULET" run --backend="$BACKEND" "${simflags[@]}" --device-plugin-path="$dpdir" --metrics-address="$METRICS_ADDR" \
	--pod-resources-socket= >"$OUT/gpulet-run.log" 2>&1 &
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

# scrape_loop: /metrics and nvidia-smi's view, every second until killed.
SMI_METRICS=utilization.gpu,memory.used,memory.reserved,temperature.gpu,power.draw,clocks.sm,clocks.mem
scrape_loop() {
	local i=0
	mkdir -p "$OUT/metrics"
	"$STUB" scrape --wait=10s --out="$OUT/metrics/scrape-0.txt" "http://$METRICS_ADDR/metrics" 2>>"$OUT/metrics/scrape.err"
	while :; do
		date -u +%H:%M:%S.%N >>"$OUT/metrics/nvidia-smi.csv"
		"$SMI" --query-gpu=uuid,$SMI_METRICS --format=csv >>"$OUT/metrics/nvidia-smi.csv" 2>&1
		i=$((i + 1))
		"$STUB" scrape --out="$OUT/metrics/scrape-$i.txt" "http://$METRICS_ADDR/metrics" 2>>"$OUT/metrics/scrape.err"
		sleep 1
	done
}

# --- 3. validate with exactly Allocate's environment (scraping /metrics meanwhile), and with an unknown UUID ---
if [[ -s $OUT/allocate.env ]]; then
	uuid=${alloc#NVIDIA_VISIBLE_DEVICES=}
	scrape_loop &
	scrape_pid=$!
	pids+=("$scrape_pid")
	env_cmd "$OUT/allocate.env" "$GPULET" validate -o json >"$OUT/validate-allocated.json" 2>"$OUT/validate-allocated.err"
	rc=$?
	env_cmd "$OUT/allocate.env" "$GPULET" validate >"$OUT/validate-allocated.txt" 2>&1
	sleep 1 # one more sweep and scrape after the load
	kill "$scrape_pid" 2>/dev/null
	wait "$scrape_pid" 2>/dev/null
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

# --- 5. metrics, as scraped during step 3 ---
if [[ -n ${scrape_pid:-} ]]; then
	last=
	nscrapes=0
	for ((i = 0; i < 1000; i++)); do
		[[ -f $OUT/metrics/scrape-$i.txt ]] || continue
		last=$OUT/metrics/scrape-$i.txt
		nscrapes=$((nscrapes + 1))
	done
	if [[ -z $last ]]; then
		check "metrics: /metrics scraped" FAIL "no scrape of http://$METRICS_ADDR/metrics answered: $(tail -2 "$OUT/metrics/scrape.err" 2>/dev/null | tr '\n' ' ')"
	else
		cp "$last" "$OUT/metrics.txt"
		missing=()
		for m in DCGM_FI_DEV_GPU_UTIL DCGM_FI_DEV_FB_USED DCGM_FI_DEV_FB_FREE DCGM_FI_DEV_GPU_TEMP DCGM_FI_DEV_POWER_USAGE \
			DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION DCGM_FI_DEV_SM_CLOCK DCGM_FI_DEV_MEM_CLOCK; do
			grep -q "^$m{.*UUID=\"$uuid\"" "$OUT/metrics.txt" || missing+=("$m")
		done
		series=$(grep -c '^DCGM_FI_' "$OUT/metrics.txt")
		sample_errors=$(sed -n 's/^gpulet_telemetry_sample_errors_total \(.*\)$/\1/p' "$OUT/metrics.txt")
		timeouts=$(grep '^gpulet_nvml_call_timeouts_total' "$OUT/metrics.txt" | grep -v ' 0$')
		# Side by side: gpulet's last values for the GPU, nvidia-smi's last line.
		{
			echo "gpulet /metrics (last scrape, $(basename "$last")):"
			grep -E "^DCGM_FI_DEV_(GPU_UTIL|FB_USED|FB_RESERVED|GPU_TEMP|POWER_USAGE|SM_CLOCK|MEM_CLOCK)\{.*UUID=\"$uuid\"" "$OUT/metrics.txt" |
				sed -E 's/^([A-Z_]+)\{.*\} (.*)$/  \1 \2/'
			echo "nvidia-smi (last query; columns uuid,$SMI_METRICS):"
			grep -i "$uuid" "$OUT/metrics/nvidia-smi.csv" | tail -1 | sed 's/^/  /'
			echo "max DCGM_FI_DEV_GPU_UTIL over the scrapes: $(cat "$OUT"/metrics/scrape-*.txt | grep "^DCGM_FI_DEV_GPU_UTIL{.*UUID=\"$uuid\"" | awk '{print $NF}' | sort -g | tail -1)"
		} >"$OUT/metrics-vs-nvidia-smi.txt" 2>&1
		if ((${#missing[@]} == 0)) && [[ $sample_errors == 0 && -z $timeouts ]] && grep -q '^gpulet_driver_up 1$' "$OUT/metrics.txt"; then
			check "metrics: dcgm series while loaded" PASS "$series DCGM series, $nscrapes scrapes; no sample error or NVML timeout (metrics-vs-nvidia-smi.txt)"
		else
			check "metrics: dcgm series while loaded" FAIL "missing for $uuid: ${missing[*]:-none}; sample errors ${sample_errors:-?}; timeouts: ${timeouts:-none}; $(grep '^gpulet_driver_up' "$OUT/metrics.txt")"
		fi
	fi
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

# --- 6. MPS: a pod of 2 containers on MPS replicas of one GPU, both at once ---
mpsdp=$dpdir/mpsdp
mpsroot=$dpdir/mps
mkdir -p "$mpsdp" "$mpsroot"
cat >"$OUT/mps-config.yaml" <<EOF
version: v1
sharing:
  mps:
    resources:
    - name: nvidia.com/gpu
      replicas: $MPS_REPLICAS
EOF
mpsctl=$(tool nvidia-cuda-mps-control)
if [[ $BACKEND != sim && -z $mpsctl ]]; then
	check "MPS: gpulet run with sharing.mps" FAIL "nvidia-cuda-mps-control not found beside this script, in $BIN or on PATH ($PATH): it comes with the driver"
else
	"$STUB" allocate --dir="$mpsdp" --count=1 --containers=2 --map-mounts --hold --timeout=60s \
		--env-out="$OUT/mps-allocate.env" --json-out="$OUT/mps-allocate.json" >"$OUT/mps-kubeletstub.out" 2>"$OUT/mps-kubeletstub.log" &
	mps_stub=$!
	pids+=("$mps_stub")
	"$GPULET" run --backend="$BACKEND" "${simflags[@]}" --device-plugin-path="$mpsdp" --config-file="$OUT/mps-config.yaml" \
		--mps-root="$mpsroot" ${mpsctl:+--mps-control="$mpsctl"} --metrics-address= --pod-resources-socket= >"$OUT/mps-gpulet-run.log" 2>&1 &
	mps_run=$!
	pids+=("$mps_run")
	for ((i = 0; i < 650; i++)); do
		[[ -s $OUT/mps-allocate.json ]] && break
		kill -0 "$mps_stub" 2>/dev/null || break
		kill -0 "$mps_run" 2>/dev/null || break
		sleep 0.1
	done
	if [[ -s $OUT/mps-allocate.env.1 && -s $OUT/mps-allocate.env.2 ]]; then
		mps_uuid=$(sed -n 's/^NVIDIA_VISIBLE_DEVICES=//p' "$OUT/mps-allocate.env.1")
		pipe=$(sed -n 's/^CUDA_MPS_PIPE_DIRECTORY=//p' "$OUT/mps-allocate.env.1")
		if [[ -n $pipe && -d $pipe && $pipe == "$mpsroot"/* ]] && grep -q "^CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$((100 / MPS_REPLICAS))$" "$OUT/mps-allocate.env.1"; then
			check "MPS: Allocate 2 containers x 1 replica" PASS "$(grep '^# container' "$OUT/mps-kubeletstub.out" | tr '\n' ' ')pipe $pipe"
		else
			check "MPS: Allocate 2 containers x 1 replica" FAIL "want CUDA_MPS_PIPE_DIRECTORY mapped to a folder under $mpsroot and thread percentage $((100 / MPS_REPLICAS)): $(tr '\n' ' ' <"$OUT/mps-allocate.env.1")"
		fi
		t0=$(now_ns)
		env_cmd "$OUT/mps-allocate.env.1" "$GPULET" validate -o json >"$OUT/mps-validate-1.json" 2>"$OUT/mps-validate-1.err" &
		v1=$!
		env_cmd "$OUT/mps-allocate.env.2" "$GPULET" validate -o json >"$OUT/mps-validate-2.json" 2>"$OUT/mps-validate-2.err" &
		v2=$!
		# While they run: the processes nvidia-smi sees (an MPS client is M+C).
		while kill -0 "$v1" 2>/dev/null || kill -0 "$v2" 2>/dev/null; do
			{ date -u +%H:%M:%S.%N; "$SMI"; } >>"$OUT/mps-nvidia-smi.txt" 2>&1
			sleep 0.5
		done
		wait "$v1"
		rc1=$?
		wait "$v2"
		rc2=$?
		mps_ms=$(ms_since "$t0")
		c1=$(json_int cudaDeviceCount "$OUT/mps-validate-1.json")
		c2=$(json_int cudaDeviceCount "$OUT/mps-validate-2.json")
		if ((rc1 == 0 && rc2 == 0)) && [[ $c1 == 1 && $c2 == 1 ]]; then
			check "MPS: 2 validates at once" PASS "both pass, CUDA sees 1 GPU ($mps_uuid) in each (${mps_ms} ms together)"
		else
			check "MPS: 2 validates at once" FAIL "exit $rc1/$rc2, CUDA sees ${c1:-?}/${c2:-?} GPUs: $(head -c 200 "$OUT/mps-validate-1.err") $(head -c 200 "$OUT/mps-validate-2.err")"
		fi
		ctl_log=$mpsroot/$mps_uuid/log/control.log
		if [[ $BACKEND == sim ]]; then
			check "MPS: clients ran through the daemon" SKIP "rehearsal: the simulated MPS daemon starts no server"
		else
			cp "$ctl_log" "$OUT/mps-control.log" 2>/dev/null
			clients=$(grep -ciE 'new client|starting new server|server .*start' "$ctl_log" 2>/dev/null)
			mc=$(grep -c 'M+C' "$OUT/mps-nvidia-smi.txt" 2>/dev/null)
			if ((${clients:-0} > 0 || ${mc:-0} > 0)); then
				check "MPS: clients ran through the daemon" PASS "control.log: ${clients:-0} client/server lines; nvidia-smi: ${mc:-0} M+C rows"
			else
				check "MPS: clients ran through the daemon" FAIL "no client or server in $ctl_log ($(wc -l <"$ctl_log" 2>/dev/null || echo missing) lines) and no M+C process in nvidia-smi: CUDA did not use MPS"
			fi
		fi
	else
		check "MPS: gpulet run, Allocate 2 replicas" FAIL "$(tail -2 "$OUT/mps-kubeletstub.log" | tr '\n' ' ') / gpulet: $(grep -m3 -E 'level=(ERROR|WARN)|Error' "$OUT/mps-gpulet-run.log" | tr '\n' ' ')"
	fi
	kill -TERM "$mps_run" 2>/dev/null
	wait_pid "$mps_run" 30
	rc=$?
	if [[ $BACKEND == sim ]]; then
		quit_log=$dpdir/sim/mps-control.log
	else
		quit_log=$mpsroot/${mps_uuid:-none}/log/control.log
	fi
	if ((rc == 0)) && grep -q 'msg="MPS control daemon stopped"' "$OUT/mps-gpulet-run.log" && grep -qi 'quit' "$quit_log" 2>/dev/null; then
		check "MPS: SIGTERM quits the daemon" PASS "gpulet exit 0; the daemon got quit ($(basename "$quit_log"))"
	else
		check "MPS: SIGTERM quits the daemon" FAIL "gpulet exit $rc; 'MPS control daemon stopped' logged: $(grep -c 'MPS control daemon stopped' "$OUT/mps-gpulet-run.log"); quit in $quit_log: $(grep -ci quit "$quit_log" 2>/dev/null || echo 'no log')"
	fi
	[[ $BACKEND != sim && -f $quit_log ]] && cp "$quit_log" "$OUT/mps-control.log"
	kill -TERM "$mps_stub" 2>/dev/null
	wait_pid "$mps_stub" 10
fi

# --- 7. labels, and GPU Feature Discovery's when its binary is here ---
"$GPULET" labels --backend="$BACKEND" "${simflags[@]}" --no-timestamp >"$OUT/labels.txt" 2>"$OUT/labels.err"
rc=$?
if ((rc == 0)) && grep -q "^nvidia.com/gpu.count=$ngpu$" "$OUT/labels.txt" && grep -q '^nvidia.com/gpu.product=' "$OUT/labels.txt"; then
	check "labels" PASS "$(wc -l <"$OUT/labels.txt") labels; $(grep -m1 '^nvidia.com/gpu.product=' "$OUT/labels.txt")"
else
	check "labels" FAIL "exit $rc, want nvidia.com/gpu.count=$ngpu and gpu.product: $(head -c 300 "$OUT/labels.err")"
fi
gfd=$(tool gpu-feature-discovery)
if [[ -n $gfd ]]; then
	timeout 60 "$gfd" --oneshot --no-timestamp --output-file="$OUT/gfd-labels.txt" >"$OUT/gfd.log" 2>&1
	rc=$?
	diff <(sort "$OUT/gfd-labels.txt" 2>/dev/null) <(sort "$OUT/labels.txt") >"$OUT/labels.diff"
	if ((rc == 0)) && [[ ! -s $OUT/labels.diff ]]; then
		check "labels vs gpu-feature-discovery" PASS "identical ($(wc -l <"$OUT/labels.txt") labels)"
	else
		check "labels vs gpu-feature-discovery" FAIL "gfd exit $rc; $(grep -c '^[<>]' "$OUT/labels.diff") lines differ (< gfd, > gpulet: labels.diff)"
	fi
else
	check "labels vs gpu-feature-discovery" SKIP "no gpu-feature-discovery beside this script, in $BIN or on PATH"
fi

# --- 8. CDI: every host path of the spec exists; what the node has beyond it ---
"$GPULET" cdi generate --backend="$BACKEND" "${simflags[@]}" --output="$OUT/cdi.yaml" >"$OUT/cdi.err" 2>&1
rc=$?
sed -nE 's/^[[:space:]-]*(hostPath|path): *"?(\/[^"[:space:]]*)"?[[:space:]]*$/\2/p' "$OUT/cdi.yaml" 2>/dev/null | sort -u >"$OUT/cdi-host-paths.txt"
cdi_missing=$(while read -r f; do [[ -e $f ]] || echo "$f"; done <"$OUT/cdi-host-paths.txt")
{
	ls -1d /dev/nvidia* /dev/nvidia-caps/* 2>/dev/null
	ls -1 /usr/local/nvidia/lib64/*.so* 2>/dev/null
} | sort -u | comm -23 - "$OUT/cdi-host-paths.txt" >"$OUT/cdi-node-not-in-spec.txt"
npaths=$(wc -l <"$OUT/cdi-host-paths.txt")
if [[ $BACKEND == sim ]] && ((rc == 0 && npaths > 0)); then
	check "CDI spec: host paths exist" SKIP "rehearsal: generated, $npaths host paths; the simulated node's /dev nodes are not on this machine"
elif ((rc == 0 && npaths > 0)) && [[ -z $cdi_missing ]]; then
	check "CDI spec: host paths exist" PASS "$npaths host paths, all here; $(wc -l <"$OUT/cdi-node-not-in-spec.txt") node files not in it (cdi-node-not-in-spec.txt)"
else
	check "CDI spec: host paths exist" FAIL "exit $rc, $npaths host paths; missing here: $(tr '\n' ' ' <<<"$cdi_missing" | head -c 300) $(head -c 200 "$OUT/cdi.err")"
fi

# --- 9. DRA: the ResourceSlice gpulet would publish ---
if "$GPULET" dra slice --help >/dev/null 2>&1; then
	"$GPULET" dra slice --backend="$BACKEND" "${simflags[@]}" --node-name="$(hostname)" >"$OUT/dra-slice.yaml" 2>"$OUT/dra-slice.err"
	rc=$?
	ndev=$(grep -cE '^    name: gpu-[0-9]+$' "$OUT/dra-slice.yaml")
	if ((rc == 0 && ndev == ngpu)); then
		check "DRA: ResourceSlice" PASS "$ndev devices ($(grep -m1 'productName' -A1 "$OUT/dra-slice.yaml" | sed -n 's/.*string: //p'))"
	else
		check "DRA: ResourceSlice" FAIL "exit $rc, $ndev gpu devices for $ngpu GPUs: $(head -c 300 "$OUT/dra-slice.err")"
	fi
else
	check "DRA: ResourceSlice" SKIP "this gpulet has no 'dra slice' command"
fi

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
	sk=""
	((skips == 0)) || sk=" ($skips SKIPPED)"
	if ((fails == 0)); then echo "ALL $((${#results[@]} - skips)) CHECKS PASSED$sk"; else echo "$fails OF $((${#results[@]} - skips)) CHECKS FAILED$sk"; fi
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
	echo "== /metrics during validate vs nvidia-smi"
	cat "$OUT/metrics-vs-nvidia-smi.txt" 2>/dev/null
	echo
	echo "== MPS: the environments Allocate returned (pipe folder mapped to the host)"
	for f in "$OUT"/mps-allocate.env.*; do [[ -f $f ]] && sed "s|^|$(basename "$f"): |" "$f"; done
	echo
	echo "== MPS control.log"
	cat "$OUT/mps-control.log" 2>/dev/null
	echo
	echo "== labels vs gpu-feature-discovery (< gfd, > gpulet)"
	cat "$OUT/labels.diff" 2>/dev/null
	echo
	echo "== CDI: node files not in the spec"
	cat "$OUT/cdi-node-not-in-spec.txt" 2>/dev/null
	echo
	echo "== gpulet run log"
	cat "$OUT/gpulet-run.log"
	echo
	echo "== gpulet run log (MPS)"
	cat "$OUT/mps-gpulet-run.log" 2>/dev/null
	echo
	echo "== kubeletstub log"
	cat "$OUT/kubeletstub.log"
} >>"$report"
cat "$report"
((fails == 0))
