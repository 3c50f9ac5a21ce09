"""One entry point for tests, lint, type checks, examples and benchmarks."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "examples", "lint", "typecheck"]

PYTHONS = [v for v in ("3.12", "3.13") if shutil.which(f"python{v}")] or ["3.12"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio (every async test runs on both)."""
    session.install("-e", ".[test,zarr]")
    os.makedirs(".reports", exist_ok=True)
    session.run(
        "pytest",
        f"--junitxml=.reports/tests-{session.python}.xml",
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


@nox.session(python=PYTHONS[-1])
def examples(session: nox.Session) -> None:
    """Run every example end to end against a throwaway local store."""
    session.install("-e", ".[trio]")
    tmp = session.create_tmp()
    session.run("python", "examples/local_kv.py", "--store", os.path.join(tmp, "ex.sqlite3"))


@nox.session(python=PYTHONS[-1])
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new rule must not fail an old commit
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[-1])
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,zarr]", "mypy==2.4.1")
    session.run("mypy")


@nox.session(python="3.12")
def benchmarks(session: nox.Session) -> None:
    """Core benchmark against py-hamt 3.6.0 (which it installs in its own venv)."""
    session.install("-e", ".", "psutil")
    session.run("python", "benchmarks/run_core.py", *session.posargs)
