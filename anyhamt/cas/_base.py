"""The interface every content-addressed store implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from .._codec import as_link, as_pointer, codec_name, to_public
from .._errors import BlockNotFoundError, InvalidIdError, InvalidRangeError
from .._loops import checkpoint_if_cancelled
from .._tasks import map_bounded

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from .._codec import Pointer

__all__ = ["ContentAddressedStore", "check_range", "slice_block"]


def check_range(offset: Any, length: Any, suffix: Any) -> None:
    """Reject a malformed range before any I/O: parts that are not ``None`` or plain ints,
    negative parts, or a suffix together with an offset or length.

    ``1.5`` or ``"1"`` would otherwise fail deep inside slicing with a bare ``TypeError``
    (or, for a float that happens to be whole, silently work on one store and not another).
    """
    for name, value in (("offset", offset), ("length", length), ("suffix", suffix)):
        if value is not None and (type(value) is not int):
            raise InvalidRangeError(
                f"{name} must be an int or None, got {type(value).__name__} {value!r}"
            )
    if suffix is not None:
        if offset is not None or length is not None:
            raise InvalidRangeError("give either offset/length or suffix, not both")
        if suffix < 0:
            raise InvalidRangeError(f"suffix must be >= 0, got {suffix}")
    elif (offset is not None and offset < 0) or (length is not None and length < 0):
        raise InvalidRangeError(f"offset and length must be >= 0, got {offset} and {length}")


def slice_block(
    data: bytes, offset: int | None = None, length: int | None = None, suffix: int | None = None
) -> bytes:
    """Apply the ``offset``/``length``/``suffix`` range of ``load`` to a whole block.

    ``offset`` with optional ``length`` selects ``data[offset:offset + length]``;
    ``suffix`` selects the last ``suffix`` bytes. Ranges past the end are clipped, as HTTP
    range requests are.
    """
    if offset is None and length is None and suffix is None:
        return data
    check_range(offset, length, suffix)
    if suffix is not None:
        return data[max(len(data) - suffix, 0) :] if suffix else b""
    if offset is None:
        offset = 0
    return data[offset:] if length is None else data[offset : offset + length]


class ContentAddressedStore(ABC):
    """A store that names each block by its content.

    Subclasses implement ``save`` and ``load`` (py-hamt's interface). Ids may be any
    immutable, hashable value other than ``None``; stores in anyhamt return
    ``multiformats.CID`` objects (or raw multihash bytes for ``InMemoryCAS``).

    ``get_block``, ``put_block`` and ``has`` work on single IPLD blocks by CID, as CAR
    import and export and the sharded store need; their defaults go through the methods
    below, and stores that hold blocks by CID override them.

    **Writing a store.** The HAMT and the Zarr stores talk to a store only through the
    internal protocol below, in internal id form (``Link`` for CIDs, see
    ``anyhamt._codec``). A store author implements ``save`` and ``load``; overriding
    these is optional and only for speed:

    * ``_save_id(data, codec)``: store one block, return its id (``Pointer``).
    * ``_load_id(ptr, offset, length, suffix)``: the value's bytes, or the byte range
      asked for (already checked by ``check_range``).
    * ``_size_id(ptr)``: the value's length without reading it where possible.
    * ``_save_many(blocks, codec)``: many blocks at once, ids in order.
    * ``flush()``: make every saved block durable; the HAMT calls it at the end of its
      own flush, so a store may buffer saves until then.

    Cancellation: every public async method checks for cancellation on entry, so a call
    made in a cancelled scope raises and does nothing. A ``save`` cancelled later may or
    may not have stored the block; saving the same bytes again is always safe. A
    cancelled ``load`` has no effect.
    """

    CodecInput = Literal["raw", "dag-cbor"]

    # How many blocks the default _save_many saves at once.
    save_concurrency: ClassVar[int] = 32

    @abstractmethod
    async def save(self, data: bytes, codec: CodecInput) -> Any:
        """Store ``data`` and return its id. ``codec`` is "dag-cbor" for IPLD nodes."""

    @abstractmethod
    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        """Return the block ``id`` names, or the byte range of it asked for."""

    async def get_block(self, id: Any) -> bytes:
        """The stored block ``id`` names, exactly as stored (for a dag-pb CID the node
        itself, not the UnixFS file ``load`` assembles). ``BlockNotFoundError`` if absent."""
        await checkpoint_if_cancelled()
        return await self._load_id(as_pointer(id))

    async def put_block(self, id: Any, data: bytes) -> None:
        """Store ``data`` under the CID ``id`` (checked against it where the store can).

        This default saves through ``save`` and must get ``id`` back, so it takes raw and
        dag-cbor blocks hashed the way the store hashes; ``InvalidIdError`` otherwise.
        """
        await checkpoint_if_cancelled()
        link = as_link(id)
        codec = codec_name(link.codec)
        if codec not in ("raw", "dag-cbor"):
            raise InvalidIdError(
                f"{type(self).__name__} cannot store a {codec} block ({link}); "
                "use a LocalCAS or KuboCAS"
            )
        got = await self._save_id(data, codec)  # type: ignore[arg-type]
        if got != link:
            raise InvalidIdError(
                f"{type(self).__name__} cannot store {link} under that CID (it names the "
                "block differently); use a LocalCAS or KuboCAS"
            )

    async def has(self, id: Any) -> bool:
        """Whether the store holds the value ``id`` names (without reading all of it)."""
        await checkpoint_if_cancelled()
        try:
            await self._size_id(as_pointer(id))
        except BlockNotFoundError:
            return False
        return True

    async def pin_cid(self, id: Any, target_rpc: str) -> None:
        """Pin a block and everything it links to (a no-op for stores without pins)."""
        await checkpoint_if_cancelled()

    async def unpin_cid(self, id: Any, target_rpc: str) -> None:
        """Remove a pin (a no-op for stores without pins)."""
        await checkpoint_if_cancelled()

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str) -> None:
        """Move a pin from one root to another (a no-op for stores without pins)."""
        await checkpoint_if_cancelled()

    async def pin_ls(self, target_rpc: str) -> dict[str, dict[str, Any]]:
        """Pins by CID text, as Kubo lists them (empty for stores without pins)."""
        await checkpoint_if_cancelled()
        return {}

    async def flush(self) -> None:
        """Make every block saved so far durable. Stores that write through do nothing."""
        await checkpoint_if_cancelled()

    async def aclose(self) -> None:
        """Release the store's resources. Safe to call more than once."""
        await checkpoint_if_cancelled()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internal fast protocol ---------------------------------------------------------

    async def _save_id(self, data: bytes, codec: CodecInput) -> Pointer:
        return as_pointer(await self.save(data, codec))

    async def _load_id(
        self,
        ptr: Pointer,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        return await self.load(to_public(ptr), offset, length, suffix)

    async def _size_id(self, ptr: Pointer) -> int:
        """The length of the whole value ``_load_id(ptr)`` returns, and so a test that it
        exists: ``BlockNotFoundError`` when the store does not hold it.

        Stores answer from what they hold about the value without reading all of it where
        they can (a stored block's length; a UnixFS file's root node), so the answer is
        not a verification: a block that was corrupted in place may still report its
        length, and the read reports the corruption. This fallback, for stores that know
        no better, loads the whole value.
        """
        return len(await self._load_id(ptr))

    async def _save_many(self, blocks: Sequence[bytes], codec: CodecInput) -> list[Pointer]:
        """Save many blocks; ids in the same order. Stores that batch override this."""

        async def save_one(data: bytes) -> Pointer:
            return await self._save_id(data, codec)

        return await map_bounded(save_one, blocks, self.save_concurrency)
