#!/usr/bin/env bash
# Tears down an e2e cluster left running (GPULET_E2E_KEEP=1, or a run that was killed).
#   test/e2e/down.sh [WORK_DIR]     (default: the latest run, /var/tmp/gpulet-e2e/latest)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
source "$E2E_DIR/lib/cluster.sh"
W=$(readlink -f "${1:-${W:-${GPULET_E2E_WORKDIR:-/var/tmp/gpulet-e2e}/latest}}")
[[ -f $W/pids/ns.pid ]] || { echo "no cluster running in $W"; exit 0; }
cluster_down
rm -rf "$W/varlib" "$W/node2" "$W/images"
echo "cluster in $W torn down; logs kept in $W/logs"
