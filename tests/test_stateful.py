"""A hypothesis state machine that checks the HAMT against a Python dict.

Keys come mostly from a small pool chosen so that they collide in the hash (same first
byte, same first two bytes, same first three bytes), so buckets fill, split into child
nodes and fold back on delete; overwrites and deletes hit existing keys often. A second
run uses a 2-byte hash, where colliding keys exhaust the hash and ``set`` must raise
``HashExhaustedError`` without changing the map.

The machine is synchronous (hypothesis drives it) and talks to the async HAMT through a
blocking portal: one event loop thread per run, on asyncio or trio.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from anyhamt import (
    HAMT,
    HashExhaustedError,
    InMemoryCAS,
    KeyNotFoundError,
    ReadOnlyError,
    blake3_hashfn,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.from_thread import BlockingPortal

# Keys whose blake3 hashes collide, found by search. All of them start with byte 0xb9, so
# they meet in one slot of the root:
# * 11 keys sharing the first 2 bytes (b9 73): with the full hash they force child nodes
#   down to depth 2; with the 2-byte hash they collide completely. Two of them,
#   c25343 and c31420, share a third byte (b9 73 ea), so with a bucket size of 1 they
#   need a node at depth 3.
# * 12 keys sharing only the first byte (b9), so the depth-1 node holds both groups.
SAME_2_BYTES = [
    "c2401",
    "c8005",
    "c25343",
    "c28281",
    "c28905",
    "c31420",
    "c56374",
    "c60279",
    "c87779",
    "c99361",
    "c102891",
]
SAME_3_BYTES = ["c25343", "c31420"]
SAME_1_BYTE = [
    "e61",
    "e81",
    "e104",
    "e296",
    "e380",
    "e870",
    "e1046",
    "e1054",
    "e1285",
    "e1605",
    "e2193",
    "e2203",
]
GROUPS = [SAME_2_BYTES, SAME_1_BYTE, SAME_1_BYTE + SAME_2_BYTES]
POOL = [*SAME_2_BYTES, *SAME_1_BYTE, "a", "b", "c", "", "ключ", "🦀/c/0"]

KEYS = st.one_of(st.sampled_from(POOL), st.text(max_size=4))
VALUES = st.binary(max_size=3)  # small, so overwrites often keep the same value


def short_hash(data: bytes) -> bytes:
    """Only 2 bytes of blake3: a tree at most 2 levels deep, then the hash is exhausted."""
    return blake3_hashfn(data)[:2]


def test_key_pool_collides_as_claimed() -> None:
    def prefixes(keys: list[str], length: int) -> set[bytes]:
        return {blake3_hashfn(k.encode())[:length] for k in keys}

    assert prefixes(SAME_2_BYTES, 2) == {bytes.fromhex("b973")}
    assert prefixes(SAME_3_BYTES, 3) == {bytes.fromhex("b973ea")}
    assert len(prefixes(SAME_2_BYTES, 3)) == len(SAME_2_BYTES) - 1
    assert prefixes(SAME_1_BYTE, 1) == {b"\xb9"}
    assert bytes.fromhex("b973") not in prefixes(SAME_1_BYTE, 2)
    assert len(set(POOL)) == len(POOL)


class HamtVersusDict(RuleBasedStateMachine):
    def __init__(
        self,
        portal: BlockingPortal,
        hash_fn: Callable[[bytes], bytes],
        seen: Counter[str],
    ) -> None:
        super().__init__()
        self.portal = portal
        self.hash_fn = hash_fn
        self.seen = seen  # what the runs reached, so the test can check it tested something
        self.model: dict[str, bytes] = {}
        self.read_only = False
        self.bucket_size = 0
        self.hamt: HAMT | None = None
        self.max_depth = 0

    # -- helpers ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an async function on the portal's event loop and return its result."""
        return self.portal.call(partial(fn, *args, **kwargs))

    @property
    def map(self) -> HAMT:
        assert self.hamt is not None
        return self.hamt

    def new_hamt(self, **kwargs: Any) -> HAMT:
        hamt: HAMT = self.call(
            HAMT.build,
            cas=self.cas,
            hash_fn=self.hash_fn,
            max_bucket_size=self.bucket_size,
            values_are_bytes=True,
            **kwargs,
        )
        return hamt

    def exhausts_hash(self, key: str) -> bool:
        """Whether adding ``key`` needs more colliding keys than one bucket holds."""
        if key in self.model:
            return False
        full = self.hash_fn(key.encode())
        colliding = sum(1 for k in self.model if self.hash_fn(k.encode()) == full)
        return colliding >= self.bucket_size

    def sharing_prefix(self, key: str, length: int) -> int:
        """How many model keys share the first ``length`` hash bytes with ``key``."""
        prefix = self.hash_fn(key.encode())[:length]
        return sum(1 for k in self.model if self.hash_fn(k.encode())[:length] == prefix)

    def depth(self) -> int:
        """The depth of the deepest node of the canonical tree for the model's contents:
        a node at depth d exists when more than a bucket's worth of keys share d bytes."""
        hashes = [self.hash_fn(k.encode()) for k in self.model]
        depth = 0
        while hashes:
            counts = Counter(h[: depth + 1] for h in hashes)
            if max(counts.values()) <= self.bucket_size:
                break
            depth += 1
        return depth

    async def set_checked(self, key: str, value: bytes) -> None:
        """``hamt.set`` with the outcome the model predicts (runs on the loop)."""
        if self.read_only:
            with pytest.raises(ReadOnlyError):
                await self.map.set(key, value)
        elif self.exhausts_hash(key):
            self.seen["hash exhausted"] += 1
            with pytest.raises(HashExhaustedError):
                await self.map.set(key, value)
        else:
            await self.map.set(key, value)
            self.model[key] = value

    async def delete_checked(self, key: str) -> None:
        if self.read_only:
            with pytest.raises(ReadOnlyError):
                await self.map.delete(key)
        elif key in self.model:
            if any(
                self.sharing_prefix(key, n) == self.bucket_size + 1
                for n in range(1, len(self.hash_fn(key.encode())) + 1)
            ):
                self.seen["fold"] += 1
            await self.map.delete(key)
            del self.model[key]
        else:
            with pytest.raises(KeyNotFoundError):
                await self.map.delete(key)

    async def canonical_root(self) -> Any:
        """The root of a fresh HAMT holding the model's contents, inserted in one go."""
        fresh = await HAMT.build(
            cas=InMemoryCAS(),
            hash_fn=self.hash_fn,
            max_bucket_size=self.bucket_size,
            values_are_bytes=True,
        )
        for key in sorted(self.model):
            await fresh.set(key, self.model[key])
        await fresh.make_read_only()
        return fresh.root_node_id

    def check_root_depends_only_on_contents(self) -> None:
        assert self.read_only
        assert self.map.root_node_id == self.call(self.canonical_root)

    # -- rules ------------------------------------------------------------------------------

    @initialize(bucket_size=st.integers(1, 10))
    def start(self, bucket_size: int) -> None:
        self.bucket_size = bucket_size
        self.cas = InMemoryCAS()
        self.hamt = self.new_hamt()

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: bytes) -> None:
        self.call(self.set_checked, key, value)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), value=VALUES)
    def overwrite(self, data: st.DataObject, value: bytes) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.call(self.set_checked, key, value)

    @rule(data=st.data(), group=st.sampled_from(GROUPS), value=VALUES)
    def set_colliding(self, data: st.DataObject, group: list[str], value: bytes) -> None:
        keys = data.draw(st.lists(st.sampled_from(group), min_size=1, unique=True))

        async def set_all() -> None:
            for key in keys:
                await self.set_checked(key, value)

        self.call(set_all)

    @rule(start=st.integers(0, 300), count=st.integers(1, 120), value=VALUES)
    def set_many(self, start: int, count: int, value: bytes) -> None:
        async def set_all() -> None:
            for i in range(start, start + count):
                await self.set_checked(f"bulk{i}", value)

        self.call(set_all)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.call(self.delete_checked, key)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_existing(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.call(self.delete_checked, key)

    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def delete_colliding(self, data: st.DataObject, group: list[str]) -> None:
        """Delete keys of a collision group (some may be missing), folding child nodes."""
        keys = data.draw(st.lists(st.sampled_from(group), min_size=1, unique=True))

        async def delete_all() -> None:
            for key in keys:
                await self.delete_checked(key)

        self.call(delete_all)

    @rule(start=st.integers(0, 300), count=st.integers(1, 120))
    def delete_range(self, start: int, count: int) -> None:
        """Delete the keys set_many sets (some may be missing)."""

        async def delete_all() -> None:
            for i in range(start, start + count):
                await self.delete_checked(f"bulk{i}")

        self.call(delete_all)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_many(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(sorted(self.model)), unique=True))

        async def delete_all() -> None:
            for key in keys:
                await self.delete_checked(key)

        self.call(delete_all)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        if key in self.model:
            assert self.call(self.map.get, key) == self.model[key]
        else:
            with pytest.raises(KeyError):
                self.call(self.map.get, key)

    @rule(then_enable_write=st.booleans())
    def make_read_only(self, then_enable_write: bool) -> None:
        """A checkpoint; half the time the map stays read-only until enable_write."""
        self.call(self.map.make_read_only)
        self.read_only = True
        self.check_root_depends_only_on_contents()
        if then_enable_write:
            self.enable_write()

    @rule()
    def enable_write(self) -> None:
        self.call(self.map.enable_write)
        self.read_only = False

    @rule()
    def cache_vacate(self) -> None:
        self.call(self.map.cache_vacate)

    @precondition(lambda self: self.read_only)
    @rule(read_only=st.booleans())
    def reopen_from_root(self, read_only: bool) -> None:
        """Continue with a new HAMT over the stored root (nodes now come from the store)."""
        self.hamt = self.new_hamt(root_node_id=self.map.root_node_id, read_only=read_only)
        self.read_only = read_only

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        hamt = self.map

        async def snapshot() -> tuple[list[str], int, dict[str, bytes]]:
            iterator = hamt.keys()  # an async iterator (a HAMT itself is not iterable)
            keys = [k async for k in iterator]
            values = {k: await hamt.get(k) for k in self.model}
            return keys, await hamt.len(), values

        keys, length, values = self.call(snapshot)
        assert len(keys) == len(set(keys))
        assert set(keys) == set(self.model)
        assert length == len(self.model)
        assert values == self.model
        assert hamt.read_only == self.read_only
        self.max_depth = max(self.max_depth, self.depth())

    def teardown(self) -> None:
        if self.hamt is None:
            return
        self.seen[f"depth {self.max_depth}"] += 1
        self.call(self.map.make_read_only)
        self.read_only = True
        self.check_root_depends_only_on_contents()


# Sync tests: each runs its own event loop in a portal thread, so no anyio_backend fixture.
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "hash_fn", [blake3_hashfn, short_hash], ids=["blake3", "blake3-first-2-bytes"]
)
def test_hamt_behaves_like_a_dict(backend: str, hash_fn: Callable[[bytes], bytes]) -> None:
    seen: Counter[str] = Counter()
    with start_blocking_portal(backend) as portal:
        run_state_machine_as_test(
            lambda: HamtVersusDict(portal, hash_fn, seen),  # type: ignore[arg-type]
            settings=settings(
                max_examples=100,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    # The runs reached the interesting shapes (each happens in a good share of runs).
    assert seen["fold"] > 0
    if hash_fn is short_hash:
        assert seen["hash exhausted"] > 0
        assert seen["depth 1"] > 0
    else:
        assert seen["depth 2"] + seen["depth 3"] > 0
