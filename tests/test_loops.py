"""The sniffio leak: a trio program handing HAMT coroutines to an asyncio loop thread.

zarr's sync API does exactly this (``asyncio.run_coroutine_threadsafe`` onto its own loop
thread, copying the caller's contextvars). Here the hand-over is done by hand, so the core
is tested without zarr; tests/zarr covers the same through zarr and xarray.

Pinned to trio on the caller's side: the leak only exists when the caller runs trio.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import pytest
import sniffio
from _helpers import build_map

from anyhamt import HAMT, InMemoryCAS, LocalCAS, LoopBlockedError
from anyhamt._loops import repair_sniffio

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator
    from pathlib import Path

pytestmark = pytest.mark.parametrize("anyio_backend", ["trio"])  # the leak needs a trio caller


class LoopThread:
    """An asyncio loop in a daemon thread, like zarr's ``zarr_io`` thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` there, copying this thread's context, as zarr's sync API does."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()


@pytest.fixture
def io_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


async def test_the_leak_is_real_and_repair_fixes_only_the_task_it_runs_in(
    io_loop: LoopThread,
) -> None:
    async def probe(repair: bool) -> str:
        if repair:
            repair_sniffio()
        return sniffio.current_async_library()

    # Without the repair, sniffio on the asyncio thread believes it runs trio.
    assert io_loop.submit(probe(False)) == "trio"
    assert io_loop.submit(probe(True)) == "asyncio"
    # ...and the caller's own context is untouched.
    assert sniffio.current_async_library() == "trio"
    assert sniffio.current_async_library_cvar.get() == "trio"


async def deep_map(cas: Any, n: int = 3000) -> Any:
    return (await build_map(cas, {f"k{i}": str(i).encode() for i in range(n)})).root_node_id


async def test_keys_of_a_deep_read_only_map_on_the_leaked_thread(io_loop: LoopThread) -> None:
    cas = InMemoryCAS()
    root = await deep_map(cas)
    # A fresh reader: walking levels of uncached nodes runs anyio task groups there.
    reader = HAMT(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)

    async def all_keys() -> set[str]:
        return {key async for key in reader.keys()}

    # Called on the trio thread itself, as a trio program calling zarr's sync API does
    # (through anyio.to_thread the worker's context is reset and nothing leaks).
    keys = io_loop.submit(all_keys())
    assert keys == {f"k{i}" for i in range(3000)}


async def test_big_local_values_on_the_leaked_thread(io_loop: LoopThread, tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 4096 + 3)  # over 1 MiB: a UnixFS file of several blocks
    async with LocalCAS(tmp_path / "b.db") as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)

        async def write_and_read() -> bytes:
            await hamt.set("big", big)
            await hamt.make_read_only()
            return bytes(await hamt.get("big"))

        got = io_loop.submit(write_and_read())  # on the trio thread: the leaking way
        assert got == big


async def test_contended_lock_on_the_leaked_thread_raises_loop_blocked(
    io_loop: LoopThread,
) -> None:
    """The holder's loop (this trio loop) is blocked in a synchronous wait, as when zarr's
    sync API is called on the event loop thread: the waiter must raise, not hang or fail
    with anyio's "must be called from async context"."""
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    await hamt.set("a", b"1")

    async def contend() -> None:
        await hamt.set("b", b"2")

    async with hamt._lock:  # this task holds the HAMT's lock...
        # ...and blocks its own loop thread waiting for the other loop: a real deadlock
        # shape, which the detector must turn into LoopBlockedError.
        with pytest.raises(LoopBlockedError, match="to_thread"):
            io_loop.submit(contend())
    await hamt.set("c", b"3")
    assert {k async for k in hamt.keys()} == {"a", "c"}
