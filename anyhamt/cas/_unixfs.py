"""Just enough dag-pb and UnixFS to build and read files the way Kubo's ``add`` does.

py-hamt saves every value through Kubo's ``/api/v0/add`` (``chunker=size-1048576``, CIDv1,
raw leaves). A value up to the chunk size comes back as one raw block; a larger one as a
UnixFS file: a balanced tree of dag-pb nodes (at most 174 links each) over raw leaves.
Building that tree here gives anyhamt the same CIDs without asking Kubo, so big values can
be batched like any other block, and lets reads of such a value fetch and verify every
block instead of trusting a gateway's reassembly.

Only what ``add`` produces for files is covered: dag-pb nodes whose UnixFS data says
"file", with leaves that are raw blocks or dag-pb nodes carrying their bytes inline.

Byte ranges (``read_file_range``) use the ``blocksizes`` every file node lists, one per
child: they say which children hold the range, so only those subtrees are fetched and
verified, and each fetched child is checked to hold exactly what its parent says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple

from .._codec import DAG_PB, RAW, Link, decode_varint, encode_varint
from .._errors import CorruptBlockError
from .._tasks import map_bounded
from ._base import check_range

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

__all__ = [
    "MAX_LINKS",
    "PBNode",
    "UnixFSData",
    "build_file",
    "decode_pb_node",
    "decode_unixfs_data",
    "encode_file_node",
    "file_size",
    "read_file",
    "read_file_range",
]

# Kubo's balanced layout puts at most this many links in a node (boxo's DefaultLinksPerBlock).
MAX_LINKS: Final = 174

_UNIXFS_RAW: Final = 0
_UNIXFS_FILE: Final = 2

# protobuf wire types
_VARINT: Final = 0
_LEN: Final = 2


def _field(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


def _len_field(number: int, payload: bytes) -> bytes:
    return _field(number, _LEN) + encode_varint(len(payload)) + payload


def _iter_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs; varints as ints, length-delimited fields as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = decode_varint(buf, pos)
            yield number, value
        elif wire_type == _LEN:
            size, pos = decode_varint(buf, pos)
            if pos + size > len(buf):
                raise CorruptBlockError("protobuf field runs past the end of the block")
            yield number, buf[pos : pos + size]
            pos += size
        else:
            raise CorruptBlockError(f"unsupported protobuf wire type {wire_type} in dag-pb")


# ---------------------------------------------------------------------------------------
# Encoding


def encode_file_node(children: list[tuple[Link, int, int]]) -> bytes:
    """A UnixFS file node over ``children``: (CID, cumulative block size, file bytes) each.

    Field order follows the dag-pb spec (links, then data); within UnixFS data: type,
    filesize, one blocksizes entry per child, as Kubo writes them.
    """
    unixfs = bytearray(_field(1, _VARINT) + encode_varint(_UNIXFS_FILE))
    unixfs += _field(3, _VARINT) + encode_varint(sum(size for _, _, size in children))
    for _, _, size in children:
        unixfs += _field(4, _VARINT) + encode_varint(size)
    out = bytearray()
    for link, tsize, _ in children:
        pb_link = (
            _len_field(1, link) + _len_field(2, b"") + _field(3, _VARINT) + encode_varint(tsize)
        )
        out += _len_field(2, pb_link)
    out += _len_field(1, bytes(unixfs))
    return bytes(out)


def build_file(
    data: bytes, chunk_size: int, make_link: Callable[[int, bytes], Link]
) -> tuple[Link, list[tuple[Link, int, bytes]]]:
    """Chunk ``data`` and build Kubo's balanced UnixFS DAG over raw leaves.

    Returns the root CID and every block as (CID, codec, bytes), leaves first within each
    subtree. ``data`` of at most ``chunk_size`` bytes is a single raw block.
    ``make_link(codec, block)`` names a block (it chooses the hash function).
    """
    blocks: list[tuple[Link, int, bytes]] = []
    starts = range(0, max(len(data), 1), chunk_size)  # an empty file is one empty leaf
    next_chunk = 0

    def leaf() -> tuple[Link, int, int]:
        nonlocal next_chunk
        start = starts[next_chunk]
        next_chunk += 1
        chunk = data[start : start + chunk_size]
        link = make_link(RAW, chunk)
        blocks.append((link, RAW, chunk))
        return link, len(chunk), len(chunk)

    def node(children: list[tuple[Link, int, int]]) -> tuple[Link, int, int]:
        encoded = encode_file_node(children)
        link = make_link(DAG_PB, encoded)
        blocks.append((link, DAG_PB, encoded))
        tsize = len(encoded) + sum(t for _, t, _ in children)
        return link, tsize, sum(size for _, _, size in children)

    def fill(children: list[tuple[Link, int, int]], depth: int) -> tuple[Link, int, int]:
        # Add subtrees of depth - 1 until the node is full or the data ends.
        while len(children) < MAX_LINKS and next_chunk < len(starts):
            children.append(leaf() if depth == 1 else fill([], depth - 1))
        return node(children)

    # As Kubo's balanced builder: start from one leaf; while data remains, put the (full)
    # tree under a new root one level deeper and fill that root's other slots.
    root = leaf()
    depth = 1
    while next_chunk < len(starts):
        root = fill([root], depth)
        depth += 1
    return root[0], blocks


# ---------------------------------------------------------------------------------------
# Decoding


class PBNode(NamedTuple):
    links: list[tuple[Link, int]]  # (CID, Tsize)
    data: bytes | None


class UnixFSData(NamedTuple):
    type: int
    data: bytes
    filesize: int | None
    blocksizes: list[int]


def _link_from_pb(hash_bytes: bytes) -> Link:
    if hash_bytes[:1] == b"\x01":
        return Link(hash_bytes)
    if hash_bytes[:2] == b"\x12\x20" and len(hash_bytes) == 34:
        # A CIDv0 is a bare sha2-256 multihash of a dag-pb block.
        return Link(b"\x01" + bytes([DAG_PB]) + hash_bytes)
    raise CorruptBlockError("dag-pb link whose Hash is not a CID")


def decode_pb_node(block: bytes) -> PBNode:
    """Decode a dag-pb block into its links and data."""
    links: list[tuple[Link, int]] = []
    data: bytes | None = None
    for number, value in _iter_fields(block):
        if number == 2 and isinstance(value, bytes):
            link: Link | None = None
            tsize = 0
            for lnum, lval in _iter_fields(value):
                if lnum == 1 and isinstance(lval, bytes):
                    link = _link_from_pb(lval)
                elif lnum == 3 and isinstance(lval, int):
                    tsize = lval
            if link is None:
                raise CorruptBlockError("dag-pb link without a Hash")
            links.append((link, tsize))
        elif number == 1 and isinstance(value, bytes):
            data = value
        else:
            raise CorruptBlockError(f"unexpected field {number} in a dag-pb node")
    return PBNode(links, data)


def decode_unixfs_data(data: bytes | None) -> UnixFSData:
    """Decode the UnixFS message in a dag-pb node's data."""
    if data is None:
        raise CorruptBlockError("dag-pb node without UnixFS data")
    kind: int | None = None
    payload = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    for number, value in _iter_fields(data):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, bytes):
            payload = value
        elif number == 3 and isinstance(value, int):
            filesize = value
        elif number == 4 and isinstance(value, int):
            blocksizes.append(value)
        elif number == 4 and isinstance(value, bytes):  # a packed encoding, if ever used
            pos = 0
            while pos < len(value):
                size, pos = decode_varint(value, pos)
                blocksizes.append(size)
    if kind is None:
        raise CorruptBlockError("UnixFS data without a type")
    if kind not in (_UNIXFS_RAW, _UNIXFS_FILE):
        raise CorruptBlockError(
            f"UnixFS node of type {kind} is not a file; only files can be read as values"
        )
    return UnixFSData(kind, payload, filesize, blocksizes)


async def read_file(link: Link, get_block: Callable[[Link], Awaitable[bytes]]) -> bytes:
    """The bytes of the UnixFS file ``link`` heads; ``get_block`` returns verified blocks."""
    node = decode_pb_node(await get_block(link))
    unixfs = decode_unixfs_data(node.data)
    if not node.links:
        return unixfs.data

    async def child(sub: Link) -> bytes:
        if sub.codec == RAW:
            return await get_block(sub)
        if sub.codec == DAG_PB:
            return await read_file(sub, get_block)
        raise CorruptBlockError(f"UnixFS file {link} links to a block of codec 0x{sub.codec:x}")

    parts = await map_bounded(child, [sub for sub, _ in node.links], 8)
    return unixfs.data + b"".join(parts)


# ---------------------------------------------------------------------------------------
# Sizes and byte ranges


def _content_size(node: PBNode, unixfs: UnixFSData) -> int:
    """The file bytes under ``node``: its inline data then its children, checked against
    the filesize it declares."""
    if len(unixfs.blocksizes) != len(node.links):
        raise CorruptBlockError(
            f"UnixFS file node lists {len(unixfs.blocksizes)} block sizes "
            f"for {len(node.links)} links"
        )
    total = len(unixfs.data) + sum(unixfs.blocksizes)
    if unixfs.filesize is not None and unixfs.filesize != total:
        raise CorruptBlockError(
            f"UnixFS file node declares {unixfs.filesize} bytes but its data and block "
            f"sizes add up to {total}"
        )
    return total


def file_size(root_block: bytes) -> int:
    """The size of the file whose root node is ``root_block`` (an encoded dag-pb node),
    from the node alone: no child is fetched, so the children are not checked either."""
    node = decode_pb_node(root_block)
    return _content_size(node, decode_unixfs_data(node.data))


def _window(size: int, offset: int | None, length: int | None, suffix: int | None) -> range:
    """The byte positions ``slice_block`` would select from ``size`` bytes, clipped to them."""
    if suffix is not None:
        return range(max(size - suffix, 0) if suffix else size, size)
    start = min(offset or 0, size)
    return range(start, size if length is None else min(start + length, size))


class _Pending(NamedTuple):
    """A subtree still to fetch: its root, the bytes its parent says it holds, and the
    part of them wanted (positions relative to the subtree's first byte)."""

    link: Link
    size: int
    start: int
    end: int


def _wanted_parts(node: PBNode, unixfs: UnixFSData, start: int, end: int) -> list[bytes | _Pending]:
    """What ``node`` contributes to bytes ``start:end`` of its content, in order: inline
    data as bytes, every child that overlaps as a ``_Pending``. Children outside the range
    are not named, so they are never fetched."""
    parts: list[bytes | _Pending] = []
    data = unixfs.data
    if start < len(data):
        parts.append(data[start:end])
    pos = len(data)
    for (child, _), size in zip(node.links, unixfs.blocksizes, strict=True):
        if pos >= end:
            break
        if size and pos + size > start:
            parts.append(_Pending(child, size, max(start - pos, 0), min(end - pos, size)))
        pos += size
    return parts


async def read_file_range(
    link: Link,
    get_block: Callable[[Link], Awaitable[bytes]],
    offset: int | None = None,
    length: int | None = None,
    suffix: int | None = None,
    *,
    concurrency: int = 8,
) -> bytes:
    """Bytes of the UnixFS file ``link`` heads, as ``slice_block`` would cut them from the
    whole file, fetching only the root and the subtrees that overlap the range.

    ``get_block`` must return verified blocks. The tree is walked one level at a time, with
    at most ``concurrency`` fetches in flight across the level, so a wide range over a
    big file neither runs one fetch at a time nor floods the store; a block the level
    needs at several places (equal chunks) is fetched once. Every fetched child
    must hold as many bytes as its parent's ``blocksizes`` entry says, else
    ``CorruptBlockError``; bad range arguments raise ``InvalidRangeError`` before any fetch.

    Cancellation: nothing happens (reads only).
    """
    check_range(offset, length, suffix)
    root = decode_pb_node(await get_block(link))
    unixfs = decode_unixfs_data(root.data)
    window = _window(_content_size(root, unixfs), offset, length, suffix)
    if not window:
        return b""
    parts = _wanted_parts(root, unixfs, window.start, window.stop)

    def expand(want: _Pending, block: bytes) -> list[bytes | _Pending]:
        if want.link.codec == RAW:
            if len(block) != want.size:
                raise CorruptBlockError(
                    f"UnixFS file {link}: leaf {want.link} holds {len(block)} bytes, its "
                    f"parent says {want.size}"
                )
            # A slice of the whole block is the block itself, not a copy.
            return [block[want.start : want.end]]
        node = decode_pb_node(block)
        child = decode_unixfs_data(node.data)
        size = _content_size(node, child)
        if size != want.size:
            raise CorruptBlockError(
                f"UnixFS file {link}: node {want.link} holds {size} bytes, its parent says "
                f"{want.size}"
            )
        return _wanted_parts(node, child, want.start, want.end)

    while True:
        pending = [part for part in parts if isinstance(part, _Pending)]
        if not pending:
            break
        # A file may hold one block at several places (runs of equal chunks): fetch it once.
        links = list(dict.fromkeys(want.link for want in pending))
        for sub in links:
            if sub.codec not in (RAW, DAG_PB):
                raise CorruptBlockError(
                    f"UnixFS file {link} links to a block of codec 0x{sub.codec:x}"
                )
        blocks = dict(zip(links, await map_bounded(get_block, links, concurrency), strict=True))
        parts = [
            sub
            for part in parts
            for sub in (expand(part, blocks[part.link]) if isinstance(part, _Pending) else (part,))
        ]
    return b"".join(part for part in parts if isinstance(part, bytes))  # all are, by now
