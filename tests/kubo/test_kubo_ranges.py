"""Byte ranges of UnixFS values on a real Kubo daemon: right bytes, and only the blocks the
range covers are requested.

Requests are counted by the store's own HTTP transport: each test hands ``KuboCAS`` a
``transport=`` that forwards to httpx's real transport and records every request it
sends (method and path). Giving a transport turns off KuboCAS's lean HTTP path, so every
request the store makes passes through the recorder; the blocks read are the same.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from anyhamt import BlockNotFoundError, BlockVerificationError, KuboCAS
from anyhamt._codec import DAG_PB, RAW, Link, make_link
from anyhamt.cas._base import slice_block
from anyhamt.cas._unixfs import build_file, decode_pb_node, decode_unixfs_data

from ._helpers import cas_for

if TYPE_CHECKING:
    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo

MiB = 1024 * 1024


class Recorder(httpx.AsyncBaseTransport):
    """httpx's transport, recording each request; ``corrupt`` names blocks whose bodies
    are altered on the way back (a gateway serving wrong bytes)."""

    def __init__(self, corrupt: frozenset[str] = frozenset()) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str]] = []
        self.corrupt = corrupt

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        response = await self.inner.handle_async_request(request)
        cid = request.url.path.rsplit("/", 1)[-1]
        if cid in self.corrupt and response.status_code == 200:
            body = await response.aread()
            await response.aclose()
            return httpx.Response(200, headers=response.headers, content=b"?" + body[1:])
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def gets(self) -> list[str]:
        """CIDs of the gateway GETs since the last call."""
        got = [path.rsplit("/", 1)[-1] for method, path in self.requests if method == "GET"]
        assert all(path.startswith("/ipfs/") for method, path in self.requests)
        self.requests.clear()
        return got


def reader(daemon: KuboDaemon, recorder: Recorder, **kwargs: Any) -> KuboCAS:
    return cas_for(
        daemon,
        transport=recorder,
        **kwargs,
    )


def kubo_add(daemon: KuboDaemon, data: bytes, **params: str) -> Link:
    """A file added by Kubo itself (``ipfs add``), with its own layout options."""
    response = httpx.post(
        f"{daemon.rpc_url}/api/v0/add",
        params={"pin": "false", **params},
        files={"file": data},
        timeout=120,
    )
    response.raise_for_status()
    return Link.parse(response.json()["Hash"])


async def file_blocks(daemon: KuboDaemon, root: Link, hasher: str) -> dict[Link, bytes]:
    """Every block of a file, fetched one by one through a store of its own."""
    blocks: dict[Link, bytes] = {}

    async def walk(link: Link) -> None:
        blocks[link] = await cas.get_block(link)
        if link.codec == DAG_PB:
            for child, _ in decode_pb_node(blocks[link]).links:
                await walk(child)

    async with cas_for(daemon, hasher=hasher) as cas:
        await walk(root)
    return blocks


def covering(blocks: dict[Link, bytes], root: Link, start: int, end: int) -> list[str]:
    """The blocks a read of start:end needs: every node and leaf whose bytes overlap it."""
    found: list[str] = []

    def walk(link: Link, pos: int) -> int:
        block = blocks[link]
        first = pos
        if link.codec == RAW:
            pos += len(block)
        else:
            node = decode_pb_node(block)
            pos += len(decode_unixfs_data(node.data).data)
            for child, _ in node.links:
                pos = walk(child, pos)
        if first < end and pos > start:
            found.append(str(link))
        return pos

    walk(root, 0)
    return found


def depth(blocks: dict[Link, bytes], link: Link) -> int:
    """Levels of blocks from ``link`` down to its deepest leaf (a leaf alone is 1)."""
    if link.codec == RAW:
        return 1
    children = decode_pb_node(blocks[link]).links
    return 1 + max((depth(blocks, child) for child, _ in children), default=0)


def leaf_edges(blocks: dict[Link, bytes], root: Link) -> list[int]:
    edges: set[int] = set()

    def walk(link: Link, pos: int) -> int:
        block = blocks[link]
        if link.codec == RAW:
            return pos + len(block)
        node = decode_pb_node(block)
        pos += len(decode_unixfs_data(node.data).data)
        edges.add(pos)
        for child, _ in node.links:
            pos = walk(child, pos)
            edges.add(pos)
        return pos

    walk(root, 0)
    return sorted(edges)


async def check_ranges(
    cas: KuboCAS,
    recorder: Recorder,
    root: Link,
    data: bytes,
    blocks: dict[Link, bytes],
    ranges: list[tuple[int | None, int | None, int | None]],
) -> None:
    for offset, length, suffix in ranges:
        got = await cas.load(root, offset, length, suffix)
        assert got == slice_block(data, offset, length, suffix), (offset, length, suffix)
        size = len(data)
        if suffix is not None:
            start, end = max(size - suffix, 0) if suffix else size, size
        else:
            start = min(offset or 0, size)
            end = size if length is None else min(start + length, size)
        requested = recorder.gets()
        if (offset is not None and length == 0) or suffix == 0:
            assert requested == []  # answered without asking
        elif start >= end:
            assert requested == [str(root)]  # the root, for the file's size
        else:
            assert sorted(requested) == sorted(covering(blocks, root, start, end)), (
                offset,
                length,
                suffix,
            )


def grid(edges: list[int], size: int, step: int) -> list[tuple[int | None, int | None, int | None]]:
    """Offsets at and beside block edges with short lengths; suffixes ending there; a
    few reads of (nearly) the whole file. Whole-file reads are few: each is every block."""
    points = {0, 1, size // 3, size - 1, size, size + 7}
    for edge in edges:
        points.update(p for p in (edge - 1, edge, edge + 1) if p >= 0)
    ranges: list[tuple[int | None, int | None, int | None]] = []
    for p in sorted(points):
        ranges += [(p, n, None) for n in (0, 1, step + 1, 3 * step)]
        if size - 3 * step <= p < size:
            ranges += [(p, None, None), (None, None, size - p)]
    ranges += [(None, None, n) for n in (0, 1, step, step + 1, 3 * step)]
    ranges += [(0, None, None), (None, 10, None), (None, None, 10 * size)]
    return ranges


async def test_ranges_of_a_big_value_saved_through_kubocas(kubo_daemon: KuboDaemon) -> None:
    data = random.Random(11).randbytes(3 * MiB + 12345)
    async with cas_for(kubo_daemon) as cas:
        root = Link(bytes(await cas.save(data, "raw")))
    # The layout is Kubo's own: `ipfs add` gives the same root.
    assert (
        kubo_add(
            kubo_daemon,
            data,
            **{
                "hash": "blake3",
                "cid-version": "1",
                "raw-leaves": "true",
                "chunker": "size-1048576",
            },
        )
        == root
    )
    _, built = build_file(data, MiB, make_link)
    blocks = {link: block for link, _, block in built}
    recorder = Recorder()
    async with reader(kubo_daemon, recorder) as cas:
        edges = leaf_edges(blocks, root)
        assert edges == [0, MiB, 2 * MiB, 3 * MiB, len(data)]
        await check_ranges(cas, recorder, root, data, blocks, grid(edges, len(data), 4096))
        # 1 KiB in the middle of a leaf: the root and that leaf, nothing else.
        assert (
            await cas.load(root, offset=2 * MiB + 100, length=1024)
            == data[2 * MiB + 100 : 2 * MiB + 1124]
        )
        assert len(recorder.gets()) == 2


@pytest.mark.parametrize(
    "layout",
    [
        # Two levels: 1 KiB leaves, built here and uploaded with block/put.
        "kubocas-size-1024",
        # Files as Kubo's own `add` makes them with other options.
        "kubo-dag-pb-leaves",
        "kubo-trickle",
        "kubo-cidv0",
    ],
)
async def test_ranges_of_other_layouts(kubo_daemon: KuboDaemon, layout: str) -> None:
    rng = random.Random(layout)
    if layout == "kubocas-size-1024":
        data = rng.randbytes(2 * 174 * 1024 + 3000)
        async with cas_for(
            kubo_daemon,
            chunker="size-1024",
        ) as cas:
            root = Link(bytes(await cas.save(data, "raw")))
        step, hasher = 1024, "blake3"
    else:
        data = rng.randbytes(250_000)  # 250 leaves: over the 174 of one node
        step = 1000
        params = {"hash": "blake3", "cid-version": "1", "chunker": f"size-{step}"}
        if layout == "kubo-dag-pb-leaves":
            params["raw-leaves"] = "false"
        elif layout == "kubo-trickle":
            params |= {"trickle": "true", "raw-leaves": "true"}
        else:
            params = {"cid-version": "0", "chunker": f"size-{step}"}
        hasher = "sha2-256" if layout == "kubo-cidv0" else "blake3"
        root = kubo_add(kubo_daemon, data, **params)
    recorder = Recorder()
    async with reader(kubo_daemon, recorder, hasher=hasher) as cas:
        blocks = await file_blocks(kubo_daemon, root, hasher)
        # The point of these layouts: trees more than one level deep, and (for the files
        # Kubo added without raw leaves) leaves that are dag-pb nodes with inline data.
        assert depth(blocks, root) >= 3
        inline_leaves = [
            link
            for link, b in blocks.items()
            if link.codec == DAG_PB and not decode_pb_node(b).links
        ]
        if layout in ("kubo-dag-pb-leaves", "kubo-cidv0"):
            assert all(link.codec == DAG_PB for link in blocks)
            assert len(inline_leaves) == -(-len(data) // step)
        edges = leaf_edges(blocks, root)
        sample = edges[:4] + edges[len(edges) // 2 : len(edges) // 2 + 2] + edges[-4:]
        await check_ranges(cas, recorder, root, data, blocks, grid(sample, len(data), step))
        assert await cas._size_id(root) == len(data)


async def test_a_corrupt_block_in_range_fails_and_one_out_of_range_is_not_requested(
    kubo_daemon: KuboDaemon,
) -> None:
    data = random.Random(5).randbytes(3 * MiB)
    async with cas_for(kubo_daemon) as cas:
        root = Link(bytes(await cas.save(data, "raw")))
    _, built = build_file(data, MiB, make_link)
    second_leaf = str([link for link, codec, _ in built if codec == RAW][1])
    recorder = Recorder(corrupt=frozenset({second_leaf}))
    async with reader(kubo_daemon, recorder, max_retries=0) as cas:
        with pytest.raises(BlockVerificationError):
            await cas.load(root, offset=MiB + 5, length=10)
        assert second_leaf in recorder.gets()
        for offset, length in [(0, MiB), (2 * MiB, 100), (MiB - 10, 10)]:
            assert (
                await cas.load(root, offset=offset, length=length) == data[offset : offset + length]
            )
        assert second_leaf not in recorder.gets()
        assert await cas.load(root, suffix=MiB) == data[-MiB:]
        assert second_leaf not in recorder.gets()


async def test_size_without_fetching_the_value(kubo_daemon: KuboDaemon) -> None:
    big = os.urandom(2 * MiB + 1)
    small = os.urandom(5000)
    async with cas_for(kubo_daemon) as cas:
        big_root = Link(bytes(await cas.save(big, "raw")))
        small_link = Link(bytes(await cas.save(small, "raw")))
        node_link = Link(bytes(await cas.save(b"\x80", "dag-cbor")))
    recorder = Recorder()
    async with reader(kubo_daemon, recorder) as cas:
        assert await cas._size_id(big_root) == len(big)
        assert recorder.requests == [("GET", f"/ipfs/{big_root}")]  # the root node only
        recorder.requests.clear()
        assert await cas._size_id(small_link) == len(small)
        assert await cas._size_id(node_link) == 1
        assert [method for method, _ in recorder.requests] == ["HEAD", "HEAD"]
        recorder.requests.clear()
        missing = make_link(RAW, b"never stored")
        with pytest.raises(BlockNotFoundError):
            await cas._size_id(missing)
        with pytest.raises(BlockNotFoundError):
            await cas._size_id(Link(bytes([0x01, DAG_PB]) + missing[2:]))


async def test_queued_values_are_read_and_sized_before_any_upload(kubo_daemon: KuboDaemon) -> None:
    """Blocks the HAMT's fast path queued are served from memory, a UnixFS root included."""
    data = os.urandom(2 * MiB + 77)
    recorder = Recorder()
    async with reader(kubo_daemon, recorder, batch_bytes=64 * MiB) as cas:
        root = await cas._save_id(data, "raw")
        small = await cas._save_id(b"tiny", "raw")
        assert await cas._load_id(root, MiB - 3, 6) == data[MiB - 3 : MiB + 3]
        assert await cas._load_id(root, suffix=4) == data[-4:]
        assert await cas._load_id(root) == data
        assert await cas._size_id(root) == len(data)
        assert await cas._size_id(small) == 4
        assert recorder.requests == []
        await cas.flush()
