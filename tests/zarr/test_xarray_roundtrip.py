"""xarray datasets written to and read from the Zarr HAMT stores come back identical.

Every test follows the application pattern (tests/_zarr_datasets.py): the HAMT is built on
the test's event loop (asyncio or trio), xarray runs off the loop thread, the HAMT is made
read-only and the dataset reopened read-only from the root, on a new HAMT (and, for
``LocalCAS``, a new read-only handle on the file). Kubo: tests/kubo/test_kubo_xarray.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np
import pytest
import xarray as xr
from _zarr_datasets import (
    CHUNKS,
    CONSOLIDATED_V3_WARNING,
    ENCRYPTION_HEADER,
    StoreFactory,
    encoding,
    encrypted_store,
    open_dataset,
    plain_store,
    require,
    sample_dataset,
    write_dataset,
)
from zarr.core.buffer import default_buffer_prototype

from anyhamt import HAMT, DecryptionError, InMemoryCAS, LocalCAS, StoreReadOnlyError
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from anyhamt import ContentAddressedStore

pytestmark = CONSOLIDATED_V3_WARNING

STORES = [
    pytest.param(plain_store, id="plain"),
    pytest.param(encrypted_store, id="encrypted"),
]


class Blocks:
    """One block store to write with and, for reading, the same one or a reopened copy."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "blocks.sqlite3"
        self._memory = InMemoryCAS()
        self._open: list[LocalCAS] = []

    def writer(self) -> ContentAddressedStore:
        if self.kind == "memory":
            return self._memory
        cas = LocalCAS(self.path)
        self._open.append(cas)
        return cas

    async def reader(self) -> ContentAddressedStore:
        """For LocalCAS: every writer closed (committed), the file opened read-only."""
        if self.kind == "memory":
            return self._memory
        await self.aclose()
        cas = LocalCAS(self.path, read_only=True)
        self._open.append(cas)
        return cas

    async def aclose(self) -> None:
        while self._open:
            await self._open.pop().aclose()


@pytest.fixture(params=["memory", "local"])
async def blocks(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Blocks]:
    held = Blocks(request.param, tmp_path)
    try:
        yield held
    finally:
        await held.aclose()


@pytest.mark.parametrize("consolidated", [True, False], ids=["consolidated", "unconsolidated"])
@pytest.mark.parametrize("store_factory", STORES)
async def test_round_trip_is_identical(
    blocks: Blocks, store_factory: StoreFactory, consolidated: bool
) -> None:
    ds = sample_dataset()
    root = await write_dataset(
        blocks.writer(),
        ds,
        store_factory,
        mode="w",
        encoding=encoding(ds),
        consolidated=consolidated,
    )
    back = await open_dataset(await blocks.reader(), root, store_factory, consolidated=consolidated)
    xr.testing.assert_identical(back, ds)
    assert back["temp"].encoding["chunks"] == CHUNKS
    assert back["temp"].encoding["preferred_chunks"] == dict(
        zip(back["temp"].dims, CHUNKS, strict=True)
    )


async def test_lazy_dask_reads(blocks: Blocks) -> None:
    """open_zarr gives dask arrays chunked like the store; they compute to the data."""
    ds = sample_dataset()
    root = await write_dataset(
        blocks.writer(), ds, mode="w", encoding=encoding(ds), consolidated=True
    )
    lazy = await open_dataset(await blocks.reader(), root, load=False)
    assert isinstance(lazy["temp"].data, require("dask.array").Array)
    assert lazy["temp"].chunks == ((4, 4), (3, 3), (4, 4))

    def reduce() -> tuple[xr.DataArray, xr.DataArray, xr.Dataset]:
        # dask's default (threaded) scheduler: each task is a sync zarr read on its thread.
        mean = lazy["temp"].mean("time").compute()
        selected = lazy["precip"].isel(lat=slice(2, 5), time=[1, 6]).compute()
        return mean, selected, lazy.compute()

    mean, selected, everything = await anyio.to_thread.run_sync(reduce)
    # The same reduction over the same chunks in memory (float sums depend on the order).
    in_memory = ds.chunk(dict(zip(ds["temp"].dims, CHUNKS, strict=True)))
    xr.testing.assert_identical(mean, in_memory["temp"].mean("time").compute())
    xr.testing.assert_identical(selected, ds["precip"].isel(lat=slice(2, 5), time=[1, 6]))
    xr.testing.assert_identical(everything, ds)


@pytest.mark.parametrize("store_factory", STORES)
async def test_append_along_time(blocks: Blocks, store_factory: StoreFactory) -> None:
    """``append_dim`` onto a root reopened writable gives the whole dataset; the old root
    still holds the first part (content addressing: nothing was overwritten)."""
    full = sample_dataset(11)  # 11 steps: the append ends in a partial chunk
    first, rest = full.isel(time=slice(0, 6)), full.isel(time=slice(6, None))
    cas = blocks.writer()
    root_first = await write_dataset(
        cas, first, store_factory, mode="w", encoding=encoding(first), consolidated=True
    )
    root_all = await write_dataset(
        cas, rest, store_factory, root=root_first, append_dim="time", consolidated=True
    )
    assert root_all != root_first
    reader = await blocks.reader()
    xr.testing.assert_identical(await open_dataset(reader, root_all, store_factory), full)
    xr.testing.assert_identical(await open_dataset(reader, root_first, store_factory), first)


async def test_region_writes(blocks: Blocks) -> None:
    """Region writes fill a dataset written as a template; regions cut through chunks, so
    zarr reads back and rewrites partial chunks through the writable HAMT."""
    ds = sample_dataset()
    template = xr.zeros_like(ds)
    cas = blocks.writer()
    root = await write_dataset(cas, template, mode="w", encoding=encoding(ds), consolidated=True)
    hamt = await HAMT.build(cas=cas, root_node_id=root, values_are_bytes=True)
    store = ZarrHAMTStore(hamt)
    untimed = [name for name, var in ds.variables.items() if "time" not in var.dims]

    def fill() -> None:
        for start, stop in ((0, 3), (3, 8)):
            # A region write along time takes only the variables that have that dimension.
            part = ds.isel(time=slice(start, stop)).drop_vars(untimed)
            part.to_zarr(store=store, region={"time": slice(start, stop)})
        ds[["mask"]].to_zarr(store=store, mode="a")

    await anyio.to_thread.run_sync(fill)
    await hamt.make_read_only()
    xr.testing.assert_identical(await open_dataset(await blocks.reader(), hamt.root_node_id), ds)


async def test_overwrite_with_mode_w_drops_old_variables(blocks: Blocks) -> None:
    """``mode="w"`` over an existing dataset (zarr lists and deletes what was there)."""
    cas = blocks.writer()
    old = sample_dataset().rename({"temp": "old_name"})
    root = await write_dataset(cas, old, mode="w", encoding=encoding(old), consolidated=True)
    new = sample_dataset(5, seed=3)
    root = await write_dataset(
        cas, new, root=root, mode="w", encoding=encoding(new), consolidated=True
    )
    back = await open_dataset(await blocks.reader(), root)
    xr.testing.assert_identical(back, new)


async def test_writes_through_read_only_store_or_hamt_are_refused(blocks: Blocks) -> None:
    ds = sample_dataset()
    root = await write_dataset(blocks.writer(), ds, mode="w", consolidated=True)
    hamt = await HAMT.build(
        cas=await blocks.reader(), root_node_id=root, read_only=True, values_are_bytes=True
    )
    changed = (ds[["temp"]].isel(time=slice(0, 4)) + 1).drop_vars(["lat", "lon", "elevation"])
    # A read-only store: zarr itself refuses to open it for writing...
    read_only = ZarrHAMTStore(hamt, read_only=True)
    with pytest.raises(ValueError, match="read-only"):
        await anyio.to_thread.run_sync(lambda: changed.to_zarr(store=read_only, mode="a"))
    # ...and the store refuses a write that reaches it with its own typed error.
    with pytest.raises(StoreReadOnlyError):
        await read_only.set("temp/c/0/0/0", default_buffer_prototype().buffer.from_bytes(b"x"))
    # A writable store over the read-only HAMT: the HAMT's refusal, translated.
    writable = ZarrHAMTStore(hamt)
    with pytest.raises(StoreReadOnlyError, match="enable_write"):
        await anyio.to_thread.run_sync(
            lambda: changed.to_zarr(store=writable, region={"time": slice(0, 4)})
        )
    xr.testing.assert_identical(await open_dataset(hamt.cas, root), ds)


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(lambda h: SimpleEncryptedZarrHAMTStore(h, True, bytes(32), ENCRYPTION_HEADER),
                     id="wrong-key"),
        pytest.param(lambda h: SimpleEncryptedZarrHAMTStore(h, True, bytes(range(32)), b"other"),
                     id="wrong-header"),
    ],
)  # fmt: skip
async def test_encrypted_dataset_needs_key_and_header(
    blocks: Blocks, wrong: Callable[[HAMT], ZarrHAMTStore]
) -> None:
    ds = sample_dataset()
    root = await write_dataset(blocks.writer(), ds, encrypted_store, mode="w", consolidated=True)
    reader = await blocks.reader()
    # Key names are stored in plaintext, values (metadata included) are not.
    plain = await HAMT.build(cas=reader, root_node_id=root, read_only=True, values_are_bytes=True)
    raw_metadata = await plain.get("zarr.json")
    assert b"anyhamt test dataset" not in raw_metadata
    assert "temp/zarr.json" in [key async for key in plain.keys()]

    def open_with(store: Any) -> xr.Dataset:
        ds: xr.Dataset = xr.open_zarr(store, consolidated=True)
        return ds.load()

    with pytest.raises(DecryptionError, match="decryption"):
        await anyio.to_thread.run_sync(open_with, wrong(plain))
    right = encrypted_store(plain, True)
    xr.testing.assert_identical(await anyio.to_thread.run_sync(open_with, right), ds)


async def test_numpy_data_round_trips_bit_for_bit(blocks: Blocks) -> None:
    """NaN payloads, -0.0 and extremes survive (assert_identical treats NaNs as equal)."""
    values = np.array([np.nan, -0.0, np.inf, -np.inf, np.finfo(np.float64).max, 1e-310])
    ds = xr.Dataset({"v": ("x", values)})
    root = await write_dataset(blocks.writer(), ds, mode="w", consolidated=False)
    back = await open_dataset(await blocks.reader(), root, consolidated=False)
    assert back["v"].values.tobytes() == values.tobytes()
