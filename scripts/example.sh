#!/usr/bin/env bash
# The main job on the embedded default: store a map in a HAMT on the persistent local
# store, reopen it from its root in a second process, read it back, print the root CID.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# trio: the example reads the map back on trio to show both backends.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[trio]"
exec .venv/bin/python examples/local_kv.py "$@"
