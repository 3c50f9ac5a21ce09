"""What both zarr stores share: values are taken without a copy when zarr hands over
immutable ``bytes``, and copied when it hands over anything that can still change."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from zarr.core.buffer import cpu, default_buffer_prototype

from anyhamt import HAMT, InMemoryCAS
from anyhamt.zarr import ShardedZarrStore, ZarrHAMTStore
from anyhamt.zarr._store_base import buffer_bytes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from zarr.abc.store import Store

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


async def hamt_store(cas: InMemoryCAS) -> Store:
    return ZarrHAMTStore(await HAMT.build(cas=cas, values_are_bytes=True))


async def sharded_v1(cas: InMemoryCAS) -> Store:
    return await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        array_shape=(4,),
        chunk_shape=(1,),
        chunks_per_shard=2,
        manifest_version="sharded_zarr_v1",
    )


async def sharded_v2(cas: InMemoryCAS) -> Store:
    store = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=2)
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [4],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
    }
    await store.set("a/zarr.json", cpu.Buffer.from_bytes(json.dumps(meta).encode()))
    return store


STORES: list[Callable[[InMemoryCAS], Awaitable[Store]]] = [hamt_store, sharded_v1, sharded_v2]


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
