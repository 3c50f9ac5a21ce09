"""Fixtures for the Kubo tests: a real daemon (tests/kubo/_daemon.py), a store on it, and a
record of the gateway GETs that went through httpx rather than the fast path."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _ci import on_ci

from ._daemon import KuboDaemon, find_kubo_binary
from ._fake_gateway import FakeGateways
from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from anyhamt import KuboCAS


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


def _daemon(binary: str) -> Iterator[KuboDaemon]:
    # The one way a fixture runs a daemon: started, yielded, stopped and its repo deleted
    # (also when it fails to start).
    daemon = KuboDaemon(binary)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="session")
def kubo_daemon(kubo_binary: str) -> Iterator[KuboDaemon]:
    """One daemon shared by the whole session. Tests must not stop it."""
    yield from _daemon(kubo_binary)


@pytest.fixture
def fresh_kubo_daemon(kubo_binary: str) -> Iterator[KuboDaemon]:
    """A daemon of the test's own, on a new repo, free to stop() and start()."""
    yield from _daemon(kubo_binary)


@pytest.fixture
async def kubo_cas(kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
    """A KuboCAS on the shared daemon, closed after the test (on the test's loop)."""
    async with cas_for(kubo_daemon) as cas:
        yield cas


@pytest.fixture
def httpx_gets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the gateway GETs that went through httpx (not the fast path)."""
    seen: list[str] = []
    send = httpx.AsyncClient.send

    async def counting(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        if request.method == "GET":
            seen.append(request.url.path)
        return await send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting)
    return seen


@pytest.fixture
async def fake_gateway() -> AsyncIterator[FakeGateways]:
    """``await fake_gateway(respond)`` starts a scripted gateway on 127.0.0.1 (see
    tests/kubo/_fake_gateway.py); all of them stop after the test. No daemon needed."""
    async with FakeGateways() as servers:
        yield servers
