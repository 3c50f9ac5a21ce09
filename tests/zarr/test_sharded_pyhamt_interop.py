"""Interop with py-hamt 3.6.0's ``ShardedZarrStore``, both formats.

One script runs in py-hamt's venv, where zarr is 3.0.9 (the version py-hamt pins) and this
checkout of anyhamt is importable too (anyhamt's dependencies are there, but for sniffio,
whose pure-Python package is put on the path). It writes the same arrays, through the same
zarr, into py-hamt's store and into anyhamt's, on stores that hand out the same CIDv1 blake3
ids (a dict store for py-hamt, anyhamt's LocalCAS), and has each library read the other's
root. The test then reads py-hamt's root again here, with zarr 3.4.2 and xarray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import pytest
import sniffio
import zarr
from _pyhamt import require_pyhamt, run_pyhamt

from anyhamt import LocalCAS
from anyhamt.zarr import ShardedZarrStore

REPO = str(Path(__file__).resolve().parents[2])

SCRIPT = r"""
import sys
sys.path[:0] = sys.argv[2:4]  # this checkout of anyhamt, and sniffio (pure Python)
import asyncio, hashlib, json, sys, tempfile, warnings
from pathlib import Path

import numpy as np
import zarr
from multiformats import CID, multihash
from py_hamt import ShardedZarrStore as PyStore
from py_hamt.store_httpx import ContentAddressedStore as PyCAS

from anyhamt import LocalCAS
from anyhamt.cas import ContentAddressedStore as AnyCAS
from anyhamt.zarr import ShardedZarrStore as AnyStore

warnings.simplefilter("ignore")


class DictCAS(PyCAS):
    '''CIDv1 blake3 ids with the codec asked for, as Kubo and anyhamt's LocalCAS give.'''

    def __init__(self):
        self.blocks = {}

    async def save(self, data, codec):
        cid = CID("base32", 1, codec, multihash.digest(bytes(data), "blake3", size=32))
        self.blocks[str(cid)] = bytes(data)
        return cid

    @staticmethod
    def key(id):
        # CIDs decoded from dag-cbor print in base58; index by the base32 text form.
        return str((id if isinstance(id, CID) else CID.decode(str(id))).set(base="base32"))

    async def load(self, id, offset=None, length=None, suffix=None):
        data = self.blocks[self.key(id)]
        if suffix is not None:
            return data[-suffix:] if suffix else b""
        start = offset or 0
        return data[start:] if length is None else data[start:start + length]


class AnyDictCAS(AnyCAS):
    '''The same ids, as an anyhamt store (anyhamt's side of the comparison).'''

    def __init__(self, inner):
        self.inner = inner

    async def save(self, data, codec):
        return await self.inner.save(data, codec)

    async def load(self, id, offset=None, length=None, suffix=None):
        return await self.inner.load(id, offset, length, suffix)


def fill(store, version):
    rng = np.random.default_rng(7)
    root = zarr.open_group(store=store, mode="w", zarr_format=3,
                           path="0" if version == "sharded_zarr_v2" else "")
    arrays = {
        "temp": (rng.random((8, 6, 8), dtype=np.float32), (4, 3, 4), ["time", "lat", "lon"]),
        "precip": (rng.random((8, 6, 8)), (4, 3, 4), ["time", "lat", "lon"]),
        "lat": (np.linspace(-60, 60, 6), (6,), ["lat"]),
        "time": (np.arange(8, dtype="int64"), (8,), ["time"]),
    }
    for name, (data, chunks, dims) in arrays.items():  # one after the other: deterministic
        a = root.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                              dimension_names=dims, attributes={"name": name})
        a[...] = data


def describe(store, version):
    group = zarr.open_group(store=store, mode="r", zarr_format=3,
                            path="0" if version == "sharded_zarr_v2" else "")
    out = {}
    for name, array in sorted(group.arrays()):
        out[name] = [list(array.shape), list(array.chunks), str(array.dtype),
                     hashlib.sha256(np.ascontiguousarray(array[...]).tobytes()).hexdigest(),
                     dict(array.attrs)]
    return out


async def keys_of(store):
    keys = [k async for k in store.list()]
    return sorted(keys)


async def main(version):
    geometry = dict(chunks_per_shard=3)
    if version == "sharded_zarr_v1":
        geometry.update(array_shape=(8, 6, 8), chunk_shape=(4, 3, 4))
    else:
        geometry.update(manifest_version=version)
    result = {}
    # py-hamt writes
    pycas = DictCAS()
    py = await PyStore.open(cas=pycas, read_only=False, **geometry)
    await asyncio.to_thread(fill, py, version)
    py_root = await py.flush()
    result["pyhamt_root"] = str(py_root)
    # anyhamt writes the same through the same zarr
    tmp = Path(tempfile.mkdtemp())
    async with LocalCAS(tmp / "a.sqlite3") as cas:
        ours = await AnyStore.open(cas=cas, read_only=False, **geometry)
        await asyncio.to_thread(fill, ours, version)
        result["anyhamt_root"] = str(await ours.flush())
        # anyhamt reads py-hamt's root (its blocks copied in by CID)
        for cid, data in pycas.blocks.items():
            await cas.put_block(cid, data)
        theirs = await AnyStore.open(cas=cas, read_only=True, root_cid=py_root)
        result["anyhamt_reads_pyhamt"] = await asyncio.to_thread(describe, theirs, version)
        result["anyhamt_keys_of_pyhamt"] = await keys_of(theirs)
        ours_ro = await AnyStore.open(cas=cas, read_only=True, root_cid=result["anyhamt_root"])
        result["anyhamt_reads_anyhamt"] = await asyncio.to_thread(describe, ours_ro, version)
    # py-hamt reads anyhamt's root, written on a dict of blocks it can read too
    shared = DictCAS()
    ours = await AnyStore.open(cas=AnyDictCAS(shared), read_only=False, **geometry)
    await asyncio.to_thread(fill, ours, version)
    any_root = await ours.flush()
    result["anyhamt_root_on_dict"] = str(any_root)
    theirs = await PyStore.open(cas=shared, read_only=True, root_cid=any_root)
    result["pyhamt_reads_anyhamt"] = await asyncio.to_thread(describe, theirs, version)
    result["pyhamt_reads_pyhamt"] = await asyncio.to_thread(
        describe, await PyStore.open(cas=pycas, read_only=True, root_cid=py_root), version
    )
    result["pyhamt_blocks"] = {cid: data.hex() for cid, data in pycas.blocks.items()}
    return result, pycas


if True:
    res, _ = asyncio.run(main(sys.argv[1]))
    print(json.dumps(res))

"""

VERSIONS = ["sharded_zarr_v1", "sharded_zarr_v2"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    require_pyhamt()
    overlay = tmp_path_factory.mktemp("overlay")
    os.symlink(Path(sniffio.__file__).parent, overlay / "sniffio")
    return {v: json.loads(run_pyhamt(SCRIPT, v, REPO, str(overlay))) for v in VERSIONS}


@pytest.mark.parametrize("version", VERSIONS)
def test_same_zarr_gives_pyhamts_exact_root(
    written: dict[str, dict[str, Any]], version: str
) -> None:
    result = written[version]
    assert result["anyhamt_root"] == result["pyhamt_root"]
    assert result["anyhamt_root_on_dict"] == result["pyhamt_root"]


@pytest.mark.parametrize("version", VERSIONS)
def test_each_reads_the_others_root(written: dict[str, dict[str, Any]], version: str) -> None:
    result = written[version]
    theirs = result["pyhamt_reads_pyhamt"]
    assert sorted(theirs) == ["lat", "precip", "temp", "time"]
    assert result["anyhamt_reads_pyhamt"] == theirs
    assert result["pyhamt_reads_anyhamt"] == theirs
    assert result["anyhamt_reads_anyhamt"] == theirs


@pytest.mark.parametrize("version", VERSIONS)
async def test_pyhamt_root_reads_with_new_zarr(
    written: dict[str, dict[str, Any]], version: str, tmp_path: Path
) -> None:
    result = written[version]
    async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
        for cid, data in result["pyhamt_blocks"].items():
            await cas.put_block(cid, bytes.fromhex(data))
        store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=result["pyhamt_root"])
        path = "0" if version == "sharded_zarr_v2" else ""

        def read() -> dict[str, Any]:
            group = zarr.open_group(store=store, mode="r", zarr_format=3, path=path)
            return {name: np.asarray(array[...]) for name, array in group.arrays()}

        arrays = await anyio.to_thread.run_sync(read)
        rng = np.random.default_rng(7)  # the script's data, in the script's order
        np.testing.assert_array_equal(arrays["temp"], rng.random((8, 6, 8), dtype=np.float32))
        np.testing.assert_array_equal(arrays["precip"], rng.random((8, 6, 8)))
        np.testing.assert_array_equal(arrays["time"], np.arange(8))
        # The same keys as py-hamt lists.
        assert sorted([k async for k in store.list()]) == result["anyhamt_keys_of_pyhamt"]
