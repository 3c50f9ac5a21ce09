"""xarray through ``ShardedZarrStore``: both formats, several variables, coordinates and
attributes, ``append_dim``, region writes, lazy dask reads, on ``InMemoryCAS`` and
``LocalCAS``, from asyncio and trio applications (xarray's sync API called off the loop
thread, the documented pattern)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
import xarray as xr
from _zarr_datasets import CHUNKS, CONSOLIDATED_V3_WARNING, encoding, sample_dataset

from anyhamt import InMemoryCAS, LocalCAS
from anyhamt.zarr import ShardedZarrStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyhamt.cas import ContentAddressedStore

pytestmark = CONSOLIDATED_V3_WARNING


@pytest.fixture(params=["memory", "local"])
async def cas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ContentAddressedStore]:
    if request.param == "memory":
        yield InMemoryCAS()
    else:
        async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
            yield local


async def new_store(cas: ContentAddressedStore, version: str, nt: int = 8) -> ShardedZarrStore:
    if version == "sharded_zarr_v1":
        return await ShardedZarrStore.open(
            cas=cas,
            read_only=False,
            array_shape=(nt, 6, 8),
            chunk_shape=CHUNKS,
            chunks_per_shard=3,
            manifest_version=version,
        )
    return await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=3)


async def to_zarr(ds: xr.Dataset, store: ShardedZarrStore, **kwargs: Any) -> None:
    await anyio.to_thread.run_sync(functools.partial(ds.to_zarr, store=store, **kwargs))


async def reopen(cas: ContentAddressedStore, root: Any, *, load: bool = True) -> xr.Dataset:
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)

    def open_it() -> xr.Dataset:
        ds: xr.Dataset = xr.open_zarr(store)
        return ds.load() if load else ds

    return await anyio.to_thread.run_sync(open_it)


VERSIONS = ["sharded_zarr_v1", "sharded_zarr_v2"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_roundtrip(cas: ContentAddressedStore, version: str) -> None:
    ds = sample_dataset()
    store = await new_store(cas, version)
    await to_zarr(ds, store, mode="w", zarr_format=3, encoding=encoding(ds))
    root = await store.flush()
    back = await reopen(cas, root)
    xr.testing.assert_identical(back, ds)
    # The chunks of the sharded arrays are in shards, not in the metadata map (v1 shards
    # one 3-D array: whichever zarr wrote a chunk of first).
    core = store._core
    assert core is not None
    sharded = ["temp", "precip"] if version == "sharded_zarr_v2" else [core.primary]
    assert core.primary in (None if version == "sharded_zarr_v2" else "temp", "precip")
    assert not [key for key in core.metadata if "/c/" in key and key.split("/")[0] in sharded]
    assert all(
        any(cid is not None for cid in a.shard_cids)
        for a in core.arrays.values()
        if a.path in sharded or version == "sharded_zarr_v1"
    )


@pytest.mark.parametrize("version", VERSIONS)
async def test_append_dim_grows_index(cas: ContentAddressedStore, version: str) -> None:
    first, second = sample_dataset(8), sample_dataset(8, start="2020-01-09", seed=8)
    store = await new_store(cas, version)
    await to_zarr(first, store, mode="w", zarr_format=3, encoding=encoding(first))
    root = await store.flush()
    store = await ShardedZarrStore.open(cas=cas, read_only=False, root_cid=root)
    await to_zarr(second, store, append_dim="time")
    root = await store.flush()
    back = await reopen(cas, root)
    # Variables without a time dimension are overwritten by the append; the rest grow.
    timed = ["temp", "precip"]
    expected = xr.concat([d[timed].drop_vars("elevation") for d in (first, second)], dim="time")
    xr.testing.assert_identical(back[timed].drop_vars("elevation"), expected)
    xr.testing.assert_identical(back["mask"], second["mask"])
    core = store._core
    assert core is not None
    temp = core.arrays["" if version == "sharded_zarr_v1" else "temp"]
    assert temp.shape == (16, 6, 8)
    assert len(temp.shard_cids) == temp.num_shards == 6  # 4*2*2 chunks, 3 per shard (was 3)


@pytest.mark.parametrize("version", VERSIONS)
async def test_region_write_and_lazy_read(cas: ContentAddressedStore, version: str) -> None:
    ds = sample_dataset()
    store = await new_store(cas, version)
    await to_zarr(ds, store, mode="w", zarr_format=3, encoding=encoding(ds), compute=False)
    # Two disjoint regions written concurrently, from two threads.
    halves = [slice(0, 4), slice(4, 8)]
    part = ds[["temp", "precip"]].drop_vars(["elevation", "lat", "lon"])
    async with anyio.create_task_group() as tg:
        for region in halves:
            tg.start_soon(
                functools.partial(to_zarr, part.isel(time=region), store, region={"time": region})
            )
    root = await store.flush()
    lazy = await reopen(cas, root, load=False)
    assert lazy["temp"].chunks is not None  # dask-backed, nothing loaded yet
    loaded = await anyio.to_thread.run_sync(lazy.load)
    xr.testing.assert_identical(loaded[["temp", "precip"]], ds[["temp", "precip"]])
