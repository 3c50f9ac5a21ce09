"""The HAMT: a hash array mapped trie of 256-way nodes stored in a content-addressed store.

Shape (shared with py-hamt, so both produce the same bytes and root ids): the slot of a key
at depth ``d`` is byte ``d`` of ``hash_fn(key)``. A slot holds nothing, a bucket of at most
``max_bucket_size`` keys, or a link to a child node. A child exists exactly when more than
``max_bucket_size`` keys share the slot, so the tree, and with it the root id, depends only
on the map's contents.

Two modes, as in py-hamt:

* **read-write**: changes go to an in-memory tree of ``_WriteNode``s. Nodes are loaded
  from the store when a write first passes through them and marked dirty when changed.
  ``make_read_only()`` (or ``cache_vacate()``) saves the dirty nodes bottom-up, a level at
  a time, in batches, and yields the root id.
* **read-only**: lookups walk stored nodes through an LRU cache bounded by memory; a node
  many tasks miss at once is loaded once (``SingleFlight``).

Concurrency: the HAMT is not tied to an event loop. Its lock (``CrossLoopLock``) and loads
(``SingleFlight``) serve tasks on any loop and thread, so one HAMT can be used from trio,
from asyncio and from zarr's own loop, one after the other or at the same time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Self, cast

import dag_cbor
from blake3 import blake3

from ._cache import LRUCache
from ._codec import as_link, as_pointer, decode_node, empty_slots, encode_node, to_public
from ._errors import (
    CorruptBlockError,
    HashExhaustedError,
    HashTooShortError,
    InvalidConfigError,
    InvalidKeyError,
    InvalidValueError,
    KeyNotFoundError,
    ReadOnlyError,
)
from ._loops import repair_sniffio
from ._sorted_keys import SortedKeys
from ._sync import CrossLoopLock, SingleFlight
from ._tasks import map_bounded
from .cas._base import check_range

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._codec import Pointer
    from .cas._base import ContentAddressedStore

__all__ = ["HAMT", "blake3_hashfn"]

# Rough bytes of memory a decoded node holds beyond its encoded size: the 256-slot list
# plus dicts and key objects. Used to keep the read cache within its budget.
_NODE_OVERHEAD: Final = 2200
_ENTRY_OVERHEAD: Final = 160
# Nodes saved per batch during a flush; bounds the memory held by encoded blocks.
_FLUSH_BATCH: Final = 1024
# Node loads in flight while walking the tree for keys()/len().
_WALK_CONCURRENCY: Final = 32
# "Not found in the cache" (None is a valid pointer for a custom store).
_MISS: Final[Any] = object()
# The single-flight key of building the sorted key index (never equal to a pointer).
_INDEX_BUILD: Final = ("sorted key index",)


def blake3_hashfn(input_bytes: bytes) -> bytes:
    """The HAMT's default hash: the 32-byte blake3 digest of the key's UTF-8 bytes."""
    return blake3(input_bytes).digest()


class _WriteNode:
    """A node of the in-memory write tree.

    ``slots`` holds ``None``, a bucket ``dict``, a stored link ``[pointer]`` or a child
    ``_WriteNode``; ``children`` indexes the latter so a flush need not scan 256 slots per
    node. ``link`` is the id of the stored node this one equals while it is clean.
    """

    __slots__ = ("children", "dirty", "link", "slots")

    def __init__(self, slots: list[Any], link: Pointer | None, dirty: bool) -> None:
        self.slots = slots
        self.link = link
        self.dirty = dirty
        self.children: dict[int, _WriteNode] = {}

    def attach(self, index: int, child: _WriteNode) -> None:
        self.slots[index] = child
        self.children[index] = child

    def put(self, index: int, slot: Any) -> None:
        """Set a slot to a bucket, a stored link or ``None``."""
        self.slots[index] = slot
        self.children.pop(index, None)


def _node_cost(data_len: int, slots: list[Any]) -> int:
    entries = sum(len(s) if type(s) is dict else 1 for s in slots if s is not None)
    return _NODE_OVERHEAD + data_len + _ENTRY_OVERHEAD * entries


class HAMT:
    """A key-value map of ``str`` keys stored as a HAMT in a ``ContentAddressedStore``.

    Same constructor and methods as py-hamt's ``HAMT``. Values are IPLD values (dag-cbor
    encoded) or, with ``values_are_bytes=True``, raw ``bytes``. Each value is its own block.

    Read ``root_node_id`` after ``make_read_only()``: in read-write mode it is the root as of
    the last flush, not of the changes buffered since.

    ``cache_bytes`` bounds the memory of the read cache of decoded nodes.

    Cancellation: a cancelled ``set`` or ``delete`` either happened entirely or not at all
    (the value block may have been saved; that is harmless). A cancelled
    ``make_read_only``/``cache_vacate`` leaves the HAMT writable with its changes intact;
    calling it again finishes the flush and gives the same root.
    """

    def __init__(
        self,
        cas: ContentAddressedStore,
        hash_fn: Callable[[bytes], bytes] = blake3_hashfn,
        root_node_id: Any = None,
        read_only: bool = False,
        max_bucket_size: int = 4,
        values_are_bytes: bool = False,
        *,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        if isinstance(max_bucket_size, bool) or not isinstance(max_bucket_size, int):
            raise InvalidConfigError(f"max_bucket_size must be an int, got {max_bucket_size!r}")
        if max_bucket_size < 1:
            raise InvalidConfigError(
                f"max_bucket_size must be a positive integer, got {max_bucket_size}"
            )
        self.cas = cas
        self.hash_fn = hash_fn
        self.max_bucket_size = max_bucket_size
        self.values_are_bytes = values_are_bytes
        self.read_only = read_only
        self._root: Pointer | None = _parse_root(root_node_id)
        # The write tree, or None when every change has been flushed.
        self._tree: _WriteNode | None = None
        if self._root is None:
            self._tree = _WriteNode(empty_slots(), None, True)
        self._lock = CrossLoopLock()
        self._cache = LRUCache(cache_bytes)
        self._loads = SingleFlight()
        # Every key in sorted order, built on first request (Zarr listings) and then kept in
        # step by set/delete under the lock; None until then.
        self._sorted_keys: SortedKeys | None = None
        # Called with each key a set/delete changed, under the lock (the Zarr stores drop
        # cached metadata with it, also for writes made on the HAMT directly).
        self._on_change: Callable[[str], None] | None = None

    @classmethod
    async def build(cls, *args: Any, **kwargs: Any) -> Self:
        """Create a HAMT; with no ``root_node_id``, an empty one.

        A read-only HAMT with no root saves the empty node to the store so that
        ``root_node_id`` is valid at once.
        """
        repair_sniffio()
        hamt = cls(*args, **kwargs)
        if hamt._root is None and hamt.read_only:
            async with hamt._lock:
                await hamt._flush_locked()
        return hamt

    # -- root id --------------------------------------------------------------------------

    @property
    def root_node_id(self) -> Any:
        """The root node's id (a ``multiformats.CID``, or bytes for ``InMemoryCAS``).

        Valid in read-only mode; in read-write mode it is the root as of the last flush
        (``None`` for a new HAMT never flushed).
        """
        return None if self._root is None else to_public(self._root)

    @root_node_id.setter
    def root_node_id(self, value: Any) -> None:
        self._root = _parse_root(value)
        self._tree = None if self._root is not None else _WriteNode(empty_slots(), None, True)
        self._sorted_keys = None

    # -- mode switches ----------------------------------------------------------------------

    async def make_read_only(self) -> None:
        """Save every buffered change, then switch to read-only mode.

        Afterwards ``root_node_id`` is the root of the whole map, and every block it needs
        has been made durable (``cas.flush()``).
        """
        repair_sniffio()
        async with self._lock:
            await self._flush_locked()
            self.read_only = True

    async def enable_write(self) -> None:
        """Switch to read-write mode (a no-op when already writable)."""
        repair_sniffio()
        async with self._lock:
            self.read_only = False

    async def cache_size(self) -> int:
        """Approximate bytes of memory held by the read cache and the write buffer."""
        repair_sniffio()
        async with self._lock:
            size = self._cache.nbytes
            if self._tree is not None:
                stack = [self._tree]
                while stack:
                    node = stack.pop()
                    size += _node_cost(0, node.slots)
                    stack.extend(node.children.values())
            return size

    async def cache_vacate(self) -> None:
        """Empty the caches; in read-write mode, save the buffered changes first."""
        repair_sniffio()
        async with self._lock:
            if self._tree is not None:
                await self._flush_locked()
            self._cache.clear()
            self._sorted_keys = None

    # -- writes ---------------------------------------------------------------------------

    async def set(self, key: str, val: Any) -> None:
        """Map ``key`` to ``val``."""
        repair_sniffio()
        key_hash, pointer = await self._save_value(key, val)
        lock = self._lock
        if not lock.try_acquire():
            await lock.acquire()
        try:
            if self.read_only:
                raise ReadOnlyError("this HAMT became read-only before the write could happen")
            await self._insert(key, key_hash, pointer)
            self._changed(key, added=True)
        finally:
            lock.release()

    async def set_pointer(self, key: str, pointer: Any) -> None:
        """Map ``key`` to a block that is already in the store (an id from ``cas.save``)."""
        repair_sniffio()
        if self.read_only:
            raise ReadOnlyError("this HAMT is read-only; call `await hamt.enable_write()` first")
        key_hash = self._hash(key)
        async with self._lock:
            await self._insert(key, key_hash, as_pointer(pointer))
            self._changed(key, added=True)

    async def delete(self, key: str) -> None:
        """Remove ``key``; ``KeyNotFoundError`` (a ``KeyError``) if it is not there."""
        repair_sniffio()
        if self.read_only:
            raise ReadOnlyError("this HAMT is read-only; call `await hamt.enable_write()` first")
        key_hash = self._hash(key)
        async with self._lock:
            await self._remove(key, key_hash)
            self._changed(key, added=False)

    async def _set_if_absent(self, key: str, val: Any) -> bool:
        """Map ``key`` to ``val`` unless it is mapped already; True if it was set.

        Atomic with every other write: the check and the insert happen under one hold of
        the lock. (The value block may be saved even when the key exists; that is harmless.)
        """
        repair_sniffio()
        key_hash, pointer = await self._save_value(key, val)
        async with self._lock:
            if self.read_only:
                raise ReadOnlyError("this HAMT became read-only before the write could happen")
            try:
                await self._get_pointer_locked(key, key_hash)
            except KeyNotFoundError:
                await self._insert(key, key_hash, pointer)
                self._changed(key, added=True)
                return True
            return False

    async def _save_value(self, key: str, val: Any) -> tuple[bytes, Pointer]:
        """Check a write can happen, save the value's block; the key's hash and the block's id.

        Nothing in the map changes here (a saved block no key points to is harmless).
        """
        if self.read_only:
            raise ReadOnlyError("this HAMT is read-only; call `await hamt.enable_write()` first")
        key_hash = self._hash(key)
        data = val if self.values_are_bytes and type(val) is bytes else self._encode_value(val)
        return key_hash, await self.cas._save_id(data, "raw")

    def _changed(self, key: str, *, added: bool) -> None:
        # Caller holds the lock and has just changed ``key``.
        index = self._sorted_keys
        if index is not None:
            if added:
                index.add(key)
            else:
                index.discard(key)
        if self._on_change is not None:
            self._on_change(key)

    async def _key_index(self) -> SortedKeys:
        """Every key, sorted; built by one walk of the map on first use, then kept current.

        Shared (never mutate it): ``set``/``delete`` update it under the lock, so a listing
        sees either all or none of a concurrent write.
        """
        repair_sniffio()
        index = self._sorted_keys
        if index is not None:
            return index
        return cast("SortedKeys", await self._loads.run(_INDEX_BUILD, self._build_key_index))

    async def _build_key_index(self) -> SortedKeys:
        # Under the lock, so no write lands between the walk and the index taking over.
        async with self._lock:
            if self._sorted_keys is None:
                keys = [key async for bucket in self._iter_buckets_locked() for key in bucket]
                self._sorted_keys = SortedKeys(keys)
            return self._sorted_keys

    # -- reads ----------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> Any:
        """The value of ``key`` (or a byte range of it); ``KeyNotFoundError`` if absent."""
        repair_sniffio()
        if offset is not None or length is not None or suffix is not None:
            check_range(offset, length, suffix)
        key_hash = self._hash(key)
        pointer = _MISS
        if self.read_only and self._tree is None:
            pointer = self._find_cached(key, key_hash)
        if pointer is _MISS:
            pointer = await self._get_pointer(key, key_hash)
        data = await self.cas._load_id(pointer, offset, length, suffix)
        if self.values_are_bytes:
            return data
        try:
            return dag_cbor.decode(data)
        except Exception as exc:
            raise CorruptBlockError(
                f"the value of {key!r} is not dag-cbor; was the HAMT written with "
                "values_are_bytes=True?"
            ) from exc

    async def get_pointer(self, key: str) -> Any:
        """The id of the block holding ``key``'s value, as the store hands ids out."""
        repair_sniffio()
        return to_public(await self._get_pointer(key, self._hash(key)))

    async def keys(self) -> AsyncIterator[str]:
        """Every key, in no particular order.

        In read-write mode the keys are those present when iteration starts.
        """
        repair_sniffio()
        if self.read_only:
            async for bucket in self._iter_buckets_stored(self._root):
                for key in bucket:
                    yield key
            return
        async with self._lock:
            keys = [key async for bucket in self._iter_buckets_locked() for key in bucket]
        for key in keys:
            yield key

    async def len(self) -> int:
        """The number of keys."""
        repair_sniffio()
        if self.read_only:
            return sum([len(b) async for b in self._iter_buckets_stored(self._root)])
        async with self._lock:
            return sum([len(b) async for b in self._iter_buckets_locked()])

    # -- internals: keys and values -------------------------------------------------------

    def _hash(self, key: str) -> bytes:
        if type(key) is not str:
            raise InvalidKeyError(f"HAMT keys must be str, got {type(key).__name__}")
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate ("\ud800", or undecodable bytes smuggled in through
            # surrogateescape) has no UTF-8 form, so it cannot be hashed like py-hamt does.
            raise InvalidKeyError(
                f"HAMT keys must be encodable as UTF-8; {key!r} is not ({exc.reason}). "
                "Decode bytes keys with errors='strict' or pick another name"
            ) from exc
        key_hash = self.hash_fn(encoded)
        if not isinstance(key_hash, bytes) or len(key_hash) < 1:
            raise HashTooShortError(
                f"hash_fn must return at least 1 byte of bytes, got {key_hash!r}; "
                "use blake3_hashfn or another hash with a fixed length"
            )
        return key_hash

    def _encode_value(self, val: Any) -> bytes:
        if self.values_are_bytes:
            if type(val) is bytes:
                return val
            if isinstance(val, (bytes, bytearray, memoryview)):
                return bytes(val)
            raise InvalidValueError(
                f"values_are_bytes=True takes bytes values, got {type(val).__name__}; "
                "encode the value yourself or build the HAMT with values_are_bytes=False"
            )
        try:
            return bytes(dag_cbor.encode(val))
        except Exception as exc:
            raise InvalidValueError(f"cannot encode value as dag-cbor: {exc}") from exc

    def _slot(self, key_hash: bytes, depth: int, key: str) -> int:
        if depth >= len(key_hash):
            raise HashExhaustedError(
                f"more than max_bucket_size={self.max_bucket_size} keys share all "
                f"{len(key_hash)} hash bytes of {key!r}; use a longer hash_fn or a larger "
                "max_bucket_size"
            )
        return key_hash[depth]

    # -- internals: node loading ------------------------------------------------------------

    async def _load_node(self, pointer: Pointer) -> list[Any]:
        """The decoded slots of a stored node (shared; never mutate them)."""
        slots = self._cache.get(pointer)
        if slots is not None:
            return cast("list[Any]", slots)
        return cast("list[Any]", await self._loads.run(pointer, lambda: self._fetch_node(pointer)))

    async def _fetch_node(self, pointer: Pointer) -> list[Any]:
        data = await self.cas._load_id(pointer)
        slots = decode_node(data)
        self._cache.put(pointer, slots, _node_cost(len(data), slots))
        return slots

    async def _writable_root(self) -> _WriteNode:
        if self._tree is None:
            self._tree = await self._materialize(self._root)
        return self._tree

    async def _materialize(self, pointer: Pointer) -> _WriteNode:
        stored = await self._load_node(pointer)
        slots = [dict(s) if type(s) is dict else s for s in stored]
        return _WriteNode(slots, pointer, False)

    async def _get_pointer(self, key: str, key_hash: bytes) -> Pointer:
        if self.read_only and self._tree is None:
            return await self._lookup_stored(key, key_hash, self._root, 0)
        async with self._lock:
            return await self._get_pointer_locked(key, key_hash)

    async def _get_pointer_locked(self, key: str, key_hash: bytes) -> Pointer:
        if self._tree is None:
            return await self._lookup_stored(key, key_hash, self._root, 0)
        node = self._tree
        depth = 0
        while True:
            slot = node.slots[self._slot(key_hash, depth, key)]
            if type(slot) is _WriteNode:
                node = slot
                depth += 1
                continue
            if type(slot) is list:
                return await self._lookup_stored(key, key_hash, slot[0], depth + 1)
            if slot is None or key not in slot:
                raise KeyNotFoundError(key)
            return slot[key]

    def _find_cached(self, key: str, key_hash: bytes) -> Pointer:
        """The lookup of a read-only HAMT without awaiting: ``_MISS`` if a node is not cached.

        It repeats ``_lookup_stored``'s few lines on purpose: this is the hottest path of a
        read, and a shared helper costs a call per level.
        """
        cache_get = self._cache.get
        pointer = self._root
        for byte in key_hash:
            slots = cache_get(pointer)
            if slots is None:
                return _MISS
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

    async def _lookup_stored(
        self, key: str, key_hash: bytes, pointer: Pointer, depth: int
    ) -> Pointer:
        cache_get = self._cache.get
        while True:
            slots = cache_get(pointer)
            if slots is None:
                slots = await self._load_node(pointer)
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

    # -- internals: insert and remove (caller holds the lock) ---------------------------

    async def _insert(self, key: str, key_hash: bytes, pointer: Pointer) -> None:
        node = self._tree or await self._writable_root()
        depth = 0
        hash_len = len(key_hash)
        while True:
            # Nodes on the path are marked dirty on the way down. Should the insert stop
            # early (cancelled, or a full hash), a node is at worst saved again unchanged.
            node.dirty = True
            if depth >= hash_len:
                self._slot(key_hash, depth, key)  # raises HashExhaustedError
            index = key_hash[depth]
            slot = node.slots[index]
            kind = type(slot)
            if kind is dict:
                if key in slot or len(slot) < self.max_bucket_size:
                    slot[key] = pointer
                    return
                entries = dict(slot)
                entries[key] = pointer
                # Built aside and attached in one step, so a HashExhaustedError leaves
                # the map as it was.
                node.attach(index, self._build_subtree(entries, depth + 1))
                return
            if slot is None:
                node.slots[index] = {key: pointer}
                return
            if kind is list:
                # Loading may be cancelled; nothing has changed yet.
                child = await self._materialize(slot[0])
                node.attach(index, child)
                slot = child
            node = slot
            depth += 1

    def _build_subtree(self, entries: dict[str, Pointer], depth: int) -> _WriteNode:
        """A new node holding ``entries`` (more than a bucket's worth) at ``depth``."""
        groups: dict[int, dict[str, Pointer]] = {}
        for key, pointer in entries.items():
            index = self._slot(self.hash_fn(key.encode("utf-8")), depth, key)
            groups.setdefault(index, {})[key] = pointer
        node = _WriteNode(empty_slots(), None, True)
        for index, group in groups.items():
            if len(group) > self.max_bucket_size:
                node.attach(index, self._build_subtree(group, depth + 1))
            else:
                node.slots[index] = group
        return node

    async def _remove(self, key: str, key_hash: bytes) -> None:
        node = await self._writable_root()
        path: list[_WriteNode] = []
        indices: list[int] = []
        depth = 0
        while True:
            index = self._slot(key_hash, depth, key)
            slot = node.slots[index]
            path.append(node)
            indices.append(index)
            if type(slot) is _WriteNode:
                node = slot
            elif type(slot) is list:
                child = await self._materialize(slot[0])
                node.attach(index, child)
                node = child
            elif slot is None or key not in slot:
                raise KeyNotFoundError(key)
            else:
                break
            depth += 1

        # Work out the new contents bottom-up without touching the tree: a node whose
        # subtree now holds at most max_bucket_size keys folds into its parent's slot.
        # Loads happen here, before any change, so cancellation or a failed load changes
        # nothing.
        replacement: Any = {k: v for k, v in path[-1].slots[indices[-1]].items() if k != key}
        level = len(path) - 1
        while level > 0:
            folded = await self._fold(path[level], indices[level], replacement)
            if folded is None:
                break
            replacement = folded
            level -= 1

        path[level].put(indices[level], replacement or None)
        for changed in path[: level + 1]:
            changed.dirty = True

    async def _fold(
        self, node: _WriteNode, index: int, replacement: Any
    ) -> dict[str, Pointer] | None:
        """All entries of ``node`` (with slot ``index`` replaced) if they fit one bucket."""
        slots = list(node.slots)
        slots[index] = replacement
        return await self._collect(slots, self.max_bucket_size)

    async def _collect(self, slots: list[Any], limit: int) -> dict[str, Pointer] | None:
        """Every entry under ``slots``, or ``None`` as soon as there are more than ``limit``."""
        # Every child subtree holds at least one key, so count before loading anything: in
        # a canonical tree any child already puts a node over the limit.
        count = 0
        for slot in slots:
            if slot:
                count += len(slot) if type(slot) is dict else 1
        if count > limit:
            return None
        entries: dict[str, Pointer] = {}
        for slot in slots:
            if not slot:
                continue
            if type(slot) is dict:
                entries.update(slot)
            else:
                child = slot.slots if type(slot) is _WriteNode else await self._load_node(slot[0])
                collected = await self._collect(child, limit - len(entries))
                if collected is None:
                    return None
                entries.update(collected)
            if len(entries) > limit:
                return None
        return entries

    # -- internals: flush (caller holds the lock) ------------------------------------------

    async def _flush_locked(self) -> None:
        """Save the dirty nodes bottom-up, then drop the write tree.

        Each node's children are saved before it, so when a node is encoded its child
        slots can be replaced, in place, by links to them: a saved child equals its link.
        A cancelled flush therefore leaves a valid, partly saved tree behind.
        """
        tree = self._tree
        if tree is None:
            await self.cas.flush()
            return
        saved: list[tuple[_WriteNode, int]] = []
        if tree.dirty:
            for level in _dirty_levels(tree):
                for start in range(0, len(level), _FLUSH_BATCH):
                    batch = level[start : start + _FLUSH_BATCH]
                    encoded = []
                    for node in batch:
                        slots = node.slots
                        for index, child in node.children.items():
                            slots[index] = [child.link]
                        node.children = {}
                        encoded.append(encode_node(slots))
                    links = await self.cas._save_many(encoded, "dag-cbor")
                    for node, data, link in zip(batch, encoded, links, strict=True):
                        node.link = link
                        node.dirty = False
                        saved.append((node, len(data)))
        await self.cas.flush()
        self._root = tree.link
        self._tree = None
        # The tree is gone, so its nodes' slots can serve as the read cache's copies.
        put = self._cache.put
        for node, size in saved:
            put(node.link, node.slots, _node_cost(size, node.slots))

    # -- internals: traversal -----------------------------------------------------------

    async def _iter_buckets_stored(self, root: Pointer) -> AsyncIterator[dict[str, Pointer]]:
        """Buckets of a stored tree, a level at a time, loading each level concurrently."""
        level = [root]
        while level:
            nodes = await map_bounded(self._load_node, level, _WALK_CONCURRENCY)
            level = []
            for slots in nodes:
                for slot in slots:
                    if slot is None:
                        continue
                    if type(slot) is dict:
                        yield slot
                    else:
                        level.append(slot[0])

    async def _iter_buckets_locked(self) -> AsyncIterator[dict[str, Pointer]]:
        if self._tree is None:
            async for bucket in self._iter_buckets_stored(self._root):
                yield bucket
            return
        stack = [self._tree]
        stored: list[Pointer] = []
        while stack:
            node = stack.pop()
            for slot in node.slots:
                if slot is None:
                    continue
                kind = type(slot)
                if kind is dict:
                    yield slot
                elif kind is _WriteNode:
                    stack.append(slot)
                else:
                    stored.append(slot[0])
        for pointer in stored:
            async for bucket in self._iter_buckets_stored(pointer):
                yield bucket


def _dirty_levels(root: _WriteNode) -> list[list[_WriteNode]]:
    """Dirty nodes grouped by height (leaves first), so children are saved before parents."""
    levels: list[list[_WriteNode]] = []

    def visit(node: _WriteNode) -> int:
        height = 0
        for child in node.children.values():
            if child.dirty:
                height = max(height, visit(child) + 1)
        if height == len(levels):
            levels.append([])
        levels[height].append(node)
        return height

    visit(root)  # recursion depth is the tree's depth: at most the hash length
    return levels


def _parse_root(value: Any) -> Pointer | None:
    if value is None:
        return None
    if isinstance(value, str):
        return as_link(value)  # CID text, as users copy it from the CLI or a gateway
    return as_pointer(value)
