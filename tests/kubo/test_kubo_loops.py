"""One KuboCAS on several event loops at once: per-loop clients, closing, no leaks.

Every test here runs on both backends (the test's own loop) and adds loops of the other
kind in threads, as an application and zarr's I/O thread do.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from anyhamt import HAMT, KuboCAS

from ._helpers import cas_for, run_in_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


async def write_and_read(cas: KuboCAS, prefix: str, n: int = 150) -> Any:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(n):
        await hamt.set(f"{prefix}{i}", f"{prefix}-value-{i}".encode())
    await hamt.make_read_only()
    reader = await HAMT.build(
        cas=cas, root_node_id=hamt.root_node_id, values_are_bytes=True, read_only=True
    )
    for i in range(0, n, 3):
        assert await reader.get(f"{prefix}{i}") == f"{prefix}-value-{i}".encode()
    return hamt.root_node_id


@pytest.mark.usefixtures("no_resource_warnings")
async def test_two_loops_in_two_threads_share_one_store(kubo_daemon: KuboDaemon) -> None:
    cas = cas_for(kubo_daemon)
    start = threading.Barrier(3)

    def workload(prefix: str) -> Callable[[], Coroutine[Any, Any, Any]]:
        async def go() -> Any:
            await anyio.to_thread.run_sync(start.wait)
            return await write_and_read(cas, prefix)

        return go

    threads = [run_in_thread("asyncio", workload("a")), run_in_thread("trio", workload("t"))]
    await anyio.to_thread.run_sync(start.wait)
    mine = await write_and_read(cas, "m")  # the test's own loop, at the same time
    for thread, _ in threads:
        await anyio.to_thread.run_sync(thread.join, 60)
    results = [outcome[0] for _, outcome in threads]
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert len({str(r) for r in [*results, mine]}) == 3
    # The threads' loops have finished; each closed its own client on the way out.
    clients = {key: state.client for key, state in cas._loops.items()}
    assert len(clients) == 3
    assert all(c is not None for c in clients.values())  # each loop wrote through httpx
    here = anyio.lowlevel.current_token().native_token
    assert all(c is not None and c.is_closed for key, c in clients.items() if key is not here)
    await cas.aclose()
    assert all(c is not None and c.is_closed for c in clients.values())


class LoopThread:
    """An asyncio loop running for ever in a daemon thread, the way zarr runs its I/O."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future: Any = None
        ready = threading.Event()

        def submit() -> None:
            nonlocal future
            future = self.loop.create_task(coro)
            ready.set()

        # Submitted with an empty context so sniffio on that loop says "asyncio".
        self.loop.call_soon_threadsafe(submit, context=contextvars.Context())
        await anyio.to_thread.run_sync(ready.wait)
        done = threading.Event()
        self.loop.call_soon_threadsafe(future.add_done_callback, lambda _: done.set())
        await anyio.to_thread.run_sync(done.wait)
        return future.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.mark.usefixtures("no_resource_warnings")
async def test_zarr_style_loop_and_application_loop_concurrently(kubo_daemon: KuboDaemon) -> None:
    io_loop = LoopThread()
    try:
        cas = cas_for(kubo_daemon)
        async with anyio.create_task_group() as tg:
            roots: dict[str, Any] = {}

            async def on_io_loop() -> None:
                roots["io"] = await io_loop.run(write_and_read(cas, "z"))

            async def on_app_loop() -> None:
                roots["app"] = await write_and_read(cas, "app")

            tg.start_soon(on_io_loop)
            tg.start_soon(on_app_loop)
        assert roots["io"] != roots["app"]
        io_client = next(s.client for k, s in cas._loops.items() if k is io_loop.loop)
        assert io_client is not None  # it wrote, through httpx
        assert not io_client.is_closed
        # aclose on this loop closes the I/O loop's client on the I/O loop, which is alive.
        await cas.aclose()
        for _ in range(6000):  # polled (60 s at most): the close happens on another loop
            if io_client.is_closed:
                break
            await anyio.sleep(0.01)
        assert io_client.is_closed
        # The store is still usable afterwards (new clients, as py-hamt's KuboCAS allows).
        assert await io_loop.run(cas.load(await cas.save(b"after close", "raw"))) == b"after close"
        await io_loop.run(cas.aclose())
    finally:
        io_loop.close()


@pytest.mark.usefixtures("no_resource_warnings")
async def test_dropped_store_closes_its_clients(kubo_daemon: KuboDaemon) -> None:
    cid = await (writer := cas_for(kubo_daemon)).save(b"something", "raw")
    await writer.aclose()
    cas = cas_for(kubo_daemon)
    assert await cas.load(cid) == b"something"  # through a fast-path connection
    state = next(iter(cas._loops.values()))
    assert state.client is None  # fast-path reads build no httpx client...
    await cas.save(b"something else", "raw")
    client, pool = state.client, state.fast  # ...a write does
    assert client is not None
    assert pool._open
    del cas, state
    gc.collect()
    for _ in range(6000):  # bounded poll, 60 s: the finalizer closes them on the loop
        if client.is_closed and pool.closed:
            break
        await anyio.sleep(0.01)
    assert client.is_closed
    assert pool.closed and not pool._open


async def test_supplied_client_is_used_on_its_loop_only_and_never_closed(
    kubo_daemon: KuboDaemon,
) -> None:
    calls: list[str] = []

    async def hook(request: httpx.Request) -> None:
        calls.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
        cas = KuboCAS(
            client=client,
            rpc_base_url=kubo_daemon.rpc_url,
            gateway_base_url=kubo_daemon.gateway_url,
        )
        cid = await cas.save(b"through the supplied client", "raw")
        assert calls
        before = len(calls)

        async def elsewhere() -> bytes:
            data = await cas.load(cid)
            await cas.aclose()  # closes only that loop's own client
            return data

        thread, outcome = run_in_thread("trio", elsewhere)
        await anyio.to_thread.run_sync(thread.join, 30)
        assert outcome == [b"through the supplied client"]
        assert len(calls) == before  # the other loop used a client of its own
        await cas.aclose()
        assert not client.is_closed
        assert await cas.load(cid) == b"through the supplied client"
        await cas.aclose()
