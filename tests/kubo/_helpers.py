"""Helpers shared by the Kubo tests: a store on a daemon, a loop in another thread, the
per-loop pool of a store."""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any

import anyio

from anyhamt import KuboCAS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyhamt.cas._http import FastPool

    from ._daemon import KuboDaemon


def cas_for(daemon: KuboDaemon, **kwargs: Any) -> KuboCAS:
    """A KuboCAS on ``daemon``'s RPC and gateway, with any other settings given."""
    return KuboCAS(rpc_base_url=daemon.rpc_url, gateway_base_url=daemon.gateway_url, **kwargs)


async def store(daemon: KuboDaemon, blocks: list[bytes]) -> list[Any]:
    """Save raw blocks through a store of their own (closed after): their CIDs."""
    async with cas_for(daemon) as writer:
        return [await writer.save(b, "raw") for b in blocks]


def pool_of(cas: KuboCAS) -> FastPool:
    """The running loop's fast-path pool of ``cas``."""
    return cas._loops[anyio.lowlevel.current_token().native_token].fast


def run_in_thread(
    backend: str, fn: Callable[[], Awaitable[Any]]
) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` with ``anyio.run`` on a new thread; the result or error lands in the list."""
    outcome: list[Any] = []

    def main() -> None:
        try:
            outcome.append(anyio.run(fn, backend=backend))
        except BaseException as exc:  # reported by the test
            outcome.append(exc)

    # A fresh context: the thread must not inherit the test loop's sniffio state.
    thread = threading.Thread(target=contextvars.Context().run, args=(main,), daemon=True)
    thread.start()
    return thread, outcome
