"""A sorted index of a HAMT's keys, so prefix listings cost time proportional to their result.

A HAMT yields its keys in hash order, so answering a Zarr store's ``list_prefix``/``list_dir``
straight from it means walking the whole map on every call, and ``to_zarr`` lists a lot. The
HAMT builds this index by one full walk the first time it is asked for one and then keeps it
in step with every ``set``/``delete`` (under its lock), so every store sharing the HAMT, and
writes made on the HAMT directly, see one consistent index.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SortedKeys"]

# Keys per block of the blocked sorted list: inserts move at most this many references, and
# a lookup is one bisect over block maxima plus one within a block.
_BLOCK: Final = 1024


class SortedKeys:
    """A set of strings kept sorted, with O(log n + block) updates and prefix range queries.

    A flat sorted list would move every later key on each insert (minutes for a million
    keys); a list of bounded blocks moves at most one block. Thread-safe: every method holds
    a ``threading.Lock`` and never awaits.
    """

    __slots__ = ("_blocks", "_len", "_maxes", "_mutex")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        ordered = sorted(set(keys))
        self._blocks = [ordered[i : i + _BLOCK] for i in range(0, len(ordered), _BLOCK)]
        self._maxes = [block[-1] for block in self._blocks]
        self._len = len(ordered)
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._mutex:
            i = bisect_left(self._maxes, key)
            if i == len(self._blocks):
                return False
            block = self._blocks[i]
            j = bisect_left(block, key)
            return j < len(block) and block[j] == key

    def add(self, key: str) -> None:
        with self._mutex:
            if not self._blocks:
                self._blocks.append([key])
                self._maxes.append(key)
                self._len = 1
                return
            i = bisect_left(self._maxes, key)
            if i == len(self._blocks):
                i -= 1  # beyond every key: append to the last block
            block = self._blocks[i]
            j = bisect_left(block, key)
            if j < len(block) and block[j] == key:
                return
            insort(block, key)
            self._maxes[i] = block[-1]
            self._len += 1
            if len(block) > 2 * _BLOCK:
                self._blocks[i : i + 1] = [block[:_BLOCK], block[_BLOCK:]]
                self._maxes[i : i + 1] = [block[_BLOCK - 1], block[-1]]

    def discard(self, key: str) -> None:
        with self._mutex:
            i = bisect_left(self._maxes, key)
            if i == len(self._blocks):
                return
            block = self._blocks[i]
            j = bisect_left(block, key)
            if j == len(block) or block[j] != key:
                return
            del block[j]
            self._len -= 1
            if block:
                self._maxes[i] = block[-1]
            else:
                del self._blocks[i]
                del self._maxes[i]

    def has_prefix(self, prefix: str) -> bool:
        """Whether any key starts with ``prefix``."""
        with self._mutex:
            key = self._first_at_or_after(prefix)
        return key is not None and key.startswith(prefix)

    def with_prefix(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        out: list[str] = []
        with self._mutex:
            i = bisect_left(self._maxes, prefix)
            if i == len(self._blocks):
                return out
            j = bisect_left(self._blocks[i], prefix)
            for block in self._blocks[i:]:
                for key in block[j:] if j else block:
                    if not key.startswith(prefix):
                        return out
                    out.append(key)
                j = 0
        return out

    def children(self, prefix: str) -> list[str]:
        """The names directly under ``prefix`` (which is "" or ends in "/"), sorted.

        A name is the part of a key after ``prefix`` up to the next "/". The keys below one
        child directory form a contiguous run, so after finding a directory the search jumps
        past its run: the cost is one bisect per child, whatever the number of keys below.
        """
        names: list[str] = []
        seen: set[str] = set()
        start = prefix
        with self._mutex:
            while True:
                key = self._first_at_or_after(start)
                if key is None or not key.startswith(prefix):
                    break
                rest = key[len(prefix) :]
                slash = rest.find("/")
                name = rest if slash < 0 else rest[:slash]
                if name not in seen:
                    seen.add(name)
                    names.append(name)
                # A file: go on from the next key. A directory: "0" follows "/" in code
                # point order, so prefix + name + "0" is the first key past "name/...".
                start = key + "\0" if slash < 0 else prefix + name + "0"
        names.sort()
        return names

    def _first_at_or_after(self, value: str) -> str | None:
        # Caller holds self._mutex.
        i = bisect_left(self._maxes, value)
        if i == len(self._blocks):
            return None
        block = self._blocks[i]
        return block[bisect_left(block, value)]
