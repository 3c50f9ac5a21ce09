"""Copy a Zarr dataset from the HAMT layout (``ZarrHAMTStore``) to the sharded layout.

Only the index changes: every key's value is already a block in the store, so the sharded
store is given each block's id (``set_pointer``) and nothing is read or uploaded again
except the Zarr metadata documents (a v2 root registers each array's geometry from its
``zarr.json``). The converter lists the source by walking its nodes (``_info``), which
yields every key with its pointer in one pass instead of a lookup per key.

Nothing is lost: a key that is neither Zarr metadata nor a chunk of an array the metadata
declares (a README beside the dataset, say) is kept by key in the root's ``metadata`` map,
where the sharded store keeps every value that is not a sharded chunk; py-hamt 3.6.0 stops
with a bare ``ValueError`` there. A chunk key outside its array's chunk grid is the
store's ``InvalidKeyError``, never dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._errors import (
    AnyHamtError,
    CorruptBlockError,
    InvalidConfigError,
    InvalidIdError,
)
from .._info import (
    SHARDED_V1,
    SHARDED_V2,
    ArrayLayout,
    chunk_owner,
    hamt_entries,
    load_root,
    metadata_name,
    no_progress,
    parent_path,
    parse_array,
    show_id,
)
from .._tasks import map_bounded
from ..cas._kubo import KuboCAS
from ._sharded import ShardedZarrStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._codec import Pointer
    from .._info import Progress
    from ..cas._base import ContentAddressedStore

__all__ = ["convert_hamt_to_sharded", "sharded_converter_cli"]

# py-hamt's default for its converter command.
DEFAULT_CHUNKS_PER_SHARD: Final = 6250
# Names py-hamt 3.6.0 never makes the primary (sharded) array of a v1 root: coordinates.
_COORDINATE_NAMES: Final = frozenset(
    {"time", "lat", "lon", "latitude", "longitude", "forecast_reference_time", "step"}
)


async def convert_hamt_to_sharded(
    cas: ContentAddressedStore,
    hamt_root_cid: Any,
    chunks_per_shard: int,
    *,
    manifest_version: str = SHARDED_V2,
    progress: Progress | None = None,
) -> Any:
    """Copy the Zarr dataset at ``hamt_root_cid`` (a ``ZarrHAMTStore`` root in ``cas``) into
    a new ``ShardedZarrStore`` in the same store; return the new root's id.

    Same positional parameters as py-hamt's converter. Chunks are not copied: the new index
    points at the blocks the source already has, so the store need not be a Kubo one
    (``InMemoryCAS`` and ``LocalCAS`` work the same). ``manifest_version`` is the root layout
    to write (py-hamt 3.6.0's converter writes ``sharded_zarr_v2``; ``sharded_zarr_v1``
    shards only the array with the most chunks, as py-hamt's v1 stores do).
    ``progress(stage, done, total)`` is called as the work advances ("reading nodes" with
    no total, then "copying pointers").

    Every key is copied: keys that are not sharded chunks (metadata, Zarr format 2 chunk
    keys, other arrays' chunks in v1, anything else beside the dataset) are kept by key in
    the new root's ``metadata`` map.

    Raises ``InvalidConfigError`` for a bad ``chunks_per_shard`` or ``manifest_version``,
    ``BlockNotFoundError`` if the store lacks the root, ``InvalidIdError`` if the root is
    not a HAMT Zarr dataset (no Zarr metadata, or already sharded), and the store's
    ``InvalidKeyError`` for a chunk key outside its array's chunk grid.

    Cancellation: the source is never changed; blocks saved before the cancellation (shards,
    a root) stay in the store unreferenced, which is harmless, and converting again gives
    the same root.
    """
    if isinstance(chunks_per_shard, bool) or not isinstance(chunks_per_shard, int):
        raise InvalidConfigError(
            f"chunks_per_shard must be an int, got {type(chunks_per_shard).__name__}"
        )
    if chunks_per_shard < 1:
        raise InvalidConfigError(
            f"chunks_per_shard must be a positive integer, got {chunks_per_shard}"
        )
    if manifest_version not in (SHARDED_V1, SHARDED_V2):
        raise InvalidConfigError(
            f"manifest_version must be {SHARDED_V2!r} or {SHARDED_V1!r}, got {manifest_version!r}"
        )
    report = progress or no_progress

    root = await load_root(cas, hamt_root_cid)
    if root.slots is None:
        raise InvalidIdError(
            f"{show_id(root.pointer)} is already a sharded Zarr root ({root.layout}); give the "
            "root of a dataset written through ZarrHAMTStore"
        )
    entries, _, _, _ = await hamt_entries(cas, root, report)
    # Parents first: a v2 store given an array's zarr.json before its group's makes up a
    # group document (a new block) that the real one then replaces.
    metadata_keys = sorted(
        (key for key in entries if metadata_name(key) is not None),
        key=lambda key: (key.count("/"), key),
    )
    if not metadata_keys:
        raise InvalidIdError(
            f"{show_id(root.pointer)} is a HAMT with no Zarr metadata (no zarr.json, .zarray "
            "or .zgroup key), so it is not a Zarr dataset"
        )
    arrays = await _arrays(cas, entries, metadata_keys)
    owners: dict[str, str] = {}
    other_keys: list[str] = []
    for key in entries:
        if metadata_name(key) is not None:
            continue
        owner = chunk_owner(key, arrays)
        if owner is None:
            other_keys.append(key)
        else:
            owners[key] = owner
    chunk_keys = sorted(owners)

    options: dict[str, Any] = {}
    if manifest_version == SHARDED_V1:
        primary = _primary(arrays)
        options = {
            "array_shape": tuple(primary.info.shape or ()),
            "chunk_shape": tuple(primary.info.chunks or ()),
        }
        # A v1 store shards the array whose chunk it is given first: the primary's go first.
        chunk_keys.sort(key=lambda key: owners[key] != primary.info.path)
    store = await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        chunks_per_shard=chunks_per_shard,
        manifest_version=manifest_version,
        **options,
    )
    # Metadata first: a v2 root registers each array's index from its zarr.json, which must
    # exist before the array's chunks arrive.
    ordered = metadata_keys + chunk_keys + sorted(other_keys)
    total = len(ordered)
    report("copying pointers", 0, total)
    for done, key in enumerate(ordered, 1):
        # The store's own id form (a Link for CIDs): no multiformats.CID round trip.
        await store.set_pointer(key, entries[key])
        if done % 1024 == 0 or done == total:
            report("copying pointers", done, total)
    return await store.flush()


async def _arrays(
    cas: ContentAddressedStore, entries: dict[str, Pointer], metadata_keys: list[str]
) -> dict[str, ArrayLayout]:
    """The arrays the dataset's metadata declares, by path."""
    documents = await map_bounded(lambda key: cas._load_id(entries[key]), metadata_keys, 32)
    arrays: dict[str, ArrayLayout] = {}
    for key, data in zip(metadata_keys, documents, strict=True):
        name = metadata_name(key)
        if name not in ("zarr.json", ".zarray"):
            continue
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise CorruptBlockError(f"the Zarr metadata {key!r} is not JSON: {exc}") from exc
        if isinstance(document, dict):
            array = parse_array(parent_path(key), name, document)
            if array is not None:
                arrays[array.info.path] = array
    return arrays


def _primary(arrays: dict[str, ArrayLayout]) -> ArrayLayout:
    """The array a v1 root shards: the one with the most chunks, coordinates last."""
    candidates = [
        a for a in arrays.values() if a.info.shape is not None and a.info.chunks is not None
    ]
    if not candidates:
        raise InvalidIdError(
            "the dataset declares no array with a shape and a regular chunk grid, which a "
            "sharded_zarr_v1 root needs; convert to sharded_zarr_v2"
        )
    return max(
        candidates,
        key=lambda a: (
            a.info.path.rpartition("/")[2] not in _COORDINATE_NAMES,
            a.info.chunks_total or 0,
            a.info.path,
        ),
    )


async def sharded_converter_cli(argv: Sequence[str] | None = None) -> None:
    """py-hamt's converter command: ``HAMT_CID [--chunks-per-shard N] [--rpc-url URL]
    [--gateway-url URL]`` on a Kubo daemon; prints the new root.

    Unlike py-hamt's, a failure prints one line to stderr and exits with status 1
    (``SystemExit``) instead of returning normally. ``anyhamt zarr convert`` does the same
    on the local store or Kubo, with a progress bar.
    """
    parser = argparse.ArgumentParser(
        description="Convert a Zarr HAMT store to a Sharded Zarr store (on a Kubo daemon)."
    )
    parser.add_argument("hamt_cid", help="the root CID of the source Zarr HAMT store")
    parser.add_argument(
        "--chunks-per-shard",
        type=int,
        default=DEFAULT_CHUNKS_PER_SHARD,
        help=f"chunk CIDs per shard in the new store (default: {DEFAULT_CHUNKS_PER_SHARD})",
    )
    parser.add_argument(
        "--rpc-url",
        default=KuboCAS.KUBO_DEFAULT_LOCAL_RPC_BASE_URL,
        help=f"the Kubo RPC API (default: {KuboCAS.KUBO_DEFAULT_LOCAL_RPC_BASE_URL})",
    )
    parser.add_argument(
        "--gateway-url",
        default=KuboCAS.KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL,
        help=f"the IPFS gateway (default: {KuboCAS.KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL})",
    )
    args = parser.parse_args(argv)
    try:
        async with KuboCAS(rpc_base_url=args.rpc_url, gateway_base_url=args.gateway_url) as cas:
            root = await convert_hamt_to_sharded(cas, args.hamt_cid, args.chunks_per_shard)
    except (AnyHamtError, OSError) as exc:
        print(f"sharded_converter_cli: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(root)


if __name__ == "__main__":  # pragma: no cover
    anyio.run(sharded_converter_cli)
