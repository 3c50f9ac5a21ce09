"""Same bytes as py-hamt 3.6.0: roots and blocks compared with the real library.

py-hamt runs in its own interpreter (tests/_pyhamt.py); blocks cross between the two
processes as JSON. These are the in-memory checks; tests/kubo/ does the same over IPFS.
"""

from __future__ import annotations

import json
import os
import random
from typing import TYPE_CHECKING, Any

import pytest
from _pyhamt import run_pyhamt

from anyhamt import HAMT, InMemoryCAS

if TYPE_CHECKING:
    from pathlib import Path


# Runs a list of operations in py-hamt, prints the root and every block of its store.
PYHAMT_APPLY = """
import asyncio, json, sys
from py_hamt import HAMT, InMemoryCAS

async def main(spec):
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=spec["bytes"],
                            max_bucket_size=spec["bucket"])
    for op in spec["ops"]:
        if op[0] == "set":
            value = bytes.fromhex(op[2]) if spec["bytes"] else op[2]
            await hamt.set(op[1], value)
        elif op[0] == "delete":
            await hamt.delete(op[1])
        else:
            await hamt.make_read_only()
            await hamt.enable_write()
    await hamt.make_read_only()
    blocks = {k.hex(): v.hex() for k, v in cas.store.items()}
    print(json.dumps({"root": hamt.root_node_id.hex(), "blocks": blocks}))

asyncio.run(main(json.load(open(sys.argv[1]))))
"""

# Reads every key of a HAMT whose blocks are given, with py-hamt.
PYHAMT_READ = """
import asyncio, json, sys
from py_hamt import HAMT, InMemoryCAS

async def main(spec):
    cas = InMemoryCAS()
    cas.store = {bytes.fromhex(k): bytes.fromhex(v) for k, v in spec["blocks"].items()}
    hamt = await HAMT.build(cas=cas, root_node_id=bytes.fromhex(spec["root"]), read_only=True,
                            values_are_bytes=spec["bytes"])
    out = {}
    async for key in hamt.keys():
        value = await hamt.get(key)
        out[key] = value.hex() if spec["bytes"] else value
    print(json.dumps(out))

asyncio.run(main(json.load(open(sys.argv[1]))))
"""


def scenario(seed: int, n: int, bucket: int, deletes: int, as_bytes: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    ops: list[list[Any]] = []
    live: list[str] = []
    for i in range(n):
        key = f"k{rng.randrange(10 * n)}-{i}" if i % 3 else f"group/{i % 50}/c/{i}"
        value: Any = os.urandom(rng.randrange(1, 64)).hex() if as_bytes else {"i": i, "l": [i]}
        ops.append(["set", key, value])
        live.append(key)
        if i == n // 2:
            ops.append(["flush"])
    rng.shuffle(live)
    for key in live[:deletes]:
        ops.append(["delete", key])
    ops.append(["set", live[-1], os.urandom(5).hex() if as_bytes else "overwritten"])
    return {"ops": ops, "bucket": bucket, "bytes": as_bytes}


async def apply_in_anyhamt(spec: dict[str, Any]) -> tuple[InMemoryCAS, HAMT]:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=spec["bytes"], max_bucket_size=spec["bucket"])
    for op in spec["ops"]:
        if op[0] == "set":
            await hamt.set(op[1], bytes.fromhex(op[2]) if spec["bytes"] else op[2])
        elif op[0] == "delete":
            await hamt.delete(op[1])
        else:
            await hamt.make_read_only()
            await hamt.enable_write()
    await hamt.make_read_only()
    return cas, hamt


SCENARIOS = [
    pytest.param(1, 1500, 4, 0, True, id="1500-keys-bucket4"),
    pytest.param(2, 600, 1, 250, True, id="bucket1-with-deletes"),
    pytest.param(3, 800, 7, 500, True, id="bucket7-with-deletes"),
    pytest.param(4, 400, 3, 150, False, id="dag-cbor-values"),
]


@pytest.mark.usefixtures("pyhamt")
@pytest.mark.parametrize(("seed", "n", "bucket", "deletes", "as_bytes"), SCENARIOS)
async def test_same_root_and_blocks_as_py_hamt(
    seed: int, n: int, bucket: int, deletes: int, as_bytes: bool, tmp_path: Path
) -> None:
    spec = scenario(seed, n, bucket, deletes, as_bytes)
    theirs = json.loads(run_pyhamt(PYHAMT_APPLY, _to_file(tmp_path, spec)))
    cas, hamt = await apply_in_anyhamt(spec)
    assert hamt.root_node_id.hex() == theirs["root"]
    # Every block reachable from the root is byte-identical (py-hamt's store may also hold
    # superseded nodes; ours holds only what flushes wrote).
    ours = {k.hex(): v.hex() for k, v in cas.store.items()}
    reachable = await _reachable(cas, hamt)
    for block in reachable:
        assert ours[block] == theirs["blocks"][block]


@pytest.mark.usefixtures("pyhamt")
async def test_py_hamt_reads_what_anyhamt_wrote_and_back(tmp_path: Path) -> None:
    spec = scenario(9, 700, 4, 200, True)
    cas, hamt = await apply_in_anyhamt(spec)
    expected = {key: (await hamt.get(key)).hex() async for key in hamt.keys()}

    read_by_pyhamt = json.loads(
        run_pyhamt(
            PYHAMT_READ,
            _to_file(
                tmp_path,
                {
                    "root": hamt.root_node_id.hex(),
                    "bytes": True,
                    "blocks": {k.hex(): v.hex() for k, v in cas.store.items()},
                },
            ),
        )
    )
    assert read_by_pyhamt == expected

    theirs = json.loads(run_pyhamt(PYHAMT_APPLY, _to_file(tmp_path, spec)))
    their_cas = InMemoryCAS()
    their_cas.store = {bytes.fromhex(k): bytes.fromhex(v) for k, v in theirs["blocks"].items()}
    reader = await HAMT.build(
        cas=their_cas,
        root_node_id=bytes.fromhex(theirs["root"]),
        read_only=True,
        values_are_bytes=True,
    )
    assert {key: (await reader.get(key)).hex() async for key in reader.keys()} == expected


def _to_file(directory: Path, spec: dict[str, Any]) -> str:
    path = directory / f"spec-{len(list(directory.iterdir()))}.json"
    path.write_text(json.dumps(spec))
    return str(path)


async def _reachable(cas: InMemoryCAS, hamt: HAMT) -> set[str]:
    from anyhamt._codec import decode_node

    seen: set[str] = set()
    stack = [hamt.root_node_id]
    while stack:
        node_id = stack.pop()
        seen.add(node_id.hex())
        for slot in decode_node(cas.store[node_id]):
            if isinstance(slot, dict):
                seen.update(v.hex() for v in slot.values())
            elif slot is not None:
                stack.append(slot[0])
    return seen
