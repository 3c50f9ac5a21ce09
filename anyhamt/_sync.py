"""Synchronisation that works across event loops and threads.

anyio's own Lock and Event belong to the loop that first uses them, and used from two
threads at once they lose wake-ups (docs/architecture.md §3). zarr runs store coroutines on its own
asyncio loop in a daemon thread while the application runs asyncio or trio on another, so
a HAMT's lock and its single-flight loads must serve waiters on any loop.

The primitives here keep their state under a ``threading.Lock`` that is never held across
an ``await``. A task that has to wait parks on an ``anyio.Event`` created on *its own* loop;
whoever hands it the lock or the result wakes it through that loop's token
(``run_sync_soon``), so every wake-up is delivered on the loop that waits for it.

A waiter that waits long checks whether the task it waits for can still make progress: if
that task's loop thread is stuck in a synchronous wait (typically zarr's sync API called on
the event loop thread), waiting would hang for ever, so it raises ``LoopBlockedError``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Self

import anyio

from ._errors import LoopBlockedError
from ._loops import LoopHandle, blocked_reason

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable
    from types import TracebackType

__all__ = ["CrossLoopLock", "SingleFlight"]

# How long a waiter sleeps between checks that the task it waits for can still progress.
_WATCH_INTERVAL: Final = 0.25

_WAITING: Final = 0
_GRANTED: Final = 1
_GONE: Final = 2


class _Waiter:
    """One task parked on its own loop until another thread or loop wakes it."""

    __slots__ = ("event", "loop", "state")

    def __init__(self) -> None:
        self.loop = LoopHandle()
        self.event = anyio.Event()
        self.state = _WAITING

    @property
    def thread(self) -> int:
        return self.loop.thread

    def wake(self) -> bool:
        """Wake the waiter on its loop. False if that loop has stopped."""
        if self.loop.thread == threading.get_ident():
            self.event.set()
            return True
        return self.loop.call_soon(self.event.set)

    async def wait(self, watched: Callable[[], int | None]) -> None:
        """Wait to be woken; fail fast if the thread we wait on (``watched()``) is stuck."""
        suspicious = 0
        while True:
            with anyio.move_on_after(_WATCH_INTERVAL):
                await self.event.wait()
                return
            thread_id = watched()
            reason = None
            if thread_id is not None and thread_id != threading.get_ident():
                reason = blocked_reason(thread_id)
            # Two observations in a row, so a thread passing through a short wait does not
            # trip the check.
            suspicious = suspicious + 1 if reason else 0
            if suspicious >= 2:
                raise LoopBlockedError(
                    f"waiting for a task on thread {thread_id} that cannot progress: {reason}. "
                    "A synchronous call made on an event loop thread stops that loop; "
                    "run it in a worker thread: `await anyio.to_thread.run_sync(...)`."
                )


class CrossLoopLock:
    """A fair (FIFO) async lock usable from any event loop and thread.

    Acquiring an unheld lock does not yield. Cancellation while waiting means the lock was
    not taken (if it was handed over at that moment, it is passed on to the next waiter).
    """

    __slots__ = ("_held", "_holder_thread", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._holder_thread: int | None = None
        self._waiters: deque[_Waiter] = deque()

    def locked(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it, without yielding; True if taken."""
        with self._mutex:
            if self._held:
                return False
            self._held = True
            self._holder_thread = threading.get_ident()
            return True

    async def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                self._holder_thread = threading.get_ident()
                return
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            await waiter.wait(lambda: self._holder_thread)
        except BaseException:
            with self._mutex:
                if waiter.state == _GRANTED:
                    self._hand_over()
                else:
                    waiter.state = _GONE
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release() of a lock that is not held")
            self._hand_over()

    def _hand_over(self) -> None:
        # Caller holds self._mutex.
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.state = _GRANTED
            if waiter.wake():
                self._holder_thread = waiter.thread
                return
        self._held = False
        self._holder_thread = None

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Flight:
    __slots__ = ("error", "leader_thread", "result", "settled", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.leader_thread: int | None = threading.get_ident()
        self.settled = False
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Run one load per key at a time; concurrent callers for that key share its outcome.

    * A leader that is cancelled hands the load over to the next waiter, which runs it.
    * A load that fails wakes every waiter with that error; nothing is remembered, so the
      next call tries again.
    * A waiter that is cancelled leaves; nothing else changes.
    """

    __slots__ = ("_flights", "_mutex")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    async def run(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        with self._mutex:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                waiter = None
            else:
                waiter = _Waiter()
                flight.waiters.append(waiter)
        if waiter is not None:
            try:
                await waiter.wait(lambda: flight.leader_thread)
            except BaseException:
                with self._mutex:
                    if waiter.state == _GRANTED and not flight.settled:
                        self._promote_next(key, flight)
                    elif waiter.state == _WAITING:
                        waiter.state = _GONE
                        flight.waiters.remove(waiter)
                raise
            if flight.settled:
                if flight.error is not None:
                    raise flight.error
                return flight.result
            # Promoted: the previous leader was cancelled, this task runs the load now.
        return await self._lead(key, flight, load)

    async def _lead(
        self, key: Hashable, flight: _Flight, load: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            result = await load()
        except anyio.get_cancelled_exc_class():
            with self._mutex:
                self._promote_next(key, flight)
            raise
        except BaseException as exc:
            self._settle(key, flight, None, exc)
            raise
        self._settle(key, flight, result, None)
        return result

    def _promote_next(self, key: Hashable, flight: _Flight) -> None:
        # Caller holds self._mutex.
        while flight.waiters:
            waiter = flight.waiters.popleft()
            waiter.state = _GRANTED
            if waiter.wake():
                flight.leader_thread = waiter.thread
                return
        flight.leader_thread = None
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _settle(
        self, key: Hashable, flight: _Flight, result: Any, error: BaseException | None
    ) -> None:
        with self._mutex:
            flight.settled = True
            flight.result = result
            flight.error = error
            if self._flights.get(key) is flight:
                del self._flights[key]
            waiters = list(flight.waiters)
            flight.waiters.clear()
            for waiter in waiters:
                waiter.state = _GRANTED
        for waiter in waiters:
            waiter.wake()
