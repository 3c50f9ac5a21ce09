"""Zarr HAMT stores under dask.distributed, with worker *processes*.

One ``LocalCluster(processes=True, n_workers=2)`` serves the module (starting one costs
seconds on a loaded machine). It is never the default scheduler: each compute names it,
so nothing leaks into other tests. Everything a worker gets from us goes through pickle.

* A store over a read-only HAMT pickles to what reopens it (the block store's
  configuration and the root); the workers reopen it and read. Results equal a local read,
  from ``InMemoryCAS``, ``LocalCAS`` and a real Kubo daemon.
* A store over a *writable* HAMT cannot be written from another process: the copy there
  cannot reach the original HAMT's buffered writes. It must refuse with a typed error that
  names the fix (``DetachedStoreError``) instead of writing chunks into copies nobody
  flushes, which is how py-hamt loses them under ``LocalCluster``; and no chunk may be
  lost: the same write then succeeds with the threaded scheduler and every chunk is there.
* The block stores themselves pickle to their configuration, never a live connection.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
import xarray as xr
from _ci import on_ci
from _zarr_datasets import (
    CHUNKS,
    CONSOLIDATED_V3_WARNING,
    encoding,
    encrypted_store,
    open_dataset,
    plain_store,
    require,
    sample_dataset,
    write_dataset,
)

from anyhamt import HAMT, DetachedStoreError, KuboCAS, LocalCAS
from anyhamt.zarr import ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _zarr_datasets import StoreFactory
    from kubo._daemon import KuboDaemon

    from anyhamt import ContentAddressedStore

pytestmark = CONSOLIDATED_V3_WARNING


STORES = [
    pytest.param(plain_store, id="plain"),
    pytest.param(encrypted_store, id="encrypted"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    dask = require("dask")
    distributed = require("distributed")
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            # A free port: None still means distributed's default 8787, which another
            # cluster on the machine (a second test run, a user's notebook) may hold.
            dashboard_address=":0",
            host="127.0.0.1",
        )
    try:
        with distributed.Client(cluster, set_as_default=False) as dask_client:
            yield dask_client
    finally:
        cluster.close()


def compute_on(dask_client: Any, work: Any) -> Any:
    """``work`` computed on the cluster (not the default scheduler: it is never set).

    If the worker processes die (killed, or out of memory) the scheduler waits for new ones
    for ever; the suite's per-test timeout turns that into a failure.
    """
    return dask_client.gather(dask_client.compute(work))


def worker_pids(dask_client: Any) -> set[int]:
    import os

    return set(dask_client.run(os.getpid).values())


async def compute_on_workers(dask_client: Any, lazy: xr.Dataset) -> xr.Dataset:
    """Compute ``lazy`` on the cluster; check that the workers, not this process, read."""
    import os

    pids = worker_pids(dask_client)
    assert os.getpid() not in pids and len(pids) == 2
    return await anyio.to_thread.run_sync(lambda: lazy.compute(scheduler=dask_client))


def pickled_modules(payload: bytes) -> set[str]:
    """The top-level packages whose classes or functions ``payload`` refers to."""
    found: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add(module.partition(".")[0])
            return super().find_class(module, name)

    Recording(io.BytesIO(payload)).load()
    return found


async def check_distributed_read(
    dask_client: Any, cas: ContentAddressedStore, root: Any, factory: StoreFactory
) -> None:
    # What each task carries: the block store's settings and the root, no live client.
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    payload = pickle.dumps(factory(hamt, True))
    assert len(payload) < 4096
    assert pickled_modules(payload) <= {"anyhamt"}
    local = await open_dataset(cas, root, factory, consolidated=True)
    lazy = await open_dataset(cas, root, factory, consolidated=True, load=False)
    assert lazy["temp"].chunks is not None  # dask-backed: the reads happen in the tasks
    remote = await compute_on_workers(dask_client, lazy)
    xr.testing.assert_identical(remote, local)
    # A reduction across chunks, on the workers, equals the same one computed here.
    mean = await anyio.to_thread.run_sync(
        lambda: lazy["temp"].mean("time").compute(scheduler=dask_client)
    )
    same_chunks = local["temp"].chunk(dict(zip(("time", "lat", "lon"), CHUNKS, strict=True)))
    xr.testing.assert_identical(mean, same_chunks.mean("time"))


@pytest.mark.parametrize("factory", STORES)
async def test_read_only_store_on_local_cas_reads_in_worker_processes(
    client: Any, tmp_path: Path, factory: StoreFactory
) -> None:
    ds = sample_dataset()
    path = tmp_path / "blocks.sqlite3"
    async with LocalCAS(path) as cas:
        root = await write_dataset(
            cas, ds, factory, mode="w", encoding=encoding(ds), consolidated=True
        )
    async with LocalCAS(path, read_only=True) as cas:
        await check_distributed_read(client, cas, root, factory)


async def test_pickled_read_only_store_reopens_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What a worker gets: the pickle alone reopens the store; no live connection in it."""
    ds = sample_dataset()
    path = tmp_path / "blocks.sqlite3"
    async with LocalCAS(path) as cas:
        root = await write_dataset(cas, ds, mode="w", consolidated=True)
    async with LocalCAS(path, read_only=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        payload = pickle.dumps(ZarrHAMTStore(hamt, read_only=True))
    script = (
        "import pickle, sys, xarray\n"
        "store = pickle.loads(sys.stdin.buffer.read())\n"
        "assert store.read_only\n"
        "print(float(xarray.open_zarr(store, consolidated=True)['temp'].sum()))\n"
    )
    done = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-W", "ignore", "-c", script],
            input=payload,
            capture_output=True,
            check=False,
            timeout=300,
        )
    )
    assert done.returncode == 0, done.stderr.decode()
    assert float(done.stdout) == pytest.approx(float(ds["temp"].sum()), rel=1e-6)


@pytest.mark.parametrize("factory", STORES)
async def test_read_only_store_on_memory_or_local_cas_is_reopened_by_the_workers(
    client: Any, memory_or_local_cas: ContentAddressedStore, factory: StoreFactory
) -> None:
    cas = memory_or_local_cas
    ds = sample_dataset().chunk(dict(zip(("time", "lat", "lon"), CHUNKS, strict=True)))
    # The threaded scheduler writes in this process, into this HAMT.
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    writer = factory(hamt, False)
    pending: Any = await anyio.to_thread.run_sync(  # a dask Delayed (untyped)
        lambda: ds.to_zarr(store=writer, mode="w", compute=False)
    )
    await anyio.to_thread.run_sync(lambda: pending.compute(scheduler="threads"))
    await hamt.make_read_only()
    store = factory(hamt, True)

    def read_on_cluster() -> tuple[dict[str, float], xr.Dataset]:
        lazy = xr.open_zarr(store=store)
        totals = {name: lazy[name].sum() for name in lazy.data_vars}
        computed = compute_on(client, totals)
        return {k: float(v) for k, v in computed.items()}, lazy.load(scheduler="threads")

    on_cluster, here = await anyio.to_thread.run_sync(read_on_cluster)
    assert on_cluster == pytest.approx({name: float(here[name].sum()) for name in here.data_vars})
    xr.testing.assert_identical(here, ds.load())
    # The workers really did the reads, each from a store it reopened.
    reopened = client.run(_hamts_reopened_here)
    assert len(reopened) == 2 and any(reopened.values())


def _hamts_reopened_here() -> int:
    from anyhamt.zarr import _state

    return len(_state._reopened)


@pytest.mark.parametrize("factory", STORES)
async def test_writable_store_in_worker_processes_refuses_and_loses_nothing(
    client: Any, memory_or_local_cas: ContentAddressedStore, factory: StoreFactory
) -> None:
    cas = memory_or_local_cas
    ds = sample_dataset().chunk(dict(zip(("time", "lat", "lon"), CHUNKS, strict=True)))
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    store = factory(hamt, False)
    # Metadata (and the numpy-backed variables) are written here; the dask-backed chunks
    # become tasks, each holding a pickled copy of the writable store.
    pending: Any = await anyio.to_thread.run_sync(  # a dask Delayed (untyped)
        lambda: ds.to_zarr(store=store, mode="w", compute=False, consolidated=True)
    )
    before = sorted([key async for key in hamt.keys()])

    with pytest.raises(DetachedStoreError, match="threaded scheduler"):
        await anyio.to_thread.run_sync(lambda: compute_on(client, pending))
    # Refused, not half-done elsewhere: the HAMT is as it was.
    assert sorted([key async for key in hamt.keys()]) == before

    # The fix the error names: the same write with the threaded scheduler.
    await anyio.to_thread.run_sync(lambda: pending.compute(scheduler="threads"))
    await hamt.make_read_only()
    chunk_keys = [key async for key in hamt.keys() if key.startswith(("temp/c/", "precip/c/"))]
    assert len(chunk_keys) == 2 * 2 * 2 * 2  # two variables, two chunks along each axis
    back = await open_dataset(cas, hamt.root_node_id, factory)
    xr.testing.assert_identical(back, ds.compute())


# -- the block stores pickle to their configuration ------------------------------------------


def test_kubo_cas_pickles_to_its_configuration() -> None:
    import httpx

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
    root = "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc3m"  # the empty node
    hamt = HAMT(KuboCAS(), root_node_id=root, read_only=True, values_are_bytes=True)
    store = ZarrHAMTStore(hamt, read_only=True)
    data = pickle.dumps(store)
    for live in (b"threading", b"httpx", b"_thread"):  # no lock, client or pool
        assert live not in data
    assert pickle.loads(data) == store


async def test_local_cas_pickles_to_its_path_and_mode(tmp_path: Path) -> None:
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


# -- the real Kubo daemon ------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubo_daemon() -> Iterator[KuboDaemon]:
    """A daemon of this module's own (tests/kubo's fixtures are scoped to that package)."""
    from kubo._daemon import KuboDaemon, find_kubo_binary

    binary = find_kubo_binary()
    if binary is None:
        message = "no Kubo binary: run scripts/install-kubo.sh or set ANYHAMT_KUBO_BIN"
        if on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with KuboDaemon(binary) as daemon:
        yield daemon


@pytest.mark.kubo
@pytest.mark.parametrize("factory", STORES)
async def test_read_only_store_on_kubo_reads_in_worker_processes(
    client: Any, kubo_daemon: KuboDaemon, factory: StoreFactory
) -> None:
    ds = sample_dataset()

    def kubo() -> KuboCAS:
        return KuboCAS(rpc_base_url=kubo_daemon.rpc_url, gateway_base_url=kubo_daemon.gateway_url)

    async with kubo() as cas:
        root = await write_dataset(
            cas, ds, factory, mode="w", encoding=encoding(ds), consolidated=True
        )
    async with kubo() as cas:
        await check_distributed_read(client, cas, root, factory)
