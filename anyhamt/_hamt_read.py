"""The HAMT's read side: stored nodes through a memory-bounded cache, and lookups over them.

``BlockLoader`` is the reusable part: it turns a pointer into a decoded block, going to the
store only on a cache miss, and at most once at a time per pointer however many tasks miss
it together (``SingleFlight``, on any loop or thread; see docs/architecture.md §3). It
knows nothing about HAMT nodes: the HAMT gives it ``decode_node``; a cache of Zarr shard
indexes can give it its own decoder and cost.

The functions below it walk *stored* HAMT nodes (read-only lookups, the full-map walk);
the write tree (``anyhamt/_hamt_tree.py``) walks its own in-memory nodes and calls them
where it reaches a stored link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

from ._cache import LRUCache
from ._codec import decode_node
from ._errors import KeyNotFoundError
from ._sync import SingleFlight
from ._tasks import map_bounded

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._codec import Pointer
    from .cas._base import ContentAddressedStore

__all__ = [
    "MISS",
    "BlockLoader",
    "find_cached",
    "iter_buckets_stored",
    "lookup_stored",
    "node_cost",
    "node_loader",
]

# Rough bytes of memory a decoded node holds beyond its encoded size: the 256-slot list
# plus dicts and key objects. Used to keep the read cache within its budget.
_NODE_OVERHEAD: Final = 2200
_ENTRY_OVERHEAD: Final = 160
# Node loads in flight while walking the tree for keys()/len().
_WALK_CONCURRENCY: Final = 32
# "Not found in the cache" (None is a valid pointer for a custom store).
MISS: Final[Any] = object()


def node_cost(data_len: int, slots: list[Any]) -> int:
    """The memory a decoded node of ``data_len`` encoded bytes is charged in the cache."""
    entries = sum(len(s) if type(s) is dict else 1 for s in slots if s is not None)
    return _NODE_OVERHEAD + data_len + _ENTRY_OVERHEAD * entries


class BlockLoader[T]:
    """Decoded blocks by pointer, through an LRU cache bounded by memory, one load at a time.

    * ``cached(pointer)`` answers from the cache without awaiting (``None`` on a miss): the
      hot path of a read looks there first.
    * ``load(pointer)`` is the block, decoded; on a miss it reads the store, decodes, and
      caches the result charged ``cost(len(data), value)`` bytes. Tasks that miss the same
      pointer together share one read (any loop, any thread).
    * ``remember(pointer, value, nbytes)`` caches a value obtained some other way (the
      HAMT's flush hands over the nodes it has just saved); ``vacate()`` empties the cache;
      ``nbytes`` is what it holds.

    Values are shared by every caller: never mutate one. Cancellation of ``load``: nothing
    happens; a load another task waits on is handed over to that task.
    """

    __slots__ = ("_cas", "_cost", "_decode", "_flights", "cache", "cached")

    def __init__(
        self,
        cas: ContentAddressedStore,
        decode: Callable[[bytes], T],
        cost: Callable[[int, T], int],
        max_bytes: int,
    ) -> None:
        self._cas = cas
        self._decode = decode
        self._cost = cost
        self._flights = SingleFlight()
        self.cache = LRUCache(max_bytes)
        # Bound once: ``cached`` is called for every level of every cached read.
        self.cached: Callable[[Pointer], T | None] = self.cache.get

    @property
    def nbytes(self) -> int:
        """Approximate bytes of memory the cached values hold."""
        return self.cache.nbytes

    async def load(self, pointer: Pointer) -> T:
        """The decoded block ``pointer`` names, from the cache or, once, from the store."""
        value = self.cached(pointer)
        if value is not None:
            return value
        return cast("T", await self._flights.run(pointer, lambda: self._fetch(pointer)))

    async def _fetch(self, pointer: Pointer) -> T:
        data = await self._cas._load_id(pointer)
        value = self._decode(data)
        self.cache.put(pointer, value, self._cost(len(data), value))
        return value

    def remember(self, pointer: Pointer, value: T, nbytes: int) -> None:
        """Cache ``value`` as the decoded block of ``pointer``."""
        self.cache.put(pointer, value, nbytes)

    def vacate(self) -> None:
        """Drop every cached value (loads in flight still finish and cache theirs)."""
        self.cache.clear()


def node_loader(cas: ContentAddressedStore, max_bytes: int) -> BlockLoader[list[Any]]:
    """The loader of a HAMT's nodes: each a list of 256 decoded slots."""
    return BlockLoader(cas, decode_node, node_cost, max_bytes)


def find_cached(
    loader: BlockLoader[list[Any]], root: Pointer, key: str, key_hash: bytes
) -> Pointer:
    """The pointer of ``key`` in the stored tree at ``root`` without awaiting: ``MISS`` if
    a node on the way is not cached. ``KeyNotFoundError`` if the key is not there.

    It repeats ``lookup_stored``'s few lines on purpose: this is the hottest path of a
    read, and a shared helper costs a call per level.
    """
    cache_get = loader.cached
    pointer = root
    for byte in key_hash:
        slots = cache_get(pointer)
        if slots is None:
            return MISS
        slot = slots[byte]
        if slot is None:
            raise KeyNotFoundError(key)
        if type(slot) is dict:
            try:
                return slot[key]
            except KeyError:
                raise KeyNotFoundError(key) from None
        pointer = slot[0]
    raise KeyNotFoundError(key)


async def lookup_stored(
    loader: BlockLoader[list[Any]], key: str, key_hash: bytes, pointer: Pointer, depth: int
) -> Pointer:
    """The pointer of ``key`` in the stored subtree at ``pointer``, which sits at ``depth``."""
    cache_get = loader.cached
    while True:
        slots = cache_get(pointer)
        if slots is None:
            slots = await loader.load(pointer)
        if depth >= len(key_hash):
            raise KeyNotFoundError(key)
        slot = slots[key_hash[depth]]
        if slot is None:
            raise KeyNotFoundError(key)
        if type(slot) is dict:
            try:
                return slot[key]
            except KeyError:
                raise KeyNotFoundError(key) from None
        pointer = slot[0]
        depth += 1


async def iter_buckets_stored(
    loader: BlockLoader[list[Any]], root: Pointer
) -> AsyncIterator[dict[str, Pointer]]:
    """Buckets of a stored tree, a level at a time, loading each level concurrently."""
    level = [root]
    while level:
        nodes = await map_bounded(loader.load, level, _WALK_CONCURRENCY)
        level = []
        for slots in nodes:
            for slot in slots:
                if slot is None:
                    continue
                if type(slot) is dict:
                    yield slot
                else:
                    level.append(slot[0])
