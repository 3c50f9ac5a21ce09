"""anyhamt's KuboCAS against py-hamt 3.6.0's, on one real Kubo daemon, in one run.

    python benchmarks/run_kubo.py [--keys 20000] [--concurrency 64] [--rounds 1]
                                  [--fetch-values 3700] [--fetch-size 26000]
                                  [--fetch-concurrency 32] [--json out.json]

Starts a throwaway offline Kubo (tests/kubo/_daemon.py; the binary from
scripts/install-kubo.sh), then runs each library in a fresh process of its own: anyhamt on
asyncio and on trio in this interpreter, py-hamt in its venv (tests/_pyhamt.py finds or
creates it). Each worker, against the same daemon:

1. write: ``keys`` inserts of 100-byte values, then ``make_read_only()``;
2. cold read: a new store and a new read-only HAMT on the root, ``get`` every key in order;
3. concurrent: another new store and HAMT, ``concurrency`` tasks ``get`` every key;
4. cold fetch: ``fetch_values`` values of ``fetch_size`` bytes (the chunk layout of
   run_zarr.py's kubo part: ~3,700 chunks of 26 KB) are written (untimed), then a new store
   and read-only HAMT list every key and ``get`` every value with ``fetch_concurrency``
   tasks (timed: the store's own read path, verified for anyhamt, no zarr).

The **floor** for phase 4 (``--worker floor``): right after each anyhamt worker, a fresh
process walks that worker's phase-4 HAMT (untimed) and fetches every block, the nodes and
the values, with plain ``GET /ipfs/<cid>?format=raw`` requests on ``fetch_concurrency``
bare HTTP/1.1 keep-alive connections (asyncio streams: a request line, a
``Content-Length`` body): no hashing, no decoding. The report gives each library's
phase-4 time as a fraction of the floor's (floor / library: 1.0x means as fast as plain
GETs; the target of issue #7 is >= 0.8x).

Values differ between libraries and rounds (a per-run seed) so that no run finds another's
blocks already stored. Every value read is compared with the value written. With
``--rounds N`` every worker runs N times, in a rotated order each round (so that no library
always runs first on the daemon), and the table shows each figure's median over the rounds.
The load average before and after is printed: on a shared machine, compare runs only at
similar load.
This file is also the worker (``--worker LIB``); at top level it imports only the stdlib,
so py-hamt's interpreter can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import GatewayAnswerError, fetch_plain

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
VALUE_SIZE = 100


def _values(n: int, seed: str) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"key-{i}": rng.randbytes(VALUE_SIZE) for i in range(n)}


# -- workers ----------------------------------------------------------------------------


async def _measure(
    hamt_cls: Any,
    cas_cls: Any,
    values: dict[str, bytes],
    rpc: str,
    gateway: str,
    concurrency: int,
    run_all: Callable[[Callable[[], Awaitable[None]], int], Awaitable[Any]],
    fetch: tuple[dict[str, bytes], int],
) -> dict[str, Any]:
    """The four phases, for either library (both have py-hamt's API)."""
    result: dict[str, Any] = {}
    async with cas_cls(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        start = time.perf_counter()
        hamt = await hamt_cls.build(cas=cas, values_are_bytes=True)
        for key, value in values.items():
            await hamt.set(key, value)
        await hamt.make_read_only()
        result["write_s"] = time.perf_counter() - start
        root = hamt.root_node_id
    async with cas_cls(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        start = time.perf_counter()
        reader = await hamt_cls.build(
            cas=cas, root_node_id=root, values_are_bytes=True, read_only=True
        )
        for key, value in values.items():
            if await reader.get(key) != value:
                raise SystemExit(f"wrong value for {key}")
        result["cold_read_s"] = time.perf_counter() - start
    async with cas_cls(rpc_base_url=rpc, gateway_base_url=gateway, concurrency=concurrency) as cas:
        start = time.perf_counter()
        reader = await hamt_cls.build(
            cas=cas, root_node_id=root, values_are_bytes=True, read_only=True
        )
        keys = iter(values)

        async def worker() -> None:
            for key in keys:
                if await reader.get(key) != values[key]:
                    raise SystemExit(f"wrong value for {key}")

        await run_all(worker, concurrency)
        result["concurrent_read_s"] = time.perf_counter() - start
    result["root"] = str(root)
    result.update(await _fetch_phase(hamt_cls, cas_cls, rpc, gateway, fetch, run_all))
    return result


async def _fetch_phase(
    hamt_cls: Any,
    cas_cls: Any,
    rpc: str,
    gateway: str,
    fetch: tuple[dict[str, bytes], int],
    run_all: Callable[[Callable[[], Awaitable[None]], int], Awaitable[Any]],
) -> dict[str, Any]:
    """Phase 4: big values written untimed, then read cold by ``concurrency`` tasks."""
    values, concurrency = fetch
    if not values:
        return {}
    async with cas_cls(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        hamt = await hamt_cls.build(cas=cas, values_are_bytes=True)
        for key, value in values.items():
            await hamt.set(key, value)
        await hamt.make_read_only()
        root = hamt.root_node_id
    async with cas_cls(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        start = time.perf_counter()
        reader = await hamt_cls.build(
            cas=cas, root_node_id=root, values_are_bytes=True, read_only=True
        )
        keys = iter([key async for key in reader.keys()])

        async def worker() -> None:
            for key in keys:
                if await reader.get(key) != values[key]:
                    raise SystemExit(f"wrong value for {key}")

        await run_all(worker, concurrency)
        elapsed = time.perf_counter() - start
    return {"fetch_s": elapsed, "fetch_root": str(root)}


def _fetch_values(args: argparse.Namespace, seed: str) -> tuple[dict[str, bytes], int]:
    rng = random.Random(f"fetch-{seed}")
    values = {f"chunk-{i}": rng.randbytes(args.fetch_size) for i in range(args.fetch_values)}
    return values, args.fetch_concurrency


async def _anyhamt(
    rpc: str, gateway: str, n: int, concurrency: int, seed: str, args: argparse.Namespace
) -> dict[str, Any]:
    import anyio
    import sniffio

    from anyhamt import HAMT, KuboCAS

    async def run_all(worker: Callable[[], Awaitable[None]], count: int) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(worker)

    tag = f"anyhamt-{sniffio.current_async_library()}-{seed}"
    fetch = _fetch_values(args, tag)
    return await _measure(HAMT, KuboCAS, _values(n, tag), rpc, gateway, concurrency, run_all, fetch)


async def _pyhamt(
    rpc: str, gateway: str, n: int, concurrency: int, seed: str, args: argparse.Namespace
) -> dict[str, Any]:
    import asyncio

    from py_hamt import HAMT, KuboCAS

    async def run_all(worker: Callable[[], Awaitable[None]], count: int) -> None:
        await asyncio.gather(*(worker() for _ in range(count)))  # py-hamt is asyncio-only

    fetch = _fetch_values(args, f"py-hamt-{seed}")
    values = _values(n, f"py-hamt-{seed}")
    return await _measure(HAMT, KuboCAS, values, rpc, gateway, concurrency, run_all, fetch)


# -- the floor: plain GETs of the same blocks ------------------------------------------------


async def _floor(gateway: str, root: str, concurrency: int) -> dict[str, Any]:
    import dag_cbor
    import httpx
    from multiformats import CID

    # Untimed: every node of the HAMT and every value it points to.
    blocks: list[str] = []
    stack = [root]
    async with httpx.AsyncClient(timeout=120) as client:
        while stack:
            cid = stack.pop()
            blocks.append(cid)
            response = await client.get(f"{gateway}/ipfs/{cid}?format=raw")
            response.raise_for_status()
            node: Any = dag_cbor.decode(response.content)
            for slot in node:
                if isinstance(slot, list):
                    stack.append(str(slot[0]))
                elif slot:
                    for pointer in slot.values():
                        if CID.decode(str(pointer)).codec.name == "dag-pb":
                            raise SystemExit(f"value {pointer!s} is a UnixFS file: not supported")
                        blocks.append(str(pointer))

    start = time.perf_counter()
    try:
        fetched = await fetch_plain(gateway, blocks, concurrency)
    except* GatewayAnswerError as group:
        raise SystemExit(str(group.exceptions[0])) from None
    return {"fetch_s": time.perf_counter() - start, "blocks": len(blocks), "bytes": fetched}


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "floor":
        import asyncio

        result = asyncio.run(_floor(args.gateway, args.root, args.fetch_concurrency))
    elif args.worker == "py-hamt":
        import asyncio

        result = asyncio.run(
            _pyhamt(args.rpc, args.gateway, args.keys, args.concurrency, args.seed, args)
        )
    else:
        import anyio

        result = anyio.run(
            _anyhamt,
            args.rpc,
            args.gateway,
            args.keys,
            args.concurrency,
            args.seed,
            args,
            backend=args.backend,
        )
    print(json.dumps(result))


# -- orchestration ----------------------------------------------------------------------


def _run_worker(
    python: str, lib: str, backend: str, daemon: Any, args: argparse.Namespace, seed: str
) -> dict[str, Any]:
    command = [
        python, "-W", "ignore", __file__, "--worker", lib, "--backend", backend,
        "--rpc", daemon.rpc_url, "--gateway", daemon.gateway_url,
        "--keys", str(args.keys), "--concurrency", str(args.concurrency), "--seed", seed,
        "--fetch-values", str(args.fetch_values), "--fetch-size", str(args.fetch_size),
        "--fetch-concurrency", str(args.fetch_concurrency), "--root", args.root or "",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{lib} worker failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(lib=lib, backend=backend)
    return result


def _warm_up(daemon: Any, n: int) -> None:
    """Store ``n`` throwaway blocks first: a new repo creates its block-store directories
    on first use, which would otherwise slow down whichever library runs first."""
    import httpx

    rng = random.Random("warm-up")
    with httpx.Client(timeout=120) as client:
        for _ in range(0, n, 1000):
            files = [("file", ("b", rng.randbytes(VALUE_SIZE))) for _ in range(1000)]
            client.post(
                f"{daemon.rpc_url}/api/v0/block/put",
                params={"cid-codec": "raw", "mhtype": "blake3", "pin": "false"},
                files=files,
            ).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="run every worker this often")
    parser.add_argument("--fetch-values", type=int, default=3700, help="phase 4 (0: skip)")
    parser.add_argument("--fetch-size", type=int, default=26_000)
    parser.add_argument("--fetch-concurrency", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--skip-pyhamt", action="store_true")
    parser.add_argument("--worker", choices=("anyhamt", "py-hamt", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--rpc", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--seed", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from _pyhamt import pyhamt_python

    from tests.kubo._daemon import KuboDaemon, find_kubo_binary

    binary = find_kubo_binary()
    if binary is None:
        raise SystemExit("no Kubo binary: run scripts/install-kubo.sh")
    runs = [(sys.executable, "anyhamt", "asyncio"), (sys.executable, "anyhamt", "trio")]
    if not args.skip_pyhamt:
        python = pyhamt_python()
        if python is None:
            raise SystemExit("py-hamt 3.6.0 is not available (see tests/_pyhamt.py)")
        runs.append((python, "py-hamt", "asyncio"))
    every: dict[tuple[str, str], list[dict[str, Any]]] = {(r[1], r[2]): [] for r in runs}
    floors: list[float] = []
    load_before = os.getloadavg()
    with KuboDaemon(binary) as daemon:
        _warm_up(daemon, args.keys)
        for round_ in range(args.rounds):
            shift = round_ % len(runs)
            for python, lib, backend in runs[shift:] + runs[:shift]:
                print(f"round {round_ + 1}: {lib} ({backend}) ...", file=sys.stderr, flush=True)
                result = _run_worker(python, lib, backend, daemon, args, str(round_))
                every[lib, backend].append(result)
                if lib == "anyhamt" and "fetch_root" in result:
                    # The floor: the same blocks, right after, with plain GETs.
                    args.root = result["fetch_root"]
                    floor = _run_worker(sys.executable, "floor", "-", daemon, args, "")
                    args.root = None
                    floors.append(floor["fetch_s"])
                    result["floor_s"] = floor["fetch_s"]
                    result["floor_blocks"] = floor["blocks"]
    load_after = os.getloadavg()
    results = []
    for (lib, backend), runs_of in every.items():
        merged = {
            key: statistics.median(r[key] for r in runs_of)
            for key in ("write_s", "cold_read_s", "concurrent_read_s", "fetch_s")
            if all(key in r for r in runs_of)
        }
        merged.update(lib=lib, backend=backend, rounds=runs_of)
        results.append(merged)

    n = args.keys
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"\n{n} keys, {VALUE_SIZE}-byte values, one offline Kubo {daemon.binary}{rounds}")
    print(
        "load average before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}\n".format(
            *load_before, *load_after
        )
    )
    way = f"{args.concurrency}-way get"
    header = f"{'library':<22}{'write+flush':>15}{'cold read':>15}{way:>15}"
    print(header)
    print("-" * len(header))
    for r in results:
        name = f"{r['lib']} ({r['backend']})"
        print(
            f"{name:<22}{n / r['write_s']:>9.0f} key/s{n / r['cold_read_s']:>9.0f} key/s"
            f"{n / r['concurrent_read_s']:>9.0f} key/s"
        )
    base = next((r for r in results if r["lib"] == "py-hamt"), None)
    if base is not None:
        print()
        for r in results:
            if r is base:
                continue
            name = f"{r['lib']} ({r['backend']})"
            print(
                f"{name} vs py-hamt: write x{base['write_s'] / r['write_s']:.1f}, "
                f"cold read x{base['cold_read_s'] / r['cold_read_s']:.1f}, "
                f"concurrent x{base['concurrent_read_s'] / r['concurrent_read_s']:.1f}"
            )
    if floors:
        floor_s = statistics.median(floors)
        m, size = args.fetch_values, args.fetch_size
        print(
            f"\ncold fetch: {m} values of {size} bytes (+ the HAMT nodes), "
            f"{args.fetch_concurrency} tasks; floor = plain GETs of the same blocks"
        )
        print(f"{'plain GETs (floor)':<22}{floor_s:>8.2f} s")
        for r in results:
            if "fetch_s" in r:
                name = f"{r['lib']} ({r['backend']})"
                print(
                    f"{name:<22}{r['fetch_s']:>8.2f} s   "
                    f"floor / this = {floor_s / r['fetch_s']:.2f}x"
                )
        for r in results:
            if r["lib"] == "anyhamt" and "fetch_s" in r:
                pairs = [x["floor_s"] / x["fetch_s"] for x in r["rounds"] if "floor_s" in x]
                ratios = ", ".join(f"{p:.2f}x" for p in pairs)
                print(f"anyhamt ({r['backend']}) vs the floor run right after it: {ratios}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
