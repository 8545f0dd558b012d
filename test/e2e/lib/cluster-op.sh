#!/usr/bin/env bash
# cluster-op.sh OP: an operation on the running e2e cluster that lib/cluster.sh owns (its components'
# processes), for the Go scenarios (test/e2e/scenarios: S.ClusterOp). Needs the environment run.sh
# exports (W, BIN, ...).
#
#   restart-kubelet   stop the GPU node's kubelet (SIGTERM, SIGKILL after 20 s) and start it again
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$E2E_DIR/lib/cluster.sh"
: "${W:?W (the run folder) is not set}" "${BIN:?BIN (the Kubernetes binaries) is not set}"

case ${1:-} in
restart-kubelet)
	stop_component kubelet 20
	start_kubelet
	;;
*) fail "cluster-op.sh: unknown operation '${1:-}' (restart-kubelet)" ;;
esac
