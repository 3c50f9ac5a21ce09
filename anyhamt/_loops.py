"""Event-loop facts anyhamt has to correct for: the sniffio leak across threads.

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

import sniffio

__all__ = ["repair_sniffio"]

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
