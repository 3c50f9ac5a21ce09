"""``ShardedZarrStore`` on a real Kubo daemon: xarray datasets in both formats written with
one ``KuboCAS`` and read back cold with another (every shard and chunk fetched from the
gateway), appends, lazy reads, and the same root as the same content written offline."""

from __future__ import annotations

import functools
import pickle
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
import xarray as xr
from _zarr_datasets import CHUNKS, CONSOLIDATED_V3_WARNING, encoding, sample_dataset

from anyhamt import KuboCAS, LocalCAS
from anyhamt.zarr import ShardedZarrStore

from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyhamt.cas import ContentAddressedStore

    from ._daemon import KuboDaemon

pytestmark = [pytest.mark.kubo, CONSOLIDATED_V3_WARNING]

VERSIONS = ["sharded_zarr_v1", "sharded_zarr_v2"]


@pytest.fixture
async def reader_cas(kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
    """A second client: reads go to the gateway cold, nothing shared with the writer."""
    async with cas_for(kubo_daemon) as cas:
        yield cas


async def write(cas: ContentAddressedStore, ds: xr.Dataset, version: str, **kwargs: Any) -> Any:
    if version == "sharded_zarr_v1":
        geometry: dict[str, Any] = {"array_shape": (8, 6, 8), "chunk_shape": CHUNKS}
    else:
        geometry = {}
    store = await ShardedZarrStore.open(
        cas=cas, read_only=False, chunks_per_shard=3, manifest_version=version, **geometry
    )
    await anyio.to_thread.run_sync(
        functools.partial(ds.to_zarr, store=store, mode="w", zarr_format=3, **kwargs)
    )
    return await store.flush()


async def read(cas: ContentAddressedStore, root: Any, *, load: bool = True) -> xr.Dataset:
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)

    def open_it() -> xr.Dataset:
        ds: xr.Dataset = xr.open_zarr(store)
        return ds.load() if load else ds

    return await anyio.to_thread.run_sync(open_it)


@pytest.mark.parametrize("version", VERSIONS)
async def test_roundtrip_cold_reader(kubo_cas: KuboCAS, reader_cas: KuboCAS, version: str) -> None:
    ds = sample_dataset()
    root = await write(kubo_cas, ds, version, encoding=encoding(ds))
    assert isinstance(root, str) and root.startswith("bafyr4i")
    lazy = await read(reader_cas, root, load=False)
    assert lazy["temp"].chunks is not None
    xr.testing.assert_identical(await anyio.to_thread.run_sync(lazy.load), ds)


@pytest.mark.parametrize("version", VERSIONS)
async def test_append_and_pickled_reader(
    kubo_cas: KuboCAS, reader_cas: KuboCAS, version: str
) -> None:
    first, second = sample_dataset(8), sample_dataset(8, start="2020-01-09", seed=8)
    root = await write(kubo_cas, first, version, encoding=encoding(first))
    store = await ShardedZarrStore.open(cas=kubo_cas, read_only=False, root_cid=root)
    await anyio.to_thread.run_sync(
        functools.partial(second.to_zarr, store=store, append_dim="time")
    )
    root = await store.flush()
    reader = await ShardedZarrStore.open(cas=reader_cas, read_only=True, root_cid=root)
    copy = pickle.loads(pickle.dumps(reader))  # as dask ships it to a worker
    back = await anyio.to_thread.run_sync(lambda: xr.open_zarr(copy).load())
    assert back.sizes["time"] == 16
    xr.testing.assert_identical(back["temp"].isel(time=slice(8, 16)), second["temp"])


async def test_same_root_as_written_offline(kubo_cas: KuboCAS, tmp_path: Path) -> None:
    ds = sample_dataset()
    kwargs = {"encoding": encoding(ds), "consolidated": False}
    on_kubo = await write(kubo_cas, ds, "sharded_zarr_v2", **kwargs)
    async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
        offline = await write(local, ds, "sharded_zarr_v2", **kwargs)
    assert offline == on_kubo
