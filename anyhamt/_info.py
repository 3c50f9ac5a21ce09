"""What a root holds: the statistics behind ``anyhamt info`` and ``anyhamt zarr info``.

Everything here reads blocks and parses them itself (HAMT nodes with the node codec,
sharded roots and shards with dag-cbor, Zarr metadata as JSON), so it needs neither zarr
nor a store object of a particular layout: ``anyhamt zarr info`` works without the ``zarr``
extra and on roots written by py-hamt.

Roots are told apart by their first block (docs/architecture.md §7): a HAMT node is a dag-cbor
list of 256 slots; a sharded Zarr root is a dag-cbor map whose ``manifest_version`` is
``sharded_zarr_v1`` or ``sharded_zarr_v2``.

Stored bytes count each distinct block once (two chunks with equal bytes share a block).
Value and chunk sizes come from the store's size query (``_size_id``), which reads a
block's stored length where the store can without fetching it.

Cancellation: every function here only reads; cancelling one has no effect on the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import dag_cbor

from ._codec import (
    _decode_pointer,
    _NotFastPath,
    _read_len,
    as_link,
    as_pointer,
    decode_node,
    to_public,
)
from ._errors import BlockNotFoundError, CorruptBlockError, CorruptNodeError, InvalidIdError
from ._tasks import map_bounded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._codec import Pointer
    from .cas._base import ContentAddressedStore

__all__ = [
    "SHARDED_V1",
    "SHARDED_V2",
    "ArrayInfo",
    "ArrayLayout",
    "HamtInfo",
    "Progress",
    "ZarrInfo",
    "hamt_entries",
    "hamt_info",
    "chunk_owner",
    "load_root",
    "metadata_name",
    "no_progress",
    "parent_path",
    "parse_array",
    "show_id",
    "zarr_info",
]

# ``progress(stage, done, total)``: ``total`` is None while it is not known yet.
type Progress = Callable[[str, int, int | None], None]

SHARDED_V1: Final = "sharded_zarr_v1"
SHARDED_V2: Final = "sharded_zarr_v2"
# Blocks read or sized at once; also the batch after which progress is reported.
_CONCURRENCY: Final = 32
_BATCH: Final = 256
# Zarr metadata documents (format 3, then format 2's).
_METADATA_NAMES: Final = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})

type Layout = Literal["hamt", "sharded_zarr_v1", "sharded_zarr_v2"]
_SHARDED_LAYOUTS: Final[dict[object, Layout]] = {
    SHARDED_V1: "sharded_zarr_v1",
    SHARDED_V2: "sharded_zarr_v2",
}


def no_progress(stage: str, done: int, total: int | None) -> None:
    pass


# -- roots --------------------------------------------------------------------------------


@dataclass
class Root:
    """A root's first block, decoded: HAMT slots or a sharded manifest."""

    pointer: Pointer
    layout: Layout
    size: int
    slots: list[Any] | None = None
    manifest: dict[str, Any] | None = None


async def load_root(cas: ContentAddressedStore, root: Any) -> Root:
    """Read and classify ``root``: ``BlockNotFoundError`` if the store lacks it,
    ``InvalidIdError`` if it is neither a HAMT node nor a sharded Zarr root."""
    # CID text as users copy it (the CLI, py-hamt's converter take it so).
    pointer = as_link(root) if isinstance(root, str) else as_pointer(root)
    try:
        data = await cas._load_id(pointer)
    except BlockNotFoundError as exc:
        raise BlockNotFoundError(
            f"no block {show_id(pointer)} in the store; check the root and the store it was "
            f"written to ({exc})"
        ) from exc
    try:
        return Root(pointer, "hamt", len(data), slots=decode_node(data))
    except CorruptNodeError:
        pass
    try:
        manifest = dag_cbor.decode(data)
    except Exception:
        manifest = None
    if isinstance(manifest, dict):
        version = manifest.get("manifest_version")
        layout = _SHARDED_LAYOUTS.get(version) if isinstance(version, str) else None
        if layout is not None:
            return Root(pointer, layout, len(data), manifest=manifest)
    raise InvalidIdError(
        f"{show_id(pointer)} is neither a HAMT root nor a sharded Zarr root (its block of "
        f"{len(data)} bytes is not a 256-slot HAMT node or a sharded_zarr_v1/v2 manifest); "
        "give the root CID a HAMT or Zarr write printed"
    )


def show_id(pointer: Pointer) -> str:
    public = to_public(pointer)
    return public.hex() if isinstance(public, bytes) else str(public)


# -- HAMT ---------------------------------------------------------------------------------


@dataclass
class HamtInfo:
    """The shape and size of one HAMT map."""

    root: Any
    keys: int
    depth: int  # levels of nodes: 1 when every key fits in the root node
    nodes: int
    node_bytes: int
    values: int  # distinct value blocks
    value_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.node_bytes + self.value_bytes


async def hamt_entries(
    cas: ContentAddressedStore, root: Root, progress: Progress = no_progress
) -> tuple[dict[str, Pointer], int, int, int]:
    """Every ``key -> value pointer`` of the HAMT at ``root``, with its depth, node count
    and node bytes. Reads the tree a level at a time, ``_CONCURRENCY`` nodes at once."""
    if root.slots is None:
        raise InvalidIdError(f"{show_id(root.pointer)} is a {root.layout} root, not a HAMT")
    entries: dict[str, Pointer] = {}
    nodes, node_bytes, depth = 1, root.size, 1
    level = _take(root.slots, entries)
    progress("reading nodes", nodes, None)
    while level:
        depth += 1
        below: list[Pointer] = []
        # Batches keep memory to one batch of undecoded nodes, however wide the level.
        for start in range(0, len(level), _BATCH):
            batch = level[start : start + _BATCH]
            blocks = await map_bounded(cas._load_id, batch, _CONCURRENCY)
            for data in blocks:
                node_bytes += len(data)
                below += _take(decode_node(data), entries)
            nodes += len(batch)
            progress("reading nodes", nodes, None)
        level = below
    return entries, depth, nodes, node_bytes


def _take(slots: list[Any], entries: dict[str, Pointer]) -> list[Pointer]:
    children: list[Pointer] = []
    for slot in slots:
        if slot is None:
            continue
        if type(slot) is dict:
            entries.update(slot)
        else:
            children.append(slot[0])
    return children


async def _sizes(
    cas: ContentAddressedStore, pointers: Iterable[Pointer], stage: str, progress: Progress
) -> dict[Pointer, int]:
    """The stored size of each distinct pointer."""
    todo = list(dict.fromkeys(pointers))
    sizes: dict[Pointer, int] = {}
    progress(stage, 0, len(todo))
    for start in range(0, len(todo), _BATCH):
        batch = todo[start : start + _BATCH]
        for pointer, size in zip(
            batch, await map_bounded(cas._size_id, batch, _CONCURRENCY), strict=True
        ):
            sizes[pointer] = size
        progress(stage, len(sizes), len(todo))
    return sizes


async def hamt_info(
    cas: ContentAddressedStore, root: Any, *, progress: Progress = no_progress
) -> HamtInfo:
    """Keys, depth, nodes and stored bytes of the HAMT map at ``root``.

    Reads every node and asks the store for the size of every distinct value.
    """
    loaded = await load_root(cas, root)
    if loaded.slots is None:
        raise InvalidIdError(
            f"{show_id(loaded.pointer)} is a sharded Zarr root ({loaded.layout}), not a HAMT "
            "map; `anyhamt zarr info` describes it"
        )
    entries, depth, nodes, node_bytes = await hamt_entries(cas, loaded, progress)
    sizes = await _sizes(cas, entries.values(), "sizing values", progress)
    return HamtInfo(
        root=to_public(loaded.pointer),
        keys=len(entries),
        depth=depth,
        nodes=nodes,
        node_bytes=node_bytes,
        values=len(sizes),
        value_bytes=sum(sizes.values()),
    )


# -- Zarr ---------------------------------------------------------------------------------


@dataclass
class ArrayInfo:
    """One Zarr array: its metadata and what of it is stored."""

    path: str
    zarr_format: int | None
    shape: list[int] | None
    chunks: list[int] | None
    dtype: str | None
    codecs: list[str]
    chunks_total: int | None
    chunks_present: int = 0
    chunk_bytes: int = 0
    sharded: bool = False  # its chunks are in a shard index, not in the key space

    @property
    def chunks_missing(self) -> int | None:
        if self.chunks_total is None:
            return None
        return max(self.chunks_total - self.chunks_present, 0)


@dataclass
class ZarrInfo:
    """A Zarr dataset's layout, arrays and stored bytes."""

    root: Any
    layout: Layout
    arrays: list[ArrayInfo]
    groups: list[str]
    metadata_bytes: int
    chunk_bytes: int
    index_bytes: int  # HAMT nodes, or the sharded root and its shards
    keys: int | None = None  # HAMT layout
    depth: int | None = None
    nodes: int | None = None
    chunks_per_shard: int | None = None  # sharded layouts
    shards: int | None = None
    shards_present: int | None = None
    other_keys: list[str] = field(default_factory=list)  # neither metadata nor chunks
    other_bytes: int = 0

    @property
    def stored_bytes(self) -> int:
        return self.metadata_bytes + self.chunk_bytes + self.index_bytes + self.other_bytes


def metadata_name(key: str) -> str | None:
    name = key.rpartition("/")[2]
    return name if name in _METADATA_NAMES else None


def parent_path(key: str) -> str:
    return key.rpartition("/")[0]


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(type(v) is int for v in value):
        return list(value)
    return None


def _codec_names(codecs: Any) -> list[str]:
    names: list[str] = []
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, dict):
            name = str(codec.get("name", codec.get("id", "?")))
            inner = (codec.get("configuration") or {}).get("codecs")
            if name == "sharding_indexed" and isinstance(inner, list):
                chunk = _ints((codec.get("configuration") or {}).get("chunk_shape"))
                shown = "?" if chunk is None else "x".join(map(str, chunk))
                name = f"sharding_indexed(chunks {shown}: {', '.join(_codec_names(inner))})"
            names.append(name)
        elif isinstance(codec, str):
            names.append(codec)
    return names


@dataclass
class ArrayLayout:
    """An array as the key space sees it: its description and how its chunks are named."""

    info: ArrayInfo
    ndim: int | None
    separator: str
    prefix_c: bool  # zarr v3 "default" chunk keys ("c/0/1") rather than v2 ("0.1")


def parse_array(path: str, name: str, document: dict[str, Any]) -> ArrayLayout | None:
    """The array a metadata document describes, or None for a group."""
    if name == "zarr.json":
        if document.get("node_type") != "array":
            return None
        shape = _ints(document.get("shape"))
        grid = document.get("chunk_grid") or {}
        chunks = _ints((grid.get("configuration") or {}).get("chunk_shape"))
        dtype = document.get("data_type")
        if isinstance(dtype, dict):
            dtype = dtype.get("name")
        encoding = document.get("chunk_key_encoding") or {}
        v2_keys = encoding.get("name") == "v2"
        separator = (encoding.get("configuration") or {}).get("separator")
        info = ArrayInfo(
            path=path,
            zarr_format=3,
            shape=shape,
            chunks=chunks,
            dtype=None if dtype is None else str(dtype),
            codecs=_codec_names(document.get("codecs")),
            chunks_total=_chunk_count(shape, chunks),
        )
        sep = separator if isinstance(separator, str) else ("." if v2_keys else "/")
        return ArrayLayout(info, None if shape is None else len(shape), sep, not v2_keys)
    # Zarr format 2.
    shape = _ints(document.get("shape"))
    chunks = _ints(document.get("chunks"))
    codecs = [f for f in document.get("filters") or [] if isinstance(f, dict)]
    if isinstance(document.get("compressor"), dict):
        codecs.append(document["compressor"])
    info = ArrayInfo(
        path=path,
        zarr_format=2,
        shape=shape,
        chunks=chunks,
        dtype=None if document.get("dtype") is None else str(document.get("dtype")),
        codecs=_codec_names(codecs),
        chunks_total=_chunk_count(shape, chunks),
    )
    separator = document.get("dimension_separator")
    sep = separator if isinstance(separator, str) else "."
    return ArrayLayout(info, None if shape is None else len(shape), sep, False)


def _chunk_count(shape: list[int] | None, chunks: list[int] | None) -> int | None:
    if shape is None or chunks is None or len(shape) != len(chunks) or 0 in chunks:
        return None
    return math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True))


def _is_chunk_key(array: ArrayLayout, rest: str) -> bool:
    """Whether ``rest`` (a key below the array's path) names one of its chunks."""
    if array.prefix_c:
        if rest == "c":
            return array.ndim in (0, None)
        if not rest.startswith("c" + array.separator):
            return False
        rest = rest[2:]
    elif array.ndim == 0:
        return rest == "0"
    parts = rest.split(array.separator)
    return all(p.isdecimal() for p in parts) and array.ndim in (None, len(parts))


async def zarr_info(
    cas: ContentAddressedStore, root: Any, *, progress: Progress = no_progress
) -> ZarrInfo:
    """Layout, arrays, chunks present and missing, and stored bytes of the Zarr dataset at
    ``root``: a ``ZarrHAMTStore`` root (a HAMT) or a ``ShardedZarrStore`` root (v1 or v2).

    ``InvalidIdError`` if ``root`` holds no Zarr metadata at all.
    """
    loaded = await load_root(cas, root)
    # The key space: metadata, and chunks not kept in a shard index.
    entries: dict[str, Pointer]
    indexes: dict[str, dict[str, Any]] = {}  # array path -> sharded index manifest
    info = ZarrInfo(
        root=to_public(loaded.pointer),
        layout=loaded.layout,
        arrays=[],
        groups=[],
        metadata_bytes=0,
        chunk_bytes=0,
        index_bytes=loaded.size,
    )
    if loaded.slots is not None:
        entries, info.depth, info.nodes, info.index_bytes = await hamt_entries(
            cas, loaded, progress
        )
        info.keys = len(entries)
    else:
        entries, indexes, info.chunks_per_shard = _read_manifest(loaded)

    metadata_keys = [key for key in entries if metadata_name(key) is not None]
    if not metadata_keys:
        raise InvalidIdError(
            f"{show_id(loaded.pointer)} holds no Zarr metadata (no zarr.json, .zarray or "
            ".zgroup key), so it is not a Zarr dataset; `anyhamt info` describes any HAMT"
        )
    progress("reading metadata", 0, len(metadata_keys))
    documents = await map_bounded(
        lambda key: cas._load_id(entries[key]), metadata_keys, _CONCURRENCY
    )
    progress("reading metadata", len(metadata_keys), len(metadata_keys))
    distinct = {entries[key]: data for key, data in zip(metadata_keys, documents, strict=True)}
    info.metadata_bytes = sum(len(data) for data in distinct.values())

    arrays: dict[str, ArrayLayout] = {}
    for key, data in zip(metadata_keys, documents, strict=True):
        name = metadata_name(key)
        assert name is not None
        path = parent_path(key)
        if name not in ("zarr.json", ".zarray", ".zgroup"):
            continue
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise CorruptBlockError(f"the Zarr metadata {key!r} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise CorruptBlockError(f"the Zarr metadata {key!r} is not a JSON object")
        array = parse_array(path, name, document) if name != ".zgroup" else None
        if array is None:
            info.groups.append(path)
        else:
            arrays[path] = array

    if loaded.layout == SHARDED_V1 and indexes:
        _place_v1_index(loaded, indexes, arrays)
    for path, manifest in indexes.items():
        if path not in arrays:
            # An index with no metadata: describe it from the index's own geometry.
            shape, chunks = _ints(manifest.get("array_shape")), _ints(manifest.get("chunk_shape"))
            arrays[path] = ArrayLayout(
                ArrayInfo(path, None, shape, chunks, None, [], _chunk_count(shape, chunks)),
                None if shape is None else len(shape),
                "/",
                True,
            )
        arrays[path].info.sharded = True

    # Chunks in the key space.
    chunk_pointers: dict[str, list[Pointer]] = {path: [] for path in arrays}
    other_pointers: list[Pointer] = []
    for key, pointer in entries.items():
        if metadata_name(key) is not None:
            continue
        owner = chunk_owner(key, arrays)
        if owner is None:
            info.other_keys.append(key)
            other_pointers.append(pointer)
        else:
            chunk_pointers[owner].append(pointer)

    # Chunks in shard indexes.
    shard_links = [
        (path, shard)
        for path, manifest in indexes.items()
        for shard in manifest.get("shard_cids") or []
        if shard is not None
    ]
    if indexes:
        info.shards = sum(len(m.get("shard_cids") or []) for m in indexes.values())
        info.shards_present = len(shard_links)
    for start in range(0, len(shard_links), _BATCH):
        batch = shard_links[start : start + _BATCH]
        blocks = await map_bounded(
            lambda item: cas._load_id(as_pointer(item[1])), batch, _CONCURRENCY
        )
        for (path, _), data in zip(batch, blocks, strict=True):
            info.index_bytes += len(data)
            chunk_pointers[path] += _shard_entries(data, path)
        progress("reading shards", start + len(batch), len(shard_links))

    all_chunks = [p for ps in chunk_pointers.values() for p in ps]
    sizes = await _sizes(cas, [*all_chunks, *other_pointers], "sizing chunks", progress)
    info.chunk_bytes = sum(sizes[p] for p in dict.fromkeys(all_chunks))
    info.other_bytes = sum(sizes[p] for p in dict.fromkeys(other_pointers))
    for path in sorted(arrays):
        described = arrays[path].info
        pointers = chunk_pointers[path]
        described.chunks_present = len(pointers)
        described.chunk_bytes = sum(sizes[p] for p in dict.fromkeys(pointers))
        info.arrays.append(described)
    info.groups.sort()
    info.other_keys.sort()
    return info


def _read_manifest(
    loaded: Root,
) -> tuple[dict[str, Pointer], dict[str, dict[str, Any]], int | None]:
    manifest = loaded.manifest
    assert manifest is not None
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        raise CorruptBlockError(
            f"the {loaded.layout} root {show_id(loaded.pointer)} has no metadata map"
        )
    entries = {str(k): as_pointer(v) for k, v in metadata.items()}
    indexes: dict[str, dict[str, Any]] = {}
    chunks_per_shard: int | None = None
    if loaded.layout == SHARDED_V1:
        chunks = manifest.get("chunks")
        if not isinstance(chunks, dict):
            raise CorruptBlockError(
                f"the sharded_zarr_v1 root {show_id(loaded.pointer)} has no chunks index"
            )
        primary = chunks.get("primary_array_path")
        indexes[primary if isinstance(primary, str) else "\0"] = chunks
        chunks_per_shard = (chunks.get("sharding_config") or {}).get("chunks_per_shard")
    else:
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict):
            raise CorruptBlockError(
                f"the sharded_zarr_v2 root {show_id(loaded.pointer)} has no arrays map"
            )
        indexes = {str(path).strip("/"): index for path, index in arrays.items()}
        chunks_per_shard = (manifest.get("sharding_config") or {}).get("chunks_per_shard")
    return entries, indexes, chunks_per_shard if type(chunks_per_shard) is int else None


def _place_v1_index(
    loaded: Root, indexes: dict[str, dict[str, Any]], arrays: dict[str, ArrayLayout]
) -> None:
    """A v1 root written before py-hamt recorded ``primary_array_path``: the primary array
    is the one whose metadata has the index's geometry, if exactly one does."""
    if "\0" not in indexes:
        return
    index = indexes.pop("\0")
    shape, chunks = _ints(index.get("array_shape")), _ints(index.get("chunk_shape"))
    matches = [
        path
        for path, array in arrays.items()
        if array.info.shape == shape and array.info.chunks == chunks
    ]
    indexes[matches[0] if len(matches) == 1 else "(primary array, path not recorded)"] = index


def chunk_owner(key: str, arrays: dict[str, ArrayLayout]) -> str | None:
    """The array whose chunk ``key`` is, trying the deepest array path first."""
    parts = key.split("/")
    for cut in range(len(parts) - 1, -1, -1):
        path = "/".join(parts[:cut])
        array = arrays.get(path)
        if array is not None:
            return path if _is_chunk_key(array, "/".join(parts[cut:])) else None
    return None


def _shard_entries(data: bytes, path: str) -> list[Pointer]:
    """The chunk ids in a shard (a dag-cbor list of id-or-null), nulls left out.

    Read with the node codec's pointer reader: decoding through ``dag_cbor`` builds a
    ``multiformats.CID`` per entry, ~100 µs each, minutes for a large dataset."""
    try:
        if not data or data[0] >> 5 != 4:
            raise CorruptBlockError(f"a shard of {path!r} is not a list of chunk ids")
        count, pos = _read_len(data, 1, data[0] & 0x1F)
        entries: list[Pointer] = []
        for _ in range(count):
            if data[pos] == 0xF6:  # null: no chunk in this slot
                pos += 1
                continue
            pointer, pos = _decode_pointer(data, pos)
            entries.append(pointer)
        if pos == len(data):
            return entries
    except (_NotFastPath, IndexError, CorruptNodeError):
        pass
    # Lengths or ids outside that grammar (a custom store's ids): the general codec.
    try:
        shard = dag_cbor.decode(data)
    except Exception as exc:
        raise CorruptBlockError(f"a shard of {path!r} is not dag-cbor: {exc}") from exc
    if not isinstance(shard, list):
        raise CorruptBlockError(f"a shard of {path!r} is not a list of chunk ids")
    return [as_pointer(entry) for entry in shard if entry is not None]
