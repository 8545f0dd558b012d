#!/usr/bin/env bash
# Runs shellcheck (warnings and errors, following sourced files) on every bash
# script in the repository. Installs Debian's shellcheck when it is missing
# and this runs as root, as test/e2e/lib/deps.sh installs the e2e packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v shellcheck >/dev/null; then
	[[ $(id -u) == 0 ]] || { echo "shellcheck is missing: apt-get install shellcheck (or run make vet as root)" >&2; exit 1; }
	log=$(mktemp)
	if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends shellcheck; } >"$log" 2>&1; then
		echo "apt-get install shellcheck failed:" >&2
		tail -n 30 "$log" >&2
		rm -f "$log"
		exit 1
	fi
	rm -f "$log"
fi

mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x -S warning "${scripts[@]}"
