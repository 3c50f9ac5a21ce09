"""``anyhamt.testing.WrapperCAS``: a wrapped store is still a whole store, and the hook
sees every operation the HAMT and the block API make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from anyhamt import HAMT, InMemoryCAS, LocalCAS
from anyhamt.testing import ContentAddressedStoreTests, WrapperCAS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


class Recording(WrapperCAS):
    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    async def before(self, operation: str, id: Any = None) -> None:
        self.calls.append(operation)


class TestWrappedLocalCAS(ContentAddressedStoreTests):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[WrapperCAS]:
        async with WrapperCAS(LocalCAS(tmp_path / "blocks.db")) as store:
            yield store


async def test_a_wrapped_store_gives_the_same_root_and_sees_every_load() -> None:
    items = {f"k{i}": f"v{i}".encode() for i in range(300)}
    roots = []
    for cas in (InMemoryCAS(), Recording(InMemoryCAS())):
        hamt = await HAMT.build(cas=cas, values_are_bytes=True, max_bucket_size=2)
        for key, value in items.items():
            await hamt.set(key, value)
        await hamt.make_read_only()
        roots.append(hamt.root_node_id)
    assert roots[0] == roots[1]
    assert isinstance(cas, Recording)
    assert "save_many" in cas.calls or "save" in cas.calls
    assert "flush" in cas.calls

    cas.calls.clear()
    reader = await HAMT.build(cas=cas, root_node_id=roots[1], read_only=True, values_are_bytes=True)
    assert await reader.get("k7") == b"v7"
    assert cas.calls and set(cas.calls) == {"load"}


async def test_the_block_api_goes_through_the_hook(tmp_path: Path) -> None:
    async with Recording(LocalCAS(tmp_path / "blocks.db")) as cas:
        cid = await cas.save(b"block", "raw")
        assert await cas.has(cid)
        assert await cas.get_block(cid) == b"block"
        await cas.put_block(cid, b"block")
        assert cas.calls == ["save", "has", "get_block", "put_block"]
    assert repr(cas).startswith("Recording(LocalCAS(")
