"""Maps written by py-hamt 3.6.0 read in anyhamt and the other way round, on one daemon.

py-hamt runs in its own interpreter (tests/_pyhamt.py creates that venv if it can). Where
it cannot be had (no Python 3.12 or no network), the roots below, recorded from py-hamt
3.6.0 writing the same contents through Kubo, are what anyhamt must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from _pyhamt import require_pyhamt, run_pyhamt

from anyhamt import HAMT, KuboCAS

from ._helpers import cas_for

if TYPE_CHECKING:
    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo

RECORDED = json.loads((Path(__file__).parent / "pyhamt_roots.json").read_text())

# The same contents on both sides: small values and one bigger than Kubo's 1 MiB chunk
# (py-hamt stores it as a dag-pb UnixFS file).
CONTENTS_SOURCE = """
def contents(n, extra):
    out = {f"k{i}": f"value-{i}".encode() for i in range(n)}
    out["big"] = bytes(range(256)) * 6000
    for i in range(extra):
        out[f"extra{i}"] = b"x" * i
    return out
"""
namespace: dict[str, object] = {}
exec(CONTENTS_SOURCE, namespace)
contents = namespace["contents"]

PYHAMT_SCRIPT = (
    CONTENTS_SOURCE
    + """
import asyncio, json, sys
from multiformats import CID
from py_hamt import HAMT, KuboCAS

async def main(mode, rpc, gateway, n, extra, root=None):
    expected = contents(int(n), int(extra))
    async with KuboCAS(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        if mode == "write":
            hamt = await HAMT.build(cas=cas, values_are_bytes=True)
            for key, value in expected.items():
                await hamt.set(key, value)
            await hamt.make_read_only()
            print(json.dumps({"root": str(hamt.root_node_id)}))
        else:
            hamt = await HAMT.build(cas=cas, root_node_id=CID.decode(root),
                                    values_are_bytes=True, read_only=True)
            keys = [key async for key in hamt.keys()]
            for key in keys:
                assert await hamt.get(key) == expected[key], key
            print(json.dumps({"keys": len(keys)}))

asyncio.run(main(*sys.argv[1:]))
"""
)


async def anyhamt_write(cas: KuboCAS, n: int, extra: int) -> str:
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for key, value in contents(n, extra).items():  # type: ignore[operator]
        await hamt.set(key, value)
    await hamt.make_read_only()
    return str(hamt.root_node_id)


async def test_same_contents_same_root_as_recorded_from_pyhamt(kubo_cas: KuboCAS) -> None:
    """Runs without py-hamt: roots it produced for these contents, recorded once."""
    for case in RECORDED["cases"]:
        assert await anyhamt_write(kubo_cas, case["n"], case["extra"]) == case["root"]


@pytest.fixture(scope="module")
def pyhamt() -> str:
    return require_pyhamt("py-hamt 3.6.0 could not be installed; the recorded roots still apply")


@pytest.mark.usefixtures("pyhamt")
async def test_pyhamt_writes_anyhamt_reads(kubo_daemon: KuboDaemon, kubo_cas: KuboCAS) -> None:
    args = ("write", kubo_daemon.rpc_url, kubo_daemon.gateway_url, "200", "3")
    out = await anyio.to_thread.run_sync(lambda: run_pyhamt(PYHAMT_SCRIPT, *args))
    root = json.loads(out)["root"]
    # anyhamt reads every key of py-hamt's map, dag-pb value included (verified).
    async with cas_for(kubo_daemon) as reader:
        hamt = await HAMT.build(
            cas=reader, root_node_id=root, values_are_bytes=True, read_only=True
        )
        expected = contents(200, 3)  # type: ignore[operator]
        async for key in hamt.keys():
            assert await hamt.get(key) == expected[key]
        assert await hamt.len() == len(expected)
    # And writes the very same root for the same contents.
    assert await anyhamt_write(kubo_cas, 200, 3) == root


@pytest.mark.usefixtures("pyhamt")
async def test_anyhamt_writes_pyhamt_reads(kubo_daemon: KuboDaemon, kubo_cas: KuboCAS) -> None:
    root = await anyhamt_write(kubo_cas, 150, 7)
    args = ("read", kubo_daemon.rpc_url, kubo_daemon.gateway_url, "150", "7", root)
    out = await anyio.to_thread.run_sync(lambda: run_pyhamt(PYHAMT_SCRIPT, *args))
    assert json.loads(out) == {"keys": 158}
