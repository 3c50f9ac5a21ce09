"""The Zarr stores from trio and asyncio applications: the patterns that must work, and the
one that cannot (a deadlock) failing fast with a typed error instead of hanging.

zarr's synchronous API (xarray's ``to_zarr``/``open_zarr``) runs store coroutines on zarr's
own asyncio thread. Called directly from a trio program it also copies sniffio's "trio"
into that thread (see anyhamt/_loops.py), which breaks every anyio call there unless the
stores and the HAMT repair it on entry. The cases below are exactly the ones where that
leak showed: LocalCAS values over 1 MiB, walks of a deep read-only map, a contended HAMT
lock, and dask computations started on the trio thread. KuboCAS is covered in
tests/kubo/test_kubo_zarr_store.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import xarray as xr

from anyhamt import HAMT, InMemoryCAS, LoopBlockedError
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from anyhamt import ContentAddressedStore

# xarray writes consolidated metadata by default, and zarr warns that it is not (yet) part of
# the v3 spec; that is zarr's notice about the format, not something these tests exercise.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Consolidated metadata is currently not part:UserWarning"
)


def small_dataset() -> Any:
    rng = np.random.default_rng(7)
    return xr.Dataset(
        {
            "temp": (("time", "lat"), rng.random((24, 10), dtype="float32")),
            "prec": (("time", "lat"), rng.random((24, 10))),
        },
        coords={"time": np.arange(24), "lat": np.linspace(-45.0, 45.0, 10)},
        attrs={"title": "loop patterns"},
    ).chunk({"time": 6})


def big_chunk_dataset() -> Any:
    """Chunks of 1.5 MiB of random float64 (incompressible): each is a UnixFS file."""
    rng = np.random.default_rng(8)
    return xr.Dataset(
        {"big": (("time", "x"), rng.random((4, 196_608)))},
        coords={"time": np.arange(4)},
    ).chunk({"time": 1})


def many_chunk_dataset() -> Any:
    """Over 1,000 chunks, so the HAMT is more than one level deep."""
    rng = np.random.default_rng(9)
    return xr.Dataset(
        {"v": (("y", "x"), rng.random((32, 32), dtype="float32"))},
    ).chunk({"y": 1, "x": 1})


async def reopen(hamt: HAMT) -> HAMT:
    """A fresh read-only HAMT at ``hamt``'s root: nothing cached, every node loaded again."""
    await hamt.make_read_only()
    return await HAMT.build(
        cas=hamt.cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
    )


def write(ds: Any, store: ZarrHAMTStore) -> None:
    ds.to_zarr(store=store, mode="w", zarr_format=3)


def read(store: ZarrHAMTStore, consolidated: bool | None = None) -> Any:
    # consolidated=False makes zarr list the group (list_dir), walking the whole map.
    return xr.open_zarr(store=store, consolidated=consolidated).load()


async def round_trip_off_thread(cas: ContentAddressedStore, ds: Any) -> None:
    """The README's pattern: build the HAMT on the loop, call zarr's sync API off it."""
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    await anyio.to_thread.run_sync(write, ds, ZarrHAMTStore(hamt))
    reader = ZarrHAMTStore(await reopen(hamt), read_only=True)
    back = await anyio.to_thread.run_sync(read, reader, False)
    xr.testing.assert_identical(back, ds.load())


async def round_trip_directly(cas: ContentAddressedStore, ds: Any) -> None:
    """py-hamt's documented pattern: zarr's sync API called on the loop thread itself."""
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    write(ds, ZarrHAMTStore(hamt))
    reader = ZarrHAMTStore(await reopen(hamt), read_only=True)
    xr.testing.assert_identical(read(reader, consolidated=False), ds.load())
    # Lazily, through dask's threaded scheduler (which copies the caller's context too).
    lazy = xr.open_zarr(store=ZarrHAMTStore(await reopen(hamt), read_only=True))
    assert float(lazy[next(iter(ds.data_vars))].mean().compute()) == pytest.approx(
        float(ds[next(iter(ds.data_vars))].mean().compute())
    )


async def test_documented_pattern_off_the_loop_thread(
    memory_or_local_cas: ContentAddressedStore,
) -> None:
    await round_trip_off_thread(memory_or_local_cas, small_dataset())


async def test_documented_pattern_with_values_over_a_mib(
    memory_or_local_cas: ContentAddressedStore,
) -> None:
    await round_trip_off_thread(memory_or_local_cas, big_chunk_dataset())


async def test_direct_calls_small_dataset(memory_or_local_cas: ContentAddressedStore) -> None:
    await round_trip_directly(memory_or_local_cas, small_dataset())


async def test_direct_calls_with_values_over_a_mib(
    memory_or_local_cas: ContentAddressedStore,
) -> None:
    # On LocalCAS each chunk is a UnixFS file; its save and load go through anyio threads.
    await round_trip_directly(memory_or_local_cas, big_chunk_dataset())


async def test_direct_calls_on_a_deep_read_only_map(
    memory_or_local_cas: ContentAddressedStore,
) -> None:
    # Listing walks every level of the map with an anyio task group on zarr's thread.
    await round_trip_directly(memory_or_local_cas, many_chunk_dataset())


async def test_direct_calls_encrypted(memory_or_local_cas: ContentAddressedStore) -> None:
    ds = small_dataset()
    key, header = bytes(range(32)), b"loops"
    hamt = await HAMT.build(cas=memory_or_local_cas, values_are_bytes=True)
    ds.to_zarr(store=SimpleEncryptedZarrHAMTStore(hamt, False, key, header), mode="w")
    reader = SimpleEncryptedZarrHAMTStore(await reopen(hamt), True, key, header)
    xr.testing.assert_identical(read(reader, consolidated=False), ds.load())


async def test_direct_call_while_the_loop_holds_the_hamt_lock_fails_fast() -> None:
    """The one pattern that cannot work: the store needs a lock a task of the blocked loop
    holds. It must raise LoopBlockedError naming the fix, never hang (and on trio it must be
    that typed error, not the RuntimeError a leaked sniffio turns it into)."""
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    store = ZarrHAMTStore(hamt)
    # Stands for another task of this loop in the middle of a write when to_zarr is called.
    await hamt._lock.acquire()
    try:
        with pytest.raises(LoopBlockedError, match=r"anyio\.to_thread\.run_sync"):
            write(small_dataset(), store)
    finally:
        hamt._lock.release()
    # Nothing was half-written: the same call, off the loop thread, now succeeds.
    await anyio.to_thread.run_sync(write, small_dataset(), store)
    reader = ZarrHAMTStore(await reopen(hamt), read_only=True)
    xr.testing.assert_identical(read(reader), small_dataset().load())


async def test_read_only_map_keys_from_zarrs_thread() -> None:
    """HAMT.keys() on a deep read-only map, driven by zarr's sync API from this loop."""
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    for i in range(1500):
        await hamt.set(f"v/c/{i}", b"%d" % i)
    fresh = await reopen(hamt)
    from zarr.core.sync import sync

    async def all_keys() -> list[str]:
        return sorted([key async for key in fresh.keys()])

    keys = sync(all_keys())
    assert keys == sorted(f"v/c/{i}" for i in range(1500))
