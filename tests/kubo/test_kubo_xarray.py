"""xarray on IPFS: datasets through ``KuboCAS`` and a real daemon, and py-hamt interop.

The application pattern of tests/_zarr_datasets.py on the shared test daemon: write with
one ``KuboCAS``, reopen with a new one (a cold client, every block fetched from the
gateway and verified). py-hamt 3.6.0 (its own venv, its own ``KuboCAS``) is pointed at the
same daemon's URLs: what either library writes, the other reads identically, and the same
stored values make the same root CID in both.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
import xarray as xr
from _pyhamt import require_pyhamt, run_pyhamt
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
    require,
    sample_dataset,
    write_dataset,
)

from anyhamt import HAMT, KuboCAS

from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from _zarr_datasets import StoreFactory

    from ._daemon import KuboDaemon

pytestmark = [pytest.mark.kubo, CONSOLIDATED_V3_WARNING]

STORES = [
    pytest.param(plain_store, id="plain"),
    pytest.param(encrypted_store, id="encrypted"),
]


@pytest.fixture
async def reader_cas(kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
    """A second client: reads go to the gateway cold, nothing shared with the writer."""
    async with cas_for(kubo_daemon) as cas:
        yield cas


@pytest.mark.parametrize("consolidated", [True, False], ids=["consolidated", "unconsolidated"])
@pytest.mark.parametrize("store_factory", STORES)
async def test_round_trip_through_kubo_is_identical(
    kubo_cas: KuboCAS, reader_cas: KuboCAS, store_factory: StoreFactory, consolidated: bool
) -> None:
    ds = sample_dataset()
    root = await write_dataset(
        kubo_cas, ds, store_factory, mode="w", encoding=encoding(ds), consolidated=consolidated
    )
    assert str(root).startswith("bafyr4i")  # a dag-cbor blake3 CIDv1, as py-hamt writes
    back = await open_dataset(reader_cas, root, store_factory, consolidated=consolidated)
    xr.testing.assert_identical(back, ds)


async def test_append_and_lazy_reads_through_kubo(kubo_cas: KuboCAS, reader_cas: KuboCAS) -> None:
    full = sample_dataset(11)
    first = full.isel(time=slice(0, 6))
    root = await write_dataset(
        kubo_cas, first, mode="w", encoding=encoding(first), consolidated=True
    )
    root = await write_dataset(
        kubo_cas, full.isel(time=slice(6, None)), root=root, append_dim="time", consolidated=True
    )
    lazy = await open_dataset(reader_cas, root, load=False)
    assert isinstance(lazy["temp"].data, require("dask.array").Array)
    assert lazy["temp"].chunks == ((4, 4, 3), (3, 3), (4, 4))
    computed = await anyio.to_thread.run_sync(lazy.compute)
    xr.testing.assert_identical(computed, full)


# -- py-hamt 3.6.0 through the same daemon -----------------------------------------------

VARIANTS = [
    pytest.param(False, True, id="plain-consolidated"),
    pytest.param(True, False, id="encrypted-unconsolidated"),
]


@pytest.fixture(scope="module")
def pyhamt() -> str:
    return require_pyhamt()


def run_pyhamt_spec(directory: Path, daemon: KuboDaemon, spec: dict[str, Any]) -> dict[str, Any]:
    path = directory / f"spec-{len(list(directory.iterdir()))}.json"
    spec = {
        "cas": {"kind": "kubo", "rpc": daemon.rpc_url, "gateway": daemon.gateway_url},
        "key": ENCRYPTION_KEY.hex(),
        "header": ENCRYPTION_HEADER.hex(),
        **spec,
    }
    path.write_text(json.dumps(spec))
    result: dict[str, Any] = json.loads(run_pyhamt(PYHAMT_ZARR_SCRIPT, str(path)))
    return result


async def stored_values(hamt: HAMT) -> dict[str, str]:
    return {key: hashlib.sha256(await hamt.get(key)).hexdigest() async for key in hamt.keys()}


@pytest.fixture(scope="module")
def written_by_pyhamt(
    pyhamt: str, kubo_daemon: KuboDaemon, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[bool, bool], dict[str, Any]]:
    """py-hamt's writes to the daemon, once per module, with its own description."""
    directory = tmp_path_factory.mktemp("pyhamt-kubo-zarr")
    out: dict[tuple[bool, bool], dict[str, Any]] = {}
    for param in VARIANTS:
        encrypted, consolidated = param.values
        assert isinstance(encrypted, bool) and isinstance(consolidated, bool)
        spec = {"mode": "write", "encrypted": encrypted, "consolidated": consolidated}
        written = run_pyhamt_spec(directory, kubo_daemon, spec)
        read_spec = {**spec, "mode": "read", "root": written["root"]}
        written["description"] = run_pyhamt_spec(directory, kubo_daemon, read_spec)["description"]
        out[encrypted, consolidated] = written
    return out


@pytest.mark.parametrize(("encrypted", "consolidated"), VARIANTS)
async def test_pyhamt_writes_to_kubo_anyhamt_reads(
    written_by_pyhamt: dict[tuple[bool, bool], dict[str, Any]],
    kubo_cas: KuboCAS,
    reader_cas: KuboCAS,
    encrypted: bool,
    consolidated: bool,
) -> None:
    theirs = written_by_pyhamt[encrypted, consolidated]
    root = theirs["root"]
    hamt = await HAMT.build(
        cas=reader_cas, root_node_id=root, read_only=True, values_are_bytes=True
    )
    assert await stored_values(hamt) == theirs["values"]

    # Written again by anyhamt, the same stored values make the same root CID.
    copy = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    async for key in hamt.keys():
        await copy.set(key, await hamt.get(key))
    await copy.make_read_only()
    assert str(copy.root_node_id) == root

    factory = encrypted_store if encrypted else plain_store
    assert await anyio.to_thread.run_sync(describe, factory(hamt, True)) == theirs["description"]
    back = await open_dataset(reader_cas, root, factory, consolidated=consolidated)
    xr.testing.assert_identical(back, pyhamt_expected_dataset())


@pytest.mark.usefixtures("pyhamt")
@pytest.mark.parametrize(("encrypted", "consolidated"), VARIANTS)
async def test_anyhamt_writes_to_kubo_pyhamt_reads(
    kubo_daemon: KuboDaemon,
    kubo_cas: KuboCAS,
    tmp_path: Path,
    encrypted: bool,
    consolidated: bool,
) -> None:
    ds = sample_dataset(start="2022-02-02")
    factory = encrypted_store if encrypted else plain_store
    root = await write_dataset(
        kubo_cas, ds, factory, mode="w", encoding=encoding(ds), consolidated=consolidated
    )
    hamt = await HAMT.build(cas=kubo_cas, root_node_id=root, read_only=True, values_are_bytes=True)
    ours = await anyio.to_thread.run_sync(describe, factory(hamt, True))
    spec = {"mode": "read", "encrypted": encrypted, "consolidated": consolidated, "root": str(root)}
    theirs = await anyio.to_thread.run_sync(run_pyhamt_spec, tmp_path, kubo_daemon, spec)
    assert theirs["root"] == str(root)
    assert theirs["values"] == await stored_values(hamt)
    assert theirs["description"] == ours
    assert set(ours["arrays"]) == set(ds.variables)
