"""Everything anyhamt knows about particular event loops, in one place.

The rest of the code is written on anyio and never asks which library runs. Four things
cannot be said in anyio's portable API, and live here:

* **Calling into another loop.** ``LoopHandle`` wraps anyio's opaque loop token: a key that
  names the running loop (per-loop state in ``KuboCAS`` is keyed by it) and ``call_soon``,
  which runs a callback on that loop from any thread (how the cross-loop lock and
  single-flight wake a waiter on the loop it waits on, and how a ``KuboCAS`` asks a loop
  to close the connections it owns).
* **Background tasks outside any task group** (``spawn_system_task``): trio's system
  tasks, asyncio's ``create_task`` with a strong reference.
* **The deadlock detector** (``blocked_reason``): whether a loop thread is parked in a
  synchronous wait, read from its innermost stack frames, so a waiter can fail with
  ``LoopBlockedError`` instead of waiting for ever. Libraries known to cause that wait
  register a hint (``add_blocking_hint``); ``anyhamt.zarr`` registers zarr's sync API.
* **The cancellation check** (``checkpoint_if_cancelled``) at the entry of every public
  async method: anyio's, with the backend found from trio's thread mark instead of a
  sniffio lookup per call, which was most of its cost (docs/architecture.md §4).
* **The sniffio leak across threads** (``repair_sniffio``), below.

zarr's synchronous API (and so xarray's ``to_zarr``/``open_zarr``) runs every store
coroutine on zarr's own asyncio loop in a daemon thread, through
``asyncio.run_coroutine_threadsafe``. That call copies the caller's contextvars into the
new task. When the caller was started by ``anyio.run(..., backend="trio")``, the copy
carries sniffio's ``current_async_library_cvar`` set to ``"trio"``, so anyio, asked on
zarr's asyncio thread which library runs, answers "trio": ``anyio.Event().wait()`` fails
with "Task got bad yield", ``current_token()`` and task groups with "must be called from
async context". InMemoryCAS paths that never reach anyio hide it; LocalCAS big values,
deep read-only maps, contended locks and every KuboCAS load show it.

trio itself marks its own thread in ``sniffio.thread_local``, which does not travel with a
context copy. So a coroutine that finds itself on a thread where an asyncio loop runs,
with no thread mark, but with the context variable claiming another library, is on the
receiving end of such a copy: setting the variable to ``"asyncio"`` there is right. The
change lands in the running task's own context copy and never leaks back to the caller.

``repair_sniffio()`` is called on entry to anyhamt's public async methods, so any caller
that crosses threads this way is safe, whoever spawned the task.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
import sniffio
from anyio.lowlevel import current_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import FrameType

__all__ = [
    "LoopHandle",
    "add_blocking_hint",
    "blocked_reason",
    "checkpoint_if_cancelled",
    "current_loop_key",
    "repair_sniffio",
    "spawn_system_task",
]

_thread_mark = sniffio.thread_local
_library = sniffio.current_async_library_cvar


def repair_sniffio() -> None:
    """Make sniffio say "asyncio" in a task that runs on asyncio but inherited "trio".

    Costs two attribute reads on the common path (nothing leaked).
    """
    if _thread_mark.name is not None:
        return  # trio (or another library) marked this thread itself: it is right
    leaked = _library.get()
    if leaked is None or leaked == "asyncio":
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # not on an asyncio thread: nothing to correct
    _library.set("asyncio")


# ---------------------------------------------------------------------------------------
# The cancellation check

# The check of each backend by the thread's mark: None (asyncio, which leaves threads
# unmarked) or "trio".
_checks: dict[str | None, Callable[[], Awaitable[None]]] = {}


async def checkpoint_if_cancelled() -> None:
    """Raise the cancellation if the calling task is in a cancelled scope, else return at
    once without yielding to the loop.

    Every public async method starts with it, so a call made inside a cancelled scope
    raises before it does anything, on asyncio as on trio (where every async call is
    expected to be a cancellation point): a ``set`` or a cached ``get`` never waits, and
    without it a loop of them would run to completion inside ``move_on_after(0)``.
    It reads no context variable, so the sniffio leak below cannot mislead it.
    """
    name = _thread_mark.name
    check = _checks.get(name)
    if check is None:
        check = _checks[name] = _resolve_check(name)
    await check()


def _resolve_check(name: str | None) -> Callable[[], Awaitable[None]]:
    if name == "trio":
        # trio runs in this thread, so it has been imported.
        return sys.modules["trio"].lowlevel.checkpoint_if_cancelled  # type: ignore[no-any-return]
    if name is None:
        try:  # anyio's own asyncio check, without its sniffio lookup per call
            from anyio._core._eventloop import get_async_backend

            return get_async_backend("asyncio").checkpoint_if_cancelled
        except (ImportError, AttributeError):  # a future anyio: take the portable way
            pass
    return anyio.lowlevel.checkpoint_if_cancelled


# ---------------------------------------------------------------------------------------
# Calling into a loop from anywhere


def current_loop_key() -> object:
    """A hashable that names the running loop (the same object for every task on it)."""
    return current_token().native_token


class LoopHandle:
    """The loop the constructing task runs on, callable from any thread."""

    __slots__ = ("_backend", "key", "thread")

    def __init__(self) -> None:
        token = current_token()
        self._backend = token.backend_class
        self.key: object = token.native_token
        self.thread = threading.get_ident()

    def call_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` on this loop soon. False if the loop has finished (nothing runs)."""
        try:
            self._backend.run_sync_soon(fn, (), self.key)
        except (anyio.RunFinishedError, RuntimeError):
            return False
        return True


_ASYNCIO_TASKS: set[Any] = set()


def spawn_system_task(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``fn()`` in the background on the current loop, outside any task group.

    The task must never raise (trio would abort the run); it lives until it returns or
    its loop cancels it on shutdown.
    """
    if sniffio.current_async_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn)
    else:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(fn())
        _ASYNCIO_TASKS.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(_ASYNCIO_TASKS.discard)


# ---------------------------------------------------------------------------------------
# The deadlock detector

# Frames that mean "this thread is parked in a synchronous wait". Seen at the innermost
# end of a loop thread's stack, they mean the loop cannot run until the wait ends.
_SYNC_WAITS: Final = {
    ("threading.py", "wait"),
    ("threading.py", "acquire"),
    ("concurrent/futures/_base.py", "wait"),
    ("concurrent/futures/_base.py", "result"),
}

# How many frames out from the wait a hint's module is looked for.
_HINT_DEPTH: Final = 12

# (path suffix, why the thread is stuck) for libraries known to park a loop thread.
_HINTS: list[tuple[str, str]] = []


def add_blocking_hint(path_suffix: str, reason: str) -> None:
    """Name ``reason`` when a stuck loop thread waits inside a file ending ``path_suffix``."""
    if (path_suffix, reason) not in _HINTS:
        _HINTS.append((path_suffix, reason))


def _frame_key(frame: FrameType) -> tuple[str, str]:
    filename = frame.f_code.co_filename.replace("\\", "/")
    for suffix, _ in _SYNC_WAITS:
        if filename.endswith("/" + suffix):
            return suffix, frame.f_code.co_name
    return filename, frame.f_code.co_name


def blocked_reason(thread_id: int) -> str | None:
    """Why the event loop on ``thread_id`` cannot run now, or ``None`` if it can.

    ``sys._current_frames()`` gives every thread's innermost frame; a loop that can run is
    either running Python code or parked in its selector, never in a threading wait. The
    frames just outside the wait say who called it, which is how a hint finds its library.
    """
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "its thread has exited"
    if _frame_key(frame) not in _SYNC_WAITS:
        return None
    outer: FrameType | None = frame
    for _ in range(_HINT_DEPTH):
        if outer is None:
            break
        name = outer.f_code.co_filename.replace("\\", "/")
        for suffix, reason in _HINTS:
            if name.endswith(suffix):
                return reason
        outer = outer.f_back
    return "it is blocked in a synchronous wait"
