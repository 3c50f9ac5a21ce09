"""zarr's own conformance suite (``zarr.testing.store.StoreTests``) for ``ShardedZarrStore``,
in both formats, on the in-memory store and on the persistent one.

The stores' fixtures open a writable store at the root of an empty flushed store, so the
read-only variants the suite builds from the same kwargs have a root to open. The suite's
``set``/``get`` helpers go around the store's own ``set``/``get``: they save the value in the
content-addressed store and point the key at it (``set_pointer``), and read the value by the
id the store holds for the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from zarr.core.buffer import Buffer, cpu
from zarr.testing.store import StoreTests

from anyhamt import InMemoryCAS, LocalCAS
from anyhamt.zarr import ShardedZarrStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyhamt.cas import ContentAddressedStore


async def empty_root(cas: ContentAddressedStore, version: str) -> Any:
    if version == "sharded_zarr_v1":
        store = await ShardedZarrStore.open(
            cas=cas,
            read_only=False,
            array_shape=(8, 8, 8),
            chunk_shape=(2, 2, 2),
            chunks_per_shard=4,
            manifest_version=version,
        )
    else:
        store = await ShardedZarrStore.open(
            cas=cas, read_only=False, chunks_per_shard=4, manifest_version=version
        )
    return await store.flush()


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # zarr's StoreTests call asyncio directly
class TestShardedV2(StoreTests[ShardedZarrStore, cpu.Buffer]):
    store_cls = ShardedZarrStore
    buffer_cls = cpu.Buffer
    version = "sharded_zarr_v2"

    @pytest.fixture
    async def store_kwargs(self) -> dict[str, Any]:
        cas = InMemoryCAS()
        return {"cas": cas, "read_only": False, "root_cid": await empty_root(cas, self.version)}

    async def set(self, store: ShardedZarrStore, key: str, value: Buffer) -> None:
        ptr = await store.cas.save(value.to_bytes(), codec="raw")
        await store.with_read_only(False).set_pointer(key, ptr)

    async def get(self, store: ShardedZarrStore, key: str) -> cpu.Buffer:
        core = store._core
        assert core is not None
        await core.ready()
        ptr = await store._pointer(core, key)
        assert ptr is not None
        return self.buffer_cls.from_bytes(await store.cas._load_id(ptr))

    def test_store_repr(self, store: ShardedZarrStore) -> None:
        assert repr(store).startswith("ShardedZarrStore('sharded://")
        assert "read_only=False" in repr(store)

    def test_store_supports_writes(self, store: ShardedZarrStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ShardedZarrStore) -> None:
        assert store.supports_listing


class TestShardedV1(TestShardedV2):
    version = "sharded_zarr_v1"


class TestShardedV2OnLocalCAS(TestShardedV2):
    """The same suite over the persistent store (CIDs in the root and shards)."""

    @pytest.fixture
    async def store_kwargs(self, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
        async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
            yield {"cas": cas, "read_only": False, "root_cid": await empty_root(cas, self.version)}


class TestShardedV1OnLocalCAS(TestShardedV2OnLocalCAS):
    version = "sharded_zarr_v1"
