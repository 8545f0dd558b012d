#!/usr/bin/env bash
# Prints gpulet's release version: the tag on HEAD (v1.2.3), else v0.0.0-<commit time, UTC,
# yyyymmddhhmmss>-<12 hex of the commit> (the form of Go's pseudo-versions), with -dirty when
# tracked files differ from the commit; "v0.0.0-unknown" outside a git checkout. The same commit
# always gives the same version, on any machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
	echo v0.0.0-unknown
	exit 0
fi
if ! v=$(git describe --tags --exact-match --match 'v[0-9]*' HEAD 2>/dev/null); then
	v=v0.0.0-$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S HEAD)-$(git rev-parse --short=12 HEAD)
fi
git update-index -q --refresh >/dev/null 2>&1 || true
git diff-index --quiet HEAD -- 2>/dev/null || v=$v-dirty
echo "$v"
