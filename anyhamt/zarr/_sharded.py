"""``ShardedZarrStore``: a Zarr v3 store whose chunk ids live in per-array shard indexes.

Wire formats are py-hamt 3.6.0's (``sharded_zarr_v1`` and ``sharded_zarr_v2``, see
docs in docs/architecture.md §7); the implementation is anyhamt's own.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, Self, cast

import anyio
import dag_cbor
from zarr.abc.store import Store
from zarr.core.buffer import Buffer

from .._codec import Link, as_link, as_pointer, to_public
from .._errors import (
    BlockNotFoundError,
    CorruptBlockError,
    DetachedStoreError,
    InvalidConfigError,
    InvalidKeyError,
    InvalidValueError,
    StoreClosedError,
    StoreError,
    StoreKeyNotFoundError,
    StoreReadOnlyError,
)
from .._loops import checkpoint_if_cancelled, repair_sniffio
from .._sync import CrossLoopLock, SingleFlight
from .._tasks import map_bounded
from ..cas._base import ContentAddressedStore, slice_block
from ._shard_cache import Key, Shard, ShardCache, internal_ids, public_ids, slot_size
from ._store_base import BlockStoreBase, buffer_bytes, range_args

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Awaitable,
        Callable,
        Hashable,
        Iterable,
    )

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

    from .._codec import Pointer

__all__ = ["SHARDED_ZARR_V1", "SHARDED_ZARR_V2", "ShardedZarrStore"]

SHARDED_ZARR_V1: Final = "sharded_zarr_v1"
SHARDED_ZARR_V2: Final = "sharded_zarr_v2"
# For new stores only (roots py-hamt wrote are read whatever they say): a guard against
# typos, as a new shard is a list of this many slots in memory; far above what IPFS peers
# exchange in one block (2 MiB, about 50,000 ids; a local Kubo daemon stores bigger ones).
MAX_CHUNKS_PER_SHARD: Final = 1 << 20
_METADATA_SUFFIXES: Final = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
# v1 shards only the "primary" array; py-hamt never picks one of these names for it.
_V1_COORDINATE_NAMES: Final = frozenset(
    {"time", "lat", "lon", "latitude", "longitude", "forecast_reference_time", "step"}
)
_DEFAULT_CACHE_BYTES: Final = 100 * 1024 * 1024
_ATTEMPTS: Final = 3  # tries of a store call that fails with a transient StoreError
_RETRY_DELAY: Final = 0.05
_CONCURRENCY: Final = 8  # shards saved (flush) or values fetched (partial reads) at once
_V3_GROUP: Final = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
_V2_GROUP: Final = json.dumps({"zarr_format": 2})


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _array_path_of_metadata(key: str) -> str | None:
    """The node path a ``zarr.json``/``.zarray`` key describes, else None."""
    for name in ("zarr.json", ".zarray"):
        if key == name:
            return ""
        if key.endswith("/" + name):
            return key[: -len(name) - 1]
    return None


def _array_geometry(meta: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...] | None] | None:
    """``(shape, chunk_shape)`` an array's metadata declares (chunks None if irregular)."""
    shape = meta.get("shape")
    if not isinstance(shape, list):
        return None
    chunks: Any = None
    grid = meta.get("chunk_grid")
    if isinstance(grid, dict) and isinstance(grid.get("configuration"), dict):
        chunks = grid["configuration"].get("chunk_shape")
    if chunks is None:
        chunks = meta.get("chunks")
    if not isinstance(chunks, list) or len(chunks) != len(shape):
        return tuple(int(n) for n in shape), None
    return tuple(int(n) for n in shape), tuple(int(n) for n in chunks)


def _to_pointer(value: Any) -> Pointer:
    """A root or pointer as users pass it: CID text, ``multiformats.CID`` or a store id."""
    if isinstance(value, str):
        return as_link(value)
    if value is None:
        raise InvalidConfigError("an id is needed here, got None")
    return as_pointer(value)


def _public_root(ptr: Pointer) -> Any:
    # py-hamt returns the root CID as text; InMemoryCAS ids are bytes and stay bytes.
    return str(ptr) if type(ptr) is Link else to_public(ptr)


def _positive_cps(cps: Any) -> int:
    """``cps`` if it is a positive int, as any shard index needs (roots read included)."""
    if not isinstance(cps, int) or isinstance(cps, bool) or cps <= 0:
        raise InvalidConfigError(f"chunks_per_shard must be a positive int, got {cps!r}")
    return cps


def _check_new_chunks_per_shard(cps: Any) -> None:
    """What ``open`` accepts for a new store: positive, and at most the bound."""
    if _positive_cps(cps) > MAX_CHUNKS_PER_SHARD:
        raise InvalidConfigError(
            f"chunks_per_shard={cps} is more than {MAX_CHUNKS_PER_SHARD}: a shard is one "
            "block of about 40 bytes per chunk id, and IPFS peers exchange blocks of at "
            "most 2 MiB (about 50,000 ids); py-hamt's default is 6250"
        )


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.ceil(a / c) for a, c in zip(shape, chunks, strict=True))


class _Array:
    """One array's geometry and shard index (``shard_cids`` holds internal ids)."""

    __slots__ = (
        "busy",
        "chunk_shape",
        "cps",
        "epoch",
        "extra",
        "grid",
        "key",
        "num_shards",
        "order",
        "path",
        "shape",
        "shard_cids",
        "total",
    )

    def __init__(
        self,
        path: str,
        shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        cps: Any,
        shard_cids: list[Pointer | None] | None = None,
        order: Any = "C",
        key: str | None = None,
    ) -> None:
        count = _positive_cps(cps)
        if order != "C":
            raise InvalidConfigError(f"only C-order shard indexes exist, got order={order!r}")
        shape, chunk_shape = tuple(int(n) for n in shape), tuple(int(n) for n in chunk_shape)
        if len(shape) != len(chunk_shape):
            raise InvalidConfigError(
                f"array_shape {shape} and chunk_shape {chunk_shape} need the same number of "
                "dimensions"
            )
        if any(c <= 0 for c in chunk_shape) or any(s < 0 for s in shape):
            raise InvalidConfigError(
                f"chunk_shape needs positive sizes and array_shape non-negative ones, got "
                f"{chunk_shape} and {shape}"
            )
        self.path = path
        self.key = path if key is None else key  # cache and lock key part
        self.cps = count
        self.order = order
        self.chunk_shape = chunk_shape
        self.epoch = 0
        self.busy = False
        self.extra: dict[str, Any] = {}
        self._set_shape(shape)
        if shard_cids is None:
            shard_cids = [None] * self.num_shards
        elif len(shard_cids) != self.num_shards:
            raise CorruptBlockError(
                f"array {path!r} of shape {shape} in chunks of {chunk_shape} needs "
                f"{self.num_shards} shards, its index lists {len(shard_cids)}"
            )
        self.shard_cids = shard_cids

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.grid = _grid(shape, self.chunk_shape)
        self.total = math.prod(self.grid)
        self.num_shards = -(-self.total // self.cps)

    def locate(self, coords: tuple[int, ...]) -> tuple[int, int] | None:
        """``(shard, slot)`` of chunk ``coords``, None if outside the grid."""
        if len(coords) != len(self.grid):
            return None
        linear = 0
        for c, n in zip(coords, self.grid, strict=True):
            if not 0 <= c < n:
                return None
            linear = linear * n + c
        return divmod(linear, self.cps)

    def coords(self, linear: int) -> tuple[int, ...]:
        out = []
        for n in reversed(self.grid):
            linear, c = divmod(linear, n)
            out.append(c)
        return tuple(reversed(out))

    def manifest(self) -> dict[str, Any]:
        return {
            **self.extra,
            "array_shape": list(self.shape),
            "chunk_shape": list(self.chunk_shape),
            "sharding_config": {"chunks_per_shard": self.cps, "order": self.order},
            "shard_cids": list(self.shard_cids),
        }


type _Route = tuple[_Array, int, int, int]  # array, epoch, shard, slot


class _Core:
    """The state of one opened root, shared by a store and its ``with_read_only`` clones."""

    def __init__(
        self,
        cas: ContentAddressedStore,
        root: Pointer | None,
        new: dict[str, Any] | None,
        max_bytes: int,
    ) -> None:
        self.cas = cas
        self.token = uuid.uuid4().hex
        self.root = root
        self._new = new
        self.ready_flag = False
        self.version = SHARDED_ZARR_V2
        self.arrays: dict[str, _Array] = {}
        self.metadata: dict[str, Pointer] = {}
        self.extra: dict[str, Any] = {}
        self.v1_chunks_extra: dict[str, Any] = {}
        self.primary: str | None = None  # v1: the sharded array's path, once known
        self.primary_unrecorded = False  # v1: inferred from a legacy root, not yet saved
        self.declared: set[str] = set()  # v2: arrays without a regular grid (no index)
        self.default_cps = 0
        self.changes = 0
        self.saved_changes = 0
        self.cache = ShardCache(max_bytes)
        self.flights = SingleFlight()
        self.mutex = threading.Lock()
        # One lock per shard ever written or flushed (about 200 bytes each).
        self.locks: dict[Key, CrossLoopLock] = {}
        self.structure = CrossLoopLock()
        self.meta_cache: dict[str, bytes] = {}
        self.meta_generation = 0
        _live[self.token] = self

    # -- opening -----------------------------------------------------------------------------

    async def ready(self) -> None:
        if not self.ready_flag:
            await self.flights.run("root", self._open)

    async def _open(self) -> None:
        if self.ready_flag:
            return
        if self.root is None:
            assert self._new is not None
            self._init_new(**self._new)
        else:
            data = await self.retry(lambda: self.cas._load_id(self.root))
            self._load_root(data)
            if self.version == SHARDED_ZARR_V1 and self.primary is None:
                await self._infer_primary()
        self.ready_flag = True

    async def _infer_primary(self) -> None:
        """Find the sharded array of a v1 root written before py-hamt recorded it: the one
        non-coordinate array whose metadata has the index's shape and chunk shape."""
        array = self.arrays[""]
        if all(ptr is None for ptr in array.shard_cids):
            return
        candidates = [
            (path, ptr)
            for key, ptr in sorted(self.metadata.items())
            if (path := _array_path_of_metadata(key)) is not None
            and path.rsplit("/", 1)[-1] not in _V1_COORDINATE_NAMES
        ]

        async def matches(candidate: tuple[str, Pointer]) -> bool:
            data = await self.retry(lambda: self.cas._load_id(candidate[1]))
            meta = _json(bytes(data))
            geometry = None if meta is None else _array_geometry(meta)
            return geometry == (array.shape, array.chunk_shape)

        found = await map_bounded(matches, candidates, _CONCURRENCY)
        paths = [path for (path, _), hit in zip(candidates, found, strict=True) if hit]
        if len(paths) == 1:
            # Recorded in the root with the next chunk write, as py-hamt records it.
            self.primary = paths[0]
            self.primary_unrecorded = True

    def _init_new(
        self,
        version: str,
        cps: int,
        shape: tuple[int, ...] | None,
        chunks: tuple[int, ...] | None,
        primary_path: str,
    ) -> None:
        self.version = version
        self.default_cps = cps
        if version == SHARDED_ZARR_V1:
            assert shape is not None and chunks is not None
            self.arrays = {"": _Array("", shape, chunks, cps)}
            self.v1_chunks_extra = {"sharding_config": {"chunks_per_shard": cps}}
        else:
            self.extra = {
                "store_type": "py_hamt.sharded_zarr",
                "zarr_format": 3,
                "sharding_config": {"chunks_per_shard": cps, "order": "C"},
            }
            if shape is not None and chunks is not None:
                path = primary_path.strip("/")
                self.arrays[path] = _Array(path, shape, chunks, cps)
        self.changes += 1

    def _load_root(self, data: bytes) -> None:
        try:
            root = internal_ids(dag_cbor.decode(data))
        except Exception as exc:
            raise CorruptBlockError(f"the sharded store's root is not dag-cbor: {exc}") from exc
        if not isinstance(root, dict) or not isinstance(root.get("metadata"), dict):
            raise CorruptBlockError("the sharded store's root is not a manifest with metadata")
        version = root.get("manifest_version")
        self.metadata = dict(root.pop("metadata"))
        try:
            if version == SHARDED_ZARR_V1:
                self._load_v1(root)
            elif version == SHARDED_ZARR_V2:
                self._load_v2(root)
            else:
                raise CorruptBlockError(
                    f"unknown manifest_version {version!r}; expected {SHARDED_ZARR_V1!r} or "
                    f"{SHARDED_ZARR_V2!r} (is this the root of a sharded store?)"
                )
        except (KeyError, TypeError, InvalidConfigError) as exc:
            raise CorruptBlockError(f"malformed {version} root: {exc!r}") from exc

    def _load_v1(self, root: dict[str, Any]) -> None:
        self.version = SHARDED_ZARR_V1
        chunks = dict(root.pop("chunks"))
        cps = chunks["sharding_config"]["chunks_per_shard"]
        self.arrays = {
            "": _Array(
                "",
                tuple(chunks.pop("array_shape")),
                tuple(chunks.pop("chunk_shape")),
                cps,
                list(chunks.pop("shard_cids")),
            )
        }
        primary = chunks.pop("primary_array_path", None)
        self.primary = primary.strip("/") if isinstance(primary, str) else None
        self.v1_chunks_extra = chunks
        self.default_cps = cps
        self.extra = root

    def _load_v2(self, root: dict[str, Any]) -> None:
        self.version = SHARDED_ZARR_V2
        arrays = root.pop("arrays")
        for path, manifest in arrays.items():
            manifest = dict(manifest)
            config = manifest.pop("sharding_config")
            array = _Array(
                path.strip("/"),
                tuple(manifest.pop("array_shape")),
                tuple(manifest.pop("chunk_shape")),
                config["chunks_per_shard"],
                list(manifest.pop("shard_cids")),
                config.get("order", "C"),
            )
            array.extra = manifest
            self.arrays[array.path] = array
        config = root.get("sharding_config")
        first = next(iter(self.arrays.values()), None)
        self.default_cps = (
            first.cps
            if first is not None
            else config.get("chunks_per_shard", 0)
            if isinstance(config, dict)
            else 0
        )
        self.extra = root

    # -- the root ----------------------------------------------------------------------------

    def dirty(self) -> bool:
        return self.changes != self.saved_changes or bool(self.cache.dirty_keys())

    def clean_root(self) -> Pointer | None:
        if not self.ready_flag:
            return self.root
        return None if self.dirty() else self.root

    def root_object(self) -> dict[str, Any]:
        metadata = dict(self.metadata)
        if self.version == SHARDED_ZARR_V1:
            array = self.arrays[""]
            chunks = dict(self.v1_chunks_extra)
            config = dict(chunks.get("sharding_config") or {})
            config["chunks_per_shard"] = array.cps
            chunks.update(
                array_shape=list(array.shape),
                chunk_shape=list(array.chunk_shape),
                sharding_config=config,
                shard_cids=list(array.shard_cids),
            )
            if self.primary is not None and not self.primary_unrecorded:
                chunks["primary_array_path"] = self.primary
            return {
                **self.extra,
                "manifest_version": SHARDED_ZARR_V1,
                "metadata": metadata,
                "chunks": chunks,
            }
        return {
            **self.extra,
            "manifest_version": SHARDED_ZARR_V2,
            "metadata": metadata,
            "arrays": {path: array.manifest() for path, array in list(self.arrays.items())},
        }

    # -- store calls -------------------------------------------------------------------------

    async def retry[T](self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again on a transient store error (not on a missing block)."""
        for attempt in range(_ATTEMPTS):
            try:
                return await call()
            except (BlockNotFoundError, StoreClosedError):
                raise
            except StoreError:
                if attempt == _ATTEMPTS - 1:
                    raise
                await anyio.sleep(_RETRY_DELAY * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- keys --------------------------------------------------------------------------------

    def route(self, key: str) -> _Route | None:
        """Where chunk ``key`` lives in a shard; None for a key kept in ``metadata``.

        A key in a sharded array's chunk directory that names no chunk of its grid raises
        ``InvalidKeyError``; it is never stored elsewhere or dropped.
        """
        if key.endswith(_METADATA_SUFFIXES):
            return None
        cut = key.rfind("/c/")
        if cut != -1:
            path, coords = key[:cut].strip("/"), key[cut + 3 :]
        elif key.startswith("c/"):
            path, coords = "", key[2:]
        else:
            return None
        if self.version == SHARDED_ZARR_V2:
            array = self.arrays.get(path)
            if array is None:
                if path in self.declared:
                    raise InvalidKeyError(
                        f"chunk key {key!r} names array {path!r}, whose metadata has no "
                        "regular chunk grid, so it has no shard index; write it with a "
                        "regular chunk grid"
                    )
                return None
            return self._locate(array, key, coords)
        array = self.arrays[""]
        if self.primary is not None:
            return self._locate(array, key, coords) if path == self.primary else None
        # No array is sharded yet: the first chunk of a named, non-coordinate array of the
        # store's rank becomes the primary (py-hamt's rule).
        parts = coords.split("/")
        if (
            cut == -1
            or path.rsplit("/", 1)[-1] in _V1_COORDINATE_NAMES
            or len(parts) != len(array.grid)
            or not all(p.isdecimal() for p in parts)
        ):
            return None
        return self._locate(array, key, coords)

    @staticmethod
    def _locate(array: _Array, key: str, coords: str) -> _Route:
        parts = coords.split("/")
        where = None
        if all(p.isdecimal() for p in parts):
            where = array.locate(tuple(int(p) for p in parts))
        if where is None:
            raise InvalidKeyError(
                f"chunk key {key!r} names no chunk of array {array.path!r} (chunk grid "
                f"{array.grid}, keys '<array>/c/i/j/...'); resize the array first "
                "(resize_store/resize_variable, or write its zarr.json with the new shape)"
            )
        return (array, array.epoch, *where)

    def v2_read_key(self, key: str) -> str:
        """py-hamt's reading rule: when every array sits in one top-level group, paths are
        resolved inside it (so ``xr.open_zarr`` without ``group=`` opens that group)."""
        group = self._single_group()
        if group is None:
            return key
        bare = key.strip("/")
        if bare in ("zarr.json", ".zgroup", ".zattrs", ".zmetadata", ""):
            return key
        if bare == group or bare.startswith(group + "/"):
            return key
        return f"{group}/{bare}"

    def _single_group(self) -> str | None:
        if self.version != SHARDED_ZARR_V2 or not self.arrays:
            return None
        if not all("/" in path for path in self.arrays):
            return None
        groups = {path.split("/", 1)[0] for path in self.arrays}
        return next(iter(groups)) if len(groups) == 1 else None

    def lock_for(self, key: Key) -> CrossLoopLock:
        with self.mutex:
            lock = self.locks.get(key)
            if lock is None:
                lock = self.locks[key] = CrossLoopLock()
            return lock

    def changed(self) -> None:
        with self.mutex:
            self.changes += 1

    # -- shards ------------------------------------------------------------------------------

    async def load_shard(self, ptr: Pointer) -> Shard:
        """One shard read from the block store (the single-flight leader's load; the
        method anyhamt.tracing wraps as a shard-load span)."""
        data = await self.retry(lambda: self.cas._load_id(ptr))
        return Shard(bytes(data), None)

    async def shard(self, array: _Array, index: int, *, create: bool) -> Shard | None:
        """Shard ``index`` of ``array``, pinned (``cache.unpin`` it); None if it does not
        exist and ``create`` is false. Concurrent loads of one shard make one store call."""
        key = (array.key, index)
        while True:
            cached = self.cache.pin(key)
            if cached is not None:
                return cached
            if index >= len(array.shard_cids):
                return None
            ptr = array.shard_cids[index]
            if ptr is None:
                if not create:
                    return None
                return self.cache.add_pinned(key, Shard(None, [None] * array.cps))

            loaded = await self.flights.run((key, ptr), functools.partial(self.load_shard, ptr))
            with self.cache._mutex:
                # Cache it only if the index still names what was loaded: a write-back
                # may have replaced the shard while it was on its way.
                current = (
                    self.arrays.get(array.path) is array
                    and index < len(array.shard_cids)
                    and array.shard_cids[index] == ptr
                )
            if current:
                if len(loaded) != array.cps:
                    raise CorruptBlockError(
                        f"shard {index} of array {array.path!r} holds {len(loaded)} entries, "
                        f"the index says {array.cps}"
                    )
                return self.cache.add_pinned(key, loaded)

    async def write_back(self, array: _Array, index: int) -> None:
        """Save shard ``index`` if dirty and point the index at it (caller holds its lock)."""
        key = (array.key, index)
        shard = self.cache.pin(key)
        if shard is None:
            return
        try:
            if not shard.dirty:
                return
            data = shard.encode()
            ptr = await self.retry(lambda: self.cas._save_id(data, "dag-cbor"))
            with self.cache._mutex:
                if self.arrays.get(array.path) is array and index < len(array.shard_cids):
                    array.shard_cids[index] = ptr
                shard.dirty = False
                shard.slots, shard.data, shard.offsets = None, data, None
            self.cache.resized(key, shard)
            self.changed()
        finally:
            self.cache.unpin(key, shard)

    def array_for_key(self, key: Key) -> tuple[_Array, int] | None:
        array_key, index = key
        for array in list(self.arrays.values()):
            if array.key == array_key:
                return array, index
        return None

    async def make_room(self) -> None:
        """Write dirty shards back while the cache is over its budget."""
        while True:
            progressed = False
            for key in self.cache.write_back_candidates():
                found = self.array_for_key(key)
                if found is None:
                    self.cache.drop(key)
                    continue
                lock = self.lock_for(key)
                if not lock.try_acquire():
                    continue  # its holder is using it; it makes room when done
                try:
                    await self.write_back(*found)
                finally:
                    lock.release()
                progressed = True
                if not self.cache.over_budget():
                    return
            if not progressed:
                return

    async def write_slot(
        self, key: str, route: _Route, ptr: Pointer | None, *, only_if_absent: bool = False
    ) -> bool:
        """Set (or clear, ``ptr`` None) the chunk id ``key`` routes to; with
        ``only_if_absent``, only if the chunk has no id yet (checked under the shard's
        lock, so atomic with every other write of it). True if it was written."""
        while True:
            array, epoch, index, slot = route
            lock = self.lock_for((array.key, index))
            async with lock:
                if not array.busy and array.epoch == epoch and self.arrays.get(array.path) is array:
                    shard = await self.shard(array, index, create=ptr is not None)
                    written = True
                    if shard is not None:
                        try:
                            if only_if_absent and (
                                shard.get(slot) is not None or key in self.metadata
                            ):
                                written = False
                            else:
                                self._put(array, index, shard, slot, ptr)
                        finally:
                            self.cache.unpin((array.key, index), shard)
                    if written:
                        self._after_chunk_write(key, ptr)
                    break
            # The geometry changed under us: wait for the resize, then route again.
            async with self.structure:
                pass
            new_route = self.route(key)
            if new_route is None:
                raise InvalidKeyError(f"chunk key {key!r} no longer names a sharded array")
            route = new_route
        await self.make_room()
        return written

    def _put(self, array: _Array, index: int, shard: Shard, slot: int, ptr: Pointer | None) -> None:
        decoded = shard.slots is not None
        slots = shard.materialise()
        old = slots[slot]
        if old != ptr:
            slots[slot] = ptr
            shard.dirty = True
        if not decoded:
            self.cache.resized((array.key, index), shard)
        elif old is not ptr:
            self.cache.adjust((array.key, index), shard, slot_size(ptr) - slot_size(old))

    def _after_chunk_write(self, key: str, ptr: Pointer | None) -> None:
        if ptr is not None and (
            self.version == SHARDED_ZARR_V1 and (self.primary is None or self.primary_unrecorded)
        ):
            cut = key.rfind("/c/")
            self.primary = key[:cut].strip("/") if cut != -1 else ""
            self.primary_unrecorded = False
            self.changed()
        # A chunk once kept under its key (a legacy root) is superseded by the shard slot.
        if self.metadata.pop(key, None) is not None:
            self.changed()

    async def chunk_pointer(self, key: str, route: _Route) -> Pointer | None:
        array, _, index, slot = route
        shard = await self.shard(array, index, create=False)
        ptr = None
        if shard is not None:
            try:
                ptr = shard.get(slot)
            finally:
                self.cache.unpin((array.key, index), shard)
        if ptr is None:
            ptr = self.metadata.get(key)  # a legacy root may keep chunks by key
        return ptr

    async def shard_items(self, array: _Array, index: int) -> list[tuple[int, Pointer]]:
        """``(linear chunk index, id)`` of every chunk in shard ``index``."""
        shard = await self.shard(array, index, create=False)
        if shard is None:
            return []
        try:
            ptrs = [shard.get(slot) for slot in range(len(shard))]
        finally:
            self.cache.unpin((array.key, index), shard)
        first = index * array.cps
        return [
            (first + slot, ptr)
            for slot, ptr in enumerate(ptrs)
            if ptr is not None and first + slot < array.total
        ]

    async def shard_keys(self, array: _Array, index: int) -> list[str]:
        """The chunk keys of shard ``index``, in C order."""
        prefix = self._listed_path(array)
        base = f"{prefix}/c/" if prefix else "c/"
        return [
            base + "/".join(map(str, array.coords(linear)))
            for linear, _ in await self.shard_items(array, index)
        ]

    def _listed_path(self, array: _Array) -> str:
        if self.version == SHARDED_ZARR_V1:
            return self.primary or ""
        return array.path

    def has_chunks(self, array: _Array) -> bool:
        if self.version == SHARDED_ZARR_V1 and self.primary is None:
            return False
        if any(ptr is not None for ptr in array.shard_cids):
            return True
        return any(
            key[0] == array.key and any(p is not None for p in (shard.slots or ()))
            for key in self.cache.dirty_keys()
            if (shard := self.cache.peek(key)) is not None
        )

    # -- geometry changes --------------------------------------------------------------------

    async def resize(self, array: _Array, shape: tuple[int, ...]) -> None:
        shape = tuple(int(n) for n in shape)
        if len(shape) != len(array.shape) or any(n < 0 for n in shape):
            raise InvalidConfigError(
                f"array {array.path!r} has {len(array.shape)} dimensions; the new shape "
                f"{shape} needs as many, none negative"
            )
        if shape == array.shape:
            return
        new_grid = _grid(shape, array.chunk_shape)
        async with self.structure:
            if new_grid[1:] == array.grid[1:]:
                # Only the leading dimension changed: every chunk keeps its place.
                old = array.num_shards
                array._set_shape(shape)
                if array.num_shards > old:
                    array.shard_cids.extend([None] * (array.num_shards - old))
                else:
                    del array.shard_cids[array.num_shards :]
                    for index in range(array.num_shards, old):
                        self.cache.drop((array.key, index))
                array.epoch += 1
                self.changed()
                return
            await self._remap(array, shape)

    async def _remap(self, array: _Array, shape: tuple[int, ...]) -> None:
        # Caller holds self.structure. Writers see `busy` and wait for it.
        array.busy = True
        array.epoch += 1
        try:
            moved: list[tuple[tuple[int, ...], Pointer]] = []
            for index in range(array.num_shards):
                async with self.lock_for((array.key, index)):
                    shard = await self.shard(array, index, create=False)
                    if shard is None:
                        continue
                    try:
                        first = index * array.cps
                        for slot in range(len(shard)):
                            ptr = shard.get(slot)
                            if ptr is not None and first + slot < array.total:
                                moved.append((array.coords(first + slot), ptr))
                    finally:
                        self.cache.unpin((array.key, index), shard)
            old_shards = array.num_shards
            grid = _grid(shape, array.chunk_shape)
            new: dict[int, list[Pointer | None]] = {}
            for coords, ptr in moved:
                if all(c < n for c, n in zip(coords, grid, strict=True)):
                    linear = 0
                    for c, n in zip(coords, grid, strict=True):
                        linear = linear * n + c
                    index, slot = divmod(linear, array.cps)
                    new.setdefault(index, [None] * array.cps)[slot] = ptr
            # From here to the end no await: the swap is all or nothing.
            for index in range(old_shards):
                self.cache.drop((array.key, index))
            array._set_shape(shape)
            array.shard_cids = [None] * array.num_shards
            for index, slots in sorted(new.items()):
                shard = self.cache.add_pinned((array.key, index), Shard(None, slots))
                shard.dirty = True
                self.cache.unpin((array.key, index), shard)
            self.changed()
        finally:
            array.epoch += 1
            array.busy = False
        await self.make_room()

    # -- flush -------------------------------------------------------------------------------

    async def flush(self) -> Pointer:
        await self.ready()

        async def save(key: Key) -> None:
            found = self.array_for_key(key)
            if found is None:
                self.cache.drop(key)
                return
            async with self.lock_for(key):
                await self.write_back(*found)

        await map_bounded(save, sorted(self.cache.dirty_keys(), key=repr), _CONCURRENCY)
        changes = self.changes
        if changes != self.saved_changes or self.root is None:
            data = dag_cbor.encode(public_ids(self.root_object()))
            ptr = await self.retry(lambda: self.cas._save_id(data, "dag-cbor"))
            with self.mutex:
                self.root = ptr
                self.saved_changes = changes
        await self.cas.flush()
        assert self.root is not None
        return self.root


# Live cores of this process by token, so an unpickled copy in this process shares its core.
_live: Final[weakref.WeakValueDictionary[str, _Core]] = weakref.WeakValueDictionary()
_reopened: Final[OrderedDict[tuple[str, Any], _Core]] = OrderedDict()
_reopened_mutex: Final = threading.Lock()
_MAX_REOPENED: Final = 16


class ShardedZarrStore(BlockStoreBase):
    """A Zarr v3 store in py-hamt's sharded layout: a root object, per array a list of
    shard ids, each shard a dag-cbor list of ``chunks_per_shard`` chunk ids (C order).

    Open or create with ``await ShardedZarrStore.open(...)`` (py-hamt's signature)::

        store = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=64)
        ds.to_zarr(store=store, mode="w", zarr_format=3)    # off the event loop thread
        root = await store.flush()                           # the root CID (text)
        store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)

    Two formats, read and written byte for byte as py-hamt 3.6.0 does:

    * ``sharded_zarr_v2`` (the default for new stores without ``array_shape``): one shard
      index per array, created when the array's ``zarr.json`` is written, with the array's
      own shape and chunk shape and ``chunks_per_shard`` from ``open``; it grows when the
      array does (xarray's ``append_dim``).
    * ``sharded_zarr_v1``: one index for one "primary" array with the geometry given to
      ``open`` (``array_shape``, ``chunk_shape``, ``chunks_per_shard``), the first array
      whose chunks are written; every other value is kept by key in the root's
      ``metadata`` map (that is the format).

    Differences from py-hamt's store: it works on every content-addressed store
    (``InMemoryCAS`` included: the root and shards then hold its byte ids), roots never
    depend on hash seeds or set order, listing is sorted, a chunk key that names no chunk
    of a sharded array raises ``InvalidKeyError`` instead of being dropped, ``graft_store``
    is all or nothing, writes to different shards run concurrently (a lock per shard, no
    store-wide write lock), v2 writes do not require a ``group=``, and writes to a
    read-only store raise ``StoreReadOnlyError``.

    Shard cache: least recently used shards, bounded by ``max_cache_memory_bytes`` of
    measured memory (see ``anyhamt.zarr._shard_cache``). Changed shards are never evicted;
    when they would push the cache past its bound they are saved to the store instead.
    A read decodes only the entry it needs. ``shard_read_mode`` is accepted for py-hamt
    compatibility; every mode reads that way.

    Cancellation: a cancelled write happened entirely or not at all; ``flush`` after a
    failed or cancelled call writes a readable root, and the same content gives the same
    root whatever happened before. Methods run on any event loop and thread, like the HAMT.
    """

    def __init__(
        self,
        cas: ContentAddressedStore,
        read_only: bool,
        root_cid: Any = None,
        *,
        array_shape: Iterable[int] | None = None,
        chunk_shape: Iterable[int] | None = None,
        chunks_per_shard: int | None = None,
        max_cache_memory_bytes: int = _DEFAULT_CACHE_BYTES,
        manifest_version: str | None = None,
        primary_array_path: str = "",
        shard_read_mode: str = "auto",
    ) -> None:
        if not isinstance(cas, ContentAddressedStore):
            raise InvalidConfigError(
                f"ShardedZarrStore needs an anyhamt ContentAddressedStore, got {type(cas).__name__}"
            )
        if shard_read_mode not in ("full", "sparse", "auto"):
            raise InvalidConfigError(
                f"shard_read_mode must be 'full', 'sparse' or 'auto', got {shard_read_mode!r}"
            )
        if not isinstance(max_cache_memory_bytes, int) or max_cache_memory_bytes < 0:
            raise InvalidConfigError(
                f"max_cache_memory_bytes must be an int >= 0, got {max_cache_memory_bytes!r}"
            )
        super().__init__(read_only=read_only)
        new = None
        root = None
        if root_cid is not None and root_cid != "":
            root = _to_pointer(root_cid)
        elif read_only:
            raise InvalidConfigError(
                "root_cid is missing: a read-only ShardedZarrStore opens an existing root; "
                "pass root_cid=..., or read_only=False to create a store"
            )
        else:
            new = _new_store_config(
                manifest_version, array_shape, chunk_shape, chunks_per_shard, primary_array_path
            )
        self._core: _Core | None = _Core(cas, root, new, max_cache_memory_bytes)

    @classmethod
    async def open(
        cls,
        cas: ContentAddressedStore,
        read_only: bool,
        root_cid: Any = None,
        *,
        array_shape: Iterable[int] | None = None,
        chunk_shape: Iterable[int] | None = None,
        chunks_per_shard: int | None = None,
        max_cache_memory_bytes: int = _DEFAULT_CACHE_BYTES,
        manifest_version: str | None = None,
        primary_array_path: str = "",
        shard_read_mode: str = "auto",
    ) -> Self:
        """Open the store at ``root_cid`` (CID text, ``multiformats.CID`` or a store id) or
        create a new one (``read_only=False`` without ``root_cid``).

        A new v1 store needs ``array_shape``, ``chunk_shape`` and ``chunks_per_shard``; a
        new v2 store (``manifest_version="sharded_zarr_v2"``, or no shapes given) needs
        ``chunks_per_shard``. A missing one raises ``InvalidConfigError`` naming it.
        Cancellation: nothing was opened.
        """
        repair_sniffio()
        await checkpoint_if_cancelled()
        store = cls(
            cas,
            read_only,
            root_cid,
            array_shape=array_shape,
            chunk_shape=chunk_shape,
            chunks_per_shard=chunks_per_shard,
            max_cache_memory_bytes=max_cache_memory_bytes,
            manifest_version=manifest_version,
            primary_array_path=primary_array_path,
            shard_read_mode=shard_read_mode,
        )
        await store._open()
        await store._ready()
        return store

    # -- plumbing ----------------------------------------------------------------------------

    async def _ready(self) -> _Core:
        repair_sniffio()
        await checkpoint_if_cancelled()
        core = self._core
        if core is None:
            raise DetachedStoreError(
                "this ShardedZarrStore is a copy, pickled to another process, of a writable "
                "store (or one with unsaved changes); writes there would be lost. Call "
                "`await store.flush()` and send a read-only store opened at the root, or "
                "write with dask's threaded scheduler"
            )
        await core.ready()
        return core

    async def _writable(self) -> _Core:
        core = await self._ready()
        self._check_writable()
        return core

    def _check_writable(self) -> None:
        # docstring inherited
        if self.read_only:
            raise StoreReadOnlyError(
                "store was opened in read-only mode and does not support writing; open a "
                "writable store with `store.with_read_only(False)` or "
                "`ShardedZarrStore.open(..., read_only=False)`"
            )

    @property
    def cas(self) -> ContentAddressedStore:
        """The content-addressed store holding the root, shards and values."""
        if self._core is None:
            raise DetachedStoreError("this store copy is detached from its content")
        return self._core.cas

    @property
    def manifest_version(self) -> str:
        """``"sharded_zarr_v1"`` or ``"sharded_zarr_v2"`` (after the root was read)."""
        core = self._core
        if core is None or not core.ready_flag:
            raise InvalidConfigError("the store is not open yet: await ShardedZarrStore.open()")
        return core.version

    # -- zarr Store: identity (flags in BlockStoreBase) ----------------------------------------

    def with_read_only(self, read_only: bool = False) -> Self:
        """A store over the same content and cache (changes through either show in both)."""
        clone = type(self).__new__(type(self))
        Store.__init__(clone, read_only=read_only)
        clone._core = self._core
        return clone

    def __eq__(self, other: object) -> bool:
        # docstring inherited
        if type(other) is not type(self):
            return False
        assert isinstance(other, ShardedZarrStore)
        if self.read_only != other.read_only:
            return False
        mine, theirs = self._core, other._core
        if mine is theirs:
            return mine is not None
        if mine is None or theirs is None or mine.cas is not theirs.cas:
            return False
        root = mine.clean_root()
        return root is not None and root == theirs.clean_root()

    def __str__(self) -> str:
        core = self._core
        if core is None:
            return "sharded://detached"
        root = core.clean_root()
        if root is None:
            return f"sharded://unflushed-{core.token[:12]}"
        return f"sharded://{root.hex() if type(root) is bytes else root}"

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        core = self._core
        token, reopen = "", None
        if core is not None:
            token = core.token
            root = core.clean_root()
            # Only a reader reopens elsewhere: a writer's copy in another process would
            # write into a copy nobody flushes, so it is detached instead.
            if root is not None and self.read_only:
                reopen = (core.cas, root, core.cache.max_bytes)
        return (_unpickle, (type(self), os.getpid(), token, reopen, self.read_only))

    def __dask_tokenize__(self) -> Hashable:
        """Names the content for a read-only store at a saved root (fresh otherwise)."""
        core = self._core
        root = None if core is None else core.clean_root()
        if self.read_only and root is not None:
            return (type(self).__qualname__, bytes(root), True)
        return (type(self).__qualname__, uuid.uuid4().hex)

    # -- py-hamt's API -----------------------------------------------------------------------

    async def flush(self) -> Any:
        """Save changed shards and the root; the root id (CID text on CID stores, bytes on
        ``InMemoryCAS``). Safe while other tasks write: each write is in this root or in the
        next. Cancellation: nothing is lost; flush again."""
        core = await self._ready()
        return _public_root(await core.flush())

    @property
    def root_cid(self) -> Any:
        """The root as of the last ``flush`` (or open); None for a new unflushed store."""
        core = self._core
        root = None if core is None else core.root
        return None if root is None else _public_root(root)

    async def set_pointer(self, key: str, pointer: Any) -> None:
        """Point ``key`` at an id already in the store (no data is copied).

        Metadata pointed at is read, as when written, to keep the shard indexes in step.
        Cancellation: the key points at ``pointer`` or is unchanged.
        """
        core = await self._writable()
        _check_key(key)
        ptr = _to_pointer(pointer)
        route = core.route(key)
        if route is not None:
            await core.write_slot(key, route, ptr)
            return
        data = None
        if _array_path_of_metadata(key) is not None:
            data = bytes(await core.retry(lambda: core.cas._load_id(ptr)))
        await self._set_value(core, key, data, ptr)

    async def resize_store(
        self, new_shape: Iterable[int], *, array_path: str | None = None
    ) -> None:
        """Change an array's shard index to a new shape (v1: the store's array; v2: the
        array at ``array_path``, by default the first). Chunks outside the new shape are
        dropped; when a dimension other than the first changes, the index is rebuilt.
        Cancellation: the index has the old or the new shape."""
        core = await self._writable()
        await core.resize(self._array(core, array_path), tuple(new_shape))

    async def resize_variable(self, variable_name: str, new_shape: Iterable[int]) -> None:
        """Rewrite the ``shape`` in ``<variable_name>/zarr.json`` (as py-hamt does, indented
        JSON); on v2 the array's shard index follows. Cancellation: all or nothing."""
        core = await self._writable()
        name = variable_name.strip("/")
        key = f"{name}/zarr.json" if name else "zarr.json"
        ptr = core.metadata.get(key)
        if ptr is None:
            raise StoreKeyNotFoundError(f"no metadata {key!r} to resize in this store")
        meta = _json(await core.retry(lambda: core.cas._load_id(ptr)))
        if meta is None:
            raise InvalidValueError(f"{key!r} does not hold a JSON object")
        meta["shape"] = [int(n) for n in new_shape]
        data = json.dumps(meta, indent=2).encode("utf-8")
        await self._set_value(core, key, data, None, resize_v1=False)

    async def graft_store(
        self,
        store_to_graft_cid: Any,
        chunk_offset: Iterable[int],
        *,
        source_array_path: str | None = None,
        target_array_path: str | None = None,
    ) -> None:
        """Copy every chunk id of another sharded store's array into this store's array at
        ``coords + chunk_offset`` (chunk coordinates). All or nothing: every target is
        checked and every shard loaded before the first change.
        Cancellation: nothing changed, or everything."""
        core = await self._writable()
        offset = tuple(int(n) for n in chunk_offset)
        source = await type(self).open(cas=core.cas, read_only=True, root_cid=store_to_graft_cid)
        src_core = source._core
        assert src_core is not None
        src_array = source._array(src_core, source_array_path)
        if src_core.version == SHARDED_ZARR_V1 and source_array_path is None:
            target_default = src_core.primary
        else:
            target_default = src_array.path
        target = self._array(
            core, target_array_path if target_array_path is not None else target_default
        )
        if len(offset) != len(src_array.grid) or len(offset) != len(target.grid):
            raise InvalidConfigError(
                f"chunk_offset {offset} needs one entry per dimension of the source "
                f"({len(src_array.grid)}) and target ({len(target.grid)}) arrays"
            )
        moves: dict[int, list[tuple[int, Pointer]]] = {}
        for coords, ptr in await _array_items(src_core, src_array):
            dest = tuple(c + o for c, o in zip(coords, offset, strict=True))
            where = target.locate(dest)
            if where is None:
                raise InvalidConfigError(
                    f"grafted chunk {coords} lands at {dest}, outside the target grid "
                    f"{target.grid}; resize the target first (resize_store)"
                )
            moves.setdefault(where[0], []).append((where[1], ptr))
        async with core.structure:
            locks = [core.lock_for((target.key, index)) for index in sorted(moves)]
            held: list[CrossLoopLock] = []
            shards: dict[int, Shard] = {}
            try:
                for lock in locks:
                    await lock.acquire()
                    held.append(lock)
                for index in sorted(moves):
                    shard = await core.shard(target, index, create=True)
                    assert shard is not None
                    shards[index] = shard
                # Everything is loaded and locked: apply with no await in between.
                for index, entries in moves.items():
                    for slot, ptr in entries:
                        core._put(target, index, shards[index], slot, ptr)
            finally:
                for index, shard in shards.items():
                    core.cache.unpin((target.key, index), shard)
                for lock in held:
                    lock.release()
        await core.make_room()

    def _array(self, core: _Core, path: str | None) -> _Array:
        if core.version == SHARDED_ZARR_V1:
            return core.arrays[""]
        if path is None:
            first = next(iter(core.arrays.values()), None)
            if first is None:
                raise InvalidConfigError(
                    "this store has no sharded array yet; write one's zarr.json first"
                )
            return first
        array = core.arrays.get(path.strip("/"))
        if array is None:
            raise InvalidConfigError(
                f"no sharded array {path!r} in this store; arrays: {sorted(core.arrays)}"
            )
        return array

    # -- zarr Store: reads -------------------------------------------------------------------

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        core = await self._ready()
        offset, length, suffix = range_args(byte_range)
        key = core.v2_read_key(key)
        route = core.route(key)
        if route is None:
            if key.endswith(_METADATA_SUFFIXES):
                data = await self._metadata(core, key)
                if data is None:
                    return None
                return prototype.buffer.from_bytes(slice_block(data, offset, length, suffix))
            ptr = core.metadata.get(key)
        else:
            ptr = await core.chunk_pointer(key, route)
        if ptr is None:
            return None
        data = await core.retry(lambda: core.cas._load_id(ptr, offset, length, suffix))
        return prototype.buffer.from_bytes(data)

    async def _metadata(self, core: _Core, key: str) -> bytes | None:
        cached = core.meta_cache.get(key)
        if cached is not None:
            return cached
        ptr = core.metadata.get(key)
        if ptr is None:
            return None
        generation = core.meta_generation
        data = bytes(await core.retry(lambda: core.cas._load_id(ptr)))
        with core.mutex:
            if generation == core.meta_generation:
                core.meta_cache[key] = data
        return data

    @property
    def metadata_read_cache(self) -> dict[str, bytes]:
        """Metadata values cached for this store and its clones (py-hamt's name)."""
        return {} if self._core is None else self._core.meta_cache

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        await self._ready()

        async def one(request: tuple[str, ByteRequest | None]) -> Buffer | None:
            return await self.get(request[0], prototype, request[1])

        return await map_bounded(one, list(key_ranges), _CONCURRENCY * 4)

    async def _pointer(self, core: _Core, key: str) -> Pointer | None:
        key = core.v2_read_key(key)
        route = core.route(key)
        if route is None:
            return core.metadata.get(key)
        return await core.chunk_pointer(key, route)

    async def exists(self, key: str) -> bool:
        # docstring inherited
        core = await self._ready()
        return await self._pointer(core, key) is not None

    async def getsize(self, key: str) -> int:
        # docstring inherited
        core = await self._ready()
        ptr = await self._pointer(core, key)
        if ptr is None:
            raise StoreKeyNotFoundError(f"no key {key!r} in this store")
        return await core.retry(lambda: core.cas._size_id(ptr))

    # -- zarr Store: writes ------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        await self._write(key, value, only_if_absent=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Store ``value`` under ``key`` unless ``key`` has a value. Atomic with every other
        write of ``key``: of concurrent calls exactly one writes, and a ``set`` racing it
        is never overwritten."""
        await self._write(key, value, only_if_absent=True)

    async def _write(self, key: str, value: Buffer, *, only_if_absent: bool) -> None:
        core = await self._writable()
        _check_key(key)
        if not isinstance(value, Buffer):
            raise InvalidValueError(
                f"Zarr stores take zarr Buffer values, got {type(value).__name__}"
            )
        if only_if_absent and await self._pointer(core, key) is not None:
            return  # the common case, without saving a block
        data = buffer_bytes(value)
        route = core.route(key)
        if route is not None:
            ptr = await core.retry(lambda: core.cas._save_id(data, "raw"))
            await core.write_slot(key, route, ptr, only_if_absent=only_if_absent)
            return
        if not only_if_absent:
            await self._set_value(core, key, data, None)
            return
        # One set_if_not_exists of a metadata key at a time, so that only the one that
        # writes does the array bookkeeping; the check at the insert covers a racing set.
        async with core.lock_for((key, -1)):
            if key not in core.metadata:
                await self._set_value(core, key, data, None, only_if_absent=True)

    async def _set_value(
        self,
        core: _Core,
        key: str,
        data: bytes | None,
        ptr: Pointer | None,
        *,
        resize_v1: bool = True,
        only_if_absent: bool = False,
    ) -> None:
        """Keep ``key`` in the root's metadata map: ``data`` (saved unless ``ptr`` already
        names it), with py-hamt's bookkeeping for Zarr metadata; with ``only_if_absent``,
        only if the map has no ``key`` when the entry is made."""
        path = _array_path_of_metadata(key)
        meta = None if data is None or path is None else _json(data)
        if meta is not None and core.version == SHARDED_ZARR_V2:
            if key == "zarr.json" and self._strip_consolidated(core, meta):
                data, ptr = json.dumps(meta).encode("utf-8"), None
            await self._track_array(core, path or "", meta)
            await self._add_parent_groups(core, key, path or "")
        elif meta is not None and resize_v1:
            await self._track_v1_array(core, path or "", meta)
        if ptr is None:
            assert data is not None
            payload = data
            ptr = await core.retry(lambda: core.cas._save_id(payload, "raw"))
        with core.mutex:
            if only_if_absent and key in core.metadata:
                return
            core.meta_generation += 1
            core.metadata[key] = ptr
            core.meta_cache.pop(key, None)
            if data is not None and key.endswith(_METADATA_SUFFIXES):
                core.meta_cache[key] = data
            core.changes += 1

    @staticmethod
    def _strip_consolidated(core: _Core, meta: dict[str, Any]) -> bool:
        # py-hamt drops the root group's consolidated metadata once every array is in a
        # group (the root then opens the group, see _Core.v2_read_key).
        if not core.arrays or not all("/" in path for path in core.arrays):
            return False
        if meta.get("node_type") != "group" or "consolidated_metadata" not in meta:
            return False
        del meta["consolidated_metadata"]
        return True

    @staticmethod
    async def _track_array(core: _Core, path: str, meta: dict[str, Any]) -> None:
        geometry = _array_geometry(meta)
        if geometry is None:
            return
        shape, chunks = geometry
        if chunks is None:
            core.declared.add(path)
            return
        core.declared.discard(path)
        array = core.arrays.get(path)
        if array is None:
            if not core.default_cps:
                raise InvalidConfigError(
                    "this v2 store has no default chunks_per_shard; open it with one"
                )
            with core.mutex:
                core.arrays[path] = _Array(path, shape, chunks, core.default_cps)
                core.changes += 1
            return
        if array.chunk_shape != chunks:
            raise InvalidConfigError(
                f"array {path!r} is sharded in chunks of {array.chunk_shape}; new metadata "
                f"says {chunks}. Delete the array first (to_zarr mode='w' does)"
            )
        await core.resize(array, shape)

    @staticmethod
    async def _track_v1_array(core: _Core, path: str, meta: dict[str, Any]) -> None:
        array = core.arrays[""]
        geometry = _array_geometry(meta)
        if geometry is None:
            return
        shape = geometry[0]
        if core.primary is None:
            if path.rsplit("/", 1)[-1] in _V1_COORDINATE_NAMES or not path:
                return
        elif path != core.primary:
            return
        if len(shape) == len(array.shape) and shape != array.shape:
            await core.resize(array, shape)

    @staticmethod
    async def _add_parent_groups(core: _Core, key: str, path: str) -> None:
        zarr2 = key == ".zarray" or key.endswith("/.zarray")
        name, body = (".zgroup", _V2_GROUP) if zarr2 else ("zarr.json", _V3_GROUP)
        parts = path.split("/") if path else []
        for depth in range(max(len(parts), 1)):
            parent = "/".join(parts[:depth])
            group_key = f"{parent}/{name}" if parent else name
            if group_key in core.metadata or group_key == key:
                continue
            data = body.encode("utf-8")
            ptr = await core.retry(lambda data=data: core.cas._save_id(data, "raw"))  # type: ignore[misc]
            with core.mutex:
                if group_key not in core.metadata:
                    core.metadata[group_key] = ptr
                    core.meta_cache[group_key] = data
                    core.meta_generation += 1
                    core.changes += 1

    async def delete(self, key: str) -> None:
        # docstring inherited
        core = await self._writable()
        route = core.route(key)
        if route is not None:
            await core.write_slot(key, route, None)
            return
        with core.mutex:
            core.meta_generation += 1
            core.meta_cache.pop(key, None)
            if core.metadata.pop(key, None) is not None:
                core.changes += 1

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        core = await self._writable()
        if core.version == SHARDED_ZARR_V2:
            # Whole arrays go with their index (their chunks need no deleting one by one).
            bare = prefix.strip("/")
            for path in [
                p for p in core.arrays if not bare or p == bare or p.startswith(bare + "/")
            ]:
                await self._drop_array(core, path)
        await super().delete_dir(prefix)

    async def clear(self) -> None:
        # docstring inherited
        core = await self._writable()
        if core.version == SHARDED_ZARR_V2:
            for path in list(core.arrays):
                await self._drop_array(core, path)
        await super().clear()

    @staticmethod
    async def _drop_array(core: _Core, path: str) -> None:
        async with core.structure:
            with core.mutex:
                array = core.arrays.pop(path, None)
            if array is None:
                return
            for key in core.cache.keys():
                if key[0] == array.key:
                    core.cache.drop(key)
            array.epoch += 1
            core.changed()

    # -- zarr Store: listing -----------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        core = await self._ready()
        metadata = sorted(core.metadata)
        for key in metadata:
            yield key
        listed = set(metadata)
        for array in _sorted_arrays(core):
            for index in range(array.num_shards):
                for key in await core.shard_keys(array, index):
                    if key not in listed:
                        yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        core = await self._ready()
        metadata = sorted(k for k in core.metadata if k.startswith(prefix))
        for key in metadata:
            yield key
        listed = set(metadata)
        for array in _sorted_arrays(core):
            chunk_dir = _chunk_dir(core, array)
            if chunk_dir.startswith(prefix) or prefix.startswith(chunk_dir):
                for index in range(array.num_shards):
                    for key in await core.shard_keys(array, index):
                        if key.startswith(prefix) and key not in listed:
                            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        core = await self._ready()
        bare = prefix.strip("/")
        bare = core.v2_read_key(bare) if bare else (core._single_group() or "")
        base = bare + "/" if bare else ""
        names: set[str] = set()
        candidates: list[str] = list(core.metadata)
        for array in list(core.arrays.values()):  # arrays may come and go during awaits
            if not core.has_chunks(array):
                continue
            chunk_dir = _chunk_dir(core, array)
            if base.startswith(chunk_dir):
                for index in range(array.num_shards):
                    candidates.extend(await core.shard_keys(array, index))
            else:
                candidates.append(chunk_dir + "_")
        for key in candidates:
            if key.startswith(base) and len(key) > len(base):
                names.add(key[len(base) :].split("/", 1)[0])
        for name in sorted(names):
            yield name

    async def is_empty(self, prefix: str) -> bool:
        # docstring inherited
        directory = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
        keys = cast("AsyncGenerator[str, None]", self.list_prefix(directory))
        async with aclosing(keys):
            async for _ in keys:
                return False
        return True


def _chunk_dir(core: _Core, array: _Array) -> str:
    path = core._listed_path(array)
    return f"{path}/c/" if path else "c/"


def _sorted_arrays(core: _Core) -> list[_Array]:
    return [core.arrays[path] for path in sorted(core.arrays)]


async def _array_items(core: _Core, array: _Array) -> list[tuple[tuple[int, ...], Pointer]]:
    out = []
    for index in range(array.num_shards):
        for linear, ptr in await core.shard_items(array, index):
            out.append((array.coords(linear), ptr))
    return out


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"Zarr keys are non-empty str, got {key!r}")


def _new_store_config(
    manifest_version: str | None,
    array_shape: Iterable[int] | None,
    chunk_shape: Iterable[int] | None,
    chunks_per_shard: Any,
    primary_array_path: str,
) -> dict[str, Any]:
    if manifest_version not in (None, SHARDED_ZARR_V1, SHARDED_ZARR_V2):
        raise InvalidConfigError(
            f"manifest_version must be {SHARDED_ZARR_V1!r} or {SHARDED_ZARR_V2!r}, got "
            f"{manifest_version!r}"
        )
    v1 = manifest_version == SHARDED_ZARR_V1 or (
        manifest_version is None and (array_shape is not None or chunk_shape is not None)
    )
    fmt = SHARDED_ZARR_V1 if v1 else SHARDED_ZARR_V2
    if chunks_per_shard is None:
        raise InvalidConfigError(
            f"chunks_per_shard is missing: a new {fmt} store needs it (for example "
            "chunks_per_shard=64)"
        )
    for name, value in (("array_shape", array_shape), ("chunk_shape", chunk_shape)):
        other = chunk_shape if name == "array_shape" else array_shape
        if value is None and (v1 or other is not None):
            raise InvalidConfigError(
                f"{name} is missing: a new {fmt} store "
                + (
                    "needs array_shape and chunk_shape"
                    if v1
                    else "seeded with one of array_shape/chunk_shape needs both"
                )
            )
    shape = None if array_shape is None else tuple(int(n) for n in array_shape)
    chunks = None if chunk_shape is None else tuple(int(n) for n in chunk_shape)
    _check_new_chunks_per_shard(chunks_per_shard)
    if shape is not None and chunks is not None:
        _Array("", shape, chunks, chunks_per_shard)  # validates, raising InvalidConfigError
    return {
        "version": fmt,
        "cps": chunks_per_shard,
        "shape": shape,
        "chunks": chunks,
        "primary_path": primary_array_path,
    }


def _unpickle(
    cls: type[ShardedZarrStore],
    pid: int,
    token: str,
    reopen: tuple[Any, ...] | None,
    read_only: bool,
) -> ShardedZarrStore:
    store = cls.__new__(cls)
    Store.__init__(store, read_only=read_only)
    core = _live.get(token) if pid == os.getpid() else None
    if core is None and reopen is not None:
        cas, root, max_bytes = reopen
        with _reopened_mutex:
            # One core (and shard cache) per root in a worker, shared by all its tasks.
            core = _reopened.get((token, root))
            if core is None:
                core = _reopened[token, root] = _Core(cas, root, None, max_bytes)
                while len(_reopened) > _MAX_REOPENED:
                    _reopened.popitem(last=False)
            else:
                _reopened.move_to_end((token, root))
    store._core = core
    return store
