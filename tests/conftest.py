from __future__ import annotations

import gc
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

# The shared helpers (_ci, _helpers, _pyhamt, _zarr_datasets) import plainly.
sys.path.insert(0, os.path.dirname(__file__))

from _ci import on_ci
from _pyhamt import require_pyhamt

from anyhamt import InMemoryCAS, LocalCAS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

# Hypothesis: the "ci" profile keeps every example but cannot fail on machine speed (these
# machines have 2 shared cores and may run at a load of 14), and draws the same examples
# each run so a rare input cannot turn one landing red and the next green. "dev" keeps
# hypothesis's random exploration and only drops the per-example deadline.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    print_blob=True,
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if on_ci() else "dev"))

pytest_plugins = ["pytester"]  # tests/test_scripts.py runs pytest on sample tests

# Every async test runs on both backends; a test narrows this only with a stated reason.
BACKENDS = ["asyncio", "trio"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=["both", *BACKENDS],
        default="both",
        help="run async tests on this anyio backend only (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend")
        backends = BACKENDS if chosen == "both" else [chosen]
        # A test that pins itself (parametrize on anyio_backend) keeps its own choice.
        if not any(
            "anyio_backend" in mark.args[0].split(",")
            for mark in metafunc.definition.iter_markers("parametrize")
            if mark.args and isinstance(mark.args[0], str)
        ):
            metafunc.parametrize("anyio_backend", backends)


@pytest.fixture
def anyio_backend() -> str:
    # Parametrised in pytest_generate_tests (or by the test itself); never used bare.
    raise AssertionError("anyio_backend is parametrised by conftest.pytest_generate_tests")


@pytest.fixture(scope="session")
def pyhamt() -> str:
    """py-hamt 3.6.0's interpreter (tests/_pyhamt.py); skips without it, fails under CI."""
    return require_pyhamt()


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    """Fail the test if anything it opened (a socket, a file, a client) was left for the
    garbage collector to close: ``ResourceWarning`` is ignored by default, so look for it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


@pytest.fixture(params=["memory", "local"])
async def memory_or_local_cas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each local block store in turn: an ``InMemoryCAS``, then a ``LocalCAS`` file."""
    if request.param == "memory":
        yield InMemoryCAS()
        return
    async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
        yield local
