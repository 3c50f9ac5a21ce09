"""CARv1 export and import with the local store (no daemon needed)."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import pytest

from anyhamt import (
    HAMT,
    BlockVerificationError,
    CarFormatError,
    InMemoryCAS,
    InvalidIdError,
    LocalCAS,
    export_car,
    import_car,
)
from anyhamt._codec import RAW, Link, make_link
from anyhamt.cas import read_car
from anyhamt.cas._car import write_car_header

if TYPE_CHECKING:
    from pathlib import Path


async def build(cas: LocalCAS, n: int = 400) -> Link:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(n):
        await hamt.set(f"k{i}", f"value-{i}".encode())
    await hamt.make_read_only()
    root: Link = Link(bytes(hamt.root_node_id))
    return root


async def test_export_then_import_into_another_store_gives_the_same_root(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "a.sqlite3") as source, LocalCAS(tmp_path / "b.sqlite3") as dest:
        root = await build(source)
        buffer = io.BytesIO()
        count = await export_car(source, root.to_cid(), buffer)
        assert count == sum(1 for _ in source.links())  # every block, each once
        roots = await import_car(dest, buffer.getvalue())
        assert roots == [root.to_cid()]
        hamt = await HAMT.build(
            cas=dest, root_node_id=roots[0], values_are_bytes=True, read_only=True
        )
        assert await hamt.get("k399") == b"value-399"
        assert await hamt.len() == 400


async def test_values_stored_as_unixfs_files_travel_whole(tmp_path: Path) -> None:
    """A value over one chunk is several blocks; the CAR must carry every one of them."""
    big = os.urandom(2 * 1024 * 1024 + 99)
    async with LocalCAS(tmp_path / "a.sqlite3") as source, LocalCAS(tmp_path / "b.sqlite3") as dest:
        hamt = await HAMT.build(cas=source, values_are_bytes=True)
        await hamt.set("big", big)
        await hamt.set("small", b"s")
        await hamt.make_read_only()
        pointer = await hamt.get_pointer("big")
        assert pointer.codec.name == "dag-pb"
        buffer = io.BytesIO()
        count = await export_car(source, hamt.root_node_id, buffer)
        assert count == sum(1 for _ in source.links())  # root node, small value, file blocks
        roots = await import_car(dest, buffer.getvalue())
        again = await HAMT.build(cas=dest, root_node_id=roots[0], values_are_bytes=True)
        assert await again.get("big") == big
        assert await again.get("big", offset=1024 * 1024 - 3, length=6) == big[1048573:1048579]


async def test_car_layout_is_header_then_root_first(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "a.sqlite3") as source:
        root = await build(source, 50)
        buffer = io.BytesIO()
        await export_car(source, root, buffer)
    data = buffer.getvalue()
    header = write_car_header([root])
    assert data.startswith(header)
    roots, blocks = read_car(data)
    assert roots == [root]
    first, _ = next(blocks)
    assert first == root


def test_corrupted_block_is_rejected() -> None:
    good = b"some block"
    link = make_link(RAW, good)
    section = link + b"some blocK"
    car = write_car_header([link]) + bytes([len(section)]) + section
    _, blocks = read_car(car)
    with pytest.raises(BlockVerificationError):
        list(blocks)


@pytest.mark.parametrize(
    "car",
    [
        b"",
        b"\x05abc",  # truncated header
        b"\x01\xa0",  # a header that is not {"roots", "version": 1}
    ],
)
def test_malformed_cars_are_rejected(car: bytes) -> None:
    with pytest.raises(CarFormatError):
        _, blocks = read_car(car)
        list(blocks)


def test_truncated_section_is_rejected() -> None:
    data = os.urandom(100)
    link = make_link(RAW, data)
    car = write_car_header([link]) + bytes([len(link) + len(data)]) + link + data[:50]
    _, blocks = read_car(car)
    with pytest.raises(CarFormatError, match="truncated"):
        list(blocks)


def test_carv2_is_read() -> None:
    data = b"inside a v2"
    link = make_link(RAW, data)
    v1 = write_car_header([link]) + bytes([len(link) + len(data)]) + link + data
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    offset = len(pragma) + 40
    fixed = bytes(16) + offset.to_bytes(8, "little") + len(v1).to_bytes(8, "little") + bytes(8)
    roots, blocks = read_car(pragma + fixed + v1)
    assert roots == [link]
    assert list(blocks) == [(link, data)]


async def test_import_into_a_store_whose_ids_are_not_cids_fails_clearly() -> None:
    data = b"x"
    link = make_link(RAW, data)
    car = write_car_header([link]) + bytes([len(link) + 1]) + link + data
    with pytest.raises(InvalidIdError):
        await import_car(InMemoryCAS(), car)
