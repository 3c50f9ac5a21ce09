"""Store a key-value map in a HAMT on the persistent local store, then read it back.

Run 1 (asyncio) writes the map and prints its root CID. Run 2 is a new process on trio that
reopens the same store file from nothing but that root, reads every value back and checks
it. The same code works on either event loop because anyhamt is written on anyio.

    python examples/local_kv.py [--store PATH] [--keys N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import anyio

from anyhamt import HAMT, LocalCAS


def value_for(i: int) -> dict[str, object]:
    return {"station": f"st-{i:05d}", "temperature": round(12.5 + (i % 17) * 0.3, 1)}


async def write(store: Path, n: int) -> str:
    async with LocalCAS(store) as cas:
        hamt = await HAMT.build(cas=cas)
        started = time.perf_counter()
        for i in range(n):
            await hamt.set(f"reading/{i}", value_for(i))
        await hamt.make_read_only()  # saves the tree and makes it durable
        elapsed = time.perf_counter() - started
        print(f"[write, {anyio_backend_name()}] {n} keys in {elapsed:.2f} s -> {store}")
        return str(hamt.root_node_id)


async def read(store: Path, root: str, n: int) -> None:
    async with LocalCAS(store, read_only=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True)
        count = await hamt.len()
        if count != n:
            raise SystemExit(f"expected {n} keys under {root}, found {count}")
        for i in range(n):
            if await hamt.get(f"reading/{i}") != value_for(i):
                raise SystemExit(f"reading/{i} came back different")
        print(f"[read, {anyio_backend_name()}] {count} keys verified from root {root}")


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=LocalCAS.default_path())
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--read-root", help=argparse.SUPPRESS)  # used by the second run
    args = parser.parse_args()

    if args.read_root:
        anyio.run(read, args.store, args.read_root, args.keys, backend="trio")
        return

    root = anyio.run(write, args.store, args.keys, backend="asyncio")
    # A fresh process: nothing survives but the store file and the root CID.
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--store",
            str(args.store),
            "--keys",
            str(args.keys),
            "--read-root",
            root,
        ],
        check=True,
    )
    print(f"root CID: {root}")


if __name__ == "__main__":
    main()
