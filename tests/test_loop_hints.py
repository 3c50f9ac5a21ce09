"""The deadlock detector's stack reading and the hints libraries register with it.

Synchronous tests: ``blocked_reason`` reads another thread's stack, no event loop involved.
"""

from __future__ import annotations

import threading
import time

import anyhamt.zarr  # noqa: F401  (registers zarr's hint, as any use of the Zarr stores does)
from anyhamt._loops import _HINTS, add_blocking_hint, blocked_reason


def _parked_in_wait(release: threading.Event) -> None:
    release.wait()


def _reason_once_parked(thread: threading.Thread) -> str | None:
    # Poll until the thread is inside its wait (bounded: the assertion says if it never is).
    for _ in range(6000):
        assert thread.ident is not None
        reason = blocked_reason(thread.ident)
        if reason is not None:
            return reason
        time.sleep(0.01)
    return None


def _reason_for_a_parked_thread() -> str | None:
    release = threading.Event()
    thread = threading.Thread(target=_parked_in_wait, args=(release,), daemon=True)
    thread.start()
    try:
        return _reason_once_parked(thread)
    finally:
        release.set()
        thread.join()


def test_a_thread_in_a_synchronous_wait_is_reported_blocked() -> None:
    assert _reason_for_a_parked_thread() == "it is blocked in a synchronous wait"


def test_a_registered_hint_names_the_library_the_wait_is_in() -> None:
    add_blocking_hint("tests/test_loop_hints.py", "it waits inside the hint test")
    try:
        assert _reason_for_a_parked_thread() == "it waits inside the hint test"
    finally:
        _HINTS.remove(("tests/test_loop_hints.py", "it waits inside the hint test"))


def test_registering_the_same_hint_twice_keeps_one() -> None:
    before = list(_HINTS)
    suffix, reason = before[0]
    add_blocking_hint(suffix, reason)
    assert before == _HINTS


def test_anyhamt_zarr_registers_zarrs_sync_api() -> None:
    assert any(suffix == "zarr/core/sync.py" for suffix, _ in _HINTS)


def test_a_running_thread_is_not_blocked() -> None:
    assert blocked_reason(threading.get_ident()) is None


def test_a_thread_that_has_exited_is_reported() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert thread.ident is not None
    assert blocked_reason(thread.ident) == "its thread has exited"
