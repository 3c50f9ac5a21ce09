"""The sorted key index behind the Zarr stores' listings, against a plain sorted list."""

from __future__ import annotations

import random

import pytest

from anyhamt import HAMT, InMemoryCAS
from anyhamt._sorted_keys import SortedKeys


def children(keys: set[str], prefix: str) -> list[str]:
    return sorted({k[len(prefix) :].split("/")[0] for k in keys if k.startswith(prefix)})


def random_key(rng: random.Random) -> str:
    parts = [rng.choice(["a", "b", "a.b", "a0", "zarr.json", "c", "é", "\U0001f600"])]
    for _ in range(rng.randrange(0, 4)):
        parts.append(str(rng.randrange(12)))
    return "/".join(parts) + ("/" if rng.random() < 0.02 else "")


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_sorted_list_across_block_splits_and_merges(seed: int) -> None:
    rng = random.Random(seed)
    reference: set[str] = set()
    pool: list[str] = []  # keys ever added, to pick deletions from cheaply
    index = SortedKeys()
    for step in range(12_000):  # several blocks' worth, so blocks split and empty out
        key = random_key(rng) + str(step % 3000)
        if rng.random() < 0.7:
            index.add(key)
            reference.add(key)
            pool.append(key)
        else:
            victim = rng.choice(pool) if pool and rng.random() < 0.8 else key
            index.discard(victim)
            reference.discard(victim)
        if step % 1500 == 0 or step == 11_999:
            assert len(index) == len(reference)
            assert index.with_prefix("") == sorted(reference)
            for prefix in ("", "a/", "a", "a.b/", "a/1/", "é/", "\U0001f600/3/", "zz"):
                assert index.with_prefix(prefix) == sorted(
                    k for k in reference if k.startswith(prefix)
                ), prefix
                assert index.has_prefix(prefix) == any(k.startswith(prefix) for k in reference)
                if prefix == "" or prefix.endswith("/"):
                    assert index.children(prefix) == children(reference, prefix), prefix
    sample = rng.sample(sorted(reference), 50)
    assert all(key in index for key in sample)
    assert "no such key" not in index and 3 not in index


def test_built_from_keys_in_any_order() -> None:
    keys = [f"v/c/{i}" for i in range(5000)]
    random.Random(1).shuffle(keys)
    index = SortedKeys(keys + keys[:10])
    assert index.with_prefix("v/c/") == sorted(keys)
    assert index.children("v/") == ["c"]
    assert len(index.children("v/c/")) == 5000


async def test_the_hamt_keeps_its_index_in_step_with_every_write() -> None:
    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    for i in range(300):
        await hamt.set(f"k/{i}", b"v")
    index = await hamt._key_index()
    assert await hamt._key_index() is index  # built once
    await hamt.set("k/new", b"v")
    await hamt.delete("k/0")
    await hamt.set_pointer("k/alias", await hamt.get_pointer("k/1"))
    assert await hamt._set_if_absent("k/1", b"other") is False
    assert await hamt._set_if_absent("k/fresh", b"v") is True
    with pytest.raises(KeyError):
        await hamt.delete("k/0")  # a failed delete changes nothing
    expected = sorted({f"k/{i}" for i in range(1, 300)} | {"k/new", "k/alias", "k/fresh"})
    assert index.with_prefix("") == expected
    assert sorted([k async for k in hamt.keys()]) == expected
    await hamt.make_read_only()
    assert (await hamt._key_index()).with_prefix("") == expected
    hamt.root_node_id = hamt.root_node_id  # a new root drops the index
    assert hamt._sorted_keys is None
    assert (await hamt._key_index()).with_prefix("") == expected
