"""Byte ranges of values stored as UnixFS files: only the blocks a range covers are read.

The walk is checked two ways: against a dict of blocks built by ``build_file`` (or by hand,
for shapes other tools make), read through a getter that verifies each block and records
what it was asked for; and through ``LocalCAS``, counting the blocks it reads with a
subclass whose ``_block`` (the verified single-block read every file read goes through)
records each call. Every range is compared with ``slice_block`` of the whole value: over a
dense grid at block edges for fixed shapes, and for random trees and ranges (hypothesis).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyhamt import (
    HAMT,
    BlockNotFoundError,
    BlockVerificationError,
    CorruptBlockError,
    InMemoryCAS,
    InvalidRangeError,
    Link,
    LocalCAS,
)
from anyhamt._codec import DAG_PB, RAW, encode_varint, make_link, verify_block
from anyhamt.cas._base import slice_block
from anyhamt.cas._unixfs import (
    MAX_LINKS,
    build_file,
    decode_pb_node,
    decode_unixfs_data,
    file_size,
    read_file,
    read_file_range,
)

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

CHUNK = 64  # small leaves make multi-level trees cheap


class Blocks:
    """A block getter over a dict: verifies every block, records every request."""

    def __init__(self, blocks: dict[Link, bytes]) -> None:
        self.blocks = blocks
        self.fetched: list[Link] = []

    async def get(self, link: Link) -> bytes:
        self.fetched.append(link)
        await anyio.lowlevel.checkpoint()
        try:
            data = self.blocks[link]
        except KeyError:
            raise BlockNotFoundError(str(link)) from None
        verify_block(link, data)
        return data


class Stored(NamedTuple):
    root: Link
    data: bytes
    blocks: dict[Link, bytes]


def build(data: bytes, chunk_size: int = CHUNK) -> Stored:
    root, blocks = build_file(data, chunk_size, make_link)
    return Stored(root, data, {link: block for link, _, block in blocks})


def _pb(fields: Iterable[tuple[int, int | bytes]]) -> bytes:
    """A protobuf message from (field number, int or bytes) pairs, in the order given."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += encode_varint(number << 3) + encode_varint(value)
        else:
            out += encode_varint(number << 3 | 2) + encode_varint(len(value)) + value
    return bytes(out)


def file_node(
    children: list[tuple[bytes, int]],
    inline: bytes = b"",
    *,
    kind: int = 2,
    filesize: int | None = None,
    sizes: list[int] | None = None,
) -> bytes:
    """A dag-pb UnixFS node: ``children`` as (Hash, size), optional inline data;
    ``filesize``/``sizes`` override what the node declares (to make corrupt nodes)."""
    sizes = [size for _, size in children] if sizes is None else sizes
    declared = len(inline) + sum(sizes) if filesize is None else filesize
    unixfs: list[tuple[int, int | bytes]] = [(1, kind)]
    if inline:
        unixfs.append((2, inline))
    unixfs += [(3, declared), *((4, size) for size in sizes)]
    links = [(2, _pb([(1, link), (2, b""), (3, size)])) for link, size in children]
    return _pb([*links, (1, _pb(unixfs))])


class Builder:
    """Hand-built trees in shapes ``build_file`` never makes (other tools do)."""

    def __init__(self) -> None:
        self.blocks: dict[Link, bytes] = {}

    def raw(self, data: bytes) -> tuple[bytes, int]:
        link = make_link(RAW, data)
        self.blocks[link] = data
        return link, len(data)

    def node(
        self,
        children: list[tuple[bytes, int]],
        inline: bytes = b"",
        *,
        kind: int = 2,
        filesize: int | None = None,
        sizes: list[int] | None = None,
    ) -> tuple[Link, int]:
        block = file_node(children, inline, kind=kind, filesize=filesize, sizes=sizes)
        link = make_link(DAG_PB, block)
        self.blocks[link] = block
        return link, len(inline) + sum(size for _, size in children)

    def v0_node(self, inline: bytes) -> tuple[bytes, int]:
        """A dag-pb leaf named, as older tools name it, by a CIDv0: a bare sha2-256
        multihash in the parent's link."""
        block = file_node([], inline)
        multihash = b"\x12\x20" + hashlib.sha256(block).digest()
        self.blocks[Link(bytes([0x01, DAG_PB]) + multihash)] = block
        return multihash, len(inline)

    def stored(self, root: tuple[Link, int], data: bytes) -> Stored:
        return Stored(root[0], data, self.blocks)


def mixed_tree() -> Stored:
    """Inline data in the root, raw leaves, dag-pb leaves with inline data ("file" and
    "raw" UnixFS types, one named by a CIDv0), an empty leaf and an internal node."""
    rng = random.Random(7)
    p = [rng.randbytes(n) for n in (5, 30, 17, 40, 9, 23, 11)]
    b = Builder()
    sub = b.node([b.raw(p[3]), b.node([], p[4]), b.raw(b"")])
    root = b.node(
        [b.node([], p[1]), b.node([], p[2], kind=0), b.v0_node(p[5]), sub, b.raw(p[6])], p[0]
    )
    return b.stored(root, p[0] + p[1] + p[2] + p[5] + p[3] + p[4] + p[6])


def shapes() -> dict[str, Stored]:
    rng = random.Random(1)
    one_leaf, inline_only = Builder(), Builder()
    small = rng.randbytes(100)
    return {
        # A dag-pb root over one raw leaf (build_file keeps such a value one raw block).
        "one-leaf": one_leaf.stored(one_leaf.node([one_leaf.raw(small)]), small),
        "inline-only": inline_only.stored(inline_only.node([], small), small),
        "several-leaves": build(rng.randbytes(5 * CHUNK + 17)),
        # 174 leaves fill a node, so this is a root over three subtrees of leaves.
        "two-levels": build(rng.randbytes(2 * MAX_LINKS * CHUNK + 5 * CHUNK + 3)),
        "mixed": mixed_tree(),
    }


def leaf_edges(stored: Stored) -> list[int]:
    """File offsets where one block's bytes end and the next one's begin."""
    edges: list[int] = []

    def walk(link: Link, start: int) -> int:
        block = stored.blocks[link]
        if link.codec == RAW:
            return start + len(block)
        node = decode_pb_node(block)
        unixfs = decode_unixfs_data(node.data)
        pos = start + len(unixfs.data)
        edges.append(pos)
        for child, _ in node.links:
            pos = walk(child, pos)
            edges.append(pos)
        return pos

    walk(stored.root, 0)
    return sorted(set(edges))


def positions(stored: Stored) -> list[int]:
    size = len(stored.data)
    edges = leaf_edges(stored)
    # Every edge of a small file; of a big one the first and last few and the subtree edges.
    if len(edges) > 40:
        edges = edges[:6] + edges[-6:] + [MAX_LINKS * CHUNK, 2 * MAX_LINKS * CHUNK]
    points = {0, 1, size // 2, size - 1, size, size + 1, size + 1000}
    for edge in edges:
        points.update((edge - 1, edge, edge + 1))
    return sorted(p for p in points if p >= 0)


def lengths(stored: Stored) -> list[int | None]:
    size = len(stored.data)
    return [None, 0, 1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, size, size + 1]


SHAPES = shapes()


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_every_range_equals_a_slice_of_the_whole(shape: str) -> None:
    stored = SHAPES[shape]
    getter = Blocks(stored.blocks)
    assert await read_file(stored.root, getter.get) == stored.data
    assert file_size(stored.blocks[stored.root]) == len(stored.data)
    for offset in [None, *positions(stored)]:
        for length in lengths(stored):
            got = await read_file_range(stored.root, getter.get, offset, length)
            assert got == slice_block(stored.data, offset, length), (offset, length)
    for suffix in [*positions(stored), 10 * len(stored.data) + 7]:
        got = await read_file_range(stored.root, getter.get, suffix=suffix)
        assert got == slice_block(stored.data, suffix=suffix), suffix
    assert await read_file_range(stored.root, getter.get) == stored.data


def covering_blocks(stored: Stored, start: int, end: int) -> set[Link]:
    """Independently of the code under test: every block whose bytes overlap start:end,
    plus every node on the way to them (a node's span is all the bytes under it)."""
    found: set[Link] = set()

    def walk(link: Link, pos: int) -> int:
        block = stored.blocks[link]
        if link.codec == RAW:
            size = len(block)
            if pos < end and pos + size > start and size:
                found.add(link)
            return pos + size
        node = decode_pb_node(block)
        first = pos
        pos += len(decode_unixfs_data(node.data).data)
        for child, _ in node.links:
            pos = walk(child, pos)
        if first < end and pos > start:
            found.add(link)
        return pos

    walk(stored.root, 0)
    return found


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(2, 4000),
    chunk=st.integers(1, 200),
    offset=st.none() | st.integers(0, 4100),
    length=st.none() | st.integers(0, 4100),
    suffix=st.none() | st.integers(0, 4100),
)
async def test_any_range_of_any_balanced_tree(
    size: int, chunk: int, offset: int | None, length: int | None, suffix: int | None
) -> None:
    chunk = min(chunk, size - 1)  # over one chunk: a dag-pb file, not a single raw block
    stored = build(random.Random(size).randbytes(size), chunk)
    if suffix is not None:
        offset = length = None
    getter = Blocks(stored.blocks)
    got = await read_file_range(stored.root, getter.get, offset, length, suffix)
    assert got == slice_block(stored.data, offset, length, suffix)
    if suffix is not None:
        start = size - suffix if 0 < suffix <= size else (0 if suffix else size)
    else:
        start = min(offset or 0, size)
    end = start + len(got)
    expected = covering_blocks(stored, start, end) if got else {stored.root}
    assert set(getter.fetched) == expected
    assert len(getter.fetched) == len(expected)  # equal chunks share a block: read once


async def test_a_small_range_reads_root_path_and_covered_leaves() -> None:
    stored = SHAPES["two-levels"]
    subtree = MAX_LINKS * CHUNK
    cases = {
        # (offset, length): blocks read = root + internal nodes on the path + leaves
        (10, 5): 1 + 1 + 1,  # inside the first leaf
        (CHUNK - 2, 4): 1 + 1 + 2,  # across two leaves of one subtree
        (subtree - 3, 6): 1 + 2 + 2,  # across the edge between two subtrees
        (subtree + 2 * CHUNK, CHUNK): 1 + 1 + 1,  # exactly one leaf
        (len(stored.data) - 1, 100): 1 + 1 + 1,  # the last byte
    }
    for (offset, length), count in cases.items():
        getter = Blocks(stored.blocks)
        got = await read_file_range(stored.root, getter.get, offset, length)
        assert got == stored.data[offset : offset + length]
        assert len(getter.fetched) == count, (offset, length)
        assert set(getter.fetched) == covering_blocks(stored, offset, offset + length)
        assert len(set(getter.fetched)) == len(getter.fetched)  # nothing fetched twice


@pytest.mark.parametrize("shape", ["two-levels", "mixed"])
async def test_blocks_read_are_exactly_those_covering_the_range(shape: str) -> None:
    stored = SHAPES[shape]
    rng = random.Random(3)
    size = len(stored.data)
    for _ in range(60):
        start = rng.randrange(size)
        length = rng.choice([1, 7, CHUNK, 5 * CHUNK, size])
        getter = Blocks(stored.blocks)
        got = await read_file_range(stored.root, getter.get, start, length)
        assert got == stored.data[start : start + length]
        end = min(start + length, size)
        assert sorted(getter.fetched) == sorted(covering_blocks(stored, start, end))


async def test_empty_and_past_the_end_ranges_read_only_the_root() -> None:
    stored = SHAPES["two-levels"]
    size = len(stored.data)
    for offset, length, suffix in [
        (0, 0, None),
        (size, None, None),
        (size + 9, 4, None),
        (None, None, 0),
    ]:
        getter = Blocks(stored.blocks)
        assert await read_file_range(stored.root, getter.get, offset, length, suffix) == b""
        assert getter.fetched == [stored.root]


async def test_bad_ranges_raise_before_any_fetch() -> None:
    stored = SHAPES["several-leaves"]
    bad: list[tuple[Any, Any, Any]] = [
        (-1, None, None),
        (0, -1, None),
        (None, -2, None),
        (None, None, -1),
        (0, None, 3),
        (None, 1, 3),
        (1.5, None, None),
        (None, "1", None),
        (None, None, True),
    ]
    for offset, length, suffix in bad:
        getter = Blocks(stored.blocks)
        with pytest.raises(InvalidRangeError):
            await read_file_range(stored.root, getter.get, offset, length, suffix)
        with pytest.raises(InvalidRangeError):
            slice_block(stored.data, offset, length, suffix)
        assert getter.fetched == []


def leaf_links(stored: Stored, link: Link) -> list[Link]:
    if link.codec == RAW:
        return [link]
    return [
        leaf
        for child, _ in decode_pb_node(stored.blocks[link]).links
        for leaf in leaf_links(stored, child)
    ]


async def test_a_tampered_leaf_fails_in_range_and_is_not_touched_out_of_range() -> None:
    stored = SHAPES["two-levels"]
    leaves = leaf_links(stored, stored.root)
    bad = leaves[3]  # bytes 3*CHUNK .. 4*CHUNK
    blocks = dict(stored.blocks)
    blocks[bad] = bytes([blocks[bad][0] ^ 1]) + blocks[bad][1:]
    getter = Blocks(blocks)
    with pytest.raises(BlockVerificationError):
        await read_file_range(stored.root, getter.get, 3 * CHUNK + 10, 4)
    with pytest.raises(BlockVerificationError):
        await read_file_range(stored.root, getter.get, 0, 10 * CHUNK)
    getter = Blocks(blocks)
    for offset, length in [(0, 3 * CHUNK), (4 * CHUNK, 2 * CHUNK), (MAX_LINKS * CHUNK, 50)]:
        got = await read_file_range(stored.root, getter.get, offset, length)
        assert got == stored.data[offset : offset + length]
    assert bad not in getter.fetched


async def test_a_child_of_the_wrong_size_is_corrupt() -> None:
    b = Builder()
    good, short = b.raw(b"a" * 10), b.raw(b"b" * 9)
    inner = b.node([b.raw(b"c" * 4)])
    # The parent claims 10 bytes for a 9-byte leaf, and 5 for an inner node holding 4.
    cases = [
        b.node([good, (short[0], 10)])[0],
        b.node([good, (inner[0], 5)])[0],
    ]
    for root in cases:
        getter = Blocks(b.blocks)
        with pytest.raises(CorruptBlockError, match="parent says"):
            await read_file_range(root, getter.get, 12, 2)
        # A range that does not reach the lying child does not notice it.
        assert await read_file_range(root, getter.get, 0, 10) == b"a" * 10


async def test_a_node_whose_sizes_do_not_add_up_is_corrupt() -> None:
    b = Builder()
    leaf = b.raw(b"x" * 8)
    wrong_total = b.node([leaf], filesize=9)[0]
    missing_size = b.node([leaf, leaf], sizes=[8])[0]
    for root in (wrong_total, missing_size):
        with pytest.raises(CorruptBlockError):
            file_size(b.blocks[root])
        getter = Blocks(b.blocks)
        with pytest.raises(CorruptBlockError):
            await read_file_range(root, getter.get, 0, 1)
        assert getter.fetched == [root]


async def test_a_link_to_another_codec_is_corrupt() -> None:
    b = Builder()
    cbor = Link(b"\x01\x71" + make_link(RAW, b"zz")[2:])
    b.blocks[cbor] = b"zz"
    root = b.node([(cbor, 2)])[0]
    with pytest.raises(CorruptBlockError, match="codec 0x71"):
        await read_file_range(root, Blocks(b.blocks).get, 0, 1)


async def test_siblings_are_fetched_concurrently_within_the_bound() -> None:
    stored = SHAPES["several-leaves"]  # root over six leaves
    limit = 3
    in_flight = 0
    most = 0
    full = anyio.Event()

    async def get(link: Link) -> bytes:
        nonlocal in_flight, most
        if link == stored.root:
            return stored.blocks[link]
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == limit:
            full.set()
        # Hold each of the first fetches until the bound is reached: a walk that fetched
        # one leaf at a time would stop here (and the timeout plugin would report it).
        if not full.is_set():
            await full.wait()
        await anyio.lowlevel.checkpoint()
        in_flight -= 1
        return stored.blocks[link]

    got = await read_file_range(stored.root, get, 1, len(stored.data), concurrency=limit)
    assert got == stored.data[1:]
    assert most == limit


# ---------------------------------------------------------------------------------------
# Through the stores


class CountingLocalCAS(LocalCAS):
    """Records every block read: ``_block`` is LocalCAS's one verified single-block read,
    which every value read goes through (a raw value, and each block of a UnixFS file)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: list[Link] = []

    async def _block(self, link: Link) -> bytes:
        self.read.append(link)
        return await super()._block(link)


def local_positions(size: int, chunk: int) -> list[int]:
    points = {0, 1, size // 2, size - 1, size, size + 1, size + 1000}
    for edge in [*range(0, 4 * chunk, chunk), MAX_LINKS * chunk, size - size % chunk]:
        points.update(p for p in (edge - 1, edge, edge + 1) if p >= 0)
    return sorted(points)


@pytest.mark.parametrize("size", [1000, 5 * 1024 + 17, 2 * MAX_LINKS * 1024 + 3000])
async def test_local_cas_ranges_equal_slices(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    async with LocalCAS(tmp_path / "blocks.db", chunk_size=1024) as cas:
        cid = await cas.save(data, "raw")
        assert cid.codec.name == ("raw" if size <= 1024 else "dag-pb")
        for offset in [None, *local_positions(size, 1024)]:
            for length in [None, 0, 1, 2, 1023, 1024, 1025, 3000]:
                got = await cas.load(cid, offset, length)
                assert got == slice_block(data, offset, length), (offset, length)
        for suffix in [0, 1, 1024, 1025, size - 1, size, size + 1, 10 * size]:
            assert await cas.load(cid, suffix=suffix) == slice_block(data, suffix=suffix)
        for bad in [
            (-1, None, None),
            (0, -1, None),
            (None, None, -1),
            (1, None, 2),
            (1.5, 1, None),
        ]:
            with pytest.raises(InvalidRangeError):
                await cas.load(cid, *bad)  # type: ignore[arg-type]
        assert await cas._size_id(Link(bytes(cid))) == size


async def test_local_cas_reads_only_the_blocks_a_range_covers(tmp_path: Path) -> None:
    chunk = 1024
    data = random.Random(2).randbytes(2 * MAX_LINKS * chunk + 3000)  # root over 3 subtrees
    path = tmp_path / "blocks.db"
    async with LocalCAS(path, chunk_size=chunk) as cas:
        cid = await cas.save(data, "raw")
    root = Link(bytes(cid))
    _, built = build_file(data, chunk, make_link)
    stored = Stored(root, data, {link: block for link, _, block in built})
    async with CountingLocalCAS(path, chunk_size=chunk, read_only=True) as cas:
        for offset, length, count in [
            (10, 1024, 1 + 1 + 2),  # root, one internal node, two leaves
            (MAX_LINKS * chunk - 1, 2, 1 + 2 + 2),  # across two subtrees
            (len(data) - 5, 100, 1 + 1 + 1),  # the last leaf
            (len(data) + 5, 100, 1),  # past the end: the root alone
        ]:
            cas.read.clear()
            assert await cas.load(cid, offset, length) == data[offset : offset + length]
            assert len(cas.read) == count, (offset, length)
            end = min(offset + length, len(data))
            assert set(cas.read) == (
                covering_blocks(stored, offset, end) if offset < end else {root}
            )
        # A whole read still reads every block, once.
        cas.read.clear()
        assert await cas.load(cid) == data
        assert sorted(cas.read) == sorted(stored.blocks)


async def test_local_cas_tampered_leaf_in_range_fails_out_of_range_is_untouched(
    tmp_path: Path,
) -> None:
    chunk = 1024
    data = random.Random(3).randbytes(20 * chunk)
    path = tmp_path / "blocks.db"
    async with LocalCAS(path, chunk_size=chunk) as cas:
        cid = await cas.save(data, "raw")
    _, built = build_file(data, chunk, make_link)
    leaves = [link for link, codec, _ in built if codec == RAW]
    bad = leaves[5]  # bytes 5 KiB .. 6 KiB
    tampered = bytes([data[5 * chunk] ^ 0xFF]) + data[5 * chunk + 1 : 6 * chunk]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE blocks SET data = ? WHERE cid = ?", (tampered, bad))
    async with CountingLocalCAS(path, chunk_size=chunk, read_only=True) as cas:
        with pytest.raises(BlockVerificationError):
            await cas.load(cid, offset=5 * chunk + 100, length=10)
        with pytest.raises(BlockVerificationError):
            await cas.load(cid, suffix=15 * chunk + 1)
        cas.read.clear()
        assert await cas.load(cid, offset=0, length=5 * chunk) == data[: 5 * chunk]
        assert await cas.load(cid, offset=6 * chunk) == data[6 * chunk :]
        assert await cas.load(cid, suffix=14 * chunk) == data[-14 * chunk :]
        assert bad not in cas.read
        # The size comes from the root; the tampered leaf is not read for it either.
        assert await cas._size_id(Link(bytes(cid))) == len(data)
        assert bad not in cas.read


async def test_local_cas_size_without_reading_the_value(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    big = random.Random(4).randbytes(3 * 1024 + 1)
    async with CountingLocalCAS(path, chunk_size=1024, batch_blocks=10_000) as cas:
        small = await cas._save_id(b"x" * 700, "raw")
        node = await cas._save_id(b"\x80", "dag-cbor")
        root = await cas._save_id(big, "raw")
        # Not committed yet: answered from the blocks waiting in memory.
        assert [await cas._size_id(p) for p in (small, node, root)] == [700, 1, len(big)]
        await cas.flush()
        cas.read.clear()
        assert [await cas._size_id(p) for p in (small, node, root)] == [700, 1, len(big)]
        assert cas.read == [root]  # the file's root node; never a raw block's bytes
        for missing in (make_link(RAW, b"nope"), Link(bytes([0x01, DAG_PB]) + small[2:])):
            with pytest.raises(BlockNotFoundError):
                await cas._size_id(missing)


async def test_hamt_get_of_a_range_reads_only_covered_blocks(tmp_path: Path) -> None:
    chunk = 1024
    big = random.Random(5).randbytes(50 * chunk)
    async with CountingLocalCAS(tmp_path / "blocks.db", chunk_size=chunk) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await hamt.set("big", big)
        await hamt.make_read_only()
        await hamt.get("big", offset=0, length=1)  # warm the HAMT's node cache
        cas.read.clear()
        assert (
            await hamt.get("big", offset=7 * chunk - 2, length=4)
            == big[7 * chunk - 2 : 7 * chunk + 2]
        )
        assert len(cas.read) == 3  # the file's root and two leaves


async def test_in_memory_size_is_the_stored_length() -> None:
    cas = InMemoryCAS()
    ptr = await cas._save_id(b"12345", "raw")
    assert await cas._size_id(ptr) == 5
    with pytest.raises(BlockNotFoundError):
        await cas._size_id(b"\x1e\x20" + bytes(32))
