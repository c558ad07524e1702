#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in one command (docs/gpu.md). A GPU machine without internet gets
# the packages it lacks as wheels in wheels/ (git-ignored; how to fill it: docs/gpu.md), installed
# into a folder of their own first. Arguments go to `python -m benchmarks.gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "wheels/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/nodulocc-site"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" wheels/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
fi
exec python3 -m benchmarks.gpu "$@"
