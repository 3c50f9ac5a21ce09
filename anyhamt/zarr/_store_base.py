"""What the HAMT store and the sharded store share as zarr ``Store`` classes.

The capability flags (both stores write, delete and list; neither takes partial writes),
zarr 3.0.x's abstract ``set_partial_values``, the translation of zarr's byte requests into
the block stores' ``(offset, length, suffix)``, and ``buffer_bytes``: the bytes a zarr
buffer holds, without copying them when zarr already has them as a ``bytes`` object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, cpu

from .._errors import InvalidRangeError
from .._loops import checkpoint_if_cancelled

if TYPE_CHECKING:
    from collections.abc import Iterable

    from zarr.abc.store import ByteRequest

__all__ = ["BlockStoreBase", "buffer_bytes", "range_args"]

type Range = tuple[int | None, int | None, int | None]


def range_args(byte_range: ByteRequest | None) -> Range:
    """A zarr byte request as the block stores' ``(offset, length, suffix)``."""
    if byte_range is None:
        return None, None, None
    kind = type(byte_range)
    if kind is RangeByteRequest:
        start, end = byte_range.start, byte_range.end  # type: ignore[union-attr]
        if start < 0 or end < start:
            raise InvalidRangeError(
                f"RangeByteRequest needs 0 <= start <= end, got start={start}, end={end}"
            )
        return start, end - start, None
    if kind is OffsetByteRequest:
        offset = byte_range.offset  # type: ignore[union-attr]
        if offset < 0:
            raise InvalidRangeError(f"OffsetByteRequest needs offset >= 0, got {offset}")
        return offset, None, None
    if kind is SuffixByteRequest:
        suffix = byte_range.suffix  # type: ignore[union-attr]
        if suffix < 0:
            raise InvalidRangeError(f"SuffixByteRequest needs suffix >= 0, got {suffix}")
        return None, None, suffix
    raise InvalidRangeError(
        f"Unexpected byte_range, got {byte_range!r}; expected a zarr RangeByteRequest, "
        "OffsetByteRequest, SuffixByteRequest or None"
    )


def buffer_bytes(value: Buffer) -> bytes:
    """The bytes of a zarr buffer, as immutable ``bytes``.

    zarr's codecs return their output as ``bytes`` and wrap it in a numpy view
    (``Buffer.from_bytes``); when the buffer views the whole of such an object, that object
    is the answer and nothing is copied. ``bytes`` cannot change, so a block store may keep
    it. Anything else (a slice, a writable array, a GPU buffer) is copied by
    ``to_bytes()``. Not copying took the sharded benchmark's 95 MB v1 write from 0.83x to
    0.97x of zarr's own ``MemoryStore`` (``benchmarks/results/sharded.md``).
    """
    if isinstance(value, cpu.Buffer):
        array = value.as_numpy_array()
        owner: object = array.base
        if type(owner) is bytes and array.nbytes == len(owner) and array.flags.c_contiguous:
            return owner
    return value.to_bytes()


class BlockStoreBase(Store):
    """Flags, partial-write refusal, ``repr`` and unhashability shared by anyhamt's zarr
    stores (each gives its own ``__str__`` and ``__eq__``)."""

    __slots__ = ()

    # Mutable, like zarr's own stores; each subclass compares by flushed root in __eq__.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self}', read_only={self.read_only})"

    @property
    def supports_writes(self) -> bool:
        # docstring inherited
        return True

    @property
    def supports_deletes(self) -> bool:
        # docstring inherited
        return True

    @property
    def supports_listing(self) -> bool:
        # docstring inherited
        return True

    @property
    def supports_partial_writes(self) -> bool:  # type: ignore[override]
        # docstring inherited (abstract on zarr 3.0.x, where these stores must load too)
        return False

    async def set_partial_values(self, key_start_values: Iterable[tuple[str, int, Any]]) -> None:
        """Not supported (zarr 3.0.x's abstract method; later zarr never calls it)."""
        await checkpoint_if_cancelled()
        raise NotImplementedError(f"{type(self).__name__} does not support partial writes")
