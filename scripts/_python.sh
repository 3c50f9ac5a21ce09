# Sourced by the other scripts: puts every Python >= 3.12 that pyenv keeps on PATH and
# sets PYTHON to the newest one found (anyhamt needs 3.12 or newer).
#
# pyenv's root is $PYENV_ROOT, else what `pyenv root` says, else ~/.pyenv. Only shell
# built-ins are used below, so this works with any PATH.

_anyhamt_pyenv_root="${PYENV_ROOT:-}"
if [ -z "$_anyhamt_pyenv_root" ] && command -v pyenv >/dev/null 2>&1; then
    _anyhamt_pyenv_root=$(pyenv root 2>/dev/null || true)
fi
_anyhamt_pyenv_root="${_anyhamt_pyenv_root:-$HOME/.pyenv}"

# "3.12.7" from `python --version` ("Python 3.12.7"); empty if it does not run.
_anyhamt_version() {
    local out
    out=$("$1" --version 2>&1) || return 0
    case "$out" in
        "Python "*) echo "${out#Python }" ;;
    esac
}

# Whether a version string is 3.12 or newer.
_anyhamt_new_enough() {
    local major minor rest
    IFS=. read -r major minor rest <<<"$1"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
    ((major > 3 || (major == 3 && minor >= 12)))
}

# Oldest first, so the newest ends up first on PATH.
for _anyhamt_dir in "$_anyhamt_pyenv_root"/versions/3.1[2-9]*/bin; do
    [ -x "$_anyhamt_dir/python3" ] && PATH="$_anyhamt_dir:$PATH"
done
export PATH

PYTHON=""
_anyhamt_found=""
for _anyhamt_candidate in python3.13 python3.12 python3 python; do
    _anyhamt_path=$(command -v "$_anyhamt_candidate" 2>/dev/null) || continue
    _anyhamt_v=$(_anyhamt_version "$_anyhamt_path")
    if _anyhamt_new_enough "$_anyhamt_v"; then
        PYTHON="$_anyhamt_path"
        break
    fi
    _anyhamt_found="$_anyhamt_found
  $_anyhamt_path (${_anyhamt_v:-does not run})"
done
if [ -z "$PYTHON" ]; then
    # Also list the Pythons pyenv keeps that are too old, so the fix is obvious.
    for _anyhamt_path in "$_anyhamt_pyenv_root"/versions/*/bin/python3; do
        [ -x "$_anyhamt_path" ] || continue
        _anyhamt_v=$(_anyhamt_version "$_anyhamt_path")
        _anyhamt_found="$_anyhamt_found
  $_anyhamt_path (${_anyhamt_v:-does not run})"
    done
    {
        echo "anyhamt needs Python >= 3.12; found${_anyhamt_found:- none}"
        echo "(looked on PATH and in $_anyhamt_pyenv_root/versions; set PYENV_ROOT to look in another pyenv)"
        echo "install one (e.g. 'pyenv install 3.12', or your system's python3.12 package) and retry"
    } >&2
    exit 2
fi
unset _anyhamt_pyenv_root _anyhamt_dir _anyhamt_candidate _anyhamt_path _anyhamt_v _anyhamt_found
