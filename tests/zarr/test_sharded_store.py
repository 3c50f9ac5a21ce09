"""``ShardedZarrStore`` on its own: formats, errors, py-hamt's API, the shard cache,
concurrency and cancellation."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio
import dag_cbor
import pytest
from _helpers import array_metadata
from multiformats import CID
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype

from anyhamt import (
    BlockNotFoundError,
    DetachedStoreError,
    InMemoryCAS,
    InvalidConfigError,
    InvalidKeyError,
    LocalCAS,
    StoreError,
    StoreReadOnlyError,
)
from anyhamt._codec import as_pointer
from anyhamt.cas import ContentAddressedStore
from anyhamt.zarr import ShardedZarrStore
from anyhamt.zarr._shard_cache import ENTRY_OVERHEAD, Shard, ShardCache, encode_shard
from anyhamt.zarr._sharded import MAX_CHUNKS_PER_SHARD

if TYPE_CHECKING:
    from pathlib import Path

V1 = "sharded_zarr_v1"
V2 = "sharded_zarr_v2"
PROTO = default_buffer_prototype()


def cbor(data: bytes) -> Any:
    return dag_cbor.decode(data)


def buf(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


async def v2_store(cas: ContentAddressedStore, cps: int = 4, **kwargs: Any) -> ShardedZarrStore:
    store = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=cps, **kwargs)
    await store.set("a/zarr.json", buf(array_metadata((4, 4), (1, 1))))  # 16 chunks, 4 shards
    return store


class HookedCAS(ContentAddressedStore):
    """InMemoryCAS with hooks on loads and saves: a stand-in for a store that fails or
    stalls on demand, which the real stores cannot be made to do."""

    def __init__(self) -> None:
        self.inner = InMemoryCAS()
        self.loads: list[Any] = []
        self.load_hook: Any = None
        self.save_hook: Any = None

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Any:
        if self.save_hook is not None:
            await self.save_hook(data, codec)
        return await self.inner.save(data, codec)

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        self.loads.append(id)
        if self.load_hook is not None:
            await self.load_hook(id)
        return await self.inner.load(id, offset, length, suffix)


# -- opening and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"array_shape": (4,), "chunks_per_shard": 2}, "chunk_shape"),
        ({"chunk_shape": (4,), "chunks_per_shard": 2}, "array_shape"),
        ({"array_shape": (4,), "chunk_shape": (2,)}, "chunks_per_shard"),
        ({"manifest_version": V1, "chunks_per_shard": 2}, "array_shape"),
        ({"manifest_version": V2}, "chunks_per_shard"),
        ({}, "chunks_per_shard"),
    ],
)
async def test_open_names_the_missing_geometry(kwargs: dict[str, Any], missing: str) -> None:
    with pytest.raises(InvalidConfigError, match=f"^{missing} is missing"):
        await ShardedZarrStore.open(cas=InMemoryCAS(), read_only=False, **kwargs)


async def test_open_errors() -> None:
    cas = InMemoryCAS()
    with pytest.raises(InvalidConfigError, match="root_cid is missing"):
        await ShardedZarrStore.open(cas=cas, read_only=True)
    with pytest.raises(InvalidConfigError, match="manifest_version"):
        await ShardedZarrStore.open(
            cas=cas, read_only=False, chunks_per_shard=2, manifest_version="v9"
        )
    with pytest.raises(InvalidConfigError, match="positive int"):
        await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=0)
    with pytest.raises(InvalidConfigError, match="same number of dimensions"):
        await ShardedZarrStore.open(
            cas=cas, read_only=False, array_shape=(4, 4), chunk_shape=(2,), chunks_per_shard=2
        )


@pytest.mark.parametrize("manifest_version", [V1, V2])
async def test_chunks_per_shard_has_an_upper_bound_for_new_stores(manifest_version: str) -> None:
    geometry: dict[str, Any] = {"manifest_version": manifest_version}
    if manifest_version == V1:
        geometry.update(array_shape=(4,), chunk_shape=(1,))
    cas = InMemoryCAS()
    with pytest.raises(InvalidConfigError, match="at most 2 MiB"):
        await ShardedZarrStore.open(
            cas=cas, read_only=False, chunks_per_shard=MAX_CHUNKS_PER_SHARD + 1, **geometry
        )
    store = await ShardedZarrStore.open(
        cas=cas, read_only=False, chunks_per_shard=MAX_CHUNKS_PER_SHARD, **geometry
    )
    await store.flush()


async def test_a_root_written_with_more_chunks_per_shard_still_opens() -> None:
    """The bound is for new stores: a root py-hamt wrote with more chunks per shard reads."""
    cas = InMemoryCAS()
    store = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=2)
    await store.set("a/zarr.json", buf(array_metadata((4,), (1,))))
    await store.set("a/c/3", buf(b"x"))
    root = cbor(cas.store[await store.flush()])
    array = root["arrays"]["a"]
    array["sharding_config"]["chunks_per_shard"] = MAX_CHUNKS_PER_SHARD + 1
    array["shard_cids"] = [None]  # one shard now covers the array: none written yet
    edited = await cas.save(dag_cbor.encode(root), "dag-cbor")
    reader = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=edited)
    assert await reader.exists("a/zarr.json")
    assert not await reader.exists("a/c/3")


async def test_bad_chunk_keys_raise_and_change_nothing() -> None:
    cas = InMemoryCAS()
    store = await v2_store(cas)
    root = await store.flush()
    for key in ["a/c/4/0", "a/c/0", "a/c/0/x", "a/c/0/0/0", "a/c//1", "a/c/-1/0"]:
        with pytest.raises(InvalidKeyError, match="names no chunk of array 'a'"):
            await store.set(key, buf(b"x"))
        with pytest.raises(InvalidKeyError):
            await store.set_pointer(key, await cas.save(b"x", "raw"))
    # An array whose metadata has no regular grid has no index: its chunks are errors too.
    meta = json.loads(array_metadata((4,), (1,)))
    meta["chunk_grid"] = {"name": "rectilinear", "configuration": {}}
    await store.set("irregular/zarr.json", buf(json.dumps(meta).encode()))
    with pytest.raises(InvalidKeyError, match="no regular chunk grid"):
        await store.set("irregular/c/0", buf(b"x"))
    await store.delete("irregular/zarr.json")
    assert await store.flush() == root


async def test_read_only_store_refuses_every_write() -> None:
    cas = InMemoryCAS()
    root = await (await v2_store(cas)).flush()
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    ptr = await cas.save(b"x", "raw")
    for call in [
        store.set("a/c/0/0", buf(b"x")),
        store.set_pointer("a/c/0/0", ptr),
        store.delete("a/c/0/0"),
        store.resize_store((8, 4), array_path="a"),
        store.resize_variable("a", (8, 4)),
        store.graft_store(root, (0, 0)),
    ]:
        with pytest.raises(StoreReadOnlyError, match="read-only"):
            await call


# -- wire format ---------------------------------------------------------------------------


async def test_v1_root_and_shards_are_pyhamts_format() -> None:
    cas = InMemoryCAS()
    store = await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        array_shape=(4, 6),
        chunk_shape=(2, 2),
        chunks_per_shard=4,
        manifest_version=V1,
    )
    await store.set("var/c/1/2", buf(b"chunk-1-2"))  # linear index 1*3+2 = 5: shard 1, slot 1
    await store.set("lat/c/0", buf(b"coordinate"))  # not the primary: kept by key
    root = await store.flush()
    assert type(root) is bytes  # InMemoryCAS ids
    obj = cbor(await cas.load(root))
    chunk_id = await cas.save(b"chunk-1-2", "raw")
    shard_id = obj["chunks"]["shard_cids"][1]
    assert obj == {
        "manifest_version": V1,
        "metadata": {"lat/c/0": await cas.save(b"coordinate", "raw")},
        "chunks": {
            "array_shape": [4, 6],
            "chunk_shape": [2, 2],
            "sharding_config": {"chunks_per_shard": 4},
            "shard_cids": [None, shard_id],
            "primary_array_path": "var",
        },
    }
    assert cbor(await cas.load(shard_id)) == [None, chunk_id, None, None]


async def test_v2_root_and_shards_are_pyhamts_format(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
        store = await v2_store(cas, cps=3)
        await store.set("g/b/zarr.json", buf(array_metadata((2, 2, 2), (1, 1, 2))))
        await store.set("a/c/3/3", buf(b"a33"))  # linear 15: shard 5, slot 0
        await store.set("g/b/c/1/0/0", buf(b"b100"))  # linear 2: shard 0, slot 2
        root = await store.flush()
        assert isinstance(root, str) and root.startswith("bafyr4i")
        obj = cbor(await cas.load(root))
        assert obj["manifest_version"] == V2
        assert obj["store_type"] == "py_hamt.sharded_zarr"
        assert obj["zarr_format"] == 3
        assert obj["sharding_config"] == {"chunks_per_shard": 3, "order": "C"}
        assert sorted(obj["metadata"]) == [
            "a/zarr.json",
            "g/b/zarr.json",
            "g/zarr.json",
            "zarr.json",
        ]
        a, b = obj["arrays"]["a"], obj["arrays"]["g/b"]
        assert a["array_shape"] == [4, 4] and a["chunk_shape"] == [1, 1]
        assert a["sharding_config"] == {"chunks_per_shard": 3, "order": "C"}
        assert [i for i, s in enumerate(a["shard_cids"]) if s is not None] == [5]
        assert len(a["shard_cids"]) == 6 and len(b["shard_cids"]) == 2
        shard = cbor(await cas.load(b["shard_cids"][0]))
        assert shard == [None, None, CID.decode(str(await cas.save(b"b100", "raw")))]
        # Parent groups are created as py-hamt creates them (same bytes).
        group = await cas.load(obj["metadata"]["g/zarr.json"])
        assert (
            group == json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
        )


def test_shard_encoding_is_dag_cbor() -> None:
    link = CID.decode("bafkr4ihkr4ld3m4gqkjf4reryxsy2s5tkbxprqkow6fin2iiyvreuzzab4")
    cases: list[list[Any]] = [[None] * 30, [bytes(range(34)), None], [None] * 23 + [link] * 2]
    for slots in cases:
        internal = [as_pointer(s) for s in slots]
        assert encode_shard(internal) == dag_cbor.encode(slots)
        shard = Shard(encode_shard(internal), None)
        assert [shard.get(i) for i in range(len(slots))] == internal
        assert shard.slots is None  # read entry by entry, never decoded as a whole


def test_root_does_not_depend_on_hash_seed(tmp_path: Path) -> None:
    code = (
        "import anyio, sys\n"
        "from anyhamt import InMemoryCAS\n"
        "from anyhamt.zarr import ShardedZarrStore\n"
        "from zarr.core.buffer import cpu\n"
        "async def main():\n"
        "    for v in ('sharded_zarr_v1', 'sharded_zarr_v2'):\n"
        "        s = await ShardedZarrStore.open(cas=InMemoryCAS(), read_only=False,"
        " array_shape=(4,4), chunk_shape=(1,1), chunks_per_shard=3, manifest_version=v)\n"
        "        for k in ['b/zarr.json','a/zarr.json','x/y/zarr.json','c/0/1','a/c/1/1','q']:\n"
        "            await s.set(k, cpu.Buffer.from_bytes(k.encode()))\n"
        "        print((await s.flush()).hex(), [k async for k in s.list()])\n"
        "anyio.run(main)\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1


# -- py-hamt's API ---------------------------------------------------------------------------


async def test_set_pointer_copies_no_data() -> None:
    cas = HookedCAS()
    store = await v2_store(cas)
    ptr = await cas.save(b"payload", "raw")
    saves: list[bytes] = []

    async def record(data: bytes, codec: str) -> None:
        saves.append(data)

    cas.save_hook = record
    await store.set_pointer("a/c/2/1", ptr)
    await store.set_pointer("a/c/2/2", ptr)
    assert saves == []
    got = await store.get("a/c/2/1", PROTO)
    assert got is not None and got.to_bytes() == b"payload"


async def test_graft_store_is_all_or_nothing() -> None:
    cas = InMemoryCAS()
    source = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=2)
    await source.set("a/zarr.json", buf(array_metadata((2, 2), (1, 1))))
    await source.set("a/c/0/0", buf(b"s00"))
    await source.set("a/c/1/1", buf(b"s11"))
    source_root = await source.flush()

    target = await v2_store(cas)
    before = await target.flush()
    with pytest.raises(InvalidConfigError, match="outside the target grid"):
        await target.graft_store(source_root, (3, 0))  # (1,1)+(3,0) = (4,1): out of the grid
    assert await target.flush() == before
    assert [k async for k in target.list_prefix("a/c/")] == []

    await target.graft_store(source_root, (2, 1))
    assert [k async for k in target.list_prefix("a/c/")] == ["a/c/2/1", "a/c/3/2"]
    got = await target.get("a/c/3/2", PROTO)
    assert got is not None and got.to_bytes() == b"s11"


async def test_resize_store_keeps_chunks_in_place() -> None:
    cas = InMemoryCAS()
    store = await v2_store(cas)
    for key in ["a/c/0/0", "a/c/1/3", "a/c/3/2"]:
        await store.set(key, buf(key.encode()))
    core = store._core
    assert core is not None
    await store.resize_store((6, 4), array_path="a")  # leading dimension: index grows
    assert len(core.arrays["a"].shard_cids) == 6
    await store.resize_store((6, 2), array_path="a")  # other dimension: index rebuilt
    assert [k async for k in store.list_prefix("a/c/")] == ["a/c/0/0"]
    await store.resize_store((3, 5), array_path="a")
    await store.set("a/c/2/4", buf(b"a24"))
    root = await store.flush()
    reread = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    assert [k async for k in reread.list_prefix("a/c/")] == ["a/c/0/0", "a/c/2/4"]
    got = await reread.get("a/c/0/0", PROTO)
    assert got is not None and got.to_bytes() == b"a/c/0/0"


async def test_resize_variable_rewrites_shape_and_index() -> None:
    cas = InMemoryCAS()
    store = await v2_store(cas)
    await store.resize_variable("a", (8, 4))
    meta = await store.get("a/zarr.json", PROTO)
    assert meta is not None
    assert json.loads(meta.to_bytes())["shape"] == [8, 4]
    assert meta.to_bytes().startswith(b'{\n  "zarr_format"')  # py-hamt's indent=2
    core = store._core
    assert core is not None and core.arrays["a"].shape == (8, 4)


async def test_deletes_listing_and_byte_ranges() -> None:
    store = await v2_store(InMemoryCAS())
    for key in ["a/c/3/0", "a/c/0/1", "a/c/0/0", "z/attrs", "a/.zattrs"]:
        await store.set(key, buf(b"0123456789"))
    requests: list[tuple[ByteRequest, bytes]] = [
        (RangeByteRequest(2, 5), b"234"),
        (OffsetByteRequest(7), b"789"),
        (SuffixByteRequest(2), b"89"),
    ]
    for request, expected in requests:
        got = await store.get("a/c/0/1", PROTO, request)
        assert got is not None and got.to_bytes() == expected
    assert await store.getsize("a/c/0/1") == 10
    assert [k async for k in store.list()] == [
        "a/.zattrs",
        "a/zarr.json",
        "z/attrs",
        "zarr.json",
        "a/c/0/0",
        "a/c/0/1",
        "a/c/3/0",
    ]
    assert [k async for k in store.list_dir("a")] == [".zattrs", "c", "zarr.json"]
    assert [k async for k in store.list_dir("a/c")] == ["0", "3"]
    assert [k async for k in store.list_dir("")] == ["a", "z", "zarr.json"]
    await store.delete("a/c/0/1")
    await store.delete("a/c/2/2")  # absent: nothing to do
    assert not await store.exists("a/c/0/1")
    assert await store.exists("a/c/0/0")
    assert [k async for k in store.list_prefix("a/c/0")] == ["a/c/0/0"]


async def test_pickles(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
        store = await v2_store(cas)
        await store.set("a/c/1/1", buf(b"a11"))
        detached = pickle.loads(pickle.dumps(store))
        assert detached == store  # same process: the same store
        root = await store.flush()
        reader = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
        copy = pickle.loads(pickle.dumps(reader))
        assert copy == reader and copy.read_only
        # In another process the copy reopens the root from the store's configuration.
        from anyhamt.zarr._sharded import _live

        core = reader._core
        assert core is not None
        del _live[core.token]
        elsewhere = pickle.loads(pickle.dumps(reader))
        assert elsewhere._core is not core
        got = await elsewhere.get("a/c/1/1", PROTO)
        assert got is not None and got.to_bytes() == b"a11"
        # A writable store with unsaved changes cannot be reached from another process.
        await store.set("a/c/0/0", buf(b"new"))
        writer_core = store._core
        assert writer_core is not None
        del _live[writer_core.token]
        lost = pickle.loads(pickle.dumps(store))
        with pytest.raises(DetachedStoreError):
            await lost.get("a/c/0/0", PROTO)


# -- the shard cache -----------------------------------------------------------------------


def test_cache_accounting_matches_real_memory() -> None:
    from anyhamt._codec import Link

    ids = [Link(b"\x01\x55\x1e\x20" + bytes([i % 256]) * 32) for i in range(64)]
    encoded = [
        encode_shard([p if (i + j) % 3 else None for j, p in enumerate(ids)]) for i in range(200)
    ]
    cache = ShardCache(1 << 40)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for i, data in enumerate(encoded):
            shard = cache.add_pinned(("a", i), Shard(bytes(data), None))
            shard.get(5)  # builds the offsets
            cache.resized(("a", i), shard)
            if i % 2:
                shard.materialise()  # half of them decoded, as writes leave them
                cache.resized(("a", i), shard)
            cache.unpin(("a", i), shard)
        used = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert used <= cache.nbytes * 1.1  # never under-counts by more than 10%
    assert cache.nbytes <= used * 1.5  # and is not wildly over
    assert ENTRY_OVERHEAD == 256


async def test_cache_stays_in_budget_writing_back_dirty_shards() -> None:
    cas = InMemoryCAS()
    store = await ShardedZarrStore.open(
        cas=cas, read_only=False, chunks_per_shard=16, max_cache_memory_bytes=4000
    )
    await store.set("a/zarr.json", buf(array_metadata((64, 16), (1, 1))))  # 64 shards
    core = store._core
    assert core is not None
    one_shard = 0
    for row in range(64):
        await store.set(f"a/c/{row}/3", buf(b"v%d" % row))
        one_shard = max(
            one_shard,
            max(
                (s.nbytes for k in core.cache.keys() if (s := core.cache.peek(k)) is not None),
                default=0,
            ),
        )
        assert core.cache.nbytes <= 4000 + one_shard
    written_back = sum(cid is not None for cid in core.arrays["a"].shard_cids)
    assert written_back > 32  # saved to make room, before any flush
    root = await store.flush()
    reread = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    assert len([k async for k in reread.list_prefix("a/c/")]) == 64


async def test_dirty_shards_are_never_evicted() -> None:
    store = await ShardedZarrStore.open(
        cas=HookedCAS(), read_only=False, chunks_per_shard=4, max_cache_memory_bytes=0
    )
    await store.set("a/zarr.json", buf(array_metadata((4, 4), (1, 1))))
    core = store._core
    assert core is not None
    cas = core.cas
    assert isinstance(cas, HookedCAS)

    async def fail(data: bytes, codec: str) -> None:
        if codec == "dag-cbor":
            raise StoreError("store down (test)")

    cas.save_hook = fail
    with pytest.raises(StoreError):
        await store.set("a/c/1/1", buf(b"kept"))  # written, but it cannot be written back
    assert core.cache.dirty_keys() == [("a", 1)]
    got = await store.get("a/c/1/1", PROTO)
    assert got is not None and got.to_bytes() == b"kept"
    cas.save_hook = None
    root = await store.flush()
    assert core.cache.dirty_keys() == []
    reread = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    assert await reread.exists("a/c/1/1")


async def test_single_flight_and_one_entry_reads() -> None:
    cas = HookedCAS()
    writer = await v2_store(cas, cps=16)
    for i in range(4):
        await writer.set(f"a/c/{i}/{i}", buf(b"%d" % i))
    root = await writer.flush()
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    core = store._core
    assert core is not None
    shard_id = core.arrays["a"].shard_cids[0]
    release = anyio.Event()

    async def stall(id: Any) -> None:
        if id == shard_id:
            await release.wait()

    cas.load_hook = stall
    cas.loads.clear()
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        got = await store.get(f"a/c/{i}/{i}", PROTO)
        assert got is not None
        results[i] = got.to_bytes()

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(read, i)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert results == {i: b"%d" % i for i in range(4)}
    assert cas.loads.count(shard_id) == 1
    shard = core.cache.peek(("a", 0))
    assert shard is not None and shard.slots is None  # never decoded as a whole


async def test_failed_load_caches_nothing_and_transient_errors_retry() -> None:
    cas = HookedCAS()
    writer = await v2_store(cas)
    await writer.set("a/c/0/0", buf(b"x"))
    root = await writer.flush()
    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    core = store._core
    assert core is not None
    shard_id = core.arrays["a"].shard_cids[0]
    failures = [StoreError("flaky (test)"), StoreError("flaky (test)")]

    async def flaky(id: Any) -> None:
        if id == shard_id and failures:
            raise failures.pop()

    cas.load_hook = flaky
    got = await store.get("a/c/0/0", PROTO)  # two transient failures, then success
    assert got is not None and got.to_bytes() == b"x"

    store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    core = store._core
    assert core is not None
    cas.loads.clear()

    async def missing(id: Any) -> None:
        if id == shard_id:
            raise BlockNotFoundError("gone (test)")

    cas.load_hook = missing
    with pytest.raises(BlockNotFoundError):
        await store.get("a/c/0/0", PROTO)
    assert cas.loads.count(shard_id) == 1  # a missing block is not retried
    assert len(core.cache) == 0
    cas.load_hook = None
    got = await store.get("a/c/0/0", PROTO)
    assert got is not None and got.to_bytes() == b"x"


# -- concurrency and cancellation --------------------------------------------------------


async def test_writers_of_different_shards_do_not_wait_for_each_other() -> None:
    cas = HookedCAS()
    writer = await v2_store(cas)
    await writer.set("a/c/0/0", buf(b"x"))
    await writer.set("a/c/3/3", buf(b"y"))
    root = await writer.flush()
    store = await ShardedZarrStore.open(cas=cas, read_only=False, root_cid=root)
    core = store._core
    assert core is not None
    stalled_shard = core.arrays["a"].shard_cids[0]
    release = anyio.Event()

    async def stall(id: Any) -> None:
        if id == stalled_shard:
            await release.wait()

    cas.load_hook = stall
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.set, "a/c/0/1", buf(b"blocked"))  # shard 0: its load stalls
        await anyio.wait_all_tasks_blocked()
        await store.set("a/c/3/2", buf(b"free"))  # shard 3 completes meanwhile
        assert await store.exists("a/c/3/2")
        assert cas.loads.count(stalled_shard) == 1  # the other writer is still loading
        release.set()
    assert await store.exists("a/c/0/1")


async def test_flush_while_writing_and_after_cancelled_writes() -> None:
    cas = InMemoryCAS()
    store = await ShardedZarrStore.open(
        cas=cas, read_only=False, chunks_per_shard=4, max_cache_memory_bytes=3000
    )
    await store.set("a/zarr.json", buf(array_metadata((16, 16), (1, 1))))
    keys = [f"a/c/{i}/{(i * 7) % 16}" for i in range(16)]

    async def write(key: str) -> None:
        await store.set(key, buf(key.encode()))

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(write, key)
        for _ in range(4):
            tg.start_soon(store.flush)
    # Writes cancelled at every stage leave the store consistent.
    for _ in range(10):
        with anyio.move_on_after(0):
            await store.set("a/c/15/15", buf(b"maybe"))
    await store.delete("a/c/15/15")
    root = await store.flush()
    assert await store.flush() == root  # nothing changed: the same root

    fresh = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=4)
    await fresh.set("a/zarr.json", buf(array_metadata((16, 16), (1, 1))))
    for key in keys:
        await fresh.set(key, buf(key.encode()))
    assert await fresh.flush() == root  # the same content gives the same root

    reread = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    assert sorted([k async for k in reread.list_prefix("a/c/")]) == sorted(keys)


async def test_legacy_v1_root_without_recorded_primary() -> None:
    """Roots of py-hamt before 3.6 do not record which array is sharded; it is inferred
    from the metadata whose shape and chunks match the index, as py-hamt 3.6.0 does."""
    cas = InMemoryCAS()
    store = await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        array_shape=(4, 4),
        chunk_shape=(2, 2),
        chunks_per_shard=2,
        manifest_version=V1,
    )
    await store.set("lat/zarr.json", buf(array_metadata((4,), (2,))))
    await store.set("var/zarr.json", buf(array_metadata((4, 4), (2, 2))))
    await store.set("other/zarr.json", buf(array_metadata((4, 4), (4, 4))))
    await store.set("var/c/1/0", buf(b"v10"))
    await store.set("other/c/0/0", buf(b"o00"))
    root = cbor(await cas.load(await store.flush()))
    assert root["chunks"].pop("primary_array_path") == "var"
    legacy = await cas.save(dag_cbor.encode(root), "dag-cbor")
    reader = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=legacy)
    assert [k async for k in reader.list_prefix("var/c/")] == ["var/c/1/0"]
    got = await reader.get("other/c/0/0", PROTO)
    assert got is not None and got.to_bytes() == b"o00"
    # A writer records the inferred primary with its next chunk write.
    writer = reader.with_read_only(False)
    assert await writer.flush() == legacy
    await writer.set("var/c/0/0", buf(b"v00"))
    assert cbor(await cas.load(await writer.flush()))["chunks"]["primary_array_path"] == "var"


async def test_delete_dir_drops_the_index_and_deletes_pick_no_primary() -> None:
    cas = InMemoryCAS()
    store = await v2_store(cas)
    await store.set("a/c/1/1", buf(b"x"))
    await store.set("b/zarr.json", buf(array_metadata((2,), (1,))))
    await store.delete_dir("a")
    root = cbor(await cas.load(await store.flush()))
    assert sorted(root["arrays"]) == ["b"]
    assert sorted(root["metadata"]) == ["b/zarr.json", "zarr.json"]
    assert [k async for k in store.list_prefix("a")] == []

    v1 = await ShardedZarrStore.open(
        cas=cas,
        read_only=False,
        array_shape=(2, 2),
        chunk_shape=(1, 1),
        chunks_per_shard=2,
        manifest_version=V1,
    )
    await v1.delete("var/c/0/0")  # nothing to delete: no array becomes the sharded one
    assert "primary_array_path" not in cbor(await cas.load(await v1.flush()))["chunks"]
