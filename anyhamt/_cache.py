"""A least-recently-used map bounded by an estimate of the memory its values hold."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["LRUCache"]


class LRUCache:
    """Thread-safe LRU cache; each entry carries its own size in bytes."""

    __slots__ = ("_entries", "_mutex", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        # No lock: each OrderedDict call is atomic under the GIL, and an entry evicted
        # between the two calls is simply not moved.
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:  # noqa: SIM105 - the hottest call in a read; suppress() costs more
            self._entries.move_to_end(key)
        except KeyError:
            pass
        return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._mutex:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._entries[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, (_, size) = self._entries.popitem(last=False)
                self.nbytes -= size

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()
            self.nbytes = 0
