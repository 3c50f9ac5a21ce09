"""Bad input gets a typed error that says what to do, and leaves the map as it was."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _helpers import reference_root

import anyhamt
from anyhamt import (
    HAMT,
    AnyHamtError,
    BlockNotFoundError,
    CorruptNodeError,
    HashExhaustedError,
    HashTooShortError,
    InMemoryCAS,
    InvalidConfigError,
    InvalidIdError,
    InvalidKeyError,
    InvalidRangeError,
    LocalCAS,
    blake3_hashfn,
)

if TYPE_CHECKING:
    from pathlib import Path


async def snapshot(hamt: HAMT) -> dict[str, Any]:
    return {key: await hamt.get(key) async for key in hamt.keys()}


def test_every_error_is_an_anyhamt_error_and_a_familiar_builtin() -> None:
    assert issubclass(anyhamt.KeyNotFoundError, KeyError)
    assert issubclass(anyhamt.ReadOnlyError, PermissionError)
    assert issubclass(anyhamt.BlockNotFoundError, FileNotFoundError)
    assert issubclass(anyhamt.InvalidKeyError, TypeError)
    assert issubclass(anyhamt.InvalidConfigError, ValueError)
    assert issubclass(anyhamt.LoopBlockedError, RuntimeError)
    for name in anyhamt.__all__:
        obj = getattr(anyhamt, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, AnyHamtError), name


@pytest.mark.parametrize("size", [0, -1])
def test_bucket_size_below_one(size: int) -> None:
    with pytest.raises(InvalidConfigError, match="positive"):
        HAMT(cas=InMemoryCAS(), max_bucket_size=size)
    with pytest.raises(ValueError):  # what py-hamt raised
        HAMT(cas=InMemoryCAS(), max_bucket_size=size)


def test_bucket_size_of_wrong_type() -> None:
    with pytest.raises(InvalidConfigError, match="int"):
        HAMT(cas=InMemoryCAS(), max_bucket_size=2.5)  # type: ignore[arg-type]


async def test_hash_fn_returning_nothing() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), hash_fn=lambda data: b"", values_are_bytes=True)
    with pytest.raises(HashTooShortError, match="at least 1 byte"):
        await hamt.set("a", b"1")
    assert await hamt.len() == 0


async def test_hash_fn_returning_a_non_bytes() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), hash_fn=lambda data: 7, values_are_bytes=True)
    with pytest.raises(HashTooShortError):
        await hamt.set("a", b"1")


@pytest.mark.parametrize("hash_len", [1, 2])
@pytest.mark.parametrize("bucket", [1, 3])
async def test_more_collisions_than_a_bucket_holds(hash_len: int, bucket: int) -> None:
    def colliding(data: bytes) -> bytes:
        return b"\x07" * hash_len

    hamt = await HAMT.build(
        cas=InMemoryCAS(), hash_fn=colliding, max_bucket_size=bucket, values_are_bytes=True
    )
    for i in range(bucket):
        await hamt.set(f"k{i}", b"v")
    await hamt.make_read_only()
    root = hamt.root_node_id
    await hamt.enable_write()
    with pytest.raises(HashExhaustedError, match="longer hash_fn or a larger"):
        await hamt.set("one-too-many", b"v")
    assert await snapshot(hamt) == {f"k{i}": b"v" for i in range(bucket)}
    await hamt.set("k0", b"overwrite is fine")  # an existing key still fits
    await hamt.set("k0", b"v")
    await hamt.make_read_only()
    assert hamt.root_node_id == root


async def test_collisions_deep_in_a_real_tree() -> None:
    """Keys sharing a 1-byte hash overflow only within their slot."""

    def first_byte(data: bytes) -> bytes:
        return blake3_hashfn(data)[:1]

    hamt = await HAMT.build(cas=InMemoryCAS(), hash_fn=first_byte, values_are_bytes=True)
    placed: dict[str, bytes] = {}
    failures = 0
    for i in range(3000):
        key = f"key-{i}"
        try:
            await hamt.set(key, b"x")
        except HashExhaustedError:
            failures += 1
        else:
            placed[key] = b"x"
    assert failures > 0
    assert await snapshot(hamt) == placed


async def test_root_id_that_does_not_exist() -> None:
    cas = InMemoryCAS()
    hamt = HAMT(cas=cas, root_node_id=b"\x1e\x20" + bytes(32), read_only=True)
    with pytest.raises(BlockNotFoundError, match="another store"):
        await hamt.get("a")
    with pytest.raises(FileNotFoundError):
        await hamt.len()


async def test_root_that_is_not_a_node(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        value = await cas.save(b"just some bytes", "raw")
        hamt = HAMT(cas=cas, root_node_id=value, read_only=True)
        with pytest.raises(CorruptNodeError):
            await hamt.get("a")
        writer = HAMT(cas=cas, root_node_id=value)
        with pytest.raises(CorruptNodeError):
            await writer.set("a", b"1")


async def test_corrupt_node_inside_the_tree_leaves_the_map_unchanged() -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(2000):
        await hamt.set(f"k{i}", b"v")
    await hamt.make_read_only()
    root = hamt.root_node_id
    # Replace one child node's bytes in the store with garbage.
    child = next(
        ptr for ptr, data in cas.store.items() if ptr != root and data.startswith(b"\x99\x01\x00")
    )
    original = cas.store[child]
    cas.store[child] = b"\x99\x01\x00garbage"
    writer = HAMT(cas=cas, root_node_id=root, values_are_bytes=True)
    errors = 0
    succeeded: list[str] = []
    for i in range(2000):
        try:
            await writer.set(f"k{i}", b"changed")
        except CorruptNodeError:
            errors += 1
        else:
            succeeded.append(f"k{i}")
    assert errors > 0
    with pytest.raises(CorruptNodeError):
        await writer.len()
    # Every failed set left nothing behind: with the node's bytes restored, the keys whose
    # set failed still hold the old value and the others the new one.
    cas.store[child] = original
    expected = {f"k{i}": b"v" for i in range(2000)}
    expected.update({key: b"changed" for key in succeeded})
    assert len(succeeded) == 2000 - errors
    assert await snapshot(writer) == expected
    await writer.make_read_only()
    assert writer.root_node_id == await reference_root(expected)


async def test_wrong_id_types_for_the_store(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "b.db") as local:
        cid = await local.save(b"x", "raw")
        memory = InMemoryCAS()
        with pytest.raises(InvalidIdError, match="bytes its save"):
            await HAMT(cas=memory, root_node_id=cid, read_only=True).get("a")
        with pytest.raises(InvalidIdError, match="InMemoryCAS"):
            await local.load(await memory.save(b"x", "raw"))
        with pytest.raises(InvalidIdError):
            HAMT(cas=local, root_node_id="not a cid")


# -- typed errors at every edge (issue #6 item 6) -------------------------------------------


async def stored_map(cas: Any = None) -> HAMT:
    hamt = await HAMT.build(cas=cas or InMemoryCAS(), values_are_bytes=True)
    for i in range(50):
        await hamt.set(f"k{i}", f"v{i}".encode())
    return hamt


@pytest.mark.parametrize("key", ["\ud800", "caf\udce9", "\udfff-tail"])
async def test_key_with_no_utf8_form(key: str) -> None:
    hamt = await stored_map()
    before = await snapshot(hamt)
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await hamt.set(key, b"x")
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await hamt.get(key)
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await hamt.delete(key)
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await hamt.get_pointer(key)
    assert await snapshot(hamt) == before
    await hamt.make_read_only()
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        await hamt.get(key)  # the read-only fast path too


BAD_RANGES = [
    {"offset": 1.5},
    {"offset": "1"},
    {"length": 2.5},
    {"offset": 0, "length": "2"},
    {"suffix": 1.0},
    {"offset": True},
]


@pytest.mark.parametrize("bad", BAD_RANGES, ids=lambda r: repr(r))
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
async def test_range_of_wrong_type_from_the_hamt(bad: dict[str, Any], read_only: bool) -> None:
    hamt = await stored_map()
    if read_only:
        await hamt.make_read_only()
    before = await snapshot(hamt)
    with pytest.raises(InvalidRangeError, match="must be an int"):
        await hamt.get("k1", **bad)
    with pytest.raises(InvalidRangeError):
        await hamt.get("no such key", **bad)  # checked before the lookup
    assert await snapshot(hamt) == before


@pytest.mark.parametrize("bad", BAD_RANGES, ids=lambda r: repr(r))
@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_range_of_wrong_type_from_a_store(
    bad: dict[str, Any], kind: str, tmp_path: Path
) -> None:
    async with InMemoryCAS() if kind == "memory" else LocalCAS(tmp_path / "b.db") as cas:
        block = await cas.save(b"0123456789", "raw")
        with pytest.raises(InvalidRangeError, match="must be an int"):
            await cas.load(block, **bad)
        assert await cas.load(block, offset=2, length=3) == b"234"


@pytest.mark.parametrize(
    "root",
    [
        "bae",  # cut off inside the multihash header
        "bafyreia",  # a whole header, no digest
        "bafyr4igb3js3dqlnsvmbi533lhghfet3l4r35vbi7mlrvxjb6f3n5wkc",  # digest cut short
        "not a cid",
    ],
)
async def test_truncated_root_is_rejected_at_build_time(root: str, tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "b.db") as cas:
        with pytest.raises(InvalidIdError, match="CID"):
            await HAMT.build(cas=cas, root_node_id=root, read_only=True)
        with pytest.raises(InvalidIdError, match="CID"):
            HAMT(cas=cas, root_node_id=root)
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await hamt.set("a", b"1")
        await hamt.make_read_only()
        whole = str(hamt.root_node_id)
        again = await HAMT.build(cas=cas, root_node_id=whole, read_only=True, values_are_bytes=True)
        assert await again.get("a") == b"1"
