"""A content-addressed store in a Python dict, with py-hamt's id format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from blake3 import blake3

from .._codec import Link
from .._errors import BlockNotFoundError, InvalidIdError
from .._loops import checkpoint_if_cancelled
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

    Cancellation: every async method checks for it on entry; a call made in a cancelled
    scope raises the cancellation and does nothing. Past that check none of them waits,
    so a call that started completes.
    """

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}

    def _put(self, data: bytes) -> bytes:
        key = _MULTIHASH_PREFIX + blake3(data).digest()
        self.store[key] = bytes(data)
        return key

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> bytes:
        """Store ``data`` and return its id. Cancellation: nothing is stored."""
        await checkpoint_if_cancelled()
        return self._put(data)

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        """Return the block ``id`` names, or the byte range of it asked for.

        Cancellation: nothing happened.
        """
        await checkpoint_if_cancelled()
        return self._get(id, offset, length, suffix)

    def _get(self, id: Any, offset: int | None, length: int | None, suffix: int | None) -> bytes:
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

    async def get_block(self, id: Any) -> bytes:
        # docstring inherited
        await checkpoint_if_cancelled()
        return await super().get_block(id)

    async def put_block(self, id: Any, data: bytes) -> None:
        # docstring inherited
        await checkpoint_if_cancelled()
        await super().put_block(id, data)

    async def has(self, id: Any) -> bool:
        # docstring inherited
        await checkpoint_if_cancelled()
        return await super().has(id)

    async def flush(self) -> None:
        """Nothing to do: every block is in memory once saved. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def aclose(self) -> None:
        """Nothing to release. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def pin_cid(self, id: Any, target_rpc: str) -> None:
        """A no-op: no pins in memory. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def unpin_cid(self, id: Any, target_rpc: str) -> None:
        """A no-op: no pins in memory. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str) -> None:
        """A no-op: no pins in memory. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def pin_ls(self, target_rpc: str) -> dict[str, dict[str, Any]]:
        """No pins in memory: ``{}``. Cancellation: raised."""
        await checkpoint_if_cancelled()
        return {}

    # -- internal fast protocol: no cancellation check, the HAMT's public methods make it --

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> bytes:
        return self._put(data)

    async def _load_id(
        self,
        ptr: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        # The hot path of every read inlines _get's common case.
        data = self.store.get(ptr) if type(ptr) is bytes else None
        if data is None:
            return self._get(ptr, offset, length, suffix)
        return slice_block(data, offset, length, suffix)

    async def _size_id(self, ptr: Any) -> int:
        # docstring inherited
        # load() without a range hands back the stored bytes themselves: no copy is made.
        return len(await self.load(ptr))

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[bytes]:
        return [self._put(data) for data in blocks]
