"""What README.md shows is true: its Python snippets and its command-line block run, and
scripts/_python.sh (behind its two commands) finds Python wherever pyenv lives.

Each snippet runs as a user would run it: a fresh interpreter in an empty directory, with
HOME and ANYHAMT_HOME pointed into the test's tmp dir (so the default store is a new one)
and warnings as errors. A snippet that names Kubo's default ports (the README's examples
assume a daemon on them, see "A Kubo daemon") is marked ``kubo`` and runs against the test
daemon: the test replaces those two URLs by the daemon's, and fails if it finds neither.
The block that starts a daemon is not run here: it would take Kubo's fixed ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The Kubo fixtures (a session daemon; skip without a binary, fail under CI), for the
# snippets that need one. Imported, so pytest finds them in this module too.
from kubo.conftest import kubo_binary, kubo_daemon  # noqa: F401

if TYPE_CHECKING:
    from kubo._daemon import KuboDaemon

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
KUBO_RPC = "http://127.0.0.1:5001"
KUBO_GATEWAY = "http://127.0.0.1:8080"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks(language: str) -> list[str]:
    return [code for lang, code in _FENCE.findall(README.read_text()) if lang == language]


def needs_kubo(code: str) -> bool:
    return KUBO_RPC in code or KUBO_GATEWAY in code


def on_daemon(code: str, daemon: KuboDaemon) -> str:
    return code.replace(KUBO_RPC, daemon.rpc_url).replace(KUBO_GATEWAY, daemon.gateway_url)


def user_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "home")
    env["ANYHAMT_HOME"] = str(tmp_path / "anyhamt-home")
    env.pop("XDG_DATA_HOME", None)
    # The `anyhamt` command installed next to this Python, as after scripts/example.sh.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "home").mkdir()
    return env


def _snippet_params(language: str) -> list[pytest.ParameterSet]:
    return [
        pytest.param(
            code, id=f"{language}-{i}", marks=[pytest.mark.kubo] if needs_kubo(code) else []
        )
        for i, code in enumerate(readme_blocks(language), start=1)
    ]


def test_the_readme_has_what_these_tests_run() -> None:
    # Guards the extraction: a README change that hides every snippet fails here.
    python = readme_blocks("python")
    assert len(python) >= 2
    assert any("LocalCAS" in code for code in python)
    assert any(needs_kubo(code) for code in python)
    assert any("anyhamt put" in code for code in readme_blocks("bash"))


@pytest.mark.parametrize("code", _snippet_params("python"))
def test_python_snippet_runs(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if needs_kubo(code):
        code = on_daemon(code, request.getfixturevalue("kubo_daemon"))
    script = tmp_path / "snippet.py"
    script.write_text(code)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=work,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"README snippet failed:\n{code}\n{result.stderr}"
    if "LocalCAS()" in code:
        # The default store: under ANYHAMT_HOME, nowhere else.
        assert (tmp_path / "anyhamt-home" / "blocks.sqlite3").is_file()


def _cli_block() -> str:
    blocks = [code for code in readme_blocks("bash") if "anyhamt put" in code]
    assert len(blocks) == 1, "expected one command-line block in README.md"
    return blocks[0]


def _run_bash(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=work,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_command_line_block_runs_on_the_local_store(tmp_path: Path) -> None:
    local = "\n".join(line for line in _cli_block().splitlines() if "--kubo" not in line)
    result = _run_bash(local, tmp_path)
    assert result.returncode == 0, result.stderr
    # `get` to a pipe: the bytes exactly; `ls`: one key per line; `get --json`: a line.
    assert result.stdout.startswith("hello")
    lines = result.stdout.removeprefix("hello").splitlines(keepends=True)
    assert sorted(lines[:2]) == ["greeting\n", "other\n"]
    assert lines[2:] == ['{"n": 1, "raw": {"/": {"bytes": "AAE"}}}\n']
    assert (tmp_path / "work" / "map.car").is_file()


@pytest.mark.kubo
def test_command_line_block_runs_with_kubo(tmp_path: Path, kubo_daemon: KuboDaemon) -> None:  # noqa: F811
    script = _cli_block()
    assert KUBO_RPC in script
    result = _run_bash(on_daemon(script, kubo_daemon), tmp_path)
    assert result.returncode == 0, result.stderr
    # `car import` printed the map's root; `get` through Kubo read the value back.
    *_, root, value = result.stdout.split("\n")
    assert root.startswith("bafyr4i") and value == "hello"


# -- scripts/_python.sh -------------------------------------------------------------------


def _stub_python(path: Path, version: str) -> None:
    """An executable that answers `--version` like a Python of that version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}"\n')
    path.chmod(0o755)


def _source_python_sh(
    tmp_path: Path, *, pyenv_root: Path | None = None, path_dirs: list[Path] | None = None
) -> subprocess.CompletedProcess[str]:
    """Source the script under `set -euo pipefail` (as scripts/*.sh do) with only the given
    PATH (no system Python can answer) and print the PYTHON it chose."""
    env = {"HOME": str(tmp_path / "home"), "PATH": os.pathsep.join(map(str, path_dirs or []))}
    if pyenv_root is not None:
        env["PYENV_ROOT"] = str(pyenv_root)
    return subprocess.run(
        ["/bin/bash", "-c", 'set -euo pipefail; . scripts/_python.sh; echo "$PYTHON"'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_sh_finds_python_under_pyenv_root(tmp_path: Path) -> None:
    pyenv_root = tmp_path / "elsewhere" / "pyenv"
    bin_dir = pyenv_root / "versions" / "3.12.7" / "bin"
    _stub_python(bin_dir / "python3", "3.12.7")
    _stub_python(bin_dir / "python3.12", "3.12.7")
    result = _source_python_sh(tmp_path, pyenv_root=pyenv_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{bin_dir / 'python3.12'}\n"


def test_python_sh_asks_pyenv_for_its_root(tmp_path: Path) -> None:
    pyenv_root = tmp_path / "by-pyenv-root"
    bin_dir = pyenv_root / "versions" / "3.13.1" / "bin"
    _stub_python(bin_dir / "python3", "3.13.1")
    _stub_python(bin_dir / "python3.13", "3.13.1")
    tools = tmp_path / "tools"
    tools.mkdir()
    pyenv = tools / "pyenv"
    pyenv.write_text(f'#!/bin/sh\n[ "$1" = root ] && echo "{pyenv_root}"\n')
    pyenv.chmod(0o755)
    result = _source_python_sh(tmp_path, path_dirs=[tools])  # PYENV_ROOT unset
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{bin_dir / 'python3.13'}\n"


def test_python_sh_lists_the_pythons_it_found_when_none_will_do(tmp_path: Path) -> None:
    pyenv_root = tmp_path / "pyenv"
    old = pyenv_root / "versions" / "3.11.4" / "bin" / "python3"
    _stub_python(old, "3.11.4")
    system = tmp_path / "usr-bin"
    _stub_python(system / "python3", "3.10.2")
    result = _source_python_sh(tmp_path, pyenv_root=pyenv_root, path_dirs=[system])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("anyhamt needs Python >= 3.12; found\n")
    assert f"  {system / 'python3'} (3.10.2)\n" in result.stderr
    assert f"  {old} (3.11.4)\n" in result.stderr
    assert f"in {pyenv_root}/versions;" in result.stderr and "pyenv install 3.12" in result.stderr


def test_python_sh_says_where_it_looked_when_it_found_none(tmp_path: Path) -> None:
    pyenv_root = tmp_path / "empty-pyenv"
    result = _source_python_sh(tmp_path, pyenv_root=pyenv_root)
    assert result.returncode == 2
    assert result.stderr == (
        "anyhamt needs Python >= 3.12; found none\n"
        f"(looked on PATH and in {pyenv_root}/versions; set PYENV_ROOT to look in another pyenv)\n"
        "install one (e.g. 'pyenv install 3.12', or your system's python3.12 package) and retry\n"
    )
