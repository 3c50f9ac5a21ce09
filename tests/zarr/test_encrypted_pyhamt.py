"""Encrypted Zarr data crosses between py-hamt 3.6.0 and anyhamt, both ways.

py-hamt runs in its own interpreter (tests/_pyhamt.py). Both libraries' ``InMemoryCAS`` name
blocks by the same raw blake3 multihash, so a store's blocks, dumped as JSON, are the whole
dataset: py-hamt writes an encrypted Zarr group with its ``SimpleEncryptedZarrHAMTStore``
and anyhamt opens it, and the other way round. Single values are checked too, encrypted by
one library's store and decrypted by the other's. (py-hamt's venv has zarr 3.0.9 but not
xarray, so the group is written with zarr's own API.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import zarr
from _pyhamt import run_pyhamt
from zarr.core.buffer import default_buffer_prototype

from anyhamt import HAMT, DecryptionError, InMemoryCAS
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore

if TYPE_CHECKING:
    from pathlib import Path

KEY = bytes(range(100, 132))
HEADER = b"anyhamt-pyhamt-encryption"
PLAINTEXTS = [b"", b"x", b'{"zarr_format": 3}', bytes(range(256)) * 40]


def expected_arrays() -> dict[str, Any]:
    return {
        "temp": np.arange(240, dtype="float32").reshape(24, 10) / 7,
        "count": np.arange(30, dtype="int64") * 3,
    }


# Both directions share the group's shape, written out in each interpreter.
PYHAMT_COMMON = """
import asyncio, json, sys
import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.core.buffer import default_buffer_prototype
from py_hamt import HAMT, InMemoryCAS, SimpleEncryptedZarrHAMTStore

spec = json.load(open(sys.argv[1]))
KEY, HEADER = bytes.fromhex(spec["key"]), spec["header"].encode()
"""

PYHAMT_WRITE = (
    PYHAMT_COMMON
    + """
async def main():
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    store = SimpleEncryptedZarrHAMTStore(hamt, False, KEY, HEADER)
    group = await za.open_group(store=store, mode="w", zarr_format=3)
    await group.update_attributes({"title": "written by py-hamt"})
    temp = await group.create_array("temp", shape=(24, 10), chunks=(6, 10), dtype="float32")
    await temp.setitem(slice(None), np.arange(240, dtype="float32").reshape(24, 10) / 7)
    count = await group.create_array("count", shape=(30,), chunks=(8,), dtype="int64")
    await count.setitem(slice(None), np.arange(30, dtype="int64") * 3)
    await hamt.make_read_only()
    ciphertexts = [store._encrypt(bytes.fromhex(p)).hex() for p in spec["plaintexts"]]
    blocks = {k.hex(): v.hex() for k, v in cas.store.items()}
    print(json.dumps({"root": hamt.root_node_id.hex(), "blocks": blocks,
                      "ciphertexts": ciphertexts}))

asyncio.run(main())
"""
)

PYHAMT_READ = (
    PYHAMT_COMMON
    + """
async def main():
    cas = InMemoryCAS()
    cas.store = {bytes.fromhex(k): bytes.fromhex(v) for k, v in spec["blocks"].items()}
    hamt = await HAMT.build(cas=cas, root_node_id=bytes.fromhex(spec["root"]), read_only=True,
                            values_are_bytes=True)
    store = SimpleEncryptedZarrHAMTStore(hamt, True, KEY, HEADER)
    group = await za.open_group(store=store, mode="r", zarr_format=3)
    out = {"attrs": dict(group.attrs),
           "plaintexts": [store._decrypt(bytes.fromhex(c)).hex() for c in spec["ciphertexts"]]}
    for name in ("temp", "count"):
        array = await group.getitem(name)
        out[name] = (await array.getitem(slice(None))).tolist()
    print(json.dumps(out))

asyncio.run(main())
"""
)


def _spec_file(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _write_group(store: SimpleEncryptedZarrHAMTStore) -> None:
    group = zarr.open_group(store=store, mode="w", zarr_format=3)
    group.attrs.update({"title": "written by anyhamt"})
    for name, data in expected_arrays().items():
        chunks = (6, 10) if data.ndim == 2 else (8,)
        array = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype)
        array[...] = data


def _read_group(store: SimpleEncryptedZarrHAMTStore) -> dict[str, Any]:
    group = zarr.open_group(store=store, mode="r", zarr_format=3)
    out: dict[str, Any] = {"attrs": dict(group.attrs)}
    for name in expected_arrays():
        array = group[name]
        assert isinstance(array, zarr.Array), name
        out[name] = array[...]
    return out


@pytest.mark.usefixtures("pyhamt")
async def test_anyhamt_reads_what_py_hamt_encrypted(tmp_path: Path) -> None:
    spec = {
        "key": KEY.hex(),
        "header": HEADER.decode(),
        "plaintexts": [p.hex() for p in PLAINTEXTS],
    }
    theirs = json.loads(run_pyhamt(PYHAMT_WRITE, _spec_file(tmp_path, spec)))
    cas = InMemoryCAS()
    cas.store = {bytes.fromhex(k): bytes.fromhex(v) for k, v in theirs["blocks"].items()}
    hamt = await HAMT.build(
        cas=cas, root_node_id=bytes.fromhex(theirs["root"]), read_only=True, values_are_bytes=True
    )
    store = SimpleEncryptedZarrHAMTStore(hamt, True, KEY, HEADER)
    # zarr's sync API off the loop thread: the pattern anyhamt documents.
    got = await anyio.to_thread.run_sync(_read_group, store)
    assert got["attrs"] == {"title": "written by py-hamt"}
    for name, data in expected_arrays().items():
        np.testing.assert_array_equal(got[name], data)
    # Single values py-hamt encrypted decrypt here, and not with another header.
    wrong = SimpleEncryptedZarrHAMTStore(hamt, True, KEY, b"another header")
    for i, (plaintext, ciphertext) in enumerate(
        zip(PLAINTEXTS, theirs["ciphertexts"], strict=True)
    ):
        await hamt.enable_write()
        await hamt.set(f"value/{i}", bytes.fromhex(ciphertext))
        await hamt.make_read_only()
        value = await store.get(f"value/{i}", default_buffer_prototype())
        assert value is not None and value.to_bytes() == plaintext
        with pytest.raises(DecryptionError):
            await wrong.get(f"value/{i}", default_buffer_prototype())


@pytest.mark.usefixtures("pyhamt")
async def test_py_hamt_reads_what_anyhamt_encrypted(tmp_path: Path) -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    store = SimpleEncryptedZarrHAMTStore(hamt, False, KEY, HEADER)
    await anyio.to_thread.run_sync(_write_group, store)
    ciphertexts = [store._encode(p).hex() for p in PLAINTEXTS]
    await hamt.make_read_only()
    spec = {
        "key": KEY.hex(),
        "header": HEADER.decode(),
        "root": hamt.root_node_id.hex(),
        "blocks": {k.hex(): v.hex() for k, v in cas.store.items()},
        "ciphertexts": ciphertexts,
    }
    theirs = json.loads(run_pyhamt(PYHAMT_READ, _spec_file(tmp_path, spec)))
    assert theirs["attrs"] == {"title": "written by anyhamt"}
    for name, data in expected_arrays().items():
        np.testing.assert_array_equal(np.asarray(theirs[name], dtype=data.dtype), data)
    assert theirs["plaintexts"] == [p.hex() for p in PLAINTEXTS]
