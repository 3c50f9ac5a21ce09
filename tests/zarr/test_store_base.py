"""What both zarr stores share: values are taken without a copy when zarr hands over
immutable ``bytes`` and copied when it hands over anything that can still change, and
``set_if_not_exists`` is atomic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from _helpers import array_metadata
from zarr.core.buffer import cpu, default_buffer_prototype

from anyhamt import HAMT, InMemoryCAS
from anyhamt.testing import WrapperCAS
from anyhamt.zarr import ShardedZarrStore, ZarrHAMTStore
from anyhamt.zarr._store_base import buffer_bytes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from zarr.abc.store import Store

    from anyhamt import ContentAddressedStore

PROTO = default_buffer_prototype()
DATA = bytes(range(256)) * 8


def test_a_buffer_over_whole_bytes_is_taken_as_it_is() -> None:
    data = bytes(DATA)
    assert buffer_bytes(cpu.Buffer.from_bytes(data)) is data


def test_a_buffer_over_part_of_bytes_is_copied_to_exactly_that_part() -> None:
    part = cpu.Buffer.from_bytes(DATA)[3:40]
    got = buffer_bytes(part)
    assert got == DATA[3:40]
    assert type(got) is bytes


def test_a_buffer_over_a_writable_array_is_copied() -> None:
    array = np.frombuffer(bytearray(DATA), dtype="B")
    value = cpu.Buffer.from_array_like(array)
    got = buffer_bytes(value)
    array[:4] = 0  # the caller may reuse its array once set() returned
    assert got == DATA


class YieldingCAS(WrapperCAS):
    """Gives other tasks a turn before every store call, as a store with real I/O does."""

    async def before(self, operation: str, id: Any = None) -> None:
        await anyio.lowlevel.checkpoint()


async def hamt_store(cas: ContentAddressedStore) -> Store:
    return ZarrHAMTStore(await HAMT.build(cas=cas, values_are_bytes=True))


async def sharded_v1(cas: ContentAddressedStore) -> Store:
    return await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        array_shape=(4,),
        chunk_shape=(1,),
        chunks_per_shard=2,
        manifest_version="sharded_zarr_v1",
    )


async def sharded_v2(cas: ContentAddressedStore) -> Store:
    store = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=2)
    await store.set("a/zarr.json", cpu.Buffer.from_bytes(array_metadata([4], [1])))
    return store


STORES: list[Callable[[ContentAddressedStore], Awaitable[Store]]] = [
    hamt_store,
    sharded_v1,
    sharded_v2,
]


@pytest.mark.parametrize("make", STORES)
async def test_a_chunk_from_a_writable_array_keeps_what_was_set(make: Any) -> None:
    store = await make(InMemoryCAS())
    array = np.frombuffer(bytearray(DATA), dtype="B")
    await store.set("a/c/1", cpu.Buffer.from_array_like(array))
    array[:] = 7
    got = await store.get("a/c/1", PROTO)
    assert got is not None and got.to_bytes() == DATA


@pytest.mark.parametrize("make", STORES)
async def test_a_chunk_zarr_encoded_to_bytes_is_stored_without_a_copy(make: Any) -> None:
    cas = InMemoryCAS()
    store = await make(cas)
    data = bytes(DATA)
    await store.set("a/c/1", cpu.Buffer.from_bytes(data))
    assert any(block is data for block in cas.store.values())
    got = await store.get("a/c/1", PROTO)
    assert got is not None and got.to_bytes() == DATA


@pytest.mark.parametrize("key", ["a/c/1", "b/zarr.json"], ids=["chunk", "metadata"])
@pytest.mark.parametrize("make", STORES)
async def test_set_if_not_exists_is_atomic(make: Any, key: str) -> None:
    store = await make(YieldingCAS(InMemoryCAS()))
    seen: list[bytes] = []

    async def attempt(value: bytes) -> None:
        await store.set_if_not_exists(key, cpu.Buffer.from_bytes(value))
        got = await store.get(key, PROTO)
        assert got is not None
        seen.append(got.to_bytes())

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(attempt, b"value %d" % i)
    # Once any call returned, the value never changed again: every caller read the one
    # value that was written.
    assert len(seen) == 20 and len(set(seen)) == 1
    await store.set_if_not_exists(key, cpu.Buffer.from_bytes(b"late"))
    got = await store.get(key, PROTO)
    assert got is not None and got.to_bytes() == seen[0]
    await store.set(key, cpu.Buffer.from_bytes(b"set"))  # set still overwrites
    got = await store.get(key, PROTO)
    assert got is not None and got.to_bytes() == b"set"
