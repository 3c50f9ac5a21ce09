"""The HAMT: a hash array mapped trie of 256-way nodes stored in a content-addressed store.

Shape (shared with py-hamt, so both produce the same bytes and root ids): the slot of a key
at depth ``d`` is byte ``d`` of ``hash_fn(key)``. A slot holds nothing, a bucket of at most
``max_bucket_size`` keys, or a link to a child node. A child exists exactly when more than
``max_bucket_size`` keys share the slot, so the tree, and with it the root id, depends only
on the map's contents.

The HAMT is three parts:

* this module, the **facade**: py-hamt's API, the two modes, the lock, keys and values
  checked and encoded, the sorted key index of the Zarr stores;
* the **read side** (``anyhamt/_hamt_read.py``): a ``BlockLoader`` that owns the cache of
  decoded nodes (bounded by memory) and loads each missing node once however many tasks
  miss it (``SingleFlight``), and the lookups and walks over stored nodes;
* the **write tree** (``anyhamt/_hamt_tree.py``): the in-memory tree of changed nodes,
  insert, remove (folding small subtrees back into buckets) and the flush that saves it.

Two modes, as in py-hamt:

* **read-write**: changes go to the write tree; ``make_read_only()`` (or
  ``cache_vacate()``) saves its dirty nodes bottom-up and yields the root id.
* **read-only**: lookups walk stored nodes through the read cache.

Concurrency: the HAMT is not tied to an event loop. Its lock (``CrossLoopLock``) and loads
(``SingleFlight``) serve tasks on any loop and thread, so one HAMT can be used from trio,
from asyncio and from zarr's own loop, one after the other or at the same time
(docs/architecture.md §3). Every public async method checks for cancellation on entry
(docs/architecture.md §4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Self, cast

import dag_cbor
from blake3 import blake3

from ._codec import as_link, as_pointer, to_public
from ._errors import (
    CorruptBlockError,
    HashTooShortError,
    InvalidConfigError,
    InvalidKeyError,
    InvalidValueError,
    KeyNotFoundError,
    ReadOnlyError,
)
from ._hamt_read import MISS, find_cached, iter_buckets_stored, lookup_stored, node_loader
from ._hamt_tree import WriteTree
from ._loops import checkpoint_if_cancelled, repair_sniffio
from ._sorted_keys import SortedKeys
from ._sync import CrossLoopLock, SingleFlight
from .cas._base import check_range

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._codec import Pointer
    from .cas._base import ContentAddressedStore

__all__ = ["HAMT", "blake3_hashfn"]

# The single-flight key of building the sorted key index.
_INDEX_BUILD: Final = ("sorted key index",)


def blake3_hashfn(input_bytes: bytes) -> bytes:
    """The HAMT's default hash: the 32-byte blake3 digest of the key's UTF-8 bytes."""
    return blake3(input_bytes).digest()


class HAMT:
    """A key-value map of ``str`` keys stored as a HAMT in a ``ContentAddressedStore``.

    Same constructor and methods as py-hamt's ``HAMT``. Values are IPLD values (dag-cbor
    encoded) or, with ``values_are_bytes=True``, raw ``bytes``. Each value is its own block.

    Read ``root_node_id`` after ``make_read_only()``: in read-write mode it is the root as of
    the last flush, not of the changes buffered since.

    ``cache_bytes`` bounds the memory of the read cache of decoded nodes.

    Cancellation: every async method checks for it on entry, so a call made in a cancelled
    scope raises the cancellation and does nothing, even one that would not wait (a
    ``set``, a cached ``get``). Cancelled later on, a ``set``, ``set_pointer`` or ``delete``
    either happened entirely or not at all (the value block may have been saved; that is
    harmless), and a ``make_read_only``/``cache_vacate`` leaves the HAMT writable with its
    changes intact: calling it again finishes the flush and gives the same root.
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
        # The root as of the last flush (None for a new HAMT never flushed).
        self._root: Pointer | None = _parse_root(root_node_id)
        self._lock = CrossLoopLock()
        self._loader = node_loader(cas, cache_bytes)
        # The changes buffered since the last flush; its root is None when there are none.
        self._writes = WriteTree(cas, self._loader, hash_fn, max_bucket_size)
        if self._root is None:
            self._writes.start_empty()
        # Every key in sorted order, built on first request (Zarr listings) and then kept in
        # step by set/delete under the lock; None until then.
        self._sorted_keys: SortedKeys | None = None
        self._index_build = SingleFlight()
        # Called with each key a set/delete changed, under the lock (the Zarr stores drop
        # cached metadata with it, also for writes made on the HAMT directly).
        self._on_change: Callable[[str], None] | None = None

    @classmethod
    async def build(cls, *args: Any, **kwargs: Any) -> Self:
        """Create a HAMT; with no ``root_node_id``, an empty one.

        A read-only HAMT with no root saves the empty node to the store so that
        ``root_node_id`` is valid at once. Cancellation: no HAMT is returned; the empty
        node may have been saved (harmless).
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
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
        self._writes.discard()
        if self._root is None:
            self._writes.start_empty()
        self._sorted_keys = None

    def _flushed_root(self) -> Pointer | None:
        """The root if no change is buffered (the map is exactly that stored tree)."""
        return self._root if self._writes.root is None else None

    # -- mode switches ----------------------------------------------------------------------

    async def make_read_only(self) -> None:
        """Save every buffered change, then switch to read-only mode.

        Afterwards ``root_node_id`` is the root of the whole map, and every block it needs
        has been made durable (``cas.flush()``).

        Cancellation: the HAMT stays writable with its changes; some nodes may have been
        saved. Calling it again finishes the flush and gives the same root.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        async with self._lock:
            await self._flush_locked()
            self.read_only = True

    async def enable_write(self) -> None:
        """Switch to read-write mode (a no-op when already writable).

        Cancellation: the mode is unchanged.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        async with self._lock:
            self.read_only = False

    async def cache_size(self) -> int:
        """Approximate bytes of memory held by the read cache and the write buffer.

        Cancellation: nothing happened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        async with self._lock:
            return self._loader.nbytes + self._writes.nbytes()

    async def cache_vacate(self) -> None:
        """Empty the caches; in read-write mode, save the buffered changes first.

        Cancellation: as ``make_read_only``, the changes stay buffered (and the caches full)
        until a call completes.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        async with self._lock:
            if self._writes.root is not None:
                await self._flush_locked()
            self._loader.vacate()
            self._sorted_keys = None

    def _check_writable(self, *, waited: bool = False) -> None:
        """``ReadOnlyError`` in read-only mode; ``waited``: checked again under the lock."""
        if self.read_only:
            if waited:
                raise ReadOnlyError("this HAMT became read-only before the write could happen")
            raise ReadOnlyError("this HAMT is read-only; call `await hamt.enable_write()` first")

    # -- writes ---------------------------------------------------------------------------

    async def set(self, key: str, val: Any) -> None:
        """Map ``key`` to ``val``.

        Cancellation: the key is mapped to the new value, or still to what it was before
        (the value's block may have been saved; harmless).
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        key_hash, pointer = await self._save_value(key, val)
        lock = self._lock
        if not lock.try_acquire():
            await lock.acquire()
        try:
            self._check_writable(waited=True)
            writes = self._writes
            if writes.root is None:  # _open_writes() inline: this is the hot path of a write
                await writes.open(self._root)
            await writes.insert(key, key_hash, pointer)
            self._changed(key, added=True)
        finally:
            lock.release()

    async def set_pointer(self, key: str, pointer: Any) -> None:
        """Map ``key`` to a block that is already in the store (an id from ``cas.save``).

        Cancellation: the key is mapped to ``pointer``, or still to what it was before.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        self._check_writable()
        key_hash = self._hash(key)
        async with self._lock:
            self._check_writable(waited=True)
            writes = await self._open_writes()
            await writes.insert(key, key_hash, as_pointer(pointer))
            self._changed(key, added=True)

    async def delete(self, key: str) -> None:
        """Remove ``key``; ``KeyNotFoundError`` (a ``KeyError``) if it is not there.

        Cancellation: the key is removed, or still there.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        self._check_writable()
        key_hash = self._hash(key)
        async with self._lock:
            self._check_writable(waited=True)
            writes = await self._open_writes()
            await writes.remove(key, key_hash)
            self._changed(key, added=False)

    async def _set_if_absent(self, key: str, val: Any) -> bool:
        """Map ``key`` to ``val`` unless it is mapped already; True if it was set.

        Atomic with every other write: the check and the insert happen under one hold of
        the lock. (The value block may be saved even when the key exists; that is harmless.)
        """
        repair_sniffio()
        key_hash, pointer = await self._save_value(key, val)
        async with self._lock:
            self._check_writable(waited=True)
            try:
                await self._get_pointer_locked(key, key_hash)
            except KeyNotFoundError:
                writes = await self._open_writes()
                await writes.insert(key, key_hash, pointer)
                self._changed(key, added=True)
                return True
            return False

    async def _save_value(self, key: str, val: Any) -> tuple[bytes, Pointer]:
        """Check a write can happen, save the value's block; the key's hash and the block's id.

        Nothing in the map changes here (a saved block no key points to is harmless).
        """
        self._check_writable()
        key_hash = self._hash(key)
        data = val if self.values_are_bytes and type(val) is bytes else self._encode_value(val)
        return key_hash, await self.cas._save_id(data, "raw")

    async def _open_writes(self) -> WriteTree:
        """The write tree, its root copied from the store first if nothing is buffered.

        Caller holds the lock. A cancelled load leaves nothing buffered, as before.
        """
        writes = self._writes
        if writes.root is None:
            await writes.open(self._root)
        return writes

    async def _flush_locked(self) -> None:
        """Save the buffered changes (if any) and make the store durable. Caller holds the lock."""
        if self._writes.root is None:
            await self.cas.flush()
            return
        self._root = await self._writes.flush()

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
        return cast("SortedKeys", await self._index_build.run(_INDEX_BUILD, self._build_key_index))

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
        """The value of ``key`` (or a byte range of it); ``KeyNotFoundError`` if absent.

        Cancellation: nothing happened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        if offset is not None or length is not None or suffix is not None:
            check_range(offset, length, suffix)
        key_hash = self._hash(key)
        pointer = MISS
        if self.read_only and self._writes.root is None:
            pointer = find_cached(self._loader, self._root, key, key_hash)
        if pointer is MISS:
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
        """The id of the block holding ``key``'s value, as the store hands ids out.

        Cancellation: nothing happened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        return to_public(await self._get_pointer(key, self._hash(key)))

    async def keys(self) -> AsyncIterator[str]:
        """Every key, in no particular order.

        In read-write mode the keys are those present when iteration starts.
        Cancellation: the iteration stops; nothing else happened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        if self.read_only:
            async for bucket in iter_buckets_stored(self._loader, self._root):
                for key in bucket:
                    yield key
            return
        async with self._lock:
            keys = [key async for bucket in self._iter_buckets_locked() for key in bucket]
        for key in keys:
            yield key

    async def len(self) -> int:
        """The number of keys.

        Cancellation: nothing happened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        if self.read_only:
            return sum([len(b) async for b in iter_buckets_stored(self._loader, self._root)])
        async with self._lock:
            return sum([len(b) async for b in self._iter_buckets_locked()])

    async def _get_pointer(self, key: str, key_hash: bytes) -> Pointer:
        if self.read_only and self._writes.root is None:
            return await lookup_stored(self._loader, key, key_hash, self._root, 0)
        async with self._lock:
            return await self._get_pointer_locked(key, key_hash)

    async def _get_pointer_locked(self, key: str, key_hash: bytes) -> Pointer:
        writes = self._writes
        if writes.root is None:
            return await lookup_stored(self._loader, key, key_hash, self._root, 0)
        return await writes.find(key, key_hash)

    def _iter_buckets_locked(self) -> AsyncIterator[dict[str, Pointer]]:
        # Caller holds the lock.
        if self._writes.root is None:
            return iter_buckets_stored(self._loader, self._root)
        return self._writes.iter_buckets()

    # -- keys and values ------------------------------------------------------------------

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


def _parse_root(value: Any) -> Pointer | None:
    if value is None:
        return None
    if isinstance(value, str):
        return as_link(value)  # CID text, as users copy it from the CLI or a gateway
    return as_pointer(value)
