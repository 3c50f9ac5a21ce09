"""One entry point for tests, lint, type checks, examples and benchmarks.

``nox`` alone runs the default sessions (what scripts/test.sh and CI run): the suite on
every installed Python with async tests on both backends, the suite on the lowest
versions pyproject.toml declares, the examples, lint, the type check and the docs build.
One backend: ``nox -s "tests-3.13(backend='trio')"``.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

PYTHONS = [v for v in ("3.12", "3.13") if shutil.which(f"python{v}")] or ["3.12"]
OLDEST_PYTHON = PYTHONS[0]
BACKENDS = ["both", "asyncio", "trio"]

nox.options.sessions = [
    *(f"tests-{python}(backend='both')" for python in PYTHONS),
    "tests-oldest",
    "examples",
    "lint",
    "typecheck",
    "docs",
]


def _pytest(session: nox.Session, report: str, *args: str) -> None:
    os.makedirs(".reports", exist_ok=True)
    session.run(
        "pytest",
        f"--junitxml=.reports/{report}.xml",
        *args,
        *session.posargs,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )


@nox.session(python=PYTHONS)
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The test suite; async tests on ``backend`` ("both": asyncio and trio)."""
    session.install("-e", ".[test,zarr]")
    _pytest(session, f"tests-{session.python}-{backend}", f"--backend={backend}")


def _lowest_pins() -> list[str]:
    """``name==lowest`` for every runtime dependency and extra pyproject.toml declares."""
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    declared = list(project["dependencies"])
    for extra in ("trio", "zarr"):
        declared += project["optional-dependencies"][extra]
    pins = []
    for requirement in declared:
        # name>=low, optionally with an upper bound (",<4"): the low end is what we pin.
        match = re.fullmatch(
            r"([A-Za-z0-9_.\-\[\]]+)>=([^,;\s]+)(,<[^,;\s]+)?", requirement.replace(" ", "")
        )
        if match is None:
            raise ValueError(f"cannot pin {requirement!r}: declare it as name>=low[,<high]")
        name = match.group(1).split("[")[0]
        pins.append(f"{name}=={match.group(2)}")
    return pins


@nox.session(name="tests-oldest", python=OLDEST_PYTHON)
def tests_oldest(session: nox.Session) -> None:
    """The suite on the lowest versions pyproject.toml declares, so the ranges are true."""
    constraints = os.path.join(session.create_tmp(), "lowest.txt")
    with open(constraints, "w") as f:
        f.write("\n".join(_lowest_pins()) + "\n")
    session.install("-c", constraints, "-e", ".[test,zarr,trio]")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    _pytest(session, f"tests-oldest-{session.python}")


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
    """mypy --strict over the package and the tests (pyproject.toml's [tool.mypy])."""
    session.install("-e", ".[test,zarr,trio,otel]", "mypy==2.4.1")
    session.run("mypy", "anyhamt", "tests")


# Pinned like ruff and mypy: a new release's new warning must not fail an old commit.
DOCS_REQUIREMENTS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.1",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "ruff==0.17.6",  # mkdocstrings formats signatures with it
]


@nox.session(python=PYTHONS[-1])
def docs(session: nox.Session) -> None:
    """Build the documentation site (docs/, mkdocs.yml); any warning fails the build."""
    session.install(*DOCS_REQUIREMENTS, "-e", ".[zarr]")
    site = os.path.join(session.create_tmp(), "site")
    # Material prints a notice about its successor on every build; it is not a warning.
    session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python="3.12")
def benchmarks(session: nox.Session) -> None:
    """Core benchmark against py-hamt 3.6.0 (which it installs in its own venv)."""
    session.install("-e", ".", "psutil")
    session.run("python", "benchmarks/run_core.py", *session.posargs)


@nox.session(name="benchmarks-zarr", python="3.12")
def benchmarks_zarr(session: nox.Session) -> None:
    """Zarr benchmark: anyhamt vs zarr's own stores vs py-hamt 3.6.0 (benchmarks/README.md)."""
    session.install("-e", ".[zarr,trio]", "dask", "psutil")
    session.run("python", "benchmarks/run_zarr.py", *session.posargs)
