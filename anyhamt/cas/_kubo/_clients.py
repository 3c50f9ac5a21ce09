"""Per-loop HTTP state: one httpx client, one fast-path pool and one limiter per running
event loop, and the keeper task that closes them on their own loop.

An ``httpx.AsyncClient`` and an ``anyio.CapacityLimiter`` belong to the loop that created
them (docs/architecture.md §3), so a KuboCAS keeps one of each per running loop, keyed by
the loop (``current_loop_key``), in a dict guarded by a ``threading.Lock``. Next to each
client it starts a small background task on that loop (the "keeper") whose only job is to
close the client on that loop: when ``aclose()`` asks (from whichever loop), when the store
is garbage collected, or when the loop itself shuts down and cancels its tasks. That is
what lets one KuboCAS serve zarr's asyncio loop and a trio application at the same time
without leaking connections or warnings.

The httpx client is built on first use: reads on the fast path never need one, and
building one costs more than a hundred fast reads.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Final

import anyio

from ..._loops import LoopHandle, current_loop_key, spawn_system_task
from .._http import FastPool

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx

__all__ = ["LoopState", "LoopStates"]

# Batch uploads in flight at once during a flush (each also takes a limiter token); the
# connection limit of an owned client leaves room for them next to the reads.
UPLOADS_IN_FLIGHT: Final = 4


class LoopState:
    """The client, fast-path connections and limiter of one running loop, and the task that
    will close the client and the connections."""

    __slots__ = ("_make", "client", "closing", "fast", "keeper", "key", "limiter", "loop", "owned")

    def __init__(
        self,
        make: Callable[[], httpx.AsyncClient] | None,
        client: httpx.AsyncClient | None,
        limit: int,
    ) -> None:
        self.loop = LoopHandle()
        self.key = self.loop.key
        self._make = make
        # None until the first request that needs httpx (see ``http()``).
        self.client = client
        self.owned = client is None  # a supplied client is never closed here
        self.fast = FastPool(limit)
        self.limiter = anyio.CapacityLimiter(limit)
        self.keeper: anyio.CancelScope | None = None
        self.closing = False

    def http(self) -> httpx.AsyncClient:
        """This loop's httpx client, built now if no request needed one before."""
        client = self.client
        if client is None:
            assert self._make is not None
            client = self.client = self._make()
        return client

    def start_keeper(self) -> None:
        async def keep() -> None:
            try:
                with anyio.CancelScope() as scope:
                    self.keeper = scope
                    if not self.closing:
                        await anyio.sleep_forever()
            finally:
                # Runs when aclose() or the finalizer cancels us, or when the loop shuts
                # down and cancels its tasks: either way, on the client's own loop.
                await self.aclose()

        spawn_system_task(keep)

    async def aclose(self) -> None:
        """Close the client and the fast-path connections; on the state's own loop."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.fast.aclose()
            if self.owned and self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.aclose()

    def close_soon(self) -> None:
        """Ask the keeper to close the client, from any thread. A finished loop: drop it."""
        self.closing = True

        def cancel() -> None:
            if self.keeper is not None:
                self.keeper.cancel()

        # If the loop has finished, there is nothing to close: its sockets went with it.
        self.loop.call_soon(cancel)


def _release_all(states: dict[object, LoopState]) -> None:
    # The finalizer: a KuboCAS dropped without aclose() still closes its clients.
    for state in list(states.values()):
        if state.owned:
            state.close_soon()
    states.clear()


class LoopStates:
    """Every loop's ``LoopState`` for one KuboCAS; safe from any thread.

    ``client``: a supplied client, used on the first loop that asks and on no other;
    ``make``: builds a client for any other loop (KuboCAS closes those).
    """

    __slots__ = ("__weakref__", "_client", "_client_key", "_make", "_mutex", "limit", "loops")

    def __init__(
        self,
        owner: object,
        limit: int,
        client: httpx.AsyncClient | None,
        make: Callable[[], httpx.AsyncClient],
    ) -> None:
        self.limit = limit
        self._client = client
        self._client_key: object | None = None
        self._make = make
        self._mutex = threading.Lock()
        self.loops: dict[object, LoopState] = {}
        # Tied to the KuboCAS, not to this object: the store's collection closes them.
        weakref.finalize(owner, _release_all, self.loops)

    def state(self) -> LoopState:
        """The running loop's state, made on first use."""
        key = current_loop_key()
        state = self.loops.get(key)
        return state if state is not None else self._new_state(key)

    def _new_state(self, key: object) -> LoopState:
        with self._mutex:
            state = self.loops.get(key)
            if state is not None:
                return state
            if self._client is not None and self._client_key in (None, key):
                # A supplied client serves the first loop that uses it, and only that one.
                self._client_key = key
                state = LoopState(None, self._client, self.limit)
            else:
                state = LoopState(self._make, None, self.limit)
            self.loops[key] = state
        if state.owned:
            state.start_keeper()
        return state

    async def aclose(self) -> None:
        """Close every owned state: this loop's now, the others' on their own loops."""
        with self._mutex:
            states = list(self.loops.values())
            self.loops.clear()
            self._client_key = None
        try:
            here: object | None = current_loop_key()
        except RuntimeError:
            here = None
        for state in states:
            if not state.owned:
                continue
            state.close_soon()
            if state.key is here:
                await state.aclose()
