"""The concurrency model: one HAMT shared by tasks, loops and threads; cancellation safety."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import AnyioThread, build_map, reference_root

from anyhamt import (
    HAMT,
    BlockNotFoundError,
    ContentAddressedStore,
    InMemoryCAS,
    LoopBlockedError,
)
from anyhamt.testing import WrapperCAS


class SteppingCAS(WrapperCAS):
    """Wraps a store; yields to the loop on every operation and counts them.

    ``on_step`` is called before each operation, which lets a test cancel at exactly the
    n-th await point of an operation. ``loads`` counts the loads that went ahead, by id.
    """

    def __init__(self, inner: ContentAddressedStore) -> None:
        super().__init__(inner)
        self.steps = 0
        self.loads: Counter[Any] = Counter()
        self.on_step: Any = None

    async def before(self, operation: str, id: Any = None) -> None:
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps)
        await anyio.lowlevel.checkpoint()
        if operation == "load":
            self.loads[id] += 1

    async def _load_id(
        self,
        ptr: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        # The HAMT's loads go through load(), which the tests below override to stall
        # or gate a particular load.
        return await self.load(ptr, offset, length, suffix)


async def stored_map(items: dict[str, bytes]) -> tuple[InMemoryCAS, Any]:
    """A store holding a flushed map of ``items``, and the map's root."""
    cas = InMemoryCAS()
    return cas, (await build_map(cas, items)).root_node_id


async def test_concurrent_writers_and_readers_in_one_task_group() -> None:
    cas = SteppingCAS(InMemoryCAS())
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    expected = {f"w{w}/k{i}": f"{w}-{i}".encode() for w in range(16) for i in range(60)}
    seen_wrong: list[str] = []

    async def writer(w: int) -> None:
        for i in range(60):
            await hamt.set(f"w{w}/k{i}", f"{w}-{i}".encode())

    async def reader(w: int) -> None:
        # Each reader polls keys its writer may or may not have written yet.
        for i in range(60):
            try:
                value = await hamt.get(f"w{w}/k{i}")
            except KeyError:
                continue
            if value != f"{w}-{i}".encode():
                seen_wrong.append(f"w{w}/k{i}")

    async with anyio.create_task_group() as tg:
        for w in range(16):
            tg.start_soon(writer, w)
            tg.start_soon(reader, w)
    assert not seen_wrong
    assert await hamt.len() == len(expected)
    await hamt.make_read_only()
    assert hamt.root_node_id == await reference_root(expected)

    # Read-only: many concurrent readers, no lock.
    results: dict[str, bytes] = {}

    async def read_all(keys: list[str]) -> None:
        for key in keys:
            results[key] = await hamt.get(key)

    keys = list(expected)
    async with anyio.create_task_group() as tg:
        for start in range(0, len(keys), 40):
            tg.start_soon(read_all, keys[start : start + 40])
    assert results == expected


async def test_concurrent_cold_reads_load_each_node_once() -> None:
    inner = InMemoryCAS()
    items = {f"k{i}": b"v" for i in range(3000)}
    writer = await HAMT.build(cas=inner, values_are_bytes=True)
    for key, value in items.items():
        await writer.set(key, value)
    await writer.make_read_only()

    cas = SteppingCAS(inner)
    reader = HAMT(cas=cas, root_node_id=writer.root_node_id, read_only=True, values_are_bytes=True)

    async def get(key: str) -> None:
        assert await reader.get(key) == b"v"

    async with anyio.create_task_group() as tg:
        for key in items:
            tg.start_soon(get, key)
    # Every get loads its value block (all 3000 values are b"v", one id); nodes load once.
    value_id = await reader.get_pointer("k0")
    assert cas.loads[value_id] == 3000
    nodes = {k: n for k, n in cas.loads.items() if k != value_id}
    assert nodes, "the tree should have been loaded"
    assert max(nodes.values()) == 1, "a node was loaded more than once"


def test_two_loops_in_two_threads_share_one_hamt() -> None:
    # Sync test: it starts its own asyncio and trio loops in two threads.
    cas = SteppingCAS(InMemoryCAS())
    hamt = anyio.run(lambda: HAMT.build(cas=cas, values_are_bytes=True))
    items = {f"{side}-{i}": f"{side}{i}".encode() for side in ("a", "t") for i in range(400)}

    async def write_side(side: str) -> None:
        for i in range(400):
            await hamt.set(f"{side}-{i}", f"{side}{i}".encode())
            if i % 50 == 0:
                await hamt.get(f"{side}-{i}")

    threads = [AnyioThread("asyncio", write_side, "a"), AnyioThread("trio", write_side, "t")]
    for thread in threads:
        thread.join_sync(60)  # raises what the thread's loop raised

    async def finish() -> Any:
        await hamt.make_read_only()
        return hamt.root_node_id, await hamt.len()

    root, count = anyio.run(finish, backend="trio")
    assert count == 800
    assert root == anyio.run(reference_root, items)


@pytest.mark.parametrize(("first", "second"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_hamt_outlives_its_first_event_loop(first: str, second: str) -> None:
    # Sync test: each step is its own anyio.run on a different backend.
    cas = InMemoryCAS()

    async def write() -> HAMT:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        for i in range(500):
            await hamt.set(f"k{i}", b"x")
        return hamt

    hamt = anyio.run(write, backend=first)

    async def continue_and_read() -> int:
        for i in range(500, 600):
            await hamt.set(f"k{i}", b"y")
        await hamt.delete("k0")
        await hamt.make_read_only()
        assert await hamt.get("k550") == b"y"
        return await hamt.len()

    assert anyio.run(continue_and_read, backend=second) == 599

    async def read_again() -> bytes:
        value: bytes = await hamt.get("k1")  # values_are_bytes: get returns bytes
        return value

    assert anyio.run(read_again, backend=first) == b"x"


async def test_cancellation_at_every_step_leaves_a_consistent_hamt() -> None:
    """Cancel a run of set/delete/make_read_only at its n-th await, for every n.

    Afterwards the map holds exactly the operations that completed (each one entirely or
    not at all), and re-running the same operations to completion gives the same root.
    """
    base = {f"k{i}": f"v{i}".encode() for i in range(300)}
    inner = InMemoryCAS()
    base_root = (await build_map(inner, base)).root_node_id

    ops: list[tuple[str, str]] = [("set", f"new{i}") for i in range(12)]
    ops += [("delete", f"k{i}") for i in range(0, 60, 3)]
    ops += [("flush", "")]
    ops += [("set", f"k{i}") for i in range(100, 110)]
    ops += [("delete", f"new{i}") for i in range(6)]
    ops += [("flush", "")]

    def apply(model: dict[str, bytes], op: tuple[str, str]) -> None:
        kind, key = op
        if kind == "set":
            model[key] = b"changed-" + key.encode()
        elif kind == "delete":
            del model[key]

    async def run_ops(hamt: HAMT, done: list[int]) -> None:
        for index, (kind, key) in enumerate(ops):
            if kind == "set":
                if hamt.read_only:
                    await hamt.enable_write()
                await hamt.set(key, b"changed-" + key.encode())
            elif kind == "delete":
                if hamt.read_only:
                    await hamt.enable_write()
                await hamt.delete(key)
            else:
                await hamt.make_read_only()
            done.append(index)

    final = dict(base)
    for op in ops:
        apply(final, op)
    final_root = await reference_root(final)

    total_steps = None
    cancel_at = 1
    while total_steps is None or cancel_at <= total_steps:
        cas = SteppingCAS(inner)
        hamt = HAMT(cas=cas, root_node_id=base_root, values_are_bytes=True)
        done: list[int] = []
        with anyio.CancelScope() as scope:
            cas.on_step = lambda n, s=scope, at=cancel_at: s.cancel() if n == at else None
            await run_ops(hamt, done)
        if not scope.cancel_called:
            total_steps = cas.steps
            assert hamt.root_node_id == final_root
            cancel_at += 1
            continue
        cas.on_step = None

        # Exactly the completed operations are visible; the interrupted one is either
        # fully there or not at all.
        before = dict(base)
        for index in done:
            apply(before, ops[index])
        interrupted = ops[len(done)] if len(done) < len(ops) else None
        after = dict(before)
        if interrupted is not None:
            apply(after, interrupted)
        contents = {key: await hamt.get(key) async for key in hamt.keys()}
        assert contents in (before, after), f"inconsistent after cancel at step {cancel_at}"

        # Finish the job: re-run what is left (re-running the interrupted op as well).
        if hamt.read_only:
            await hamt.enable_write()
        for key in set(contents) - set(final):
            await hamt.delete(key)
        for key, value in final.items():
            if contents.get(key) != value:
                await hamt.set(key, value)
        await hamt.make_read_only()
        assert hamt.root_node_id == final_root, f"cancel at step {cancel_at}"
        cancel_at += 1
    assert total_steps is not None and total_steps > 20


class BlockingCAS(WrapperCAS):
    """A store whose loads block their thread synchronously until released.

    It stands in for an event loop thread stuck in a synchronous call (zarr's sync API
    called from async code): the real thing cannot be paused on demand.
    """

    def __init__(self, inner: ContentAddressedStore) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.block = True

    async def before(self, operation: str, id: Any = None) -> None:
        if operation == "load" and self.block:
            self.entered.set()
            self.release.wait(30)  # deliberately synchronous: it stops this loop's thread


@pytest.mark.parametrize(
    ("holder_backend", "waiter_backend"), [("asyncio", "trio"), ("trio", "asyncio")]
)
def test_waiting_on_a_blocked_loop_raises_instead_of_hanging(
    holder_backend: str, waiter_backend: str
) -> None:
    # Sync test: it needs two loop threads, one of them deliberately blocked.
    inner = InMemoryCAS()

    async def seed() -> Any:
        hamt = await HAMT.build(cas=inner, values_are_bytes=True)
        await hamt.set("a", b"1")
        await hamt.make_read_only()
        return hamt.root_node_id

    root = anyio.run(seed)
    cas = BlockingCAS(inner)
    hamt = HAMT(cas=cas, root_node_id=root, values_are_bytes=True)

    async def holder() -> None:
        await hamt.set("b", b"2")  # holds the lock while its load blocks the thread

    holder_thread = AnyioThread(holder_backend, holder)
    assert cas.entered.wait(60)

    async def waiter() -> None:
        # Raising at all is the promise (a hang would be caught by the per-test timeout);
        # how fast it raises depends on the machine, so it is not asserted.
        with pytest.raises(LoopBlockedError, match="to_thread"):
            await hamt.set("c", b"3")

    anyio.run(waiter, backend=waiter_backend)
    cas.release.set()
    holder_thread.join_sync(60)  # raises what the holder's loop raised

    async def check() -> set[str]:
        cas.block = False
        return {k async for k in hamt.keys()}

    assert anyio.run(check) == {"a", "b"}


async def test_failed_node_load_reaches_every_waiter_and_is_not_cached() -> None:
    inner, root = await stored_map({f"k{i}": b"v" for i in range(200)})
    saved_root_block = inner.store.pop(root)

    cas = SteppingCAS(inner)
    reader = HAMT(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    failures: list[BaseException] = []

    async def get(i: int) -> None:
        try:
            await reader.get(f"k{i}")
        except BlockNotFoundError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(get, i)
    assert len(failures) == 20
    assert cas.loads[root] == 1  # one load, shared by all twenty

    inner.store[root] = saved_root_block
    assert await reader.get("k3") == b"v"  # the failure was not cached


async def test_cancelled_leader_hands_the_load_to_a_waiter() -> None:
    inner, root = await stored_map({"a": b"1"})
    never = anyio.Event()
    leader_loading = anyio.Event()

    class StallFirstLoad(SteppingCAS):
        async def load(self, id: Any, *args: Any) -> bytes:
            self.loads[id] += 1
            if id == root and self.loads[id] == 1:
                leader_loading.set()
                await never.wait()  # the leader's root load hangs until cancelled
            return await self.inner.load(id, *args)

    cas = StallFirstLoad(inner)
    reader = HAMT(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    results: list[bytes] = []

    async def follower() -> None:
        results.append(await reader.get("a"))

    async with anyio.create_task_group() as tg:
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await reader.get("a")

        tg.start_soon(leader)
        await leader_loading.wait()
        tg.start_soon(follower)
        # Every task is now parked: the leader in its stalled load, the follower somewhere
        # it waits. It did not start a load of its own, so it waits on the leader's flight.
        await anyio.wait_all_tasks_blocked()
        assert not results
        assert cas.loads[root] == 1
        leader_scope.cancel()
    assert results == [b"1"]
    assert cas.loads[root] == 2  # the follower ran the load itself


async def test_cancelled_waiter_changes_nothing() -> None:
    inner, root = await stored_map({"a": b"1"})
    release = anyio.Event()
    leader_loading = anyio.Event()

    class Gated(SteppingCAS):
        async def load(self, id: Any, *args: Any) -> bytes:
            self.loads[id] += 1
            if id == root:
                leader_loading.set()
                await release.wait()
            return await self.inner.load(id, *args)

    cas = Gated(inner)
    reader = HAMT(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    results: list[bytes] = []

    async def leader() -> None:
        results.append(await reader.get("a"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await leader_loading.wait()
        waiter_scope = anyio.CancelScope()
        waiter_done = anyio.Event()

        async def waiter() -> None:
            with waiter_scope:
                await reader.get("a")
            waiter_done.set()

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()  # the waiter has joined the leader's flight
        assert cas.loads[root] == 1
        waiter_scope.cancel()
        await waiter_done.wait()
        assert waiter_scope.cancelled_caught
        assert not results  # cancelling the waiter did not disturb the leader
        release.set()
    assert results == [b"1"]
    assert cas.loads[root] == 1
