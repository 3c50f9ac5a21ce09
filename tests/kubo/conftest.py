"""Fixtures that run a real Kubo daemon (see tests/kubo/_daemon.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from _ci import on_ci

from anyhamt import KuboCAS

from ._daemon import KuboDaemon, find_kubo_binary

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture(scope="session")
def kubo_binary() -> str:
    binary = find_kubo_binary()
    if binary is None:
        message = (
            "no Kubo binary: run scripts/install-kubo.sh, or set ANYHAMT_KUBO_BIN,"
            " or put `ipfs` on PATH"
        )
        # On CI a missing daemon is a broken setup, not a reason to skip silently.
        if on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"ANYHAMT_KUBO_BIN={binary!r} is not an executable file", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def kubo_daemon(kubo_binary: str) -> Iterator[KuboDaemon]:
    """One daemon shared by the whole session. Tests must not stop it."""
    daemon = KuboDaemon(kubo_binary)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def fresh_kubo_daemon(kubo_binary: str) -> Iterator[KuboDaemon]:
    """A daemon of the test's own, on a new repo, free to stop() and start()."""
    daemon = KuboDaemon(kubo_binary)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
async def kubo_cas(kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
    """A KuboCAS on the shared daemon, closed after the test (on the test's loop)."""
    async with KuboCAS(
        rpc_base_url=kubo_daemon.rpc_url, gateway_base_url=kubo_daemon.gateway_url
    ) as cas:
        yield cas
