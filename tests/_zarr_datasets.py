"""Small xarray datasets and the application pattern for the Zarr tests on every store.

The pattern the README documents: the application builds the HAMT on its own event loop
(asyncio or trio), calls xarray's synchronous API off the loop thread with
``anyio.to_thread.run_sync`` (zarr then runs the store's coroutines on its own asyncio
thread), calls ``make_read_only()`` and reopens read-only from the root.

Also the py-hamt 3.6.0 side of the interop tests: a script run in py-hamt's own venv
(tests/_pyhamt.py). That venv has py-hamt and the zarr it pins (3.0.9) but no xarray, so
the script writes with zarr's API exactly what xarray would (dimension names, CF time
units, attributes) and reads back a description of every array; the anyhamt side describes
its stores with the same code (``DESCRIBE_SOURCE``) and compares.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from anyhamt import HAMT
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyhamt import ContentAddressedStore

__all__ = [
    "CHUNKS",
    "CONSOLIDATED_V3_WARNING",
    "DESCRIBE_SOURCE",
    "ENCRYPTION_HEADER",
    "ENCRYPTION_KEY",
    "PYHAMT_ZARR_SCRIPT",
    "StoreFactory",
    "describe",
    "encrypted_store",
    "open_dataset",
    "plain_store",
    "require",
    "sample_dataset",
    "write_dataset",
]

# zarr warns on every write of consolidated metadata in format 3 (not yet in the v3 spec);
# writing it is what these tests check, so that one warning is expected.
CONSOLIDATED_V3_WARNING = pytest.mark.filterwarnings(
    "ignore:Consolidated metadata is currently not part in the Zarr format 3 specification"
)

# time, lat, lon: two chunks along each dimension, so every read and write spans chunks.
CHUNKS = (4, 3, 4)
ENCRYPTION_KEY = bytes(range(32))
ENCRYPTION_HEADER = b"anyhamt-tests"

type StoreFactory = Callable[[HAMT, bool], ZarrHAMTStore]


def require(module: str) -> Any:
    """Import ``module`` (dask, distributed: the test extra's); skip without it, but fail
    under CI, where nothing the suite depends on may be missing."""
    import importlib

    from _ci import on_ci

    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed (pip install 'dask[distributed]')"
        if on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def plain_store(hamt: HAMT, read_only: bool) -> ZarrHAMTStore:
    return ZarrHAMTStore(hamt, read_only=read_only)


def encrypted_store(hamt: HAMT, read_only: bool) -> ZarrHAMTStore:
    return SimpleEncryptedZarrHAMTStore(hamt, read_only, ENCRYPTION_KEY, ENCRYPTION_HEADER)


def sample_dataset(nt: int = 8, *, start: str = "2020-01-01", seed: int = 7) -> xr.Dataset:
    """Three data variables (float32, float64 with NaNs, int16 without time), dimension
    coordinates (daily time, lat, lon), a non-index coordinate, attributes everywhere."""
    rng = np.random.default_rng(seed)
    shape = (nt, 6, 8)
    precip = rng.random(shape)
    precip[rng.random(shape) < 0.1] = np.nan
    return xr.Dataset(
        {
            "temp": (
                ("time", "lat", "lon"),
                rng.random(shape, dtype=np.float32),
                {"units": "K", "long_name": "air temperature"},
            ),
            "precip": (("time", "lat", "lon"), precip, {"units": "mm/day"}),
            "mask": (("lat", "lon"), (rng.random(shape[1:]) < 0.5).astype("int16")),
        },
        coords={
            "time": pd.date_range(start, periods=nt, freq="D"),
            "lat": np.linspace(-60.0, 60.0, shape[1]),
            "lon": np.linspace(0.0, 350.0, shape[2]),
            "elevation": (("lat", "lon"), rng.random(shape[1:]) * 1000, {"units": "m"}),
        },
        attrs={"title": "anyhamt test dataset", "version": 3, "tags": ["a", "b"]},
    )


def encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Zarr chunks for the variables with a time dimension."""
    return {str(name): {"chunks": CHUNKS} for name, var in ds.data_vars.items() if var.ndim == 3}


async def write_dataset(
    cas: ContentAddressedStore,
    ds: xr.Dataset,
    store_factory: StoreFactory = plain_store,
    *,
    root: Any = None,
    **to_zarr: Any,
) -> Any:
    """Write ``ds`` into a new HAMT (or one opened writable at ``root``); the new root."""
    hamt = await HAMT.build(cas=cas, root_node_id=root, values_are_bytes=True)
    store = store_factory(hamt, False)
    await anyio.to_thread.run_sync(functools.partial(ds.to_zarr, store=store, **to_zarr))
    await hamt.make_read_only()
    return hamt.root_node_id


async def open_dataset(
    cas: ContentAddressedStore,
    root: Any,
    store_factory: StoreFactory = plain_store,
    *,
    load: bool = True,
    **open_zarr: Any,
) -> xr.Dataset:
    """Open the dataset at ``root`` from a new read-only HAMT (lazily, or loaded)."""
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    store = store_factory(hamt, True)

    def open_it() -> xr.Dataset:
        ds: xr.Dataset = xr.open_zarr(store, **open_zarr)
        return ds.load() if load else ds

    return await anyio.to_thread.run_sync(open_it)


# -- interop with py-hamt 3.6.0 ------------------------------------------------------------

# Runs in both interpreters: what a zarr group holds, as JSON-able values (array contents
# as sha256 of their C-order bytes), read with whatever zarr the interpreter has.
DESCRIBE_SOURCE = """
import hashlib
import numpy as np
import zarr

def describe(store):
    group = zarr.open_group(store=store, mode="r", zarr_format=3)
    arrays = {}
    for name, array in sorted(group.arrays()):
        data = np.ascontiguousarray(array[...])
        arrays[name] = {
            "dims": list(array.metadata.dimension_names or []),
            "attrs": dict(array.attrs),
            "dtype": str(data.dtype),
            "shape": list(data.shape),
            "chunks": list(array.chunks),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
        }
    return {"attrs": dict(group.attrs), "arrays": arrays}
"""

_namespace: dict[str, Any] = {}
exec(DESCRIBE_SOURCE, _namespace)


def describe(store: Any) -> dict[str, Any]:
    """``DESCRIBE_SOURCE``'s ``describe`` in this interpreter, normalised through JSON."""
    result: dict[str, Any] = json.loads(json.dumps(_namespace["describe"](store)))
    return result


# py-hamt's side. argv[1] is a JSON spec:
#   {"mode": "write" | "read", "cas": {"kind": "memory"} | {"kind": "kubo", "rpc", "gateway"},
#    "encrypted": bool, "key": hex, "header": hex, "consolidated": bool,
#    "root": str (read), "blocks": {hex: hex} (read from memory)}
# It prints JSON: the root, every stored value's sha256 by key, for "memory" every block,
# and for "read" the description of the dataset.
PYHAMT_ZARR_SCRIPT = (
    DESCRIBE_SOURCE
    + """
import asyncio, json, sys
from multiformats import CID
from py_hamt import HAMT, InMemoryCAS, KuboCAS, SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

def make_store(spec, hamt, read_only):
    if spec["encrypted"]:
        return SimpleEncryptedZarrHAMTStore(
            hamt, read_only, bytes.fromhex(spec["key"]), bytes.fromhex(spec["header"])
        )
    return ZarrHAMTStore(hamt, read_only=read_only)

def write_group(store, consolidated):
    # What xarray writes for sample_dataset(): zarr format 3, dimension names, CF time.
    rng = np.random.default_rng(11)
    nt, ny, nx = 8, 6, 8
    group = zarr.open_group(store=store, mode="w", zarr_format=3,
                            attributes={"title": "written by py-hamt", "version": 3})
    def array(name, data, dims, chunks, attrs):
        a = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                               dimension_names=dims, attributes=attrs, fill_value=0)
        a[...] = data
    array("time", np.arange(nt, dtype="int64"), ["time"], (nt,),
          {"units": "days since 2021-06-01", "calendar": "proleptic_gregorian"})
    array("lat", np.linspace(-60.0, 60.0, ny), ["lat"], (ny,), {"units": "degrees_north"})
    array("lon", np.linspace(0.0, 350.0, nx), ["lon"], (nx,), {"units": "degrees_east"})
    array("temp", rng.random((nt, ny, nx), dtype=np.float32), ["time", "lat", "lon"],
          (4, 3, 4), {"units": "K", "coordinates": "elevation"})
    array("elevation", rng.random((ny, nx)) * 1000, ["lat", "lon"], (ny, nx), {"units": "m"})
    if consolidated:
        zarr.consolidate_metadata(store)

async def values_sha(hamt):
    out = {}
    async for key in hamt.keys():
        out[key] = hashlib.sha256(await hamt.get(key)).hexdigest()
    return out

async def main(spec):
    if spec["cas"]["kind"] == "memory":
        cas = InMemoryCAS()
        if spec["mode"] == "read":
            cas.store = {bytes.fromhex(k): bytes.fromhex(v) for k, v in spec["blocks"].items()}
        parse_root = bytes.fromhex
    else:
        cas = KuboCAS(rpc_base_url=spec["cas"]["rpc"], gateway_base_url=spec["cas"]["gateway"])
        parse_root = CID.decode
    out = {}
    if spec["mode"] == "write":
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        store = make_store(spec, hamt, False)
        # zarr's sync API off the loop thread (py-hamt's HAMT then runs on zarr's loop).
        await asyncio.to_thread(write_group, store, spec["consolidated"])
        await hamt.make_read_only()
        root = hamt.root_node_id
    else:
        root = parse_root(spec["root"])
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True,
                                values_are_bytes=True)
        out["description"] = await asyncio.to_thread(describe, make_store(spec, hamt, True))
    out["root"] = root.hex() if isinstance(root, bytes) else str(root)
    out["values"] = await values_sha(hamt)
    if spec["cas"]["kind"] == "memory":
        out["blocks"] = {k.hex(): v.hex() for k, v in cas.store.items()}
    else:
        await cas.aclose()
    print(json.dumps(out))

asyncio.run(main(json.load(open(sys.argv[1]))))
"""
)


def pyhamt_expected_dataset() -> xr.Dataset:
    """What xarray must read from the group ``PYHAMT_ZARR_SCRIPT`` writes."""
    rng = np.random.default_rng(11)
    nt, ny, nx = 8, 6, 8
    temp = rng.random((nt, ny, nx), dtype=np.float32)
    elevation = rng.random((ny, nx)) * 1000
    return xr.Dataset(
        {"temp": (("time", "lat", "lon"), temp, {"units": "K"})},
        coords={
            "time": pd.date_range("2021-06-01", periods=nt, freq="D"),
            "lat": ("lat", np.linspace(-60.0, 60.0, ny), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0.0, 350.0, nx), {"units": "degrees_east"}),
            "elevation": (("lat", "lon"), elevation, {"units": "m"}),
        },
        attrs={"title": "written by py-hamt", "version": 3},
    )
