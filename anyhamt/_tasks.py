"""Bounded concurrency over anyio task groups, with plain exceptions for callers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["map_bounded"]


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error worth reporting from a task group: the first that is not a cancellation."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return leaves[0]


async def map_bounded[T, R](
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int
) -> list[R]:
    """``[await fn(x) for x in items]`` with at most ``limit`` calls in flight.

    Results keep the order of ``items``. The first failure cancels the rest and is raised
    as itself, not wrapped in an ``ExceptionGroup``. Cancelled means some calls may have
    completed; each call must therefore be safe to repeat.
    """
    if not items:
        return []
    if len(items) == 1 or limit <= 1:
        return [await fn(item) for item in items]
    results: list[Any] = [None] * len(items)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(items):
            index = next_index
            next_index += 1
            results[index] = await fn(items[index])

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(limit, len(items))):
                tg.start_soon(worker)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    return results
