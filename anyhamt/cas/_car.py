"""CAR (Content Addressable aRchive) files: a DAG's blocks in one stream.

A CARv1 is ``varint(len) + dag-cbor {"roots": [CID, ...], "version": 1}`` followed by
sections ``varint(len(cid) + len(data)) + cid + data``. It is what ``ipfs dag export``
writes and ``ipfs dag import`` reads, so a HAMT written offline to a ``LocalCAS`` can be
published on IPFS later under the same root, and the other way round.

Export walks the DAG from its roots depth-first, each block before the blocks it links to
and each block once, as ``ipfs dag export`` does. Import checks every block against its
CID before storing it. CARv2 files are read (their inner CARv1); only CARv1 is written.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import dag_cbor
from multiformats import CID

from .._codec import (
    DAG_CBOR,
    DAG_PB,
    RAW,
    Link,
    as_link,
    as_pointer,
    decode_node,
    decode_varint,
    encode_varint,
    verify_block,
)
from .._errors import CarFormatError, CorruptBlockError
from .._tasks import map_bounded
from ._unixfs import decode_pb_node

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._base import ContentAddressedStore

__all__ = ["block_links", "export_car", "import_car", "read_car", "write_car_header"]

_CARV2_PRAGMA: Final = bytes.fromhex("0aa16776657273696f6e02")
# Blocks fetched at once while exporting; bounds memory to a window per tree level.
_EXPORT_WINDOW: Final = 32
_MAX_SECTION: Final = 64 * 2**20


def _read_varint_stream(stream: BinaryIO) -> int | None:
    """A varint from the stream; None at a clean end of stream."""
    result = shift = 0
    first = True
    while True:
        byte = stream.read(1)
        if not byte:
            if first:
                return None
            raise CarFormatError("CAR ends inside a varint")
        first = False
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise CarFormatError("varint too long in CAR")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CarFormatError(f"CAR truncated: wanted {n} bytes, got {len(data)}")
    return data


def _split_section(section: bytes) -> tuple[Link, bytes]:
    """A section's CID and block bytes."""
    if section[:2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash, dag-pb
        if len(section) < 34:
            raise CarFormatError("CAR section shorter than its CIDv0")
        return Link(bytes([0x01, DAG_PB]) + section[:34]), section[34:]
    version, pos = decode_varint(section, 0, CarFormatError)
    if version != 1:
        raise CarFormatError(f"CAR section with a CID of version {version}")
    _, pos = decode_varint(section, pos, CarFormatError)  # codec
    _, pos = decode_varint(section, pos, CarFormatError)  # multihash function
    size, pos = decode_varint(section, pos, CarFormatError)
    end = pos + size
    if end > len(section):
        raise CarFormatError("CAR section shorter than its CID")
    return Link(section[:end]), section[end:]


def write_car_header(roots: Sequence[Link]) -> bytes:
    """The CARv1 header naming ``roots``."""
    header = bytes(dag_cbor.encode({"roots": [r.to_cid() for r in roots], "version": 1}))
    return encode_varint(len(header)) + header


def _encode_section(link: Link, data: bytes) -> bytes:
    return encode_varint(len(link) + len(data)) + link + data


def read_car(source: BinaryIO | bytes) -> tuple[list[Link], Iterator[tuple[Link, bytes]]]:
    """The roots of a CAR and an iterator over its blocks, each checked against its CID.

    The iterator raises ``BlockVerificationError`` for a block that does not match its CID
    and ``CarFormatError`` for a malformed or truncated file.
    """
    stream: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    size = _read_varint_stream(stream)
    if size is None:
        raise CarFormatError("empty CAR file")
    header_bytes = _read_exact(stream, size)
    if encode_varint(size) + header_bytes == _CARV2_PRAGMA:
        # CARv2: a fixed header (characteristics, data offset, data size, index offset)
        # around a CARv1 payload.
        fixed = _read_exact(stream, 40)
        offset = int.from_bytes(fixed[16:24], "little")
        data_size = int.from_bytes(fixed[24:32], "little")
        _read_exact(stream, offset - len(_CARV2_PRAGMA) - 40)
        inner = io.BytesIO(_read_exact(stream, data_size))
        return read_car(inner)
    try:
        header = dag_cbor.decode(header_bytes)
    except Exception as exc:
        raise CarFormatError(f"CAR header is not dag-cbor: {exc}") from exc
    if not isinstance(header, dict) or header.get("version") != 1:
        version = header.get("version") if isinstance(header, dict) else None
        raise CarFormatError(f"not a CARv1 header (version {version!r})")
    roots_value = header.get("roots")
    if not isinstance(roots_value, list) or not all(isinstance(r, CID) for r in roots_value):
        raise CarFormatError("CAR header roots must be a list of CIDs")
    roots = [as_pointer(r) for r in roots_value]

    def blocks() -> Iterator[tuple[Link, bytes]]:
        while True:
            length = _read_varint_stream(stream)
            if length is None:
                return
            if length > _MAX_SECTION:
                raise CarFormatError(f"CAR section of {length} bytes is implausibly large")
            link, data = _split_section(_read_exact(stream, length))
            verify_block(link, data)
            yield link, data

    return roots, blocks()


def block_links(link: Link, data: bytes) -> list[Link]:
    """The CIDs a block links to, in the order they appear in it."""
    codec = link.codec
    if codec == RAW:
        return []
    if codec == DAG_PB:
        return [sub for sub, _ in decode_pb_node(data).links]
    if codec != DAG_CBOR:
        raise CorruptBlockError(f"cannot follow links in a block of codec 0x{codec:x}")
    try:
        slots = decode_node(data)
    except CorruptBlockError:
        slots = None
    out: list[Link] = []
    if slots is not None:
        for slot in slots:
            if type(slot) is dict:
                out.extend(p for p in slot.values() if type(p) is Link)
            elif type(slot) is list and type(slot[0]) is Link:
                out.append(slot[0])
        return out

    # Not a HAMT node (a Zarr shard, a store's root object ...): walk the general IPLD value.
    def walk(value: Any) -> None:
        if isinstance(value, CID):
            out.append(as_pointer(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    try:
        walk(dag_cbor.decode(data))
    except Exception as exc:
        raise CorruptBlockError(f"{link} is not valid dag-cbor: {exc}") from exc
    return out


async def export_car(
    store: ContentAddressedStore, roots: Any | Sequence[Any], out: BinaryIO
) -> int:
    """Write the DAG(s) under ``roots`` from ``store`` to ``out`` as a CARv1.

    ``roots`` is one id or a list (``multiformats.CID``, CID text or ``Link``). Every block
    is read through the store (and so verified by stores that verify). Returns the number
    of blocks written. Cancellation: ``out`` holds a partial CAR.
    """
    if isinstance(roots, (list, tuple)):
        root_links = [as_link(r) for r in roots]
    else:
        root_links = [as_link(roots)]
    out.write(write_car_header(root_links))
    seen: set[Link] = set()
    count = 0
    load = store.get_block  # a dag-pb block itself, not the UnixFS file load() assembles

    async def emit(links: list[Link]) -> None:
        nonlocal count
        todo = [link for link in dict.fromkeys(links) if link not in seen]
        for start in range(0, len(todo), _EXPORT_WINDOW):
            window = [link for link in todo[start : start + _EXPORT_WINDOW] if link not in seen]
            datas = await map_bounded(load, window, _EXPORT_WINDOW)
            for link, data in zip(window, datas, strict=True):
                if link in seen:  # reached through an earlier sibling's subtree
                    continue
                seen.add(link)
                out.write(_encode_section(link, data))
                count += 1
                children = block_links(link, data)
                if children:
                    await emit(children)

    await emit(root_links)
    return count


async def import_car(store: ContentAddressedStore, source: BinaryIO | bytes) -> list[CID]:
    """Store every block of a CAR (each checked against its CID) and return its roots.

    ``LocalCAS`` and ``KuboCAS`` take blocks of any codec; other stores take what their
    ``put_block`` can store under its own CID (``InvalidIdError`` otherwise). The store is flushed
    at the end. Cancellation: some blocks may be stored; importing again is safe.
    """
    roots, blocks = read_car(source)
    for link, data in blocks:
        await store.put_block(link, data)
    await store.flush()
    return [r.to_cid() for r in roots]
