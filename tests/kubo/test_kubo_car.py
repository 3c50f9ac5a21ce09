"""CAR interop with Kubo: `ipfs dag export` / `ipfs dag import` and the local store."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import httpx
import pytest

from anyhamt import HAMT, KuboCAS, LocalCAS, export_car, import_car

from ._helpers import cas_for

if TYPE_CHECKING:
    from pathlib import Path

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


def dag_import(daemon: KuboDaemon, car: bytes) -> dict[str, object]:
    response = httpx.post(
        f"{daemon.rpc_url}/api/v0/dag/import",
        params={"pin-roots": "false", "stats": "true"},
        files={"file": ("dag.car", car, "application/vnd.ipld.car")},
        timeout=60,
    )
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


def dag_export(daemon: KuboDaemon, root: object) -> bytes:
    response = httpx.post(
        f"{daemon.rpc_url}/api/v0/dag/export", params={"arg": str(root)}, timeout=60
    )
    response.raise_for_status()
    return response.content


async def write_hamt(cas: object, n: int, big: bool = False) -> object:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(n):
        await hamt.set(f"k{i}", f"value-{i}".encode())
    if big:
        await hamt.set("big", bytes(range(256)) * 5000)  # over the chunk size on Kubo
    await hamt.make_read_only()
    return hamt.root_node_id


async def test_written_offline_imported_into_kubo_same_root(
    kubo_daemon: KuboDaemon, kubo_cas: KuboCAS, tmp_path: Path
) -> None:
    async with LocalCAS(tmp_path / "offline.sqlite3") as local:
        root = await write_hamt(local, 500)
        car = io.BytesIO()
        await export_car(local, root, car)
    stats = dag_import(kubo_daemon, car.getvalue())
    assert stats["Stats"]["BlockCount"] > 500  # type: ignore[index]
    # Kubo's own export of that root is byte for byte what we wrote.
    assert dag_export(kubo_daemon, root) == car.getvalue()
    hamt = await HAMT.build(cas=kubo_cas, root_node_id=root, values_are_bytes=True, read_only=True)
    assert await hamt.get("k123") == b"value-123"
    assert await hamt.len() == 500


async def test_kubo_dag_export_imports_into_the_local_store(
    kubo_daemon: KuboDaemon, kubo_cas: KuboCAS, tmp_path: Path
) -> None:
    root = await write_hamt(kubo_cas, 300, big=True)
    car = dag_export(kubo_daemon, root)
    async with LocalCAS(tmp_path / "copy.sqlite3") as local:
        assert await import_car(local, car) == [root]
        hamt = await HAMT.build(cas=local, root_node_id=root, values_are_bytes=True, read_only=True)
        assert await hamt.get("k7") == b"value-7"
        # Our export from Kubo matches Kubo's, dag-pb value blocks included.
        ours = io.BytesIO()
        await export_car(kubo_cas, root, ours)
        assert ours.getvalue() == car


async def test_car_import_into_kubo_through_kubocas(
    kubo_daemon: KuboDaemon, tmp_path: Path
) -> None:
    async with LocalCAS(tmp_path / "offline.sqlite3") as local:
        root = await write_hamt(local, 200)
        car = io.BytesIO()
        await export_car(local, root, car)
    async with cas_for(kubo_daemon) as cas:
        assert await import_car(cas, car.getvalue()) == [root]
        assert not cas._pending  # flushed: every block confirmed by Kubo
    async with cas_for(kubo_daemon) as fresh:
        hamt = await HAMT.build(cas=fresh, root_node_id=root, values_are_bytes=True, read_only=True)
        assert await hamt.get("k199") == b"value-199"
