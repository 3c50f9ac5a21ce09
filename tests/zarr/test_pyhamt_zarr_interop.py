"""Zarr datasets written by py-hamt 3.6.0 open identically in anyhamt, and the other way.

py-hamt runs in its own interpreter with the zarr it pins (tests/_pyhamt.py), on its
``InMemoryCAS``; the blocks cross between the processes as JSON, keyed by the same raw
multihash ids on both sides. The same tests through one Kubo daemon are in
tests/kubo/test_kubo_xarray.py. Compared, for plain and encrypted stores:

* every key and stored value (same bytes, read through the other library's HAMT), and the
  root anyhamt builds from those values (the same root: the wire format is shared);
* what zarr sees: each array's dimension names, attributes, dtype, shape, chunks and a
  hash of its contents, described by py-hamt's zarr 3.0.9 and by anyhamt's zarr;
* what xarray sees: ``assert_identical`` against the dataset that was written.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, cast

import anyio.to_thread
import pytest
import xarray as xr
from _pyhamt import run_pyhamt
from _zarr_datasets import (
    CONSOLIDATED_V3_WARNING,
    ENCRYPTION_HEADER,
    ENCRYPTION_KEY,
    PYHAMT_ZARR_SCRIPT,
    describe,
    encoding,
    encrypted_store,
    open_dataset,
    plain_store,
    pyhamt_expected_dataset,
    sample_dataset,
    write_dataset,
)

from anyhamt import HAMT, InMemoryCAS

if TYPE_CHECKING:
    from pathlib import Path

    from _zarr_datasets import StoreFactory

pytestmark = CONSOLIDATED_V3_WARNING

VARIANTS = [
    pytest.param(False, True, id="plain-consolidated"),
    pytest.param(True, False, id="encrypted-unconsolidated"),
]


def run_pyhamt_spec(directory: Path, spec: dict[str, Any]) -> dict[str, Any]:
    path = directory / f"spec-{len(list(directory.iterdir()))}.json"
    spec = {"key": ENCRYPTION_KEY.hex(), "header": ENCRYPTION_HEADER.hex(), **spec}
    path.write_text(json.dumps(spec))
    result: dict[str, Any] = json.loads(run_pyhamt(PYHAMT_ZARR_SCRIPT, str(path)))
    return result


def store_factory(encrypted: bool) -> StoreFactory:
    return encrypted_store if encrypted else plain_store


async def stored_values(hamt: HAMT) -> dict[str, str]:
    """sha256 of every stored value (ciphertext for the encrypted store), by key."""
    return {key: hashlib.sha256(await hamt.get(key)).hexdigest() async for key in hamt.keys()}


def memory_cas(blocks: dict[str, str]) -> InMemoryCAS:
    cas = InMemoryCAS()
    for block_id, data in blocks.items():
        cas.store[bytes.fromhex(block_id)] = bytes.fromhex(data)
    return cas


@pytest.fixture(scope="module")
def written_by_pyhamt(
    pyhamt: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[bool, bool], dict[str, Any]]:
    """py-hamt's writes, once per module (both backends read the same ones)."""
    directory = tmp_path_factory.mktemp("pyhamt-zarr")
    out: dict[tuple[bool, bool], dict[str, Any]] = {}
    for param in VARIANTS:
        encrypted, consolidated = cast("tuple[bool, bool]", param.values)
        spec = {
            "mode": "write",
            "cas": {"kind": "memory"},
            "encrypted": encrypted,
            "consolidated": consolidated,
        }
        written = run_pyhamt_spec(directory, spec)
        # py-hamt describes its own dataset: reopened read-only from its blocks.
        read_spec = {**spec, "mode": "read", "root": written["root"], "blocks": written["blocks"]}
        written["description"] = run_pyhamt_spec(directory, read_spec)["description"]
        out[encrypted, consolidated] = written
    return out


@pytest.mark.parametrize(("encrypted", "consolidated"), VARIANTS)
async def test_pyhamt_writes_anyhamt_reads(
    written_by_pyhamt: dict[tuple[bool, bool], dict[str, Any]],
    encrypted: bool,
    consolidated: bool,
) -> None:
    theirs = written_by_pyhamt[encrypted, consolidated]
    cas = memory_cas(theirs["blocks"])
    root = bytes.fromhex(theirs["root"])
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    assert await stored_values(hamt) == theirs["values"]
    if consolidated:
        assert "zarr.json" in theirs["values"]

    # The same keys and stored values make the same root in anyhamt.
    copy = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    async for key in hamt.keys():
        await copy.set(key, await hamt.get(key))
    await copy.make_read_only()
    assert copy.root_node_id.hex() == theirs["root"]

    factory = store_factory(encrypted)
    ours = await anyio.to_thread.run_sync(describe, factory(hamt, True))
    assert ours == theirs["description"]
    back = await open_dataset(cas, root, factory, consolidated=consolidated)
    xr.testing.assert_identical(back, pyhamt_expected_dataset())


@pytest.mark.usefixtures("pyhamt")
@pytest.mark.parametrize(("encrypted", "consolidated"), VARIANTS)
async def test_anyhamt_writes_pyhamt_reads(
    tmp_path: Path, encrypted: bool, consolidated: bool
) -> None:
    ds = sample_dataset()
    cas = InMemoryCAS()
    factory = store_factory(encrypted)
    root = await write_dataset(
        cas, ds, factory, mode="w", encoding=encoding(ds), consolidated=consolidated
    )
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    ours = await anyio.to_thread.run_sync(describe, factory(hamt, True))
    spec = {
        "mode": "read",
        "cas": {"kind": "memory"},
        "encrypted": encrypted,
        "consolidated": consolidated,
        "root": root.hex(),
        "blocks": {k.hex(): v.hex() for k, v in cas.store.items()},
    }
    theirs = await anyio.to_thread.run_sync(run_pyhamt_spec, tmp_path, spec)
    assert theirs["root"] == root.hex()
    assert theirs["values"] == await stored_values(hamt)
    assert theirs["description"] == ours
    # The description covers every variable xarray wrote, contents included.
    assert set(ours["arrays"]) == set(ds.variables)
    assert ours["attrs"] == ds.attrs
