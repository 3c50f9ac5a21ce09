#!/usr/bin/env bash
# The whole test suite: builds Kubo when Go is available (the Kubo tests need a real
# daemon; in CI they fail rather than skip without one), then runs nox's sessions and
# prints one closing line over every pytest session, also when a session failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
if command -v go >/dev/null 2>&1; then
    ANYHAMT_KUBO_BIN=$(bash scripts/install-kubo.sh | tail -n 1)
    export ANYHAMT_KUBO_BIN
else
    echo "go not found: Kubo tests will be skipped (they fail under CI=true)" >&2
fi
# py-hamt 3.6.0 in its own venv, for the interop tests (they fail under CI=true without it).
"$PYTHON" tests/_pyhamt.py || echo "py-hamt 3.6.0 is not available: interop tests will skip, or fail under CI" >&2
if [ ! -x .venv-nox/bin/nox ]; then
    "$PYTHON" -m venv .venv-nox
    .venv-nox/bin/python -m pip install --quiet --disable-pip-version-check "nox>=2025.2.9"
fi
rm -rf .reports
mkdir -p .reports
# No arguments: nox's default sessions (noxfile.py: nox.options.sessions).
status=0
if [ $# -eq 0 ]; then
    .venv-nox/bin/nox || status=$?
else
    .venv-nox/bin/nox --sessions "$@" || status=$?
fi
summary=0
"$PYTHON" scripts/summarize_junit.py .reports || summary=$?
if [ "$status" -ne 0 ]; then
    echo "nox failed (exit $status)" >&2
    exit "$status"
fi
exit "$summary"
