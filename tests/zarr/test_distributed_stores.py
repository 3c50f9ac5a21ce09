"""Zarr stores sent to dask.distributed worker processes.

A read-only store pickles to what reopens it (root, the block store's configuration) and
reads in the workers; a writable store's HAMT cannot be reached from another process, so
the workers' copies refuse to write (``DetachedStoreError``) instead of writing chunks into
copies nobody flushes, which is how py-hamt loses them under ``LocalCluster``. Kubo is in
tests/kubo/test_kubo_zarr_store.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import dask
import distributed
import numpy as np
import pytest
import xarray as xr

from anyhamt import HAMT, DetachedStoreError, InMemoryCAS, LocalCAS
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from anyhamt import ContentAddressedStore

pytestmark = pytest.mark.filterwarnings(
    # xarray writes consolidated metadata by default; zarr notes it is not (yet) in the spec.
    "ignore:Consolidated metadata is currently not part:UserWarning"
)

KEY, HEADER = bytes(range(32)), b"distributed"
# A hang guard, not a performance bound: if the worker processes die (killed, or out of
# memory) the scheduler would wait for new ones for ever; fail the test instead.
HANG_GUARD = 600.0


def compute_on(client: Any, work: Any) -> Any:
    """``client.compute(work)``, waiting at most HANG_GUARD seconds."""
    futures = client.compute(work)
    distributed.wait(futures, timeout=HANG_GUARD)
    return client.gather(futures)


def dataset() -> Any:
    rng = np.random.default_rng(3)
    return xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), rng.random((20, 8, 12), dtype="float32")),
            "prec": (("time", "lat"), rng.random((20, 8))),
        },
        coords={"time": np.arange(20), "lat": np.arange(8.0), "lon": np.arange(12.0)},
        attrs={"source": "test"},
    ).chunk({"time": 5})


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes: everything they get from us goes through pickle."""
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture(params=["memory", "local"])
async def cas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryCAS()
        return
    async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
        yield local


def make_store(hamt: HAMT, read_only: bool, encrypted: bool) -> ZarrHAMTStore:
    if encrypted:
        return SimpleEncryptedZarrHAMTStore(hamt, read_only, KEY, HEADER)
    return ZarrHAMTStore(hamt, read_only=read_only)


async def written(cas: ContentAddressedStore, encrypted: bool) -> HAMT:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    store = make_store(hamt, False, encrypted)
    ds = dataset()
    # No distributed client is the default scheduler inside this helper's thread: writes
    # run on dask's threaded scheduler, in this process, into this HAMT.
    await anyio.to_thread.run_sync(
        lambda: ds.to_zarr(store=store, mode="w", zarr_format=3, compute=False).compute(
            scheduler="threads"
        )
    )
    await hamt.make_read_only()
    return hamt


def summary(ds: Any) -> dict[str, float]:
    return {name: float(ds[name].sum()) for name in ds.data_vars}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_workers_read_a_read_only_store(
    client: Any, cas: ContentAddressedStore, encrypted: bool
) -> None:
    hamt = await written(cas, encrypted)
    store = make_store(hamt, True, encrypted)

    def read_on_cluster() -> tuple[dict[str, float], Any]:
        lazy = xr.open_zarr(store=store)
        totals = {name: lazy[name].sum() for name in lazy.data_vars}
        computed = compute_on(client, totals)
        return {k: float(v) for k, v in computed.items()}, lazy.load(scheduler="threads")

    on_cluster, local = await anyio.to_thread.run_sync(read_on_cluster)
    assert on_cluster == pytest.approx(summary(local))
    xr.testing.assert_identical(local, dataset().load())
    # The workers really did the reads, each from a store it reopened.
    reopened = client.run(_hamts_reopened_here)
    assert len(reopened) == 2 and any(reopened.values())


def _hamts_reopened_here() -> int:
    from anyhamt.zarr import _state

    return len(_state._reopened)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_writable_store_refuses_to_write_from_workers(
    client: Any, cas: ContentAddressedStore, encrypted: bool
) -> None:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    store = make_store(hamt, False, encrypted)
    ds = dataset()

    def write_on_cluster() -> None:
        # Metadata is written here; the chunk writes are tasks the workers run.
        compute_on(client, ds.to_zarr(store=store, mode="w", zarr_format=3, compute=False))

    with pytest.raises(DetachedStoreError, match="threaded scheduler"):
        await anyio.to_thread.run_sync(write_on_cluster)

    # The documented fix: the same write on the threaded scheduler; no chunk is lost.
    await anyio.to_thread.run_sync(
        lambda: ds.to_zarr(store=store, mode="w", zarr_format=3, compute=False).compute(
            scheduler="threads"
        )
    )
    await hamt.make_read_only()
    back = await anyio.to_thread.run_sync(
        lambda: xr.open_zarr(store=make_store(hamt, True, encrypted)).load(scheduler="threads")
    )
    xr.testing.assert_identical(back, ds.load())


def test_kubo_cas_pickles_to_its_configuration() -> None:
    import pickle

    import httpx

    from anyhamt import KuboCAS

    cas = KuboCAS(
        rpc_base_url="http://127.0.0.1:5999",
        gateway_base_urls=["http://127.0.0.1:8999", "http://127.0.0.2:8999"],
        headers={"Authorization": "Bearer t"},
        concurrency=7,
        chunker="size-4096",
        timeout=12.5,
        verify=False,
    )
    copy = pickle.loads(pickle.dumps(cas))
    assert copy is not cas and repr(copy) == repr(cas)
    assert copy._headers == {"Authorization": "Bearer t"}
    assert (copy.concurrency, copy.chunk_size, copy.verify) == (7, 4096, False)
    assert copy._timeout == httpx.Timeout(12.5)
    assert copy._loops == {} and copy._pending == {}  # nothing live came along
    # A client passed in stays behind; its credentials travel, its timeouts too.
    client = httpx.AsyncClient(headers={"X-Key": "k"}, timeout=httpx.Timeout(3.0, connect=1.0))
    copy = pickle.loads(pickle.dumps(KuboCAS(client=client)))
    assert copy._client is None and copy._headers["X-Key"] == "k"
    assert copy._timeout == httpx.Timeout(3.0, connect=1.0)


def test_read_only_store_on_kubo_pickles_without_a_daemon() -> None:
    import pickle

    from anyhamt import KuboCAS

    root = "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc3m"  # the empty node
    hamt = HAMT(KuboCAS(), root_node_id=root, read_only=True, values_are_bytes=True)
    store = ZarrHAMTStore(hamt, read_only=True)
    data = pickle.dumps(store)
    for live in (b"threading", b"httpx", b"_thread"):  # no lock, client or pool
        assert live not in data
    assert pickle.loads(data) == store


async def test_local_cas_pickles_to_its_path_and_mode(tmp_path: Path) -> None:
    import pickle

    async with LocalCAS(tmp_path / "b.sqlite3", verify=False, chunk_size=4096) as cas:
        link = await cas.save(b"block", "raw")
        await cas.flush()
        data = pickle.dumps(cas)
        assert b"_thread" not in data and b"sqlite3.Connection" not in data
        async with pickle.loads(data) as copy:
            assert repr(copy) == repr(cas)
            assert (copy.verify, copy.chunk_size, copy.read_only) == (False, 4096, False)
            assert await copy.load(link) == b"block"
    async with (
        LocalCAS(tmp_path / "b.sqlite3", read_only=True) as reader,
        pickle.loads(pickle.dumps(reader)) as copy,
    ):
        assert copy.read_only
