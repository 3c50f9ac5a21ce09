"""A conformance suite for ``ContentAddressedStore`` implementations.

Subclass it in a test module and provide a ``store`` fixture that yields a fresh store::

    class TestMyStore(ContentAddressedStoreTests):
        @pytest.fixture
        async def store(self, tmp_path):
            async with MyStore(tmp_path) as store:
                yield store

The tests are async; run them with anyio's pytest plugin (``anyio_mode = "auto"`` or an
``anyio_backend`` fixture), ideally on both asyncio and trio.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest

from .._codec import DAG_CBOR, RAW, Link, as_pointer, make_link
from .._errors import BlockNotFoundError, InvalidIdError, InvalidRangeError

if TYPE_CHECKING:
    from ..cas._base import ContentAddressedStore

__all__ = ["ContentAddressedStoreTests"]


class ContentAddressedStoreTests:
    """What every ``ContentAddressedStore`` must do."""

    #: True if ids are CIDv1 + blake3 with the codec asked for (Kubo's CIDs).
    cids_are_kubo_cids: ClassVar[bool] = True
    #: Size of the "large" block the suite round-trips.
    large_block_size: ClassVar[int] = 1024 * 1024

    @pytest.fixture
    def store(self) -> ContentAddressedStore:
        raise NotImplementedError("provide a `store` fixture that yields a fresh store")

    async def test_round_trip(self, store: ContentAddressedStore) -> None:
        codecs: tuple[ContentAddressedStore.CodecInput, ...] = ("raw", "dag-cbor")
        for codec in codecs:
            data = os.urandom(200)
            block_id = await store.save(data, codec)
            assert await store.load(block_id) == data

    async def test_ids_are_immutable_and_deterministic(self, store: ContentAddressedStore) -> None:
        first = await store.save(b"same bytes", "raw")
        second = await store.save(b"same bytes", "raw")
        other = await store.save(b"other bytes", "raw")
        assert first is not None
        assert isinstance(first, Hashable) and not isinstance(first, (list, dict))
        assert first == second
        assert hash(first) == hash(second)
        assert first != other

    def expected_id(self, data: bytes, codec: int) -> Any:
        """The id the store must give ``data`` (internal form); override for other id schemes."""
        return make_link(codec, data)

    async def test_ids_follow_the_store_id_scheme(self, store: ContentAddressedStore) -> None:
        data = b"id check"
        assert as_pointer(await store.save(data, "raw")) == self.expected_id(data, RAW)
        assert as_pointer(await store.save(data, "dag-cbor")) == self.expected_id(data, DAG_CBOR)

    async def test_empty_and_large_blocks(self, store: ContentAddressedStore) -> None:
        empty = await store.save(b"", "raw")
        assert await store.load(empty) == b""
        big = os.urandom(self.large_block_size)
        big_id = await store.save(big, "raw")
        assert await store.load(big_id) == big

    async def test_byte_ranges(self, store: ContentAddressedStore) -> None:
        block_id = await store.save(b"0123456789", "raw")
        assert await store.load(block_id, offset=0, length=4) == b"0123"
        assert await store.load(block_id, offset=3, length=2) == b"34"
        assert await store.load(block_id, offset=6) == b"6789"
        assert await store.load(block_id, suffix=3) == b"789"
        assert await store.load(block_id, offset=8, length=100) == b"89"
        assert await store.load(block_id, suffix=100) == b"0123456789"
        longer = await store.save(b"x" * 64 + b"y" * 36, "raw")
        assert await store.load(longer, suffix=100) == b"x" * 64 + b"y" * 36
        assert await store.load(longer, suffix=37) == b"x" + b"y" * 36

    async def test_bad_ranges_raise(self, store: ContentAddressedStore) -> None:
        block_id = await store.save(b"0123456789", "raw")
        with pytest.raises(InvalidRangeError):
            await store.load(block_id, offset=-1)
        with pytest.raises(InvalidRangeError):
            await store.load(block_id, offset=1, suffix=2)

    async def _missing_id(self, store: ContentAddressedStore) -> Any:
        """An id of the store's own kind that it does not hold."""
        other = await store.save(b"present", "raw")
        if self.cids_are_kubo_cids:
            return make_link(RAW, b"never saved").to_cid()
        return type(other)(bytes(other)[:-1] + bytes([bytes(other)[-1] ^ 1]))

    async def test_missing_block(self, store: ContentAddressedStore) -> None:
        with pytest.raises(BlockNotFoundError):
            await store.load(await self._missing_id(store))

    async def test_block_api(self, store: ContentAddressedStore) -> None:
        """``has`` and ``get_block`` answer for saved and unsaved ids; ``put_block`` stores
        a block under its CID where the store names blocks by Kubo's CIDs, and refuses
        with ``InvalidIdError`` where it cannot."""
        block_id = await store.save(b"a block", "raw")
        assert await store.has(block_id)
        assert await store.get_block(block_id) == b"a block"
        assert not await store.has(await self._missing_id(store))
        data = os.urandom(64)
        link = make_link(RAW, data)
        if self.cids_are_kubo_cids:
            assert not await store.has(link.to_cid())
            await store.put_block(link.to_cid(), data)
            await store.flush()
            assert await store.has(link.to_cid())
            assert await store.load(link.to_cid()) == data
        else:
            with pytest.raises(InvalidIdError):
                await store.put_block(link.to_cid(), data)

    async def test_wrong_id_type(self, store: ContentAddressedStore) -> None:
        for bad in (12345, 1.5, ("tuple",)):
            with pytest.raises(InvalidIdError):
                await store.load(bad)

    async def test_concurrent_saves_and_loads(self, store: ContentAddressedStore) -> None:
        blocks = [os.urandom(64) for _ in range(200)]
        ids: list[Any] = [None] * len(blocks)

        async def save(i: int) -> None:
            ids[i] = await store.save(blocks[i], "raw")

        async with anyio.create_task_group() as tg:
            for i in range(len(blocks)):
                tg.start_soon(save, i)

        loaded: list[bytes | None] = [None] * len(blocks)

        async def load(i: int) -> None:
            loaded[i] = await store.load(ids[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(blocks)):
                tg.start_soon(load, i)
        assert loaded == blocks

    async def test_save_many_matches_save(self, store: ContentAddressedStore) -> None:
        blocks = [os.urandom(50) for _ in range(40)]
        many = await store._save_many(blocks, "dag-cbor")
        singles = [as_pointer(await store.save(b, "dag-cbor")) for b in blocks]
        assert many == singles
        for pointer, data in zip(many, blocks, strict=True):
            assert await store._load_id(pointer) == data

    async def test_internal_ids_round_trip_through_public_ones(
        self, store: ContentAddressedStore
    ) -> None:
        pointer = await store._save_id(b"fast path", "raw")
        if self.cids_are_kubo_cids:
            assert type(pointer) is Link
        assert await store.load(await store.save(b"fast path", "raw")) == b"fast path"
        assert await store._load_id(pointer, offset=5) == b"path"

    async def test_flush_is_safe_to_call_any_time(self, store: ContentAddressedStore) -> None:
        await store.flush()
        block_id = await store.save(b"x", "raw")
        await store.flush()
        await store.flush()
        assert await store.load(block_id) == b"x"
