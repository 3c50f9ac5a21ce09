"""Helpers shared by the test modules (tests/conftest.py puts this directory on sys.path).

Fixtures live in tests/conftest.py; plain functions and classes live here, so a module
imports what it uses by name (``from _helpers import build_map``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from anyhamt import HAMT, InMemoryCAS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyhamt import ContentAddressedStore

__all__ = ["AnyioThread", "build_map", "reference_root"]


async def build_map(cas: ContentAddressedStore, contents: dict[str, bytes], **kwargs: Any) -> HAMT:
    """A read-only HAMT of ``contents`` (bytes values) on ``cas``, flushed."""
    hamt = await HAMT.build(cas=cas, values_are_bytes=True, **kwargs)
    for key, value in contents.items():
        await hamt.set(key, value)
    await hamt.make_read_only()
    return hamt


async def reference_root(contents: dict[str, bytes], bucket: int = 4) -> Any:
    """The root a fresh in-memory map of ``contents`` gets: what any history must reach,
    since the root depends only on the contents (docs/architecture.md §2)."""
    hamt = await build_map(InMemoryCAS(), contents, max_bucket_size=bucket)
    return hamt.root_node_id


class AnyioThread:
    """``anyio.run(fn, *args, backend=backend)`` on a daemon thread of its own.

    The thread's outcome is kept for the test that joins it: ``join()`` from async code
    (waiting in a worker thread, so the caller's loop keeps running: a loop thread parked
    in ``Thread.join`` is exactly what the deadlock detector reports), ``join_sync()``
    from a sync test.
    """

    def __init__(self, backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = anyio.run(fn, *args, backend=backend)
            except BaseException as exc:  # reported by the joining test
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def _outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    async def join(self) -> Any:
        """Wait for the thread's loop to finish; its result, or its error raised here."""
        await anyio.to_thread.run_sync(self.thread.join)
        return self._outcome()

    def join_sync(self, timeout: float = 300) -> Any:
        """``join()`` for sync tests; fails rather than waiting past ``timeout`` (a hang)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "a loop hung"
        return self._outcome()
