"""Every store in anyhamt passes the ContentAddressedStore conformance suite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from blake3 import blake3

from anyhamt import InMemoryCAS, LocalCAS
from anyhamt.testing import ContentAddressedStoreTests

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


class TestInMemoryCAS(ContentAddressedStoreTests):
    cids_are_kubo_cids = False

    def expected_id(self, data: bytes, codec: int) -> bytes:
        # py-hamt's ids: the raw blake3 multihash, whatever the codec.
        return b"\x1e\x20" + blake3(data).digest()

    @pytest.fixture
    async def store(self) -> AsyncIterator[InMemoryCAS]:
        async with InMemoryCAS() as store:
            yield store


class TestLocalCAS(ContentAddressedStoreTests):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[LocalCAS]:
        async with LocalCAS(tmp_path / "blocks.db") as store:
            yield store


class TestLocalCASSmallBatches(ContentAddressedStoreTests):
    """Commits every few blocks, so reads cross pending, committing and committed blocks."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[LocalCAS]:
        async with LocalCAS(tmp_path / "blocks.db", batch_blocks=3) as store:
            yield store
