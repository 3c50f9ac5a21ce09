"""A content-addressed store in a Python dict, with py-hamt's id format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from blake3 import blake3

from .._codec import Link
from .._errors import BlockNotFoundError, InvalidIdError
from ._base import ContentAddressedStore, slice_block

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["InMemoryCAS"]

# multihash header: blake3 (0x1e), 32-byte digest
_MULTIHASH_PREFIX: Final = b"\x1e\x20"


class InMemoryCAS(ContentAddressedStore):
    """Blocks in memory, keyed by their blake3 multihash (``1e 20 || digest``, 34 bytes).

    The ids are py-hamt's: raw multihash ``bytes``, not CIDs, so a HAMT built here has the
    same root bytes as one built with py-hamt's ``InMemoryCAS``. Safe to share between
    event loops and threads (each operation is a single dict access).
    """

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}

    def _put(self, data: bytes) -> bytes:
        key = _MULTIHASH_PREFIX + blake3(data).digest()
        self.store[key] = bytes(data)
        return key

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> bytes:
        # docstring inherited
        return self._put(data)

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        # docstring inherited
        if type(id) is not bytes:
            if isinstance(id, Link):
                raise InvalidIdError(
                    f"InMemoryCAS ids are the bytes its save() returned, not a CID ({id})"
                )
            if isinstance(id, (bytes, bytearray, memoryview)):
                id = bytes(id)
            else:
                raise InvalidIdError(
                    f"InMemoryCAS ids are the bytes its save() returned, not {type(id).__name__}"
                )
        try:
            data = self.store[id]
        except KeyError:
            raise BlockNotFoundError(
                f"InMemoryCAS has no block {id.hex()}; was it saved to another store?"
            ) from None
        return slice_block(data, offset, length, suffix)

    # The public methods already use the internal id form; skip a wrapper on the hot path.
    _save_id = save
    _load_id = load  # type: ignore[assignment]  # same signature, parameter named `id`

    async def _size_id(self, ptr: Any) -> int:
        # docstring inherited
        # load() without a range hands back the stored bytes themselves: no copy is made.
        return len(await self.load(ptr))

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[bytes]:
        return [self._put(data) for data in blocks]
