"""Ids, CIDs and the HAMT node codec: the hot path.

Parsing or building a ``multiformats.CID`` costs ~100 µs, and the general ``dag_cbor``
codec spends ~48 ms on a node holding 300 CIDs (measured; docs/architecture.md §5).
Inside anyhamt a CID is therefore a ``Link``: the binary CIDv1 as an immutable ``bytes``
subclass, hashed and compared at C speed.
``multiformats.CID`` appears only at the public boundary: ``as_link`` and ``as_pointer`` take
any id a user holds, ``to_public`` gives one back. Those two functions and the codec table
below are the only places ids and codec names are interpreted.

Node wire format (identical to py-hamt's): a dag-cbor array of exactly 256 slots. A slot is
an empty map (nothing), a map ``{key: pointer}`` (a bucket, keys in dag-cbor's canonical
length-first order) or a one-element array ``[pointer]`` (a link to a child node). A pointer
is a CID (tag 42) for CID-addressed stores, or a byte string for ``InMemoryCAS``. In memory a
node is a 256-element list with ``None``, a ``dict`` or a one-element ``list`` in each slot.

The codec below reads and writes exactly that grammar with byte-level code; anything outside
it (a custom store whose ids are strings or integers, say) goes through ``dag_cbor``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING, Any, Final

import dag_cbor
from blake3 import blake3
from multiformats import CID

from ._errors import (
    BlockVerificationError,
    CorruptBlockError,
    CorruptNodeError,
    InvalidConfigError,
    InvalidIdError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BLAKE3",
    "DAG_CBOR",
    "DAG_PB",
    "EMPTY_NODE_BYTES",
    "RAW",
    "Link",
    "Pointer",
    "as_link",
    "as_pointer",
    "codec_code",
    "codec_name",
    "decode_node",
    "decode_varint",
    "empty_slots",
    "encode_node",
    "encode_varint",
    "make_link",
    "to_public",
    "verify_block",
]

RAW: Final = 0x55
DAG_CBOR: Final = 0x71
DAG_PB: Final = 0x70
BLAKE3: Final = 0x1E
_IDENTITY: Final = 0x00
_SHA2_256: Final = 0x12
# The one codec table: names as users and Kubo's RPC spell them, codes as CIDs carry them.
_CODEC_CODES: Final = {"raw": RAW, "dag-cbor": DAG_CBOR, "dag-pb": DAG_PB}
_CODEC_NAMES: Final = {code: name for name, code in _CODEC_CODES.items()}

# A pointer is whatever id a store hands out: a Link, bytes (InMemoryCAS) or, for a custom
# store, any other immutable IPLD value.
type Pointer = Any


class Link(bytes):
    """A CIDv1 in binary form (version, codec, multihash).

    Behaves as the bytes it is; ``str()`` gives the usual base32 text form. Convert to a
    ``multiformats.CID`` with ``to_cid()`` only at the edge of the library.
    """

    __slots__ = ()

    @property
    def codec(self) -> int:
        code, _ = decode_varint(self, 1)
        return code

    def multihash(self) -> tuple[int, bytes]:
        """The multihash function code and digest."""
        _, pos = decode_varint(self, 1)
        fn, pos = decode_varint(self, pos)
        size, pos = decode_varint(self, pos)
        return fn, bytes(self[pos : pos + size])

    def to_cid(self) -> CID:
        # Parsed from text so the CID prints in base32, as the CIDs Kubo hands out do.
        return CID.decode(str(self))

    def __str__(self) -> str:
        return "b" + base64.b32encode(self).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"Link({self})"

    @classmethod
    def parse(cls, text: str) -> Link:
        """Parse a CIDv1 in base32 (``b…``) text form; other forms go through multiformats."""
        if text.startswith("b") and text[1:].isalnum() and text == text.lower():
            body = text[1:].upper()
            try:
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            except ValueError as exc:
                raise InvalidIdError(f"{text!r} is not a valid base32 CID") from exc
            if raw[:1] == b"\x01":
                return cls.from_bytes(raw, text)
        try:
            cid = CID.decode(text)
        except Exception as exc:
            raise InvalidIdError(f"{text!r} is not a CID: {exc}") from exc
        return cls(bytes(cid.set(version=1)))

    @classmethod
    def from_bytes(cls, raw: bytes, shown: object = None) -> Link:
        """A binary CIDv1, checked to be whole: version, codec, then a multihash whose
        digest has exactly the length it declares (a truncated CID fails here, not later
        as a missing or corrupt block)."""
        shown = repr(shown if shown is not None else bytes(raw))
        try:
            if raw[:1] != b"\x01":
                raise CorruptBlockError("not version 1")
            _, pos = decode_varint(raw, 1)
            _, pos = decode_varint(raw, pos)
            size, pos = decode_varint(raw, pos)
        except CorruptBlockError:
            raise InvalidIdError(
                f"{shown} is not a whole CIDv1; check that the id was copied completely"
            ) from None
        if len(raw) - pos != size:
            raise InvalidIdError(
                f"{shown} is not a whole CIDv1 (its digest has {len(raw) - pos} of "
                f"{size} bytes); check that the id was copied completely"
            )
        return cls(raw)


def codec_code(codec: str) -> int:
    try:
        return _CODEC_CODES[codec]
    except KeyError:
        raise InvalidConfigError(
            f"unknown codec {codec!r}: use one of {sorted(_CODEC_CODES)}"
        ) from None


def codec_name(code: int) -> str:
    """The multicodec name of ``code`` (``0x71`` is ``"dag-cbor"``)."""
    name = _CODEC_NAMES.get(code)
    if name is None:
        from multiformats import multicodec  # only for codecs anyhamt never writes

        name = str(multicodec.get(code=code).name)
    return name


_PREFIXES: Final = {code: bytes([0x01, code, BLAKE3, 32]) for code in (RAW, DAG_CBOR)}


def make_link(codec: int, data: bytes, hasher: int = BLAKE3) -> Link:
    """The CIDv1 of ``data`` saved with ``codec``, hashed with ``hasher`` (a multihash
    code: blake3 or sha2-256, both 32-byte digests) as Kubo names the same block."""
    if hasher == BLAKE3:
        prefix = _PREFIXES.get(codec)
        if prefix is None:
            prefix = bytes([0x01, *encode_varint(codec), BLAKE3, 32])
        return Link(prefix + blake3(data).digest())
    if hasher == _SHA2_256:
        prefix = bytes([0x01, *encode_varint(codec), _SHA2_256, 32])
        return Link(prefix + hashlib.sha256(data).digest())
    raise InvalidConfigError(
        f"cannot hash with multihash 0x{hasher:x}: use blake3 (0x1e) or sha2-256 (0x12)"
    )


def verify_block(link: Link, data: bytes) -> None:
    """Raise ``BlockVerificationError`` unless ``data`` hashes to ``link``'s multihash."""
    fn, digest = link.multihash()
    if fn == BLAKE3:
        actual = blake3(data).digest(length=len(digest))
    elif fn == _SHA2_256:
        actual = hashlib.sha256(data).digest()
    elif fn == _IDENTITY:
        actual = data
    else:
        raise BlockVerificationError(
            f"cannot verify {link}: multihash function 0x{fn:x} is not supported "
            "(blake3, sha2-256 and identity are)"
        )
    if actual != digest:
        raise BlockVerificationError(
            f"block for {link} does not match its CID ({len(data)} bytes received); "
            "the store or gateway returned wrong data"
        )


def to_public(ptr: Pointer) -> Any:
    """A pointer as users see it: ``Link`` becomes ``multiformats.CID``."""
    if type(ptr) is Link:
        return ptr.to_cid()
    return ptr


def as_link(id: Any) -> Link:
    """Any id form a user holds as a ``Link``: ``Link``, ``multiformats.CID`` (v0 becomes
    v1), CID text in any multibase, or a binary CIDv1 (checked to be whole).

    Raises ``InvalidIdError`` for anything else, naming what it got.
    """
    if type(id) is Link:
        return id
    if isinstance(id, CID):
        return Link(bytes(id.set(version=1) if id.version != 1 else id))
    if isinstance(id, str):
        return Link.parse(id)
    if isinstance(id, (bytes, bytearray)) and id[:1] == b"\x01":
        return Link.from_bytes(bytes(id))
    raise InvalidIdError(
        f"expected a CID (multiformats.CID, its text or binary form), got {type(id).__name__}; "
        "ids from InMemoryCAS are not CIDs and cannot be loaded here"
    )


def as_pointer(value: Any) -> Pointer:
    """A user-supplied or store-returned id in internal form.

    A ``multiformats.CID`` becomes a ``Link``; any other value is a store's own id (a
    ``Link`` already, the bytes ``InMemoryCAS`` hands out, a custom store's string) and
    passes through unchanged. Text a user typed as a CID goes through ``as_link``.
    """
    if isinstance(value, CID):
        return as_link(value)
    return value


# ---------------------------------------------------------------------------------------
# CBOR heads


def encode_varint(n: int) -> bytes:
    """An unsigned LEB128 varint (multiformats, CAR sections, protobuf)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(
    buf: bytes, pos: int, error: type[Exception] = CorruptBlockError
) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it; ``error`` if it is cut off."""
    result = shift = 0
    size = len(buf)
    while True:
        if pos >= size or shift > 63:
            raise error("a varint runs past the end of its bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _head(major: int, n: int) -> bytes:
    base = major << 5
    if n < 24:
        return bytes((base | n,))
    if n < 0x100:
        return bytes((base | 24, n))
    if n < 0x10000:
        return bytes((base | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((base | 26,)) + n.to_bytes(4, "big")
    return bytes((base | 27,)) + n.to_bytes(8, "big")


# Heads for short byte/text strings and small maps, precomputed.
_BYTES_HEAD: Final = [_head(2, n) for n in range(256)]
_TEXT_HEAD: Final = [_head(3, n) for n in range(256)]
_MAP_HEAD: Final = [_head(5, n) for n in range(256)]
_NODE_HEAD: Final = _head(4, 256)
_EMPTY_SLOT: Final = b"\xa0"
_LINK_HEAD: Final = b"\x81"
_CID_TAG: Final = b"\xd8\x2a"
# tag 42, byte string of 37, multibase 0x00: how a 36-byte CIDv1 starts inside a node
_LINK_CID36: Final = b"\xd8\x2a\x58\x25\x00"

EMPTY_NODE_BYTES: Final = _NODE_HEAD + _EMPTY_SLOT * 256


def empty_slots() -> list[Any]:
    return [None] * 256


# ---------------------------------------------------------------------------------------
# Encoding


def _encode_pointer(ptr: Pointer) -> bytes:
    kind = type(ptr)
    if kind is Link:
        n = len(ptr) + 1
        head = _BYTES_HEAD[n] if n < 256 else _head(2, n)
        return b"".join((_CID_TAG, head, b"\x00", ptr))
    if kind is bytes:
        n = len(ptr)
        return b"".join((_BYTES_HEAD[n] if n < 256 else _head(2, n), ptr))
    # A custom store's id: let the general codec (and its validation) handle it.
    return bytes(dag_cbor.encode(to_public(ptr)))


def _sort_key(item: tuple[bytes, Pointer]) -> tuple[int, bytes]:
    return len(item[0]), item[0]


def _encode_bucket(bucket: dict[str, Pointer]) -> bytes:
    if len(bucket) == 1:  # the common case in a sparse node: no sorting, one join
        for key, ptr in bucket.items():
            kb = key.encode("utf-8")
            kn = len(kb)
            return b"".join(
                (b"\xa1", _TEXT_HEAD[kn] if kn < 256 else _head(3, kn), kb, _encode_pointer(ptr))
            )
    entries = [(key.encode("utf-8"), ptr) for key, ptr in bucket.items()]
    if len(entries) > 1:
        entries.sort(key=_sort_key)
    n = len(entries)
    parts = [_MAP_HEAD[n] if n < 256 else _head(5, n)]
    for kb, ptr in entries:
        kn = len(kb)
        parts.append(_TEXT_HEAD[kn] if kn < 256 else _head(3, kn))
        parts.append(kb)
        parts.append(_encode_pointer(ptr))
    return b"".join(parts)


def encode_node(slots: Sequence[Any]) -> bytes:
    """Encode 256 slots (``None`` | bucket ``dict`` | ``[pointer]``) as canonical dag-cbor."""
    parts = [_NODE_HEAD]
    append = parts.append
    for slot in slots:
        if slot is None:
            append(_EMPTY_SLOT)
        elif type(slot) is dict:
            append(_encode_bucket(slot) if slot else _EMPTY_SLOT)
        else:
            append(_LINK_HEAD + _encode_pointer(slot[0]))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# Decoding

_EMPTY_RUN: Final = re.compile(rb"\xa0*")


class _NotFastPath(Exception):
    """The node uses CBOR outside the grammar the fast decoder knows."""


def _read_len(data: bytes, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    if info == 24:
        return data[pos], pos + 1
    if info == 25:
        return int.from_bytes(data[pos : pos + 2], "big"), pos + 2
    if info == 26:
        return int.from_bytes(data[pos : pos + 4], "big"), pos + 4
    raise _NotFastPath


def _decode_pointer(data: bytes, pos: int) -> tuple[Pointer, int]:
    if data[pos : pos + 5] == _LINK_CID36 and pos + 41 <= len(data):
        return Link(data[pos + 5 : pos + 41]), pos + 41
    first = data[pos]
    if first == 0xD8 and data[pos + 1] == 0x2A:
        head = data[pos + 2]
        if head >> 5 != 2:
            raise CorruptNodeError("a CID tag that does not wrap a byte string")
        n, p = _read_len(data, pos + 3, head & 0x1F)
        if n < 2 or data[p] != 0:
            raise CorruptNodeError("a CID without its 0x00 multibase prefix")
        end = p + n
        if end > len(data):
            raise CorruptNodeError("node bytes end inside a CID")
        return Link(data[p + 1 : end]), end
    if first >> 5 == 2:
        n, p = _read_len(data, pos + 1, first & 0x1F)
        end = p + n
        if end > len(data):
            raise CorruptNodeError("node bytes end inside a byte string")
        return data[p:end], end
    raise _NotFastPath


def _decode_fast(data: bytes) -> list[Any]:
    if not data.startswith(_NODE_HEAD):
        raise _NotFastPath
    slots: list[Any] = []
    append = slots.append
    skip = _EMPTY_RUN.match
    pos = 3
    size = len(data)
    count = 0
    while count < 256:
        if pos >= size:
            raise CorruptNodeError(f"node ends after {count} of 256 slots")
        first = data[pos]
        if first == 0xA0:  # a run of empty slots
            run = min(skip(data, pos).end() - pos, 256 - count)  # type: ignore[union-attr]
            slots.extend([None] * run)
            pos += run
            count += run
            continue
        if first == 0x81:  # link
            # The usual link, a 36-byte CIDv1 (tag 42, 37-byte string, 0x00 prefix), is
            # sliced straight out; anything else goes through the general reader.
            if data[pos + 1 : pos + 6] == _LINK_CID36 and pos + 42 <= size:
                append([Link(data[pos + 6 : pos + 42])])
                pos += 42
            else:
                ptr, pos = _decode_pointer(data, pos + 1)
                append([ptr])
        elif first >> 5 == 5:  # bucket
            n, pos = _read_len(data, pos + 1, first & 0x1F)
            bucket: dict[str, Pointer] = {}
            for _ in range(n):
                khead = data[pos]
                if khead >> 5 != 3:
                    raise _NotFastPath
                kn, pos = _read_len(data, pos + 1, khead & 0x1F)
                key = data[pos : pos + kn].decode("utf-8")
                pos += kn
                bucket[key], pos = _decode_pointer(data, pos)
            if len(bucket) != n:
                raise CorruptNodeError("a bucket repeats a key")
            append(bucket)
        else:
            raise CorruptNodeError(
                f"slot {count} is neither a bucket nor a link (CBOR byte 0x{first:02x})"
            )
        count += 1
    if pos != size:
        raise CorruptNodeError(f"{size - pos} trailing bytes after the 256 slots")
    return slots


def _decode_general(data: bytes) -> list[Any]:
    try:
        decoded = dag_cbor.decode(data)
    except Exception as exc:
        raise CorruptNodeError(f"not valid dag-cbor: {exc}") from exc
    if not isinstance(decoded, list) or len(decoded) != 256:
        raise CorruptNodeError("a HAMT node is a dag-cbor array of exactly 256 slots")
    slots: list[Any] = []
    for item in decoded:
        if isinstance(item, dict):
            slots.append({k: as_pointer(v) for k, v in item.items()} if item else None)
        elif isinstance(item, list) and len(item) == 1:
            slots.append([as_pointer(item[0])])
        else:
            raise CorruptNodeError("each of a node's slots must be a map or a one-element array")
    return slots


def decode_node(data: bytes) -> list[Any]:
    """Decode a node's bytes into 256 slots; raise ``CorruptNodeError`` if they are not one."""
    try:
        return _decode_fast(data)
    except _NotFastPath:
        return _decode_general(data)
    except (IndexError, UnicodeDecodeError) as exc:
        raise CorruptNodeError(f"malformed HAMT node: {exc}") from exc
