"""convert_hamt_to_sharded and `anyhamt zarr convert` on InMemoryCAS and LocalCAS.

The result is checked with xarray itself (assert_identical against the source dataset) and
by decoding the new root and shards directly (every pointer is one the source already had;
no chunk is uploaded again).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import dag_cbor
import numpy as np
import pytest
import xarray as xr
from _zarr_datasets import encoding, open_dataset, sample_dataset, write_dataset
from zarr.core.buffer import default_buffer_prototype

from anyhamt import (
    HAMT,
    BlockNotFoundError,
    InMemoryCAS,
    InvalidConfigError,
    InvalidIdError,
    InvalidKeyError,
    LocalCAS,
)
from anyhamt._codec import as_pointer
from anyhamt.cli import main
from anyhamt.zarr._convert import convert_hamt_to_sharded
from anyhamt.zarr._sharded import ShardedZarrStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyhamt import ContentAddressedStore

VERSIONS = ["sharded_zarr_v2", "sharded_zarr_v1"]


class CountingMemory(InMemoryCAS):
    """Records the codec of every block saved (the converter must save no "raw" block)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[str] = []

    async def save(self, data: bytes, codec: Any) -> Any:
        self.saved.append(codec)
        return await super().save(data, codec)

    async def _save_id(self, data: bytes, codec: Any) -> Any:
        self.saved.append(codec)
        return await super()._save_id(data, codec)

    async def _save_many(self, blocks: Any, codec: Any) -> Any:
        self.saved += [codec] * len(blocks)
        return await super()._save_many(blocks, codec)


class CountingLocal(LocalCAS):
    saved: list[str]

    async def save(self, data: bytes, codec: Any) -> Any:
        self.saved.append(codec)
        return await super().save(data, codec)

    async def _save_id(self, data: bytes, codec: Any) -> Any:
        self.saved.append(codec)
        return await super()._save_id(data, codec)

    async def _save_many(self, blocks: Any, codec: Any) -> Any:
        self.saved += [codec] * len(blocks)
        return await super()._save_many(blocks, codec)


@pytest.fixture(params=["memory", "local"])
async def cas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield CountingMemory()
        return
    async with CountingLocal(tmp_path / "blocks.sqlite3") as local:
        local.saved = []
        yield local


async def write_sample(cas: ContentAddressedStore) -> tuple[Any, xr.Dataset]:
    ds = sample_dataset()
    root = await write_dataset(
        cas, ds, mode="w", zarr_format=3, consolidated=False, encoding=encoding(ds)
    )
    return root, await open_dataset(cas, root, consolidated=False)


async def open_sharded(cas: ContentAddressedStore, root: Any) -> xr.Dataset:
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    return await anyio.to_thread.run_sync(lambda: xr.open_zarr(store, consolidated=False).load())


async def source_pointers(cas: ContentAddressedStore, root: Any) -> dict[str, Any]:
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    return {key: as_pointer(await hamt.get_pointer(key)) async for key in hamt.keys()}


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_result_opens_identically_in_xarray(cas: Any, version: str) -> None:
    root, source = await write_sample(cas)
    calls: list[tuple[str, int, int | None]] = []
    new_root = await convert_hamt_to_sharded(
        cas, root, 4, manifest_version=version, progress=lambda *a: calls.append(a)
    )
    xr.testing.assert_identical(await open_sharded(cas, new_root), source)

    keys = len(await source_pointers(cas, root))
    copying = [(done, total) for stage, done, total in calls if stage == "copying pointers"]
    assert copying[0] == (0, keys) and copying[-1] == (keys, keys)
    assert [d for d, _ in copying] == sorted(d for d, _ in copying)
    assert calls[0][0] == "reading nodes"

    # The same source gives the same root.
    assert await convert_hamt_to_sharded(cas, root, 4, manifest_version=version) == new_root


@pytest.mark.parametrize("version", VERSIONS)
async def test_pointers_are_copied_not_chunks(cas: Any, version: str) -> None:
    root, _ = await write_sample(cas)
    pointers = await source_pointers(cas, root)
    chunk_keys = {key for key in pointers if not key.endswith("zarr.json")}
    cas.saved.clear()
    new_root = await convert_hamt_to_sharded(cas, root, 4, manifest_version=version)
    # Only the index was written: shards and the root, all dag-cbor.
    assert cas.saved and set(cas.saved) == {"dag-cbor"}

    manifest: Any = dag_cbor.decode(await cas.load(new_root))
    assert manifest["manifest_version"] == version
    stored = {key: as_pointer(p) for key, p in manifest["metadata"].items()}
    indexes = [manifest["chunks"]] if version == "sharded_zarr_v1" else manifest["arrays"].values()
    shards: list[Any] = [
        dag_cbor.decode(await cas.load(shard))
        for index in indexes
        for shard in index["shard_cids"]
        if shard is not None
    ]
    in_shards = [as_pointer(entry) for shard in shards for entry in shard if entry is not None]
    assert len(cas.saved) == 1 + len(shards)
    # Every key kept its own block: metadata (and, in v1, the other arrays' chunks) in the
    # root's map, the rest in shards.
    assert {k: v for k, v in stored.items()} == {k: pointers[k] for k in stored}
    assert sorted(in_shards + [stored[k] for k in stored if k in chunk_keys]) == sorted(
        pointers[k] for k in chunk_keys
    )
    assert set(stored) | chunk_keys == set(pointers)


async def test_a_zarr_format_2_dataset_converts_too(cas: Any) -> None:
    # Format 2 chunk keys ("v/0.0") have no place in a shard index; the store keeps them in
    # the root's metadata map, by key, and the dataset reads back the same.
    ds = xr.Dataset({"v": (("t", "x"), np.arange(20, dtype="float32").reshape(4, 5))})
    root = await write_dataset(
        cas, ds, mode="w", zarr_format=2, consolidated=False, encoding={"v": {"chunks": (2, 5)}}
    )
    new_root = await convert_hamt_to_sharded(cas, root, 4)
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=new_root)
    back = await anyio.to_thread.run_sync(
        lambda: xr.open_zarr(store, consolidated=False, zarr_format=2).load()
    )
    xr.testing.assert_identical(back, ds)


@pytest.mark.parametrize(
    ("chunks_per_shard", "version", "message"),
    [
        (0, "sharded_zarr_v2", "chunks_per_shard must be a positive integer, got 0"),
        (-5, "sharded_zarr_v2", "chunks_per_shard must be a positive integer, got -5"),
        (True, "sharded_zarr_v2", "chunks_per_shard must be an int, got bool"),
        ("4", "sharded_zarr_v2", "chunks_per_shard must be an int, got str"),
        (4, "sharded_zarr_v3", "manifest_version must be"),
    ],
)
async def test_bad_arguments_are_config_errors(
    chunks_per_shard: Any, version: str, message: str
) -> None:
    cas = CountingMemory()
    root, _ = await write_sample(cas)
    cas.saved.clear()
    with pytest.raises(InvalidConfigError, match=message):
        await convert_hamt_to_sharded(cas, root, chunks_per_shard, manifest_version=version)
    assert cas.saved == []


async def test_roots_that_are_not_hamt_datasets() -> None:
    cas = CountingMemory()
    root, _ = await write_sample(cas)
    sharded = await convert_hamt_to_sharded(cas, root, 8)
    with pytest.raises(InvalidIdError, match="already a sharded Zarr root"):
        await convert_hamt_to_sharded(cas, sharded, 8)

    plain = await HAMT.build(cas=cas, values_are_bytes=True)
    await plain.set("k", b"v")
    await plain.make_read_only()
    with pytest.raises(InvalidIdError, match="no Zarr metadata"):
        await convert_hamt_to_sharded(cas, plain.root_node_id, 8)

    value = await cas.save(b"not a node", "raw")
    with pytest.raises(InvalidIdError, match="neither a HAMT root nor a sharded Zarr root"):
        await convert_hamt_to_sharded(cas, value, 8)

    with pytest.raises(BlockNotFoundError, match="no block"):
        await convert_hamt_to_sharded(cas, b"\x1e\x20" + bytes(32), 8)


async def test_keys_beside_the_dataset_are_kept() -> None:
    # py-hamt 3.6.0 stops with ValueError here; nothing is lost instead.
    cas = CountingMemory()
    root, source = await write_sample(cas)
    hamt = await HAMT.build(cas=cas, root_node_id=root, values_are_bytes=True)
    await hamt.set("temp/notes.txt", b"not zarr")
    await hamt.make_read_only()
    new_root = await convert_hamt_to_sharded(cas, hamt.root_node_id, 8)
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=new_root)
    got = await store.get("temp/notes.txt", default_buffer_prototype())
    assert got is not None and got.to_bytes() == b"not zarr"
    xr.testing.assert_identical(await open_sharded(cas, new_root), source)


async def test_a_chunk_key_outside_its_grid_is_an_error() -> None:
    cas = CountingMemory()
    root, _ = await write_sample(cas)
    hamt = await HAMT.build(cas=cas, root_node_id=root, values_are_bytes=True)
    await hamt.set("temp/c/9/0/0", b"a chunk of no chunk")  # temp's grid is 2x2x2
    await hamt.make_read_only()
    with pytest.raises(InvalidKeyError, match="temp/c/9/0/0"):
        await convert_hamt_to_sharded(cas, hamt.root_node_id, 8)


async def test_cancelled_conversion_then_again_gives_the_same_root() -> None:
    cas = CountingMemory()
    root, source = await write_sample(cas)
    expected = await convert_hamt_to_sharded(cas, root, 4)
    again = CountingMemory()
    again.store = dict(cas.store)  # the same blocks, without the converted root's
    with anyio.CancelScope() as scope:

        def cancel_midway(stage: str, done: int, total: int | None) -> None:
            if stage == "copying pointers" and done > 0:
                scope.cancel()

        await convert_hamt_to_sharded(again, root, 4, progress=cancel_midway)
    assert scope.cancelled_caught
    assert await convert_hamt_to_sharded(again, root, 4) == expected
    xr.testing.assert_identical(await open_dataset(again, root, consolidated=False), source)


# -- the command line ----------------------------------------------------------------------


async def _write_local(path: Path) -> tuple[str, xr.Dataset]:
    async with LocalCAS(path) as local:
        root, source = await write_sample(local)
        return str(root), source


async def _open_local(path: Path, root: str) -> xr.Dataset:
    async with LocalCAS(path, read_only=True) as local:
        return await open_sharded(local, root)


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_convert_then_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str, version: str
) -> None:
    path = tmp_path / "blocks.sqlite3"
    root, source = anyio.run(_write_local, path, backend=anyio_backend)
    store = ["--store", str(path), "--backend", anyio_backend]
    argv = ["zarr", "convert", root, "--chunks-per-shard", "4", "--manifest-version", version]
    assert main([*argv, *store]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # not a terminal: no progress bar
    new_root = out.strip()
    assert out == new_root + "\n" and new_root.startswith("bafyr4i")
    xr.testing.assert_identical(anyio.run(_open_local, path, new_root), source)

    assert main(["zarr", "info", new_root, "--json", *store]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == version and info["chunks_per_shard"] == 4
    temp = next(a for a in info["arrays"] if a["path"] == "temp")
    assert temp["sharded"] and (temp["chunks_present"], temp["chunks_missing"]) == (8, 0)

    # The same bytes are stored, except the index: HAMT nodes became a root and shards.
    assert main(["zarr", "info", root, "--json", *store]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (info["metadata_bytes"], info["chunk_bytes"]) == (
        before["metadata_bytes"],
        before["chunk_bytes"],
    )
    assert [(a["path"], a["chunks_present"]) for a in info["arrays"]] == [
        (a["path"], a["chunks_present"]) for a in before["arrays"]
    ]
