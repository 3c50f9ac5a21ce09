"""Every public async method is a cancellation point (docs/architecture.md §4).

A call made inside an already-cancelled scope raises the cancellation and changes nothing:
not the map, not the blocks in the store. Calls that never wait (a ``set``, a cached
``get``, anything on ``InMemoryCAS``) are the ones this catches: without the check at
entry they would run to completion inside ``move_on_after(0)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from zarr.core.buffer import cpu, default_buffer_prototype

from anyhamt import HAMT, InMemoryCAS, KeyNotFoundError, LocalCAS, StoreClosedError
from anyhamt._codec import RAW, make_link
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

PROTO = default_buffer_prototype()
ITEMS = {f"key-{i}": f"value-{i}".encode() for i in range(300)}


async def assert_cancelled(call: Callable[[], Awaitable[Any]]) -> None:
    """``call()`` inside a scope cancelled before it starts raises the cancellation."""
    finished = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await call()
        finished = True
    assert scope.cancelled_caught
    assert not finished


async def drain(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def blocks_of(cas: Any) -> set[Any]:
    """Every block id the store holds (for LocalCAS also those not yet committed)."""
    if isinstance(cas, InMemoryCAS):
        return set(cas.store)
    return set(cas.links())


async def contents(hamt: HAMT) -> dict[str, bytes]:
    return {key: await hamt.get(key) for key in await drain(hamt.keys())}


async def written_map(cas: Any) -> HAMT:
    """A writable map of ITEMS, flushed, plus one change still buffered."""
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for key, value in ITEMS.items():
        await hamt.set(key, value)
    await hamt.make_read_only()
    await hamt.enable_write()
    await hamt.set("buffered", b"not flushed yet")
    return hamt


# -- HAMT ------------------------------------------------------------------------------------


async def test_hamt_writes_in_a_cancelled_scope_change_nothing(memory_or_local_cas: Any) -> None:
    cas = memory_or_local_cas
    hamt = await written_map(cas)
    pointer = await hamt.get_pointer("key-1")
    before, blocks = await contents(hamt), blocks_of(cas)

    await assert_cancelled(lambda: hamt.set("new", b"a value never seen before"))
    await assert_cancelled(lambda: hamt.set("key-0", b"another new value"))
    await assert_cancelled(lambda: hamt.set_pointer("new", pointer))
    await assert_cancelled(lambda: hamt.delete("key-2"))
    await assert_cancelled(hamt.make_read_only)
    await assert_cancelled(hamt.cache_vacate)

    assert not hamt.read_only
    assert await contents(hamt) == before
    assert blocks_of(cas) == blocks  # no value block, no node saved
    # The buffered change is still buffered, and a flush now gives the same root as one
    # on a map that never saw the cancelled calls.
    await hamt.make_read_only()
    reference = await HAMT.build(cas=cas, values_are_bytes=True)
    for key, value in before.items():
        await reference.set(key, value)
    await reference.make_read_only()
    assert hamt.root_node_id == reference.root_node_id


async def test_hamt_reads_in_a_cancelled_scope_raise(memory_or_local_cas: Any) -> None:
    hamt = await written_map(memory_or_local_cas)
    await hamt.make_read_only()
    await hamt.get("key-1")  # every node on the way is cached now
    size = await hamt.cache_size()

    await assert_cancelled(lambda: hamt.get("key-1"))
    await assert_cancelled(lambda: hamt.get("key-1", offset=1, length=2))
    await assert_cancelled(lambda: hamt.get("no such key"))
    await assert_cancelled(lambda: hamt.get_pointer("key-1"))
    await assert_cancelled(lambda: drain(hamt.keys()))
    await assert_cancelled(hamt.len)
    await assert_cancelled(hamt.cache_size)
    await assert_cancelled(hamt.enable_write)

    assert hamt.read_only  # enable_write did not happen
    assert await hamt.cache_size() == size
    assert await hamt.len() == len(ITEMS) + 1


async def test_build_in_a_cancelled_scope_saves_nothing(memory_or_local_cas: Any) -> None:
    cas = memory_or_local_cas
    blocks = blocks_of(cas)
    # A read-only HAMT with no root saves the empty node when built.
    await assert_cancelled(lambda: HAMT.build(cas=cas, read_only=True))
    assert blocks_of(cas) == blocks


async def test_a_thousand_sets_inside_move_on_after_0_complete_none(
    memory_or_local_cas: Any,
) -> None:
    cas = memory_or_local_cas
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    done = 0
    with anyio.move_on_after(0):
        for i in range(1000):
            await hamt.set(f"k{i}", b"v")
            done += 1
    assert done == 0
    assert await hamt.len() == 0


async def test_a_thousand_cached_gets_inside_move_on_after_0_complete_none(
    memory_or_local_cas: Any,
) -> None:
    hamt = await written_map(memory_or_local_cas)
    await hamt.make_read_only()
    await hamt.get("key-7")  # cache the path
    done = 0
    with anyio.move_on_after(0):
        for _ in range(1000):
            await hamt.get("key-7")
            done += 1
    assert done == 0


# -- stores ----------------------------------------------------------------------------------


async def test_store_methods_in_a_cancelled_scope_change_nothing(
    memory_or_local_cas: Any,
) -> None:
    cas = memory_or_local_cas
    stored = await cas.save(b"stored block", "raw")
    block = b"a block saved nowhere yet"
    new_id = make_link(RAW, block).to_cid()
    blocks = blocks_of(cas)

    await assert_cancelled(lambda: cas.save(block, "raw"))
    await assert_cancelled(lambda: cas.put_block(new_id, block))
    await assert_cancelled(lambda: cas.load(stored))
    await assert_cancelled(lambda: cas.load(stored, offset=1, length=3))
    await assert_cancelled(lambda: cas.get_block(stored))
    await assert_cancelled(lambda: cas.has(stored))
    await assert_cancelled(cas.flush)
    await assert_cancelled(lambda: cas.pin_cid(stored, "http://127.0.0.1:1"))
    await assert_cancelled(lambda: cas.unpin_cid(stored, "http://127.0.0.1:1"))
    await assert_cancelled(lambda: cas.pin_update(stored, stored, "http://127.0.0.1:1"))
    await assert_cancelled(lambda: cas.pin_ls("http://127.0.0.1:1"))

    assert blocks_of(cas) == blocks
    assert await cas.load(stored) == b"stored block"


async def test_in_memory_aclose_in_a_cancelled_scope_raises() -> None:
    cas = InMemoryCAS()
    stored = await cas.save(b"x", "raw")
    await assert_cancelled(cas.aclose)
    assert await cas.load(stored) == b"x"


async def test_local_aclose_in_a_cancelled_scope_still_closes(tmp_path: Path) -> None:
    path = tmp_path / "blocks.sqlite3"
    cas = LocalCAS(path)
    stored = await cas.save(b"pending, not yet committed", "raw")
    await assert_cancelled(cas.aclose)
    # Closed, and what was pending is in the file.
    with pytest.raises(StoreClosedError):
        await cas.save(b"after close", "raw")
    async with LocalCAS(path, read_only=True) as reopened:
        assert await reopened.load(stored) == b"pending, not yet committed"
    await assert_cancelled(cas.aclose)  # closing again: still a cancellation point


# -- Zarr stores -----------------------------------------------------------------------------


@pytest.fixture(params=["plain", "encrypted"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def zarr_store(cas: Any, kind: str) -> ZarrHAMTStore:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    if kind == "plain":
        store = ZarrHAMTStore(hamt)
    else:
        store = SimpleEncryptedZarrHAMTStore(hamt, False, bytes(range(32)), b"header")
    await store.set("zarr.json", cpu.Buffer.from_bytes(b'{"zarr_format": 3}'))
    await store.set("a/zarr.json", cpu.Buffer.from_bytes(b'{"node_type": "array"}'))
    await store.set("a/c/0", cpu.Buffer.from_bytes(b"chunk zero"))
    return store


async def listing(store: ZarrHAMTStore) -> dict[str, bytes]:
    out = {}
    for key in await drain(store.list()):
        value = await store.get(key, PROTO)
        assert value is not None
        out[key] = value.to_bytes()
    return out


async def test_zarr_store_methods_in_a_cancelled_scope_change_nothing(
    memory_or_local_cas: Any, store_kind: str
) -> None:
    cas = memory_or_local_cas
    store = await zarr_store(cas, store_kind)
    before, blocks = await listing(store), blocks_of(cas)
    new = cpu.Buffer.from_bytes(b"a new chunk")

    await assert_cancelled(lambda: store.set("a/c/1", new))
    await assert_cancelled(lambda: store.set("a/zarr.json", new))
    await assert_cancelled(lambda: store.set_if_not_exists("a/c/2", new))
    await assert_cancelled(lambda: store.delete("a/c/0"))
    await assert_cancelled(lambda: store.delete("zarr.json"))
    await assert_cancelled(lambda: store.set_partial_values([]))
    await assert_cancelled(lambda: store.get("a/c/0", PROTO))
    await assert_cancelled(lambda: store.get("a/zarr.json", PROTO))  # cached metadata
    await assert_cancelled(lambda: store.get_partial_values(PROTO, [("a/c/0", None)]))
    await assert_cancelled(lambda: store.exists("a/c/0"))
    await assert_cancelled(lambda: store.getsize("a/c/0"))
    await assert_cancelled(lambda: drain(store.list()))
    await assert_cancelled(lambda: drain(store.list_prefix("a/")))
    await assert_cancelled(lambda: drain(store.list_dir("a")))
    await assert_cancelled(lambda: store.is_empty("a"))

    assert await listing(store) == before
    assert blocks_of(cas) == blocks
    with pytest.raises(KeyNotFoundError):
        await store.hamt.get("a/c/1")
