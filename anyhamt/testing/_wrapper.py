"""``WrapperCAS``: a store that forwards to another, for tests that watch or perturb I/O.

In the spirit of zarr's ``WrapperStore``: subclass it and override ``before`` (called
ahead of every forwarded operation) or any single method. Tests use it to yield to the
loop at every store call, count loads, cancel at the n-th await point or fail on demand,
without re-implementing the store protocol each time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..cas._base import ContentAddressedStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._codec import Pointer

__all__ = ["WrapperCAS"]


class WrapperCAS(ContentAddressedStore):
    """Forwards every call, public and internal, to ``inner``.

    ``before(operation, id)`` runs first; ``operation`` is the method's name without
    underscores (``"save"``, ``"load"``, ``"size"``, ``"save_many"``, ``"flush"``,
    ``"get_block"``, ``"put_block"``, ``"has"``) and ``id`` the id involved, if any. The
    HAMT calls the internal methods (``_load_id`` and friends), which are forwarded to
    ``inner``'s own, so a wrapper does not slow the path it wraps.
    """

    def __init__(self, inner: ContentAddressedStore) -> None:
        self.inner = inner

    async def before(self, operation: str, id: Any = None) -> None:
        """Called ahead of each forwarded operation; does nothing unless overridden."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Any:
        await self.before("save")
        return await self.inner.save(data, codec)

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        await self.before("load", id)
        return await self.inner.load(id, offset, length, suffix)

    async def get_block(self, id: Any) -> bytes:
        await self.before("get_block", id)
        return await self.inner.get_block(id)

    async def put_block(self, id: Any, data: bytes) -> None:
        await self.before("put_block", id)
        await self.inner.put_block(id, data)

    async def has(self, id: Any) -> bool:
        await self.before("has", id)
        return await self.inner.has(id)

    async def pin_cid(self, id: Any, target_rpc: str) -> None:
        await self.inner.pin_cid(id, target_rpc)

    async def unpin_cid(self, id: Any, target_rpc: str) -> None:
        await self.inner.unpin_cid(id, target_rpc)

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str) -> None:
        await self.inner.pin_update(old_id, new_id, target_rpc)

    async def pin_ls(self, target_rpc: str) -> dict[str, dict[str, Any]]:
        return await self.inner.pin_ls(target_rpc)

    async def flush(self) -> None:
        await self.before("flush")
        await self.inner.flush()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Pointer:
        await self.before("save")
        return await self.inner._save_id(data, codec)

    async def _load_id(
        self,
        ptr: Pointer,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        await self.before("load", ptr)
        return await self.inner._load_id(ptr, offset, length, suffix)

    async def _size_id(self, ptr: Pointer) -> int:
        await self.before("size", ptr)
        return await self.inner._size_id(ptr)

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[Pointer]:
        await self.before("save_many")
        return await self.inner._save_many(blocks, codec)
