"""The concurrency primitives under the HAMT, each against the contract its docstring states.

``CrossLoopLock`` and ``SingleFlight`` (anyhamt/_sync.py) serve waiters on any loop and
thread (docs/architecture.md §3); ``LRUCache`` (anyhamt/_cache.py) is the node cache;
``map_bounded`` (anyhamt/_tasks.py) is every bounded fan-out. Orderings are forced with
events and ``anyio.wait_all_tasks_blocked``, never with sleeps. A waiter on another thread
cannot be seen by ``wait_all_tasks_blocked``, so those tests wait for the primitive's own
queue to hold it (``until``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from _helpers import AnyioThread

from anyhamt import LoopBlockedError
from anyhamt._cache import LRUCache
from anyhamt._sync import CrossLoopLock, SingleFlight
from anyhamt._tasks import map_bounded

if TYPE_CHECKING:
    from collections.abc import Callable

BACKENDS = ["asyncio", "trio"]


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (state another thread changes).

    Not a timing bound: it waits for the state, however long; pytest-timeout guards it.
    """
    # ASYNC110: the state changes on another thread, inside the primitive, which has no
    # event to offer; polling it is the only way to observe it.
    while not condition():  # noqa: ASYNC110
        await anyio.sleep(0.001)


# -- CrossLoopLock ---------------------------------------------------------------------------


async def test_lock_try_acquire_and_release() -> None:
    lock = CrossLoopLock()
    assert not lock.locked()
    assert lock.try_acquire()
    assert lock.locked()
    assert not lock.try_acquire()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


async def test_lock_taken_when_free_does_not_yield() -> None:
    # "Acquiring an unheld lock does not yield": even a cancelled scope cannot stop it.
    lock = CrossLoopLock()
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with lock:
            assert lock.locked()
    assert not scope.cancelled_caught
    assert not lock.locked()


async def test_lock_is_fifo() -> None:
    lock = CrossLoopLock()
    order: list[int] = []

    async def take(n: int) -> None:
        async with lock:
            order.append(n)

    async with anyio.create_task_group() as tg:
        await lock.acquire()
        for n in range(6):
            tg.start_soon(take, n)
            await anyio.wait_all_tasks_blocked()  # n is queued before n + 1 arrives
        lock.release()
    assert order == list(range(6))
    assert not lock.locked()


async def test_lock_release_wakes_one_waiter_at_a_time() -> None:
    lock = CrossLoopLock()
    inside = 0
    most_inside = 0

    async def take() -> None:
        nonlocal inside, most_inside
        async with lock:
            inside += 1
            most_inside = max(most_inside, inside)
            await anyio.lowlevel.checkpoint()  # let the others run while this one holds it
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(take)
    assert most_inside == 1


async def test_cancelled_waiter_leaves_the_queue() -> None:
    lock = CrossLoopLock()
    order: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def take(name: str) -> None:
        with anyio.CancelScope() as scopes[name]:
            async with lock:
                order.append(name)

    async with anyio.create_task_group() as tg:
        await lock.acquire()
        for name in "abc":
            tg.start_soon(take, name)
            await anyio.wait_all_tasks_blocked()
        scopes["b"].cancel()
        await anyio.wait_all_tasks_blocked()
        lock.release()
    assert order == ["a", "c"]
    assert scopes["b"].cancelled_caught
    assert not lock.locked()


async def test_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() -> None:
    # "a" is cancelled and, in the same step, handed the lock: it wakes to its
    # cancellation holding a grant it cannot use. The grant must pass on to "b", never
    # strand the lock (if it did, "b" would wait for ever).
    lock = CrossLoopLock()
    got: list[str] = []
    scope_a = anyio.CancelScope()

    async def take(name: str) -> None:
        async with lock:
            got.append(name)

    async def take_a() -> None:
        with scope_a:
            await take("a")

    async with anyio.create_task_group() as tg:
        await lock.acquire()
        tg.start_soon(take_a)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(take, "b")
        await anyio.wait_all_tasks_blocked()
        scope_a.cancel()  # delivered to "a" now, while it is still first in the queue ...
        lock.release()  # ... so the release grants it the lock it will never take
    assert scope_a.cancelled_caught
    assert got == ["b"]
    assert not lock.locked()


@pytest.mark.parametrize("thread_backend", BACKENDS)
async def test_lock_waiter_on_another_loop_and_thread(thread_backend: str) -> None:
    lock = CrossLoopLock()
    events: list[str] = []

    async def other_loop() -> str:
        async with lock:
            events.append("thread has it")
            return threading.current_thread().name

    await lock.acquire()
    worker = AnyioThread(thread_backend, other_loop)
    await until(lambda: len(lock._waiters) == 1)  # parked on its own loop
    events.append("main releases")
    lock.release()
    assert await worker.join() == worker.thread.name
    assert events == ["main releases", "thread has it"]
    assert not lock.locked()


@pytest.mark.parametrize("thread_backend", BACKENDS)
async def test_lock_handed_from_another_thread_wakes_this_loop(thread_backend: str) -> None:
    lock = CrossLoopLock()
    release = threading.Event()

    async def hold() -> None:
        await lock.acquire()
        await anyio.to_thread.run_sync(release.wait)  # its loop keeps running meanwhile
        lock.release()

    worker = AnyioThread(thread_backend, hold)
    await until(lock.locked)
    async with anyio.create_task_group() as tg:

        async def take() -> None:
            async with lock:
                pass

        tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        assert len(lock._waiters) == 1
        release.set()  # released on the worker's loop, woken on this one
    await worker.join()
    assert not lock.locked()


@pytest.mark.parametrize("thread_backend", BACKENDS)
async def test_waiting_for_a_loop_stuck_in_a_sync_wait_raises(thread_backend: str) -> None:
    lock = CrossLoopLock()
    unblock = threading.Event()

    async def hold_then_block_the_loop() -> None:
        async with lock:
            unblock.wait()  # a synchronous wait on the loop thread: that loop stops

    worker = AnyioThread(thread_backend, hold_then_block_the_loop)
    await until(lock.locked)
    try:
        with pytest.raises(LoopBlockedError, match="to_thread"):
            await lock.acquire()
        assert lock.locked() and not lock._waiters  # the failed waiter left the queue
    finally:
        unblock.set()
        await worker.join()
    assert not lock.locked()


# -- SingleFlight -------------------------------------------------------------------------------


class Load:
    """A load that waits for ``gate`` and counts its calls."""

    def __init__(self, result: Any = "value", error: BaseException | None = None) -> None:
        self.gate = anyio.Event()
        self.calls = 0
        self.result = result
        self.error = error

    async def __call__(self) -> Any:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_concurrent_callers_share_one_load() -> None:
    flight = SingleFlight()
    result = object()
    load = Load(result)
    seen: list[Any] = []

    async def call() -> None:
        seen.append(await flight.run("k", load))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        load.gate.set()
    assert load.calls == 1
    assert len(seen) == 10 and all(r is result for r in seen)


async def test_distinct_keys_load_independently() -> None:
    flight = SingleFlight()
    loads = {"a": Load("A"), "b": Load("B")}
    seen: dict[str, Any] = {}

    async def call(key: str) -> None:
        seen[key] = await flight.run(key, loads[key])

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "a")
        tg.start_soon(call, "b")
        await anyio.wait_all_tasks_blocked()
        assert loads["a"].calls == loads["b"].calls == 1  # both in flight at once
        loads["b"].gate.set()
        await anyio.wait_all_tasks_blocked()
        assert seen == {"b": "B"}  # b did not wait for a
        loads["a"].gate.set()
    assert seen == {"a": "A", "b": "B"}


async def test_a_finished_load_is_not_remembered() -> None:
    flight = SingleFlight()
    load = Load()
    load.gate.set()
    assert await flight.run("k", load) == "value"
    assert await flight.run("k", load) == "value"
    assert load.calls == 2  # one load at a time, not a cache


async def test_failed_load_wakes_every_waiter_with_its_error_and_caches_nothing() -> None:
    flight = SingleFlight()
    boom = ValueError("bad block")
    load = Load(error=boom)
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await flight.run("k", load)
        except ValueError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        load.gate.set()
    assert load.calls == 1
    assert len(errors) == 5 and all(e is boom for e in errors)
    # Nothing remembered: the next call loads again, and can succeed.
    retry = Load("fixed")
    retry.gate.set()
    assert await flight.run("k", retry) == "fixed"
    assert retry.calls == 1


async def test_cancelled_leader_hands_the_load_to_a_waiter() -> None:
    flight = SingleFlight()
    leader_load, second_load, third_load = Load("leader"), Load("second"), Load("third")
    seen: dict[str, Any] = {}
    leader_scope = anyio.CancelScope()

    async def call(name: str, load: Load) -> None:
        seen[name] = await flight.run("k", load)

    async def lead() -> None:
        with leader_scope:
            await call("leader", leader_load)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, "second", second_load)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, "third", third_load)
        await anyio.wait_all_tasks_blocked()
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        # The first waiter now runs its own load; the other still waits on it.
        assert second_load.calls == 1 and third_load.calls == 0
        second_load.gate.set()
    assert leader_scope.cancelled_caught
    assert seen == {"second": "second", "third": "second"}
    assert third_load.calls == 0


async def test_cancelled_leader_without_waiters_leaves_nothing_behind() -> None:
    flight = SingleFlight()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await flight.run("k", Load())
    assert scope.cancelled_caught
    again = Load("again")
    again.gate.set()
    assert await flight.run("k", again) == "again"


async def test_cancelled_waiter_leaves_and_nothing_else_changes() -> None:
    flight = SingleFlight()
    load = Load()
    seen: list[Any] = []
    waiter_scope = anyio.CancelScope()

    async def call() -> None:
        seen.append(await flight.run("k", load))

    async def wait_then_be_cancelled() -> None:
        with waiter_scope:
            await call()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait_then_be_cancelled)
        tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        waiter_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        load.gate.set()
    assert waiter_scope.cancelled_caught
    assert seen == ["value", "value"]
    assert load.calls == 1


@pytest.mark.parametrize("thread_backend", BACKENDS)
async def test_waiter_on_another_loop_shares_the_load(thread_backend: str) -> None:
    flight = SingleFlight()
    load = Load("shared")
    elsewhere_calls = 0

    async def elsewhere() -> Any:
        nonlocal elsewhere_calls

        async def own_load() -> str:
            nonlocal elsewhere_calls
            elsewhere_calls += 1
            return "not shared"

        return await flight.run("k", own_load)

    async with anyio.create_task_group() as tg:

        async def lead() -> None:
            assert await flight.run("k", load) == "shared"

        tg.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        worker = AnyioThread(thread_backend, elsewhere)
        await until(lambda: len(flight._flights["k"].waiters) == 1)
        load.gate.set()
    assert await worker.join() == "shared"
    assert load.calls == 1 and elsewhere_calls == 0


@pytest.mark.parametrize("thread_backend", BACKENDS)
async def test_failure_reaches_a_waiter_on_another_loop(thread_backend: str) -> None:
    flight = SingleFlight()
    load = Load(error=KeyError("gone"))

    async def elsewhere() -> Any:
        return await flight.run("k", Load("not shared"))

    async with anyio.create_task_group() as tg:

        async def lead() -> None:
            with pytest.raises(KeyError):
                await flight.run("k", load)

        tg.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        worker = AnyioThread(thread_backend, elsewhere)
        await until(lambda: len(flight._flights["k"].waiters) == 1)
        load.gate.set()
    with pytest.raises(KeyError, match="gone"):
        await worker.join()


# -- LRUCache -------------------------------------------------------------------------------


def test_cache_miss_is_none() -> None:
    cache = LRUCache(100)
    assert cache.get("missing") is None
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_evicts_least_recently_used_first() -> None:
    cache = LRUCache(30)
    for key in "abc":
        cache.put(key, key.upper(), 10)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("d", "D", 10)
    assert cache.get("b") is None  # b was the least recently used
    assert [cache.get(k) for k in "acd"] == ["A", "C", "D"]
    cache.put("e", "E", 20)  # needs two entries' room: a then c go (a, c, d were read)
    assert cache.get("a") is None and cache.get("c") is None
    assert cache.get("d") == "D" and cache.get("e") == "E"
    assert cache.nbytes == 30 and len(cache) == 2


def test_cache_put_refreshes_recency() -> None:
    cache = LRUCache(20)
    cache.put("a", 1, 10)
    cache.put("b", 2, 10)
    cache.put("a", 1, 10)  # a is newest again
    cache.put("c", 3, 10)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3


def test_cache_byte_accounting() -> None:
    cache = LRUCache(100)
    cache.put("a", "x", 40)
    cache.put("b", "y", 25)
    assert cache.nbytes == 65
    cache.put("a", "x2", 10)  # replacing counts the new size, not both
    assert cache.nbytes == 35 and len(cache) == 2 and cache.get("a") == "x2"
    cache.put("c", "z", 65)
    assert cache.nbytes == 100 and len(cache) == 3  # exactly full is not over
    cache.put("d", "w", 1)
    assert cache.nbytes <= 100
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0 and cache.get("c") is None


def test_cache_refuses_an_entry_larger_than_itself_and_keeps_the_rest() -> None:
    cache = LRUCache(50)
    cache.put("a", "A", 30)
    cache.put("huge", "H", 51)
    assert cache.get("huge") is None
    assert cache.get("a") == "A" and cache.nbytes == 30


def test_cache_stays_consistent_under_threads() -> None:
    cache = LRUCache(1000)
    start = threading.Barrier(4)

    def churn(seed: int) -> None:
        start.wait()
        for i in range(3000):
            key = (seed * 7 + i) % 97
            if cache.get(key) is None:
                cache.put(key, key, 10 + key % 13)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = list(cache._entries.items())
    assert cache.nbytes == sum(size for _, (_, size) in entries) <= 1000
    assert all(value == key for key, (value, _) in entries)


# -- map_bounded ------------------------------------------------------------------------------


async def test_map_bounded_of_nothing() -> None:
    async def never(item: int) -> int:
        raise AssertionError("called")

    assert await map_bounded(never, [], 4) == []


async def test_map_bounded_keeps_input_order_whatever_the_finishing_order() -> None:
    gates = [anyio.Event() for _ in range(6)]
    finished: list[int] = []

    async def fn(i: int) -> str:
        await gates[i].wait()
        finished.append(i)
        return f"r{i}"

    results: list[str] = []

    async def run() -> None:
        results.extend(await map_bounded(fn, list(range(6)), 6))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for gate in reversed(gates):
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert finished == [5, 4, 3, 2, 1, 0]
    assert results == [f"r{i}" for i in range(6)]


@pytest.mark.parametrize("limit", [1, 3, 20])
async def test_map_bounded_never_exceeds_its_limit(limit: int) -> None:
    items = list(range(10))
    in_flight = 0
    most = 0
    release = anyio.Event()

    async def fn(i: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1
        return i * i

    results: list[int] = []

    async def run() -> None:
        results.extend(await map_bounded(fn, items, limit))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert in_flight == min(limit, len(items))  # the limit is also reached
        release.set()
    assert most == min(limit, len(items))
    assert results == [i * i for i in items]


async def test_map_bounded_raises_the_first_error_itself_and_cancels_the_rest() -> None:
    started: list[int] = []
    cancelled: list[int] = []
    never = anyio.Event()

    async def fn(i: int) -> int:
        started.append(i)
        if i == 2:
            await anyio.wait_all_tasks_blocked()  # the others are waiting by now
            raise ValueError(f"item {i} is bad")
        try:
            await never.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(i)
            raise
        return i

    with pytest.raises(ValueError, match="item 2 is bad") as info:
        await map_bounded(fn, list(range(10)), 3)
    assert not isinstance(info.value, BaseExceptionGroup)
    assert sorted(started) == [0, 1, 2]  # nothing new started after the failure
    assert sorted(cancelled) == [0, 1]


async def test_map_bounded_sequential_path_raises_the_error_itself() -> None:
    # limit 1 (and a single item) run in this task, without a task group.
    async def fn(i: int) -> int:
        if i == 1:
            raise KeyError(i)
        return i

    with pytest.raises(KeyError):
        await map_bounded(fn, [0, 1, 2], 1)
    with pytest.raises(KeyError):
        await map_bounded(fn, [1], 8)


async def test_cancelling_map_bounded_cancels_every_call_in_flight() -> None:
    cancelled: list[int] = []
    finished: list[int] = []
    never = anyio.Event()

    async def fn(i: int) -> int:
        try:
            if i < 2:
                return i  # done before the cancellation: "some calls may have completed"
            await never.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(i)
            raise
        finally:
            finished.append(i)
        return i

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(map_bounded, fn, list(range(8)), 4)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert sorted(cancelled) == [2, 3, 4, 5]  # the four in flight, nothing started after
    assert sorted(finished) == [0, 1, 2, 3, 4, 5]
