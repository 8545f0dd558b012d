# shellcheck shell=bash
# Shared helpers for the gpulet end-to-end test. Sourced, never executed.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)
E2E_CACHE=${GPULET_E2E_CACHE:-/var/cache/gpulet-e2e}
export GPULET_E2E_CACHE=$E2E_CACHE

# shellcheck disable=SC2034 # used by the scripts that source this file
if [[ -t 1 ]]; then
	C_RED=$'\e[31m' C_GREEN=$'\e[32m' C_YELLOW=$'\e[33m' C_BOLD=$'\e[1m' C_OFF=$'\e[0m'
else
	C_RED='' C_GREEN='' C_YELLOW='' C_BOLD='' C_OFF=''
fi

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }

# secs_since START_MS: seconds (3 decimals) elapsed since START_MS.
secs_since() { local d=$(($(now_ms) - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

log() { echo "${C_BOLD}[e2e $(date +%T)]${C_OFF} $*"; }
warn() { echo "${C_YELLOW}[e2e $(date +%T)] WARNING:${C_OFF} $*" >&2; }
# fail MSG: print MSG and exit the current (sub)shell with status 1.
fail() { echo "${C_RED}[e2e $(date +%T)] FAIL:${C_OFF} $*" >&2; exit 1; }

# wait_until TIMEOUT_S WHAT CMD...: runs CMD every 0.2 s until it succeeds; fails after TIMEOUT_S
# seconds, showing the last output of CMD. CMD exiting with ABORT (99) fails at once (it knows the
# wait is hopeless, e.g. the container crash-loops). Returns 0 on success.
ABORT=99
wait_until() {
	local timeout=$1 what=$2; shift 2
	local deadline=$(($(now_ms) + timeout * 1000)) out rc
	while true; do
		out=$("$@" 2>&1) && return 0
		rc=$?
		if ((rc == ABORT)); then
			echo "gave up waiting for: $what" >&2
			printf '%s\n' "$out" | tail -n 20 >&2
			return 1
		fi
		if (($(now_ms) > deadline)); then
			echo "timed out after ${timeout}s waiting for: $what" >&2
			[[ -n $out ]] && printf 'last check said:\n%s\n' "$out" | tail -n 20 >&2
			return 1
		fi
		sleep 0.2
	done
}

# retry_output TIMEOUT_S CMD...: runs CMD every 0.5 s until it succeeds and prints its output;
# fails after TIMEOUT_S seconds with CMD's last error on stderr. For reads that a component may
# refuse for a moment (the kubelet right after a restart: "pod does not exist" until it has taken
# its pods back from the API server).
retry_output() {
	local timeout=$1; shift
	local deadline=$(($(now_ms) + timeout * 1000)) out
	while true; do
		out=$("$@" 2>&1) && { printf '%s\n' "$out"; return 0; }
		if (($(now_ms) > deadline)); then
			printf 'gave up after %ss: %s: %s\n' "$timeout" "$*" "$out" >&2
			return 1
		fi
		sleep 0.5
	done
}

# section NAME FILE LINES: print the last LINES lines of FILE under a header (if it exists).
tail_file() {
	local name=$1 file=$2 lines=${3:-40}
	echo "----- $name: last $lines lines of $file -----"
	if [[ -s $file ]]; then tail -n "$lines" "$file"; else echo "(empty or missing)"; fi
}
