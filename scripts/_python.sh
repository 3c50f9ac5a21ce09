# Sourced by the other scripts: puts every Python >= 3.12 that pyenv keeps on PATH and
# sets PYTHON to the newest one found (anyhamt needs 3.12 or newer).
for dir in "$HOME"/.pyenv/versions/3.1[2-9]*/bin; do
    [ -x "$dir/python3" ] && PATH="$dir:$PATH"
done
export PATH
PYTHON=""
for candidate in python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
        PYTHON=$(command -v "$candidate")
        break
    fi
done
if [ -z "$PYTHON" ]; then
    echo "anyhamt needs Python >= 3.12; install one (e.g. 'pyenv install 3.12') and retry" >&2
    exit 2
fi
