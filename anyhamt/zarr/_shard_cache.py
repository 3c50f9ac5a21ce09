"""Shards of the sharded Zarr store: their wire form and a cache bounded by real memory.

A shard is a dag-cbor list of ``chunks_per_shard`` entries, each a chunk's id or null: a
CID (tag 42 around a byte string ``00 || binary CID``) on CID stores, a plain byte string
for ``InMemoryCAS`` ids. A read needs one entry, so a clean shard is kept as the bytes that
were loaded plus the offset of every entry (found by scanning CBOR heads, no CID objects
built); the list of ids is materialised only when a write changes the shard.

Memory accounting (what ``ShardCache.nbytes`` counts, per entry; CPython 3.12+ sizes):

* clean shard: ``sys.getsizeof(encoded bytes)`` + the offsets array
  (``sys.getsizeof(array('I'))`` with ``n + 1`` items, added on first read) + ``ENTRY_OVERHEAD``;
* decoded (written) shard: ``sys.getsizeof(list)`` of ``n`` slots + ``sys.getsizeof(id)``
  for each non-null slot (an id object shared by two slots is counted twice: an
  over-estimate) + ``ENTRY_OVERHEAD``.

``ENTRY_OVERHEAD`` (256 bytes) covers the entry object, its key tuple and the ordered-dict
node; tests/zarr/test_sharded_cache.py checks the total against ``tracemalloc``.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

import dag_cbor

from .._codec import Link, _encode_pointer, _head, as_pointer, to_public
from .._errors import CorruptBlockError

if TYPE_CHECKING:
    from .._codec import Pointer

__all__ = ["ENTRY_OVERHEAD", "Key", "Shard", "ShardCache", "encode_shard", "slot_size"]

ENTRY_OVERHEAD: Final = 256
# A shard's cache key: (array key, shard index).
type Key = tuple[str, int]
_NULL: Final = 0xF6
_LIST_SLOT: Final = 8  # bytes per slot of a CPython list


def _read_arg(data: bytes, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or pos + size > len(data):
        raise CorruptBlockError("shard: indefinite, reserved or cut-off CBOR length")
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def _skip(data: bytes, pos: int) -> int:
    """The position after the CBOR item at ``pos``."""
    if pos >= len(data):
        raise CorruptBlockError("shard: CBOR item runs past the end of the block")
    first = data[pos]
    major, (n, pos) = first >> 5, _read_arg(data, pos + 1, first & 0x1F)
    if major in (2, 3):
        pos += n
    elif major == 4:
        for _ in range(n):
            pos = _skip(data, pos)
    elif major == 5:
        for _ in range(2 * n):
            pos = _skip(data, pos)
    elif major == 6:
        pos = _skip(data, pos)
    if pos > len(data):
        raise CorruptBlockError("shard: CBOR item runs past the end of the block")
    return pos


def entry_offsets(data: bytes) -> array[int]:
    """Where each entry of an encoded shard starts, plus the end of the last one."""
    if not data or data[0] >> 5 != 4:
        raise CorruptBlockError("shard is not a dag-cbor list")
    count, pos = _read_arg(data, 1, data[0] & 0x1F)
    offsets = array("I", bytes(4 * (count + 1)))
    for i in range(count):
        offsets[i] = pos
        pos = _skip(data, pos)
    offsets[count] = pos
    if pos != len(data):
        raise CorruptBlockError("shard has bytes after its list")
    return offsets


def decode_entry(data: bytes, start: int, end: int) -> Pointer | None:
    """The id encoded in ``data[start:end]`` (one shard entry), or None for null."""
    first = data[start]
    if first == _NULL:
        return None
    if first == 0xD8 and data[start + 1] == 0x2A:  # tag 42: a CID
        n, pos = _read_arg(data, start + 3, data[start + 2] & 0x1F)
        if data[start + 2] >> 5 == 2 and pos + n == end and n > 1 and data[pos] == 0:
            return Link(data[pos + 1 : end])
    elif first >> 5 == 2:  # a byte string: an InMemoryCAS id
        n, pos = _read_arg(data, start + 1, first & 0x1F)
        if pos + n == end:
            return data[pos:end]
    # Anything else (a custom store's ids): the general codec.
    try:
        return as_pointer(dag_cbor.decode(data[start:end]))
    except Exception as exc:
        raise CorruptBlockError(f"shard entry is not an id: {exc}") from exc


def encode_shard(slots: list[Pointer | None]) -> bytes:
    """A shard's dag-cbor bytes, identical to ``dag_cbor.encode`` of the id list."""
    parts = [_head(4, len(slots))]
    parts.extend(b"\xf6" if ptr is None else _encode_pointer(ptr) for ptr in slots)
    return b"".join(parts)


def slot_size(ptr: Pointer | None) -> int:
    """The memory a decoded slot's id holds (0 for null)."""
    return 0 if ptr is None else sys.getsizeof(ptr)


class Shard:
    """One cached shard: encoded bytes (clean, as loaded) or a list of ids (written).

    Mutated only under the store's lock for this shard; read from anywhere.
    """

    __slots__ = ("data", "dirty", "nbytes", "offsets", "pins", "slots")

    def __init__(self, data: bytes | None, slots: list[Pointer | None] | None) -> None:
        self.data = data
        self.offsets: array[int] | None = None
        self.slots = slots
        self.dirty = False
        self.pins = 0
        self.nbytes = self._measure()

    def _measure(self) -> int:
        if self.slots is not None:
            return (
                ENTRY_OVERHEAD
                + sys.getsizeof(self.slots)
                + sum(slot_size(ptr) for ptr in self.slots)
            )
        assert self.data is not None
        size = ENTRY_OVERHEAD + sys.getsizeof(self.data)
        if self.offsets is not None:
            size += sys.getsizeof(self.offsets)
        return size

    def __len__(self) -> int:
        if self.slots is not None:
            return len(self.slots)
        return len(self._offsets()) - 1

    def _offsets(self) -> array[int]:
        offsets = self.offsets
        if offsets is None:
            assert self.data is not None
            offsets = self.offsets = entry_offsets(self.data)
        return offsets

    def get(self, slot: int) -> Pointer | None:
        """The id in ``slot`` (without decoding the other entries)."""
        slots = self.slots
        if slots is not None:
            return slots[slot]
        offsets = self._offsets()
        assert self.data is not None
        return decode_entry(self.data, offsets[slot], offsets[slot + 1])

    def materialise(self) -> list[Pointer | None]:
        """The id list, decoded once; the shard is kept decoded from then on."""
        if self.slots is None:
            offsets = self._offsets()
            data = self.data
            assert data is not None
            self.slots = [decode_entry(data, offsets[i], offsets[i + 1]) for i in range(len(self))]
            self.data = self.offsets = None
        return self.slots

    def encode(self) -> bytes:
        if self.slots is None:
            assert self.data is not None
            return self.data
        return encode_shard(self.slots)


class ShardCache:
    """LRU of shards bounded by the memory they hold (see the module docstring).

    Dirty shards (changed, not yet saved) and pinned shards (in use by a call) are never
    evicted; ``over_budget`` tells the store to write dirty shards back instead of growing.
    Thread-safe: its state changes only under a ``threading.Lock`` never held across an await.
    """

    __slots__ = ("_entries", "_mutex", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Key, Shard] = OrderedDict()
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def pin(self, key: Key) -> Shard | None:
        """The cached shard ``key``, pinned (call ``unpin``), or None."""
        with self._mutex:
            shard = self._entries.get(key)
            if shard is not None:
                shard.pins += 1
                self._entries.move_to_end(key)
            return shard

    def add_pinned(self, key: Key, shard: Shard) -> Shard:
        """Cache ``shard`` unless one is cached for ``key`` already; the cached one, pinned."""
        with self._mutex:
            cached = self._entries.get(key)
            if cached is None:
                cached = self._entries[key] = shard
                self.nbytes += shard.nbytes
            cached.pins += 1
            self._entries.move_to_end(key)
            return cached

    def unpin(self, key: Key, shard: Shard) -> None:
        with self._mutex:
            shard.pins -= 1
            self._shrink()

    def resized(self, key: Key, shard: Shard) -> None:
        """Re-measure ``shard`` after a change (caller holds the shard's lock)."""
        with self._mutex:
            old = shard.nbytes
            shard.nbytes = shard._measure()
            if self._entries.get(key) is shard:
                self.nbytes += shard.nbytes - old

    def adjust(self, key: Key, shard: Shard, delta: int) -> None:
        """Add ``delta`` bytes to a decoded shard's size (one slot changed; caller holds
        the shard's lock): O(1), where ``resized`` measures every slot."""
        with self._mutex:
            shard.nbytes += delta
            if self._entries.get(key) is shard:
                self.nbytes += delta

    def drop(self, key: Key) -> None:
        """Forget ``key`` whatever its state (the shard no longer exists)."""
        with self._mutex:
            shard = self._entries.pop(key, None)
            if shard is not None:
                self.nbytes -= shard.nbytes

    def drop_clean(self, key: Key, shard: Shard) -> None:
        """Forget ``key`` if it still holds this clean, unpinned shard."""
        with self._mutex:
            if self._entries.get(key) is shard and not shard.dirty and shard.pins == 0:
                del self._entries[key]
                self.nbytes -= shard.nbytes

    def dirty_keys(self) -> list[Key]:
        with self._mutex:
            return [key for key, shard in self._entries.items() if shard.dirty]

    def keys(self) -> list[Key]:
        with self._mutex:
            return list(self._entries)

    def peek(self, key: Key) -> Shard | None:
        return self._entries.get(key)

    def write_back_candidates(self) -> list[Key]:
        """Dirty, unpinned shards, least recently used first, while over budget."""
        with self._mutex:
            self._shrink()
            if self.nbytes <= self.max_bytes:
                return []
            return [key for key, shard in self._entries.items() if shard.dirty and not shard.pins]

    def over_budget(self) -> bool:
        return self.nbytes > self.max_bytes

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()
            self.nbytes = 0

    def _shrink(self) -> None:
        # Caller holds the mutex. Evict clean, unpinned shards, oldest first.
        if self.nbytes <= self.max_bytes:
            return
        for key in list(self._entries):
            shard = self._entries[key]
            if not shard.dirty and not shard.pins:
                del self._entries[key]
                self.nbytes -= shard.nbytes
                if self.nbytes <= self.max_bytes:
                    return


def public_ids(value: Any) -> Any:
    """``value`` with every internal id as users see it (for ``dag_cbor.encode``)."""
    if isinstance(value, dict):
        return {k: public_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_ids(v) for v in value]
    return to_public(value)


def internal_ids(value: Any) -> Any:
    """``value`` (decoded dag-cbor) with every CID in internal form."""
    if isinstance(value, dict):
        return {k: internal_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [internal_ids(v) for v in value]
    return as_pointer(value)
