#!/usr/bin/env bash
# The layering rules of the tree, from `go list -deps` of the product code
# (no tests):
#   - daemon is the only package that depends on both a server (plugin, dra)
#     and a reporter (labels, metrics); only what is above daemon (cmd)
#     reaches both through it.
#   - nothing daemon or cmd/gpulet depends on is a test helper package
#     (a name ending in "test": plugintest, nvmlmocktest, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

mod=$(go list -m)
in=$mod/internal
bad=0
while read -r pkg deps; do
	deps=" $pkg $deps " # a server or reporter counts itself
	[[ $pkg == "$in/daemon" || $deps == *" $in/daemon "* ]] && continue
	server='' reporter=''
	for s in plugin dra; do [[ $deps == *" $in/$s "* ]] && server=$s; done
	for r in labels metrics; do [[ $deps == *" $in/$r "* ]] && reporter=$r; done
	if [[ -n $server && -n $reporter ]]; then
		echo "$pkg depends on the server $server and the reporter $reporter: only daemon wires servers to reporters" >&2
		bad=1
	fi
done < <(go list -f '{{.ImportPath}} {{join .Deps " "}}' ./...)

while read -r pkg; do
	if [[ $pkg == "$mod/"* && ${pkg##*/} == *test ]]; then
		echo "product code depends on the test package $pkg (go list -deps ./cmd/gpulet ./internal/daemon)" >&2
		bad=1
	fi
done < <(go list -deps ./cmd/gpulet ./internal/daemon)
exit $bad
