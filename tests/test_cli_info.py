"""`anyhamt info` and `anyhamt zarr info` on the local store (and on a Kubo URL where nothing
listens); `anyhamt zarr convert`'s failures that come before any conversion.

Expected figures come from an oracle independent of the code under test: a map's shape from
its keys' blake3 hashes (a node exists exactly for each hash prefix shared by more than
max_bucket_size keys), and its blocks from a CAR export, parsed here.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import anyio
import dag_cbor
import pytest
from _helpers import array_metadata, console_script, run_on_a_terminal
from blake3 import blake3

from anyhamt import HAMT, LocalCAS, cli, export_car
from anyhamt.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    from multiformats import CID

BUCKET = 4
LITTLE = {"endian": "little"}


# -- the command ---------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def files_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


def free_loopback_port() -> int:
    # Bound and closed at once: nothing listens there for the test's short life.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- oracles -------------------------------------------------------------------------------


def shape_from_hashes(keys: list[str]) -> tuple[int, int]:
    """(depth, nodes) of the canonical HAMT holding ``keys``, from their hashes alone."""
    hashes = [blake3(k.encode()).digest() for k in keys]
    nodes, depth, length = 1, 1, 1
    while True:
        counts: dict[bytes, int] = {}
        for h in hashes:
            counts[h[:length]] = counts.get(h[:length], 0) + 1
        crowded = sum(1 for n in counts.values() if n > BUCKET)
        if not crowded:
            return depth, nodes
        nodes += crowded
        depth += 1
        length += 1


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def car_blocks(car: bytes) -> list[tuple[int, int]]:
    """(codec, data length) of every block of a CARv1."""
    header_len, pos = _varint(car, 0)
    pos += header_len
    blocks = []
    while pos < len(car):
        section_len, pos = _varint(car, pos)
        end = pos + section_len
        _, cid_pos = _varint(car, pos)  # CID version 1
        codec, cid_pos = _varint(car, cid_pos)
        _, cid_pos = _varint(car, cid_pos)  # multihash function
        digest_len, cid_pos = _varint(car, cid_pos)
        blocks.append((codec, end - (cid_pos + digest_len)))
        pos = end
    return blocks


# -- fixtures ------------------------------------------------------------------------------


async def write_map(path: Path, items: dict[str, bytes]) -> str:
    async with LocalCAS(path) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        for key, value in items.items():
            await hamt.set(key, value)
        await hamt.make_read_only()
        return str(hamt.root_node_id)


async def car_of(path: Path, root: str) -> bytes:
    out = io.BytesIO()
    async with LocalCAS(path, read_only=True) as cas:
        await export_car(cas, root, out)
    return out.getvalue()


async def save_blocks(path: Path, blocks: list[tuple[bytes, str]]) -> list[str]:
    async with LocalCAS(path) as cas:
        ids = [str(await cas.save(data, codec)) for data, codec in blocks]  # type: ignore[arg-type]
        await cas.flush()
        return ids


def store_args(path: Path, backend: str = "asyncio") -> list[str]:
    return ["--store", str(path), "--backend", backend]


# -- anyhamt info ---------------------------------------------------------------------------


def test_info_reports_keys_depth_nodes_and_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    path = tmp_path / "blocks.sqlite3"
    # Two keys share a value: stored once, and counted once.
    items = {f"key-{i}": f"value {i}".encode() * (1 + i % 7) for i in range(700)}
    items["dup"] = items["key-0"]
    root = anyio.run(write_map, path, items, backend=anyio_backend)

    depth, nodes = shape_from_hashes(list(items))
    assert depth >= 2  # the fixture must exercise links, not just the root
    blocks = car_blocks(anyio.run(car_of, path, root, backend=anyio_backend))
    node_bytes = sum(n for codec, n in blocks if codec == 0x71)
    value_bytes = sum(n for codec, n in blocks if codec == 0x55)
    assert sum(1 for codec, _ in blocks if codec == 0x71) == nodes
    assert value_bytes == sum(len(v) for v in set(items.values()))

    status, out, err = run(capsys, "info", root, *store_args(path, anyio_backend))
    assert (status, err) == (0, "")
    assert out == (
        f"root    {root}\n"
        f"keys    {len(items):,}\n"
        f"depth   {depth} (levels of nodes)\n"
        f"nodes   {nodes:,} ({node_bytes:,} bytes)\n"
        f"values  {len(items) - 1:,} distinct blocks ({value_bytes:,} bytes)\n"
        f"stored  {node_bytes + value_bytes:,} bytes\n"
    )

    status, out, err = run(capsys, "info", root, "--json", *store_args(path, anyio_backend))
    assert (status, err) == (0, "")
    assert out.count("\n") == 1
    assert json.loads(out) == {
        "root": {"/": root},
        "keys": len(items),
        "depth": depth,
        "nodes": nodes,
        "node_bytes": node_bytes,
        "values": len(items) - 1,
        "value_bytes": value_bytes,
        "stored_bytes": node_bytes + value_bytes,
    }


def test_info_of_an_empty_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blocks.sqlite3"
    (root,) = anyio.run(save_blocks, path, [(b"\x99\x01\x00" + b"\xa0" * 256, "dag-cbor")])
    status, out, _ = run(capsys, "info", root, "--json", *store_args(path))
    assert status == 0
    assert json.loads(out) == {
        "root": {"/": root},
        "keys": 0,
        "depth": 1,
        "nodes": 1,
        "node_bytes": 259,
        "values": 0,
        "value_bytes": 0,
        "stored_bytes": 259,
    }
    assert root == "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc3m"


# -- anyhamt zarr info ------------------------------------------------------------------------


async def write_zarr(path: Path) -> tuple[str, dict[str, int]]:
    """A dataset with a chunk zarr does not store (all fill value); its root, and the size
    of every stored chunk by key."""
    import functools

    import numpy as np
    import xarray as xr

    from anyhamt.zarr import ZarrHAMTStore

    temp = np.arange(8 * 6 * 8, dtype="float32").reshape(8, 6, 8)
    temp[:4, :3, :4] = np.nan  # one whole chunk: zarr skips writing it
    ds = xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), temp, {"units": "K"}),
            "mask": (("lat", "lon"), np.ones((6, 8), dtype="int16")),
        },
        coords={"lat": np.linspace(-60.0, 60.0, 6), "lon": np.linspace(0.0, 350.0, 8)},
    )
    async with LocalCAS(path) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        store = ZarrHAMTStore(hamt)
        write = functools.partial(
            ds.to_zarr,
            store=store,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"temp": {"chunks": (4, 3, 4)}},
        )
        await anyio.to_thread.run_sync(write)
        await hamt.make_read_only()
        sizes = {}
        async for key in hamt.keys():
            if not key.endswith("zarr.json"):
                sizes[key] = len(await hamt.get(key))
        return str(hamt.root_node_id), sizes


ZARR_ARRAYS = {
    "lat": ("float64", [6], [6], 1),
    "lon": ("float64", [8], [8], 1),
    "mask": ("int16", [6, 8], [6, 8], 1),
    "temp": ("float32", [8, 6, 8], [4, 3, 4], 8),
}


def test_zarr_info_of_a_hamt_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    pytest.importorskip("xarray")
    path = tmp_path / "blocks.sqlite3"
    root, sizes = anyio.run(write_zarr, path, backend=anyio_backend)
    assert "temp/c/0/0/0" not in sizes and "temp/c/1/1/1" in sizes  # the skipped chunk

    status, out, err = run(capsys, "zarr", "info", root, "--json", *store_args(path, anyio_backend))
    assert (status, err) == (0, "")
    info = json.loads(out)
    assert info["root"] == {"/": root} and info["layout"] == "hamt"
    assert info["groups"] == [""] and info["other_keys"] == []
    assert [a["path"] for a in info["arrays"]] == sorted(ZARR_ARRAYS)
    for array in info["arrays"]:
        dtype, shape, chunks, total = ZARR_ARRAYS[array["path"]]
        present = sum(1 for key in sizes if key.startswith(array["path"] + "/c/"))
        assert array == {
            "path": array["path"],
            "zarr_format": 3,
            "shape": shape,
            "chunks": chunks,
            "dtype": dtype,
            "codecs": ["bytes", "zstd"],
            "sharded": False,
            "chunks_total": total,
            "chunks_present": present,
            "chunks_missing": total - present,
            "chunk_bytes": sum(n for k, n in sizes.items() if k.startswith(array["path"] + "/")),
        }
    temp = next(a for a in info["arrays"] if a["path"] == "temp")
    assert (temp["chunks_present"], temp["chunks_missing"]) == (7, 1)
    assert info["chunk_bytes"] == sum(sizes.values())

    # The same bytes as `anyhamt info` counts for the map under it.
    status, out, _ = run(capsys, "info", root, "--json", *store_args(path))
    hamt = json.loads(out)
    assert (info["keys"], info["depth"], info["nodes"]) == (
        hamt["keys"],
        hamt["depth"],
        hamt["nodes"],
    )
    assert info["index_bytes"] == hamt["node_bytes"]
    assert info["metadata_bytes"] + info["chunk_bytes"] == hamt["value_bytes"]
    assert info["stored_bytes"] == hamt["stored_bytes"]

    # The table says the same.
    status, out, _ = run(capsys, "zarr", "info", root, *store_args(path))
    assert status == 0
    assert f"layout  HAMT ({hamt['keys']} keys, depth 1, 1 nodes)" in out
    assert re.search(
        r"^  temp +float32, shape 8x6x8, chunks 4x3x4, codecs bytes, zstd\n"
        rf" +chunks 7 of 8 stored, 1 missing, {temp['chunk_bytes']:,} bytes$",
        out,
        re.MULTILINE,
    ), out


async def write_zarr_format_2(path: Path) -> str:
    """A Zarr format 2 dataset (".zarray", chunk keys "v/0.0"), plus a key that is not Zarr."""
    import functools

    import numpy as np
    import xarray as xr

    from anyhamt.zarr import ZarrHAMTStore

    ds = xr.Dataset({"v": (("t", "x"), np.arange(20, dtype="float32").reshape(4, 5))})
    async with LocalCAS(path) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        write = functools.partial(
            ds.to_zarr,
            store=ZarrHAMTStore(hamt),
            mode="w",
            zarr_format=2,
            consolidated=False,
            encoding={"v": {"chunks": (2, 5)}},
        )
        await anyio.to_thread.run_sync(write)
        await hamt.set("notes/readme.txt", b"not part of the dataset")
        await hamt.make_read_only()
        return str(hamt.root_node_id)


def test_zarr_info_of_a_format_2_dataset_with_a_stray_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("xarray")
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_zarr_format_2, path)
    status, out, err = run(capsys, "zarr", "info", root, "--json", *store_args(path))
    assert (status, err) == (0, "")
    info = json.loads(out)
    (array,) = info["arrays"]
    assert {k: array[k] for k in ("path", "zarr_format", "shape", "chunks", "dtype")} == {
        "path": "v",
        "zarr_format": 2,
        "shape": [4, 5],
        "chunks": [2, 5],
        "dtype": "<f4",
    }
    assert array["codecs"] and (array["chunks_present"], array["chunks_missing"]) == (2, 0)
    assert info["other_keys"] == ["notes/readme.txt"]
    assert info["other_bytes"] == len(b"not part of the dataset")
    status, out, _ = run(capsys, "info", root, "--json", *store_args(path))
    assert json.loads(out)["stored_bytes"] == info["stored_bytes"]
    status, out, _ = run(capsys, "zarr", "info", root, *store_args(path))
    assert "other keys  notes/readme.txt (23 bytes)" in out


def _shard_blocks(links: list[CID | None], per_shard: int) -> list[Any]:
    padded = links + [None] * (-len(links) % per_shard)
    return [padded[i : i + per_shard] for i in range(0, len(padded), per_shard)]


async def write_sharded_roots(path: Path) -> dict[str, Any]:
    """Sharded roots in the layouts py-hamt 3.6.0 writes (v1 and v2), built by hand from
    blocks in the store: array "temp" (shape 4x6, chunks 2x2: 2x3 chunk grid) with chunks
    (0,0), (0,2) and (1,1); coordinate "x" (one chunk)."""

    def zarr_json(shape: list[int], chunks: list[int], dtype: str) -> bytes:
        return array_metadata(shape, chunks, dtype, [{"name": "bytes", "configuration": LITTLE}])

    group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
    async with LocalCAS(path) as cas:

        async def raw(data: bytes) -> CID:
            return await cas.save(data, "raw")

        metadata = {
            "zarr.json": await raw(group),
            "temp/zarr.json": await raw(zarr_json([4, 6], [2, 2], "int32")),
            "x/zarr.json": await raw(zarr_json([6], [6], "float64")),
        }
        chunk = {i: await raw(bytes([i]) * (10 + i)) for i in range(3)}
        x_chunk = await raw(b"x" * 48)
        x_shard: list[Any] = [x_chunk, None, None, None]
        # Linear (C-order) index over the 2x3 grid: (0,0)=0, (0,2)=2, (1,1)=4.
        linear: list[CID | None] = [chunk[0], None, chunk[1], None, chunk[2], None]
        shard_ids = [
            await cas.save(dag_cbor.encode(shard), "dag-cbor") for shard in _shard_blocks(linear, 4)
        ]
        v2: dict[str, Any] = {
            "manifest_version": "sharded_zarr_v2",
            "store_type": "py_hamt.sharded_zarr",
            "zarr_format": 3,
            "sharding_config": {"chunks_per_shard": 4, "order": "C"},
            "metadata": metadata,
            "arrays": {
                "temp": {
                    "array_shape": [4, 6],
                    "chunk_shape": [2, 2],
                    "sharding_config": {"chunks_per_shard": 4, "order": "C"},
                    "shard_cids": shard_ids,
                },
                "x": {
                    "array_shape": [6],
                    "chunk_shape": [6],
                    "sharding_config": {"chunks_per_shard": 4, "order": "C"},
                    "shard_cids": [await cas.save(dag_cbor.encode(x_shard), "dag-cbor")],
                },
            },
        }
        v1: dict[str, Any] = {
            "manifest_version": "sharded_zarr_v1",
            "metadata": {**metadata, "x/c/0": x_chunk},
            "chunks": {
                "array_shape": [4, 6],
                "chunk_shape": [2, 2],
                "sharding_config": {"chunks_per_shard": 4},
                "shard_cids": shard_ids,
                "primary_array_path": "temp",
            },
        }
        # A v1 root written before py-hamt recorded primary_array_path: the sharded array is
        # the one whose metadata has the index's geometry.
        legacy = {
            **v1,
            "chunks": {k: v for k, v in v1["chunks"].items() if k != "primary_array_path"},
        }
        roots = {
            "v2": await cas.save(dag_cbor.encode(v2), "dag-cbor"),
            "v1": await cas.save(dag_cbor.encode(v1), "dag-cbor"),
            "v1-legacy": await cas.save(dag_cbor.encode(legacy), "dag-cbor"),
        }
        shard_bytes = [len(await cas.load(s)) for s in shard_ids]
        sizes = {
            "chunks": sum(10 + i for i in range(3)),
            "metadata": sum([len(await cas.load(m)) for m in metadata.values()]),
            "v1_index": len(dag_cbor.encode(v1)) + sum(shard_bytes),
            "v1-legacy_index": len(dag_cbor.encode(legacy)) + sum(shard_bytes),
            "v2_index": len(dag_cbor.encode(v2)) + sum(shard_bytes) + len(dag_cbor.encode(x_shard)),
        }
        await cas.flush()
    return {"roots": {k: str(v) for k, v in roots.items()}, "sizes": sizes}


@pytest.mark.parametrize("version", ["v1", "v2", "v1-legacy"])
def test_zarr_info_of_sharded_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str, version: str
) -> None:
    path = tmp_path / "blocks.sqlite3"
    made = anyio.run(write_sharded_roots, path, backend=anyio_backend)
    sizes = made["sizes"]
    root = made["roots"][version]
    status, out, err = run(capsys, "zarr", "info", root, "--json", *store_args(path, anyio_backend))
    assert (status, err) == (0, "")
    info = json.loads(out)
    layout = "sharded_zarr_" + version.removesuffix("-legacy")
    assert info["layout"] == layout
    assert info["chunks_per_shard"] == 4
    assert (info["shards"], info["shards_present"]) == ((3, 3) if version == "v2" else (2, 2))
    temp, x = info["arrays"]
    assert temp == {
        "path": "temp",
        "zarr_format": 3,
        "shape": [4, 6],
        "chunks": [2, 2],
        "dtype": "int32",
        "codecs": ["bytes"],
        "sharded": True,
        "chunks_total": 6,
        "chunks_present": 3,
        "chunks_missing": 3,
        "chunk_bytes": sizes["chunks"],
    }
    # v1 shards only the primary array; the others' chunks sit in the root's metadata map.
    assert x["path"] == "x" and x["sharded"] is (version == "v2")
    assert (x["chunks_present"], x["chunks_missing"], x["chunk_bytes"]) == (1, 0, 48)
    assert info["metadata_bytes"] == sizes["metadata"]
    assert info["index_bytes"] == sizes[f"{version}_index"]
    assert info["stored_bytes"] == sizes["metadata"] + sizes["chunks"] + 48 + info["index_bytes"]

    status, out, _ = run(capsys, "zarr", "info", root, *store_args(path))
    assert status == 0
    assert f"layout  {layout} (4 chunks per shard, " in out
    assert "chunks 3 of 6 stored, 3 missing" in out


# -- failures -----------------------------------------------------------------------------


def one_line_error(err: str, kind: str) -> str:
    assert err.startswith(f"anyhamt: {kind}: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", [["info"], ["zarr", "info"], ["zarr", "convert"]])
def test_a_root_the_store_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = tmp_path / "blocks.sqlite3"
    anyio.run(write_map, path, {"k": b"v"})
    absent = "bafyr4iab3rslxymgptusk6c6xhy55d2vw6uuvg2nnjyveuagr5a5xzjhwu"
    status, out, err = run(capsys, *command, absent, *store_args(path))
    assert (status, out) == (1, "")
    assert f"no block {absent} in the store" in one_line_error(err, "BlockNotFoundError")


@pytest.mark.parametrize("command", [["info"], ["zarr", "info"], ["zarr", "convert"]])
def test_a_root_that_is_not_a_cid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = tmp_path / "blocks.sqlite3"
    anyio.run(write_map, path, {"k": b"v"})
    status, _, err = run(capsys, *command, "not-a-cid", *store_args(path))
    assert status == 1
    assert "ROOT 'not-a-cid' is not a CID" in one_line_error(err, "InvalidIdError")


@pytest.mark.parametrize("command", [["info"], ["zarr", "info"], ["zarr", "convert"]])
def test_a_root_that_is_a_value_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = tmp_path / "blocks.sqlite3"
    (value,) = anyio.run(save_blocks, path, [(b"just bytes", "raw")])
    status, _, err = run(capsys, *command, value, *store_args(path))
    assert status == 1
    assert "is neither a HAMT root nor a sharded Zarr root" in one_line_error(err, "InvalidIdError")


@pytest.mark.parametrize("command", [["zarr", "info"], ["zarr", "convert"]])
def test_a_map_that_is_not_a_zarr_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_map, path, {"k": b"v", "zarr.jsonx": b"{}"})
    status, out, err = run(capsys, *command, root, *store_args(path))
    assert (status, out) == (1, "")
    assert "no Zarr metadata" in one_line_error(err, "InvalidIdError")


def test_info_of_a_sharded_root_points_to_zarr_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_sharded_roots, path)["roots"]["v2"]
    status, _, err = run(capsys, "info", root, *store_args(path))
    assert status == 1
    assert "`anyhamt zarr info` describes it" in one_line_error(err, "InvalidIdError")


@pytest.mark.parametrize("n", ["0", "-3", "many", "2.5"])
def test_a_bad_chunks_per_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: str) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_map, path, {"k": b"v"})
    status, out, err = run(
        capsys, "zarr", "convert", root, f"--chunks-per-shard={n}", *store_args(path)
    )
    assert (status, out) == (1, "")
    assert f"--chunks-per-shard must be a positive integer, got {n!r}" in one_line_error(
        err, "InvalidConfigError"
    )


@pytest.mark.parametrize(
    "command",
    [["info", "{root}"], ["zarr", "info", "{root}"], ["zarr", "convert", "{root}"]],
    ids=["info", "zarr-info", "zarr-convert"],
)
def test_no_command_here_creates_a_store(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    root = anyio.run(write_map, tmp_path / "real.sqlite3", {"k": b"v"})
    argv = [part.format(root=root) for part in command]
    before = files_under(tmp_path)
    typo = tmp_path / "typo" / "blocks.sqlite3"
    status, out, err = run(capsys, *argv, "--store", str(typo))
    assert (status, out) == (1, "")
    assert one_line_error(err, "StoreError").startswith(
        f"anyhamt: StoreError: no store at {typo}; "
    )
    home = tmp_path / "home"
    monkeypatch.setenv("ANYHAMT_HOME", str(home))
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert err.startswith(f"anyhamt: StoreError: no store at {home / 'blocks.sqlite3'}; ")
    assert files_under(tmp_path) == before


def test_info_commands_open_the_store_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_sharded_roots, path)["roots"]["v2"]
    map_root = anyio.run(write_map, path, {"k": b"v"})
    opened: list[bool] = []

    class Recording(LocalCAS):
        def __init__(self, path: Any, **kwargs: Any) -> None:
            super().__init__(path, **kwargs)
            opened.append(self.read_only)

    monkeypatch.setattr(cli, "LocalCAS", Recording)
    assert run(capsys, "info", map_root, *store_args(path))[0] == 0
    assert run(capsys, "zarr", "info", root, *store_args(path))[0] == 0
    assert opened == [True, True]


@pytest.mark.parametrize(
    "command",
    [["info", "bafkqaaa"], ["zarr", "info", "bafkqaaa"], ["zarr", "convert", "bafkqaaa"]],
    ids=["info", "zarr-info", "zarr-convert"],
)
def test_kubo_where_nothing_listens(
    capsys: pytest.CaptureFixture[str], anyio_backend: str, command: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    status, out, err = run(capsys, *command, "--kubo", url, "--backend", anyio_backend)
    assert (status, out) == (1, "")
    assert err == (
        f"anyhamt: KuboError: no Kubo RPC answering at {url} (connection refused); start one "
        "with `ipfs daemon` (see the README), or pass the right --kubo URL\n"
    )


def test_help_documents_every_option_and_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYHAMT_HOME", str(tmp_path))
    expected = {
        ("info",): ["--json", "--quiet", "(default:abaronstderrwhileitisaterminal)"],
        ("zarr", "info"): ["--json", "--quiet"],
        ("zarr", "convert"): [
            "--quiet",
            "--chunks-per-shard",
            "(default:6250,",
            "--manifest-version",
            "(default:sharded_zarr_v2,",
        ],
    }
    for command, needles in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert re.search(r"^  ROOT +\S", text, re.MULTILINE), text
        # argparse wraps long lines (also inside a path): compare without whitespace.
        flat = "".join(text.split())
        for needle in [*needles, f"(default:{tmp_path / 'blocks.sqlite3'};", "--kubo"]:
            assert needle in flat, (command, needle, text)
    with pytest.raises(SystemExit):
        main(["zarr", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"^    info +\S", text, re.MULTILINE)
    assert re.search(r"^    convert +\S", text, re.MULTILINE)


# -- progress ------------------------------------------------------------------------------


@pytest.mark.parametrize("sized", [True, False], ids=["sized", "unsized"])
def test_progress_bar_only_on_a_terminal_and_not_with_quiet(tmp_path: Path, sized: bool) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(write_map, path, {f"k{i}": b"v%d" % i for i in range(300)})
    store = ["--store", str(path)]

    argv = [console_script(), "info", root, "--json", *store]
    status, err, out = run_on_a_terminal(argv, terminal="stderr", sized=sized)
    assert status == 0 and json.loads(out)["keys"] == 300
    assert b"reading nodes" in err and b"sizing values" in err

    status, err, out = run_on_a_terminal([*argv, "--quiet"], terminal="stderr", sized=sized)
    assert status == 0 and json.loads(out)["keys"] == 300
    assert err == b""

    piped = subprocess.run(
        [console_script(), "info", root, *store], capture_output=True, timeout=120, check=False
    )
    assert piped.returncode == 0 and piped.stderr == b""
    assert b"keys    300\n" in piped.stdout


def test_help_mentions_the_new_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert re.search(r"^    info +\S", text, re.MULTILINE)
    assert re.search(r"^    zarr +\S", text, re.MULTILINE)


def test_convert_shows_its_progress_on_a_terminal(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    path = tmp_path / "blocks.sqlite3"
    root, _ = anyio.run(write_zarr, path)
    argv = [console_script(), "zarr", "convert", root, "--chunks-per-shard", "4"]
    argv += ["--store", str(path)]
    status, err, out = run_on_a_terminal(argv, terminal="stderr")
    assert status == 0 and out.decode().startswith("bafyr4i")
    assert b"reading nodes" in err and b"copying pointers" in err
    status, err, again = run_on_a_terminal([*argv, "--quiet"], terminal="stderr")
    assert (status, again) == (0, out)
    # No progress output. (stderr may still carry a library's import-time warning: with
    # the lowest declared zarr, numcodecs warns about crc32c when zarr is imported.)
    assert not any(bar in err for bar in (b"reading nodes", b"copying pointers", b"%|"))
