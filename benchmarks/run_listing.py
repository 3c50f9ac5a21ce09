"""Zarr listings on a big HAMT: one scan builds the key index, then each answer costs what it
returns.

A Zarr store over a HAMT must answer ``list_prefix``/``list_dir`` (``to_zarr(mode="w")``
calls them), but HAMT keys come in hash order, so a store without an index scans the whole
map on every call. anyhamt's HAMT keeps a sorted key index, built by one walk on first use
and then kept in step by every set and delete. This prints, for a map of ``--keys`` keys
laid out like a Zarr group (4 arrays, 1000 chunk keys per row directory):

* the cost of one full scan (``hamt.keys()``), which a store without an index pays per call;
* the first listing (which builds the index);
* later listings of several sizes, in time per returned entry;
* writes through the store with the index kept current.

Run: ``python benchmarks/run_listing.py --keys 1000000`` (InMemoryCAS; absolute figures
depend on the machine, compare the ratios).
"""

from __future__ import annotations

import argparse
import os
import time

import anyio
from zarr.core.buffer import cpu

from anyhamt import HAMT, InMemoryCAS
from anyhamt.zarr import ZarrHAMTStore


async def run(n: int) -> list[tuple[str, int, float]]:
    cas = InMemoryCAS()
    writer = await HAMT.build(cas=cas, values_are_bytes=True)
    for i in range(n):
        await writer.set(f"var{i % 4}/c/{i // 4000}/{(i // 4) % 1000}", b"x")
    for k in range(4):
        await writer.set(f"var{k}/zarr.json", b"{}")
    await writer.set("zarr.json", b"{}")
    await writer.make_read_only()
    root = writer.root_node_id
    rows: list[tuple[str, int, float]] = []

    scanner = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    started = time.perf_counter()
    count = sum([1 async for _ in scanner.keys()])
    elapsed = time.perf_counter() - started
    rows.append(("full scan, hamt.keys() (a store without an index, per call)", count, elapsed))

    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    store = ZarrHAMTStore(hamt, read_only=True)
    started = time.perf_counter()
    names = [name async for name in store.list_dir("")]
    rows.append(
        ("first list_dir('') (builds the index)", len(names), time.perf_counter() - started)
    )
    for prefix in ("", "var0/", "var0/c/", "var0/c/7/"):
        started = time.perf_counter()
        names = [name async for name in store.list_dir(prefix)]
        rows.append((f"list_dir({prefix!r})", len(names), time.perf_counter() - started))
    for prefix in ("var3/zarr.json", "var0/c/7/", "var1/c/"):
        started = time.perf_counter()
        keys = [key async for key in store.list_prefix(prefix)]
        rows.append((f"list_prefix({prefix!r})", len(keys), time.perf_counter() - started))

    await hamt.enable_write()
    writable = ZarrHAMTStore(hamt)
    started = time.perf_counter()
    for i in range(10_000):
        await writable.set(f"new/c/{i}", cpu.Buffer.from_bytes(b"y"))
    rows.append(("10,000 store.set, index kept current", 10_000, time.perf_counter() - started))
    started = time.perf_counter()
    keys = [key async for key in writable.list_prefix("new/")]
    rows.append(
        ("list_prefix('new/') after those writes", len(keys), time.perf_counter() - started)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="map size (default 10^6)")
    args = parser.parse_args()
    rows = anyio.run(run, args.keys)
    print(f"keys: {args.keys:,}; load average at end: {os.getloadavg()[0]:.1f}\n")
    print("| operation | entries | time (ms) | µs per entry |")
    print("|---|---:|---:|---:|")
    for name, entries, seconds in rows:
        per = seconds * 1e6 / entries if entries else float("nan")
        print(f"| {name} | {entries:,} | {seconds * 1e3:,.2f} | {per:.2f} |")


if __name__ == "__main__":
    main()
