#!/usr/bin/env bash
# Prints the shared/ folder that lies beside the repository's checkout (read-only material: the
# seed guide, NVIDIA's mock NVML, fixtures). A git worktree finds the one beside its main checkout.
# GPULET_SHARED overrides.
set -euo pipefail
if [[ -n ${GPULET_SHARED:-} ]]; then echo "$GPULET_SHARED"; exit 0; fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
for cand in "$top/../shared" "$(cd "$top" && cd "$(git rev-parse --git-common-dir 2>/dev/null || echo .)" && pwd)/../../shared"; do
	if [[ -d $cand/third_party ]]; then (cd "$cand" && pwd); exit 0; fi
done
echo "shared-dir: no shared/ folder beside $top; set GPULET_SHARED" >&2
exit 1
