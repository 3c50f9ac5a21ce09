"""The Zarr stores on a real Kubo daemon: zarr's conformance suite, and the loop patterns.

On KuboCAS every load goes through an httpx client of the loop it runs on, so this is where
the sniffio leak of a trio program calling zarr's sync API directly broke every read
(tests/zarr/test_loop_patterns.py has the other stores).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import dask
import distributed
import numpy as np
import pytest
import xarray as xr
from zarr.core.buffer import cpu
from zarr.testing.store import StoreTests

from anyhamt import HAMT, KuboCAS, LoopBlockedError
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from zarr.core.buffer import Buffer

    from ._daemon import KuboDaemon

pytestmark = [
    pytest.mark.kubo,
    # xarray writes consolidated metadata by default and zarr warns that it is not (yet) in
    # the v3 spec: a notice about the format, not something under test here.
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning"),
]


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # zarr's StoreTests call asyncio directly
class TestZarrHAMTStoreOnKubo(StoreTests[ZarrHAMTStore, cpu.Buffer]):
    store_cls = ZarrHAMTStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    async def store_kwargs(self, kubo_cas: KuboCAS) -> AsyncIterator[dict[str, Any]]:
        yield {"hamt": HAMT(kubo_cas, values_are_bytes=True), "read_only": False}

    async def set(self, store: ZarrHAMTStore, key: str, value: Buffer) -> None:
        await store.hamt.set(key, value.to_bytes())

    async def get(self, store: ZarrHAMTStore, key: str) -> cpu.Buffer:
        return self.buffer_cls.from_bytes(await store.hamt.get(key))

    def test_store_repr(self, store: ZarrHAMTStore) -> None:
        assert repr(store).startswith("ZarrHAMTStore('hamt://")

    def test_store_supports_writes(self, store: ZarrHAMTStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrHAMTStore) -> None:
        assert store.supports_listing


def dataset(big: bool) -> Any:
    rng = np.random.default_rng(11)
    if big:  # 1.5 MiB incompressible chunks: Kubo stores each as a UnixFS file
        return xr.Dataset(
            {"big": (("time", "x"), rng.random((3, 196_608)))}, coords={"time": np.arange(3)}
        ).chunk({"time": 1})
    return xr.Dataset(
        {
            "temp": (("time", "lat"), rng.random((24, 10), dtype="float32")),
            "prec": (("time", "lat"), rng.random((24, 10))),
        },
        coords={"time": np.arange(24), "lat": np.linspace(-45.0, 45.0, 10)},
        attrs={"title": "kubo"},
    ).chunk({"time": 6})


async def reopen(cas: KuboCAS, hamt: HAMT) -> HAMT:
    await hamt.make_read_only()
    return await HAMT.build(
        cas=cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
    )


def write(ds: Any, store: ZarrHAMTStore) -> None:
    ds.to_zarr(store=store, mode="w", zarr_format=3)


def read(store: ZarrHAMTStore) -> Any:
    return xr.open_zarr(store=store, consolidated=False).load()


@pytest.mark.parametrize("big", [False, True], ids=["small", "over-a-mib"])
async def test_documented_pattern_off_the_loop_thread(kubo_cas: KuboCAS, big: bool) -> None:
    ds = dataset(big)
    hamt = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    await anyio.to_thread.run_sync(write, ds, ZarrHAMTStore(hamt))
    reader = ZarrHAMTStore(await reopen(kubo_cas, hamt), read_only=True)
    xr.testing.assert_identical(await anyio.to_thread.run_sync(read, reader), ds.load())


@pytest.mark.parametrize("big", [False, True], ids=["small", "over-a-mib"])
async def test_direct_calls_on_the_loop_thread(kubo_cas: KuboCAS, big: bool) -> None:
    # py-hamt's pattern; on trio the stores repair the sniffio context zarr's thread inherits.
    ds = dataset(big)
    hamt = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    write(ds, ZarrHAMTStore(hamt))
    reader = ZarrHAMTStore(await reopen(kubo_cas, hamt), read_only=True)
    xr.testing.assert_identical(read(reader), ds.load())
    lazy = xr.open_zarr(store=ZarrHAMTStore(await reopen(kubo_cas, hamt), read_only=True))
    name = next(iter(ds.data_vars))
    assert float(lazy[name].sum().compute()) == pytest.approx(float(ds[name].sum().compute()))


async def test_direct_calls_encrypted(kubo_cas: KuboCAS) -> None:
    ds = dataset(False)
    key, header = bytes(range(32)), b"kubo"
    hamt = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    write(ds, SimpleEncryptedZarrHAMTStore(hamt, False, key, header))
    reader = SimpleEncryptedZarrHAMTStore(await reopen(kubo_cas, hamt), True, key, header)
    xr.testing.assert_identical(read(reader), ds.load())


async def test_direct_call_with_the_lock_held_on_this_loop_fails_fast(kubo_cas: KuboCAS) -> None:
    hamt = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    await hamt._lock.acquire()  # another task of this loop, mid-write
    try:
        with pytest.raises(LoopBlockedError, match=r"anyio\.to_thread\.run_sync"):
            write(dataset(False), ZarrHAMTStore(hamt))
    finally:
        hamt._lock.release()


async def test_one_store_from_two_loops_at_once(kubo_daemon: KuboDaemon) -> None:
    """A read-only store used by this loop and, at the same time, by zarr's thread."""
    async with cas_for(kubo_daemon) as cas:
        ds = dataset(False)
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await anyio.to_thread.run_sync(write, ds, ZarrHAMTStore(hamt))
        store = ZarrHAMTStore(await reopen(cas, hamt), read_only=True)
        results: list[Any] = []

        async def on_zarrs_thread() -> None:
            results.append(await anyio.to_thread.run_sync(read, store))

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_zarrs_thread)
            keys = [key async for key in store.list_prefix("temp/c/")]
        assert keys == [f"temp/c/{i}/0" for i in range(4)]
        xr.testing.assert_identical(results[0], ds.load())


@pytest.fixture(scope="module")
def dask_client() -> Any:
    """Two worker processes: the store reaches them only through pickle."""
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


async def test_dask_workers_read_a_read_only_store(
    dask_client: Any, kubo_daemon: KuboDaemon
) -> None:
    # Credentials travel only when configured; these are harmless, and must arrive.
    async with cas_for(
        kubo_daemon,
        headers={"X-Anyhamt-Test": "1"},
    ) as cas:
        ds = dataset(False)
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await anyio.to_thread.run_sync(
            lambda: ds.to_zarr(store=ZarrHAMTStore(hamt), mode="w", compute=False).compute(
                scheduler="threads"
            )
        )
        store = ZarrHAMTStore(await reopen(cas, hamt), read_only=True)

        def on_cluster() -> dict[str, float]:
            lazy = xr.open_zarr(store=store)
            futures = dask_client.compute({n: lazy[n].sum() for n in lazy.data_vars})
            # A hang guard, not a performance bound: should the workers die, fail.
            distributed.wait(futures, timeout=600)  # type: ignore[no-untyped-call]
            totals = dask_client.gather(futures)
            return {name: float(total) for name, total in totals.items()}

        totals = await anyio.to_thread.run_sync(on_cluster)
        assert totals == pytest.approx({n: float(ds[n].sum()) for n in ds.data_vars})
        seen = dask_client.run(_worker_kubo_settings)
        assert len(seen) == 2
        expected = (kubo_daemon.rpc_url.rstrip("/"), {"X-Anyhamt-Test": "1"})
        assert any(seen.values())  # the workers reopened the store themselves
        for settings in seen.values():
            assert all(reopened == expected for reopened in settings)


def _worker_kubo_settings() -> list[tuple[str, dict[str, str]]]:
    from anyhamt.zarr import _state

    return [
        (hamt.cas.rpc_base_url.removesuffix("/api/v0").rstrip("/"), hamt.cas._headers)
        for hamt in _state._reopened.values()
        if isinstance(hamt.cas, KuboCAS)
    ]
