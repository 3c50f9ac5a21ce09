"""Run py-hamt 3.6.0 (the library anyhamt must interoperate with) in its own interpreter.

py-hamt pins dependencies that do not belong in anyhamt's environment, so it lives in a
separate virtualenv and tests drive it through small scripts run as subprocesses.

Where the interpreter comes from, first match wins:

1. ``$ANYHAMT_PYHAMT_PYTHON``;
2. the cached venv ``~/.cache/anyhamt/pyhamt-3.6.0-venv``;
3. ``/tmp/pyhamt-venv`` (a developer's ad-hoc venv), if py-hamt 3.6.0 imports there;
4. otherwise the cached venv is created: Python 3.12 from pyenv
   (``$(pyenv root)/versions/3.12*/bin/python``) or ``python3.12`` on PATH, then
   ``pip install py-hamt==3.6.0``. That needs the network; if it fails, ``None``.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from pathlib import Path

PYHAMT_VERSION = "3.6.0"
CACHED_VENV = Path.home() / ".cache" / "anyhamt" / f"pyhamt-{PYHAMT_VERSION}-venv"

__all__ = ["CACHED_VENV", "PYHAMT_VERSION", "pyhamt_python", "require_pyhamt", "run_pyhamt"]


def _has_pyhamt(python: str) -> bool:
    try:
        result = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('py-hamt'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == PYHAMT_VERSION


def _pyenv_root() -> str:
    """Where pyenv keeps its Pythons: ``$PYENV_ROOT``, else ``pyenv root``, else ~/.pyenv."""
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            found = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=60, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            found = ""
        if found:
            return found
    return os.path.expanduser("~/.pyenv")


def _python312() -> str | None:
    # pyenv's own interpreters first (newest 3.12 last in the sort): a `python3.12` on PATH
    # may be pyenv's shim, which fails unless 3.12 is the selected version.
    pattern = os.path.join(_pyenv_root(), "versions", "3.12*", "bin", "python")
    candidates = sorted(glob.glob(pattern), reverse=True)
    found = shutil.which("python3.12")
    if found:
        candidates.append(found)
    for candidate in candidates:
        try:
            ok = (
                subprocess.run(
                    [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
                    capture_output=True,
                    timeout=60,
                    check=False,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return candidate
    return None


def _create_venv() -> str | None:
    base = _python312()
    if base is None:
        return None
    python = CACHED_VENV / "bin" / "python"
    try:
        CACHED_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([base, "-m", "venv", str(CACHED_VENV)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"py-hamt=={PYHAMT_VERSION}"],
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(CACHED_VENV, ignore_errors=True)
        return None
    return str(python) if _has_pyhamt(str(python)) else None


@functools.cache
def pyhamt_python() -> str | None:
    """An interpreter with py-hamt 3.6.0 installed, creating one if needed; else None."""
    explicit = os.environ.get("ANYHAMT_PYHAMT_PYTHON")
    if explicit:
        return explicit
    for candidate in (CACHED_VENV / "bin" / "python", Path("/tmp/pyhamt-venv/bin/python")):
        if candidate.exists() and _has_pyhamt(str(candidate)):
            return str(candidate)
    return _create_venv()


def require_pyhamt(
    why: str = "py-hamt 3.6.0 is not installable here (needs Python 3.12 and PyPI)",
) -> str:
    """py-hamt's interpreter for a test that needs it: skip without one, but fail under CI,
    where the interop is part of what the suite promises."""
    import pytest  # here, not at the top: scripts/test.sh runs this file with a bare Python
    from _ci import on_ci

    python = pyhamt_python()
    if python is None:
        if on_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return python


def run_pyhamt(script: str, *args: str, timeout: float = 300) -> str:
    """Run ``script`` (Python source) under py-hamt's interpreter; its stdout.

    Raises ``RuntimeError`` with the script's stderr if it fails.
    """
    python = pyhamt_python()
    if python is None:
        raise RuntimeError("no interpreter with py-hamt available")
    result = subprocess.run(
        # -W ignore: py-hamt's dependencies warn on import; that is not under test.
        [python, "-W", "ignore", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"py-hamt script failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


if __name__ == "__main__":
    # scripts/test.sh warms the venv before the tests, so its one-off install (minutes on a
    # cold machine) does not count against any test's timeout.
    found = pyhamt_python()
    print(found or "py-hamt 3.6.0 could not be installed")
    raise SystemExit(0 if found else 1)
