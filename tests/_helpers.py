"""Helpers shared by the test modules (tests/conftest.py puts this directory on sys.path).

Fixtures live in tests/conftest.py; plain functions and classes live here, so a module
imports what it uses by name (``from _helpers import build_map``).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from anyhamt import HAMT, InMemoryCAS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyhamt import ContentAddressedStore

__all__ = [
    "AnyioThread",
    "array_metadata",
    "build_map",
    "console_script",
    "reference_root",
    "run_on_a_terminal",
]


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


def console_script() -> str:
    """The installed `anyhamt` script next to this Python (what a user runs)."""
    script = Path(sys.executable).parent / "anyhamt"
    assert script.is_file(), f"{script} missing: install anyhamt (pip install -e .)"
    return str(script)


def run_on_a_terminal(
    argv: list[str], *, terminal: Literal["stdout", "stderr"], sized: bool = True
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with one stream on a pseudo-terminal and the other on a pipe; return
    ``(exit status, what reached the terminal, what reached the pipe)``.

    A sized terminal reports 80x24 as a terminal window does; an unsized one reports no
    size, as some pseudo-terminals (CI runners) do. The terminal turns "\n" into "\r\n".
    """
    controller, child_end = pty.openpty()
    if sized:
        fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    streams: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    streams[terminal] = child_end
    try:
        process = subprocess.Popen(argv, **streams)
    finally:
        os.close(child_end)
    with process:
        on_terminal = b""
        try:
            while chunk := os.read(controller, 4096):
                on_terminal += chunk
        except OSError:  # EIO: the child closed its end of the terminal (Linux)
            pass
        finally:
            os.close(controller)
        out, err = process.communicate(timeout=120)
    return process.returncode, on_terminal, out if terminal == "stderr" else err


def array_metadata(
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: str = "uint8",
    codecs: list[dict[str, Any]] | None = None,
) -> bytes:
    """A Zarr v3 array's ``zarr.json``: a regular grid of ``chunks``, "/"-separated keys."""
    return json.dumps(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": codecs if codecs is not None else [{"name": "bytes"}],
        }
    ).encode()
