"""The HAMT's public API and semantics (py-hamt's), on asyncio and trio."""

from __future__ import annotations

import random
from typing import Any

import dag_cbor
import pytest
from multiformats import CID

from anyhamt import (
    HAMT,
    CorruptBlockError,
    InMemoryCAS,
    InvalidKeyError,
    InvalidValueError,
    KeyNotFoundError,
    Link,
    LocalCAS,
    ReadOnlyError,
    blake3_hashfn,
)

GOLDEN_ROOT = "1e2006c31744d8396c93ff78f618082c2fd5b07bf5f3a8d328a54d14dc11cae79165"
EMPTY_NODE_CID = "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc3m"


async def build_map(cas: Any, items: dict[str, bytes], **kwargs: Any) -> HAMT:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True, **kwargs)
    for key, value in items.items():
        await hamt.set(key, value)
    await hamt.make_read_only()
    return hamt


async def test_golden_root_matches_py_hamt() -> None:
    items = {f"k{i}": f"value-{i}".encode() for i in range(512)}
    hamt = await build_map(InMemoryCAS(), items)
    assert hamt.root_node_id.hex() == GOLDEN_ROOT


async def test_empty_hamt_root_is_the_empty_node(tmp_path: Any) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        hamt = await HAMT.build(cas=cas)
        await hamt.make_read_only()
        assert isinstance(hamt.root_node_id, CID)
        assert str(hamt.root_node_id) == EMPTY_NODE_CID
        assert await hamt.len() == 0


async def test_set_get_delete_keys_len() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS())
    values: dict[str, Any] = {
        "int": 1,
        "str": "text",
        "list": [1, 2, {"a": None}],
        "bytes": b"\x00\x01",
        "float": 1.5,
        "bool": True,
        "none": None,
    }
    for key, value in values.items():
        await hamt.set(key, value)
    for key, value in values.items():
        assert await hamt.get(key) == value
    assert sorted([k async for k in hamt.keys()]) == sorted(values)
    assert await hamt.len() == len(values)
    await hamt.delete("int")
    with pytest.raises(KeyError):
        await hamt.get("int")
    with pytest.raises(KeyNotFoundError):
        await hamt.delete("int")
    assert await hamt.len() == len(values) - 1
    await hamt.make_read_only()
    assert await hamt.get("list") == [1, 2, {"a": None}]
    assert sorted([k async for k in hamt.keys()]) == sorted(set(values) - {"int"})


async def test_overwrite_and_unicode_keys() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    await hamt.set("ключ", b"1")
    await hamt.set("ключ", b"2")
    await hamt.set("", b"empty")
    await hamt.set("🦀/c/0/0", b"crab")
    assert await hamt.get("ключ") == b"2"
    assert await hamt.get("") == b"empty"
    assert await hamt.len() == 3
    await hamt.make_read_only()
    assert await hamt.get("🦀/c/0/0") == b"crab"


async def test_byte_ranges() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    await hamt.set("k", b"0123456789")
    assert await hamt.get("k", offset=2, length=3) == b"234"
    assert await hamt.get("k", offset=7) == b"789"
    assert await hamt.get("k", suffix=4) == b"6789"
    assert await hamt.get("k", offset=8, length=10) == b"89"


async def test_get_pointer_is_the_stored_value_id(tmp_path: Any) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await hamt.set("a", b"payload")
        pointer = await hamt.get_pointer("a")
        assert isinstance(pointer, CID)
        assert pointer.codec.name == "raw"
        assert await cas.load(pointer) == b"payload"


async def test_set_pointer_links_an_existing_block() -> None:
    cas = InMemoryCAS()
    block = await cas.save(b"shared", "raw")
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    await hamt.set_pointer("x", block)
    await hamt.set_pointer("y", block)
    assert await hamt.get("x") == await hamt.get("y") == b"shared"


async def test_read_only_rejects_writes_and_enable_write_restores() -> None:
    hamt = await build_map(InMemoryCAS(), {"a": b"1"})
    with pytest.raises(ReadOnlyError, match="enable_write"):
        await hamt.set("b", b"2")
    with pytest.raises(PermissionError):
        await hamt.delete("a")
    await hamt.enable_write()
    await hamt.enable_write()  # no-op
    await hamt.set("b", b"2")
    await hamt.make_read_only()
    assert {k async for k in hamt.keys()} == {"a", "b"}


async def test_enable_write_on_a_read_only_map_buffers_new_changes() -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    await hamt.set("a", b"1")
    await hamt.set("b", b"2")
    await hamt.make_read_only()
    stored_root = hamt.root_node_id
    assert hamt.read_only
    await hamt.enable_write()
    assert not hamt.read_only
    await hamt.set("c", b"3")
    await hamt.delete("a")
    # The changes are buffered: visible to this HAMT, not yet in the stored root.
    assert await hamt.get("c") == b"3"
    assert {k async for k in hamt.keys()} == {"b", "c"}
    assert hamt.root_node_id == stored_root
    await hamt.make_read_only()
    expected = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    await expected.set("b", b"2")
    await expected.set("c", b"3")
    await expected.make_read_only()
    assert hamt.root_node_id == expected.root_node_id


async def test_reopen_from_root_in_read_only_and_write_mode() -> None:
    cas = InMemoryCAS()
    items = {f"key-{i}": bytes([i % 256]) * 3 for i in range(300)}
    hamt = await build_map(cas, items)
    reader = await HAMT.build(
        cas=cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
    )
    assert await reader.len() == 300
    for key, value in items.items():
        assert await reader.get(key) == value
    writer = await HAMT.build(cas=cas, root_node_id=hamt.root_node_id, values_are_bytes=True)
    await writer.set("new", b"n")
    await writer.delete("key-0")
    await writer.make_read_only()
    expected = dict(items)
    expected["new"] = b"n"
    del expected["key-0"]
    assert writer.root_node_id == (await build_map(InMemoryCAS(), expected)).root_node_id


async def test_root_node_id_accepts_cid_text(tmp_path: Any) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        hamt = await build_map(cas, {"a": b"1"})
        text = str(hamt.root_node_id)
        again = await HAMT.build(cas=cas, root_node_id=text, read_only=True, values_are_bytes=True)
        assert await again.get("a") == b"1"
        assert again.root_node_id == hamt.root_node_id


@pytest.mark.parametrize("bucket_size", [1, 2, 3, 4, 7, 10])
async def test_root_depends_only_on_contents(bucket_size: int) -> None:
    """Different insertion orders and delete histories give one root."""
    rng = random.Random(bucket_size)
    final = {f"k{i}": f"v{i}".encode() for i in range(400)}
    reference = await build_map(InMemoryCAS(), final, max_bucket_size=bucket_size)

    shuffled = list(final.items())
    rng.shuffle(shuffled)
    other = await build_map(InMemoryCAS(), dict(shuffled), max_bucket_size=bucket_size)
    assert other.root_node_id == reference.root_node_id

    # A history with extra keys that are deleted again, overwrites, and flushes in between.
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True, max_bucket_size=bucket_size)
    extra = [f"extra{i}" for i in range(600)]
    for key in extra[:300]:
        await hamt.set(key, b"x")
    for key, _ in shuffled[:200]:
        await hamt.set(key, b"stale")
    await hamt.cache_vacate()
    for key in extra[300:]:
        await hamt.set(key, b"y")
    for key, value in shuffled:
        await hamt.set(key, value)
    rng.shuffle(extra)
    for i, key in enumerate(extra):
        await hamt.delete(key)
        if i == 250:
            await hamt.make_read_only()
            await hamt.enable_write()
    await hamt.make_read_only()
    assert hamt.root_node_id == reference.root_node_id


async def test_delete_everything_returns_to_empty_root() -> None:
    cas = InMemoryCAS()
    empty = await build_map(cas, {})
    hamt = await HAMT.build(cas=cas, values_are_bytes=True, max_bucket_size=2)
    keys = [f"k{i}" for i in range(200)]
    for key in keys:
        await hamt.set(key, b"v")
    await hamt.make_read_only()
    await hamt.enable_write()
    for key in reversed(keys):
        await hamt.delete(key)
    await hamt.make_read_only()
    assert hamt.root_node_id == empty.root_node_id
    assert await hamt.len() == 0


async def test_custom_hash_fn_places_keys_by_it() -> None:
    def short_hash(data: bytes) -> bytes:
        return blake3_hashfn(data)[:2]

    items = {f"k{i}": b"v" for i in range(2000)}
    hamt = await build_map(InMemoryCAS(), items, hash_fn=short_hash, max_bucket_size=8)
    assert await hamt.len() == 2000
    assert await hamt.get("k1999") == b"v"


async def test_non_bytes_values_need_values_are_bytes_false() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    await hamt.set("ok", bytearray(b"ba"))
    with pytest.raises(InvalidValueError, match="values_are_bytes"):
        await hamt.set("bad", "a string")
    assert await hamt.get("ok") == b"ba"
    with pytest.raises(KeyError):
        await hamt.get("bad")


async def test_bad_keys_are_rejected_and_leave_the_map_unchanged() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    await hamt.set("a", b"1")
    for bad in (1, b"a", None, ("a",)):
        with pytest.raises(InvalidKeyError, match="str"):
            await hamt.set(bad, b"x")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await hamt.get(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await hamt.delete(bad)  # type: ignore[arg-type]
    assert [k async for k in hamt.keys()] == ["a"]


async def test_values_that_dag_cbor_cannot_encode() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS())
    with pytest.raises(InvalidValueError):
        await hamt.set("set", {1, 2})
    with pytest.raises(InvalidValueError):
        await hamt.set("nonstr-key", {1: "a"})
    assert await hamt.len() == 0


async def test_reading_bytes_values_as_dag_cbor_is_a_typed_error() -> None:
    cas = InMemoryCAS()
    hamt = await build_map(cas, {"a": b"\xff\xfe not cbor"})
    reader = HAMT(cas=cas, root_node_id=hamt.root_node_id, read_only=True)
    with pytest.raises(CorruptBlockError, match="values_are_bytes"):
        await reader.get("a")


async def test_cache_size_and_vacate() -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(2000):
        await hamt.set(f"k{i}", b"v")
    buffered = await hamt.cache_size()
    assert buffered > 0
    before = len(cas.store)
    await hamt.cache_vacate()  # flushes the write buffer to the store
    assert len(cas.store) > before
    assert await hamt.cache_size() == 0
    await hamt.set("more", b"v")
    await hamt.make_read_only()
    assert await hamt.len() == 2001
    await hamt.cache_vacate()
    assert await hamt.cache_size() == 0
    assert await hamt.get("k5") == b"v"
    assert await hamt.cache_size() > 0


async def test_read_cache_is_bounded() -> None:
    cas = InMemoryCAS()
    hamt = await build_map(cas, {f"k{i}": b"v" for i in range(5000)})
    budget = 64 * 1024
    reader = HAMT(
        cas=cas,
        root_node_id=hamt.root_node_id,
        read_only=True,
        values_are_bytes=True,
        cache_bytes=budget,
    )
    for i in range(5000):
        assert await reader.get(f"k{i}") == b"v"
    assert 0 < await reader.cache_size() <= budget


async def test_root_node_id_in_write_mode_is_last_flushed_root() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    assert hamt.root_node_id is None
    await hamt.set("a", b"1")
    await hamt.cache_vacate()
    flushed = hamt.root_node_id
    await hamt.set("b", b"2")
    assert hamt.root_node_id == flushed
    await hamt.make_read_only()
    assert hamt.root_node_id != flushed


async def test_values_as_dag_cbor_blocks_match_py_hamt_encoding() -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas)
    await hamt.set("a", {"x": [1, 2]})
    pointer = await hamt.get_pointer("a")
    assert cas.store[pointer] == dag_cbor.encode({"x": [1, 2]})


async def test_link_text_round_trip(tmp_path: Any) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        cid = await cas.save(b"x", "dag-cbor")
        link = Link.parse(str(cid))
        assert str(link) == str(cid)
        assert link.to_cid() == cid
