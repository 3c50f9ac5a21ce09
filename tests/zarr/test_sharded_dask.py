"""A read-only ``ShardedZarrStore`` under dask.distributed with worker *processes*: the
store pickles to what reopens it (the block store's configuration and the root), and the
workers reopen it and read what a local read gives."""

from __future__ import annotations

import functools
import os
import pickle
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
import xarray as xr
from _zarr_datasets import CONSOLIDATED_V3_WARNING, encoding, require, sample_dataset

from anyhamt import LocalCAS
from anyhamt.zarr import ShardedZarrStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = CONSOLIDATED_V3_WARNING


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    dask = require("dask")
    distributed = require("distributed")
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            host="127.0.0.1",
        )
    try:
        with distributed.Client(cluster, set_as_default=False) as dask_client:
            yield dask_client
    finally:
        cluster.close()


@pytest.mark.parametrize("version", ["sharded_zarr_v1", "sharded_zarr_v2"])
async def test_read_only_store_reads_in_worker_processes(
    client: Any, tmp_path: Path, version: str
) -> None:
    ds = sample_dataset()
    geometry: dict[str, Any] = {}
    if version == "sharded_zarr_v1":
        geometry = {"array_shape": (8, 6, 8), "chunk_shape": (4, 3, 4)}
    async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
        writer = await ShardedZarrStore.open(
            cas=cas, read_only=False, chunks_per_shard=3, manifest_version=version, **geometry
        )
        await anyio.to_thread.run_sync(
            functools.partial(
                ds.to_zarr, store=writer, mode="w", zarr_format=3, encoding=encoding(ds)
            )
        )
        root = await writer.flush()
        await cas.flush()
        reader = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
        payload = pickle.dumps(reader)
        assert len(payload) < 4096  # the store's settings and the root, no live client
        lazy = await anyio.to_thread.run_sync(lambda: xr.open_zarr(reader))
        pids = set(client.run(os.getpid).values())
        assert os.getpid() not in pids and len(pids) == 2
        remote = await anyio.to_thread.run_sync(lambda: lazy.compute(scheduler=client))
        xr.testing.assert_identical(remote, ds)
