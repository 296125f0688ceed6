#!/usr/bin/env bash
# Build the analytics component: components/target/python/analytics.wasm.
#
#   components/python/analytics/build.sh          # rebuild only if app.py or the WIT changed
#   components/python/analytics/build.sh --force  # always rebuild
#
# Needs componentize-py (`python3 -m pip install componentize-py`; `just build-python`
# installs it). It targets the plain `wasi:http/proxy@0.2.12` world from the repo's
# vendored WIT (wit/ at the repo root); the Python bindings are generated in memory
# during the build, nothing is written to the source tree.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
wit="$root/wit"
world="wasi:http/proxy@0.2.12"
out="$root/components/target/python/analytics.wasm"

if [[ "${1:-}" != "--force" && -f "$out" ]]; then
    newer="$(find "$here" "$wit" -newer "$out" \( -name '*.py' -o -name '*.wit' -o -name build.sh \) -print -quit)"
    if [[ -z "$newer" ]]; then
        echo "analytics.wasm is up to date"
        exit 0
    fi
fi

# The console script may not be on PATH right after a pip install (pip --user
# bin directory, pyenv shims not yet rehashed): fall back to the module.
if command -v componentize-py >/dev/null; then
    cpy=(componentize-py)
else
    cpy=(python3 -c 'import sys, componentize_py; sys.argv[0] = "componentize-py"; componentize_py.script()')
fi

mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"${cpy[@]}" -q -d "$wit" -w "$world" componentize -p "$here" app -o "$tmp"
mv "$tmp" "$out"
echo "built $out ($(du -h "$out" | cut -f1))"
