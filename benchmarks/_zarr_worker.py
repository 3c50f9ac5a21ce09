"""One Zarr benchmark workload in one fresh process: prints a single JSON line of results.

Run by ``run_zarr.py``, once per (library, store, round). It runs under anyhamt's
interpreter (``--lib zarr``, ``anyhamt``, ``gateway``) and under py-hamt 3.6.0's venv
(``--lib py-hamt``, with the zarr that py-hamt pins), so at top level it imports only the
stdlib, numpy, pandas and xarray; each library is imported inside its own code.

    python benchmarks/_zarr_worker.py --lib zarr --store memory
    python benchmarks/_zarr_worker.py --lib anyhamt --store local [--backend trio]
    python benchmarks/_zarr_worker.py --lib py-hamt --store kubo --rpc URL --gateway URL
    python benchmarks/_zarr_worker.py --lib gateway --store kubo --gateway URL --root CID

The dataset: one float32 variable ``temp`` (time, lat, lon), random values from a fixed
seed, daily ``time`` and float ``lat``/``lon`` coordinates, written with ``to_zarr`` from
numpy arrays (zarr splits them into chunks and writes them concurrently on its own loop),
consolidated metadata. Phases, both timed:

1. **write**: ``to_zarr(mode="w")``, then for the HAMT stores ``make_read_only()`` (which
   makes every block durable): the root is known only then;
2. **read**: a new store on the root (a new read-only HAMT with an empty node cache; a new
   ``LocalCAS``/``KuboCAS`` client, so nothing is cached in the process), ``open_zarr``
   with ``--read-chunks`` dask chunks, ``temp.mean().compute()`` on dask's threaded
   scheduler.

On Kubo a third phase, **fetch**, times the store's own path without zarr, for comparison
with the plain-GET floor: a new client and read-only HAMT, ``keys()``, then ``get()`` of
every value with ``--concurrency`` tasks.

The mean read back must equal numpy's mean of the data written (relative 1e-5: dask and
numpy sum in different orders), and one slice read back untimed must equal the data.

The HAMT libraries run their xarray calls off the event loop thread
(``to_thread.run_sync``), the pattern both document for applications; store methods then
run on zarr's own asyncio thread.

``--lib gateway`` is the floor for a cold read from Kubo: it walks the HAMT at ``--root``
(untimed) to list every block a full read needs (nodes, metadata and chunk values), then
fetches all of them with plain concurrent HTTP GETs (``?format=raw``) on one httpx client,
``--concurrency`` in flight, with no hashing and no decoding. Timed: the fetches only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

import numpy as np
from _common import GatewayAnswerError, fetch_plain

VARIABLE = "temp"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def make_data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    # Uniform random float32: zstd gains almost nothing on it, as on real measurements'
    # mantissas, so every store moves about the raw 4 bytes per value.
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def make_dataset(data: np.ndarray) -> Any:
    import pandas as pd
    import xarray as xr

    nt, ny, nx = data.shape
    return xr.Dataset(
        {VARIABLE: (("time", "lat", "lon"), data, {"units": "K", "long_name": "temperature"})},
        coords={
            "time": pd.date_range("2000-01-01", periods=nt, freq="D"),
            "lat": np.linspace(-89.5, 89.5, ny),
            "lon": np.linspace(-179.5, 179.5, nx),
        },
        attrs={"title": "anyhamt zarr benchmark"},
    )


class CheckFailed(Exception):
    pass


class Workload:
    """The write and read phases, the same for every library; ``args.lib`` picks stores."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = make_data(_ints(args.shape), args.seed)
        self.ds = make_dataset(self.data)
        self.encoding = {VARIABLE: {"chunks": _ints(args.chunks)}}
        self.read_chunks = dict(zip(("time", "lat", "lon"), _ints(args.read_chunks), strict=True))
        self.expected_mean = float(self.data.mean(dtype=np.float64))
        self.results: dict[str, Any] = {"nbytes": int(self.data.nbytes)}
        self.tmpdir = tempfile.mkdtemp(prefix=f"zarr-bench-{args.lib}-", dir=args.tmpdir)

    # -- the two xarray calls, run off the event loop thread by the async libraries ------

    def write(self, store: Any) -> None:
        self.ds.to_zarr(store=store, mode="w", encoding=self.encoding, consolidated=True)

    def read(self, store: Any) -> None:
        import xarray as xr

        ds = xr.open_zarr(store, chunks=self.read_chunks, consolidated=True)
        mean = float(ds[VARIABLE].mean().compute())
        self.results["mean"] = mean
        if not np.isclose(mean, self.expected_mean, rtol=1e-5, atol=0):
            raise CheckFailed(f"mean read back {mean!r}, expected {self.expected_mean!r}")
        self.ds_read = ds

    def check_slice(self) -> None:
        """Untimed: one time step read back equals the data written, value for value."""
        got = self.ds_read[VARIABLE].isel(time=self.data.shape[0] // 2).values
        if not np.array_equal(got, self.data[self.data.shape[0] // 2]):
            raise CheckFailed("a slice read back differs from the data written")

    def timed(self, name: str, start: float) -> None:
        self.results[f"{name}_s"] = time.perf_counter() - start

    def du(self) -> int:
        total = 0
        for root, _, files in os.walk(self.tmpdir):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total

    def cleanup(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- zarr's own stores: the floor --------------------------------------------------------

    def run_zarr(self) -> None:
        """zarr's own store (the floor): write, then read back from a read-only one."""
        import zarr.storage

        run_dir = None
        if self.args.store == "memory":
            store: Any = zarr.storage.MemoryStore()
            start = time.perf_counter()
            self.write(store)
            self.timed("write", start)
            # The same dict of buffers: a memory store has nothing else to reopen.
            start = time.perf_counter()
            self.read(zarr.storage.MemoryStore(store._store_dict, read_only=True))
            self.timed("read", start)
        elif self.args.store == "local":
            # A directory of its own per call (_sharded_worker's --repeat calls again),
            # removed once checked: a write never deletes an earlier one, and the size is
            # this run's.
            run_dir = tempfile.mkdtemp(dir=self.tmpdir)
            path = os.path.join(run_dir, "data.zarr")
            start = time.perf_counter()
            self.write(zarr.storage.LocalStore(path))
            self.timed("write", start)
            self.results["stored_bytes"] = self.du()
            start = time.perf_counter()
            self.read(zarr.storage.LocalStore(path, read_only=True))
            self.timed("read", start)
        else:
            raise SystemExit("--lib zarr has stores memory and local")
        self.check_slice()
        if run_dir is not None:
            shutil.rmtree(run_dir)

    # -- the HAMT libraries: the same code for anyhamt and py-hamt ---------------------------

    async def run_hamt(self, lib: Any, to_thread: Any, run_all: Any) -> None:
        """``lib`` has py-hamt's names: HAMT, ZarrHAMTStore, the stores; ``to_thread`` runs
        a sync callable in a worker thread; ``run_all(fn, n)`` runs ``n`` tasks of ``fn``."""
        args = self.args
        cas = self.open_cas(lib, read_only=False)
        start = time.perf_counter()
        hamt = await lib.HAMT.build(cas=cas, values_are_bytes=True)
        store = lib.ZarrHAMTStore(hamt)
        await to_thread(self.write, store)
        await hamt.make_read_only()
        self.timed("write", start)
        root = hamt.root_node_id
        self.results["root"] = root.hex() if isinstance(root, bytes) else str(root)
        self.results["keys"] = await hamt.len()
        await self.close_cas(cas, keep=args.store == "memory")
        if args.store == "local":
            self.results["stored_bytes"] = self.du()
        del hamt, store

        reader_cas = cas if args.store == "memory" else self.open_cas(lib, read_only=True)
        start = time.perf_counter()
        reader = await lib.HAMT.build(
            cas=reader_cas, root_node_id=root, read_only=True, values_are_bytes=True
        )
        await to_thread(self.read, lib.ZarrHAMTStore(reader, read_only=True))
        self.timed("read", start)
        await to_thread(self.check_slice)
        await self.close_cas(reader_cas, keep=False)
        if args.store == "kubo":
            await self.fetch_values(lib, root, run_all)

    async def fetch_values(self, lib: Any, root: Any, run_all: Any) -> None:
        """Kubo, timed apart: the store's own fetch path, comparable with the plain-GET
        floor. A new client and read-only HAMT list every key and get every value with
        ``--concurrency`` tasks; no zarr, no decoding."""
        cas = self.open_cas(lib, read_only=True)
        start = time.perf_counter()
        hamt = await lib.HAMT.build(
            cas=cas, root_node_id=root, read_only=True, values_are_bytes=True
        )
        keys = [key async for key in hamt.keys()]
        pending = iter(keys)
        fetched = [0]

        async def fetch() -> None:
            for key in pending:
                value = await hamt.get(key)
                fetched[0] += len(value)

        await run_all(fetch, self.args.concurrency)
        self.timed("fetch", start)
        self.results["fetched_bytes"] = fetched[0]
        await self.close_cas(cas, keep=False)

    def open_cas(self, lib: Any, read_only: bool) -> Any:
        args = self.args
        if args.store == "memory":
            return lib.InMemoryCAS()
        if args.store == "local":
            return lib.LocalCAS(os.path.join(self.tmpdir, "blocks.sqlite3"), read_only=read_only)
        return lib.KuboCAS(rpc_base_url=args.rpc, gateway_base_url=args.gateway)

    async def close_cas(self, cas: Any, keep: bool) -> None:
        if not keep and hasattr(cas, "aclose"):
            await cas.aclose()


async def gateway_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The floor for a cold read from Kubo: plain concurrent GETs of the same blocks.

    Timed twice, on the same list: with bare HTTP/1.1 keep-alive connections (asyncio
    streams, a request line and a ``Content-Length`` body: the floor, ``read_s``), then with
    one httpx client (``httpx_read_s``, for reference: httpx's own cost per request is
    several times the daemon's on these machines).
    """
    import httpx

    async with httpx.AsyncClient(timeout=120) as client:
        nodes, values = await _list_blocks(client, args.gateway, args.root)
    blocks = nodes + values
    results: dict[str, Any] = {"nodes": len(nodes), "values": len(values)}
    start = time.perf_counter()
    try:
        fetched = await fetch_plain(args.gateway, blocks, args.concurrency)
    except* GatewayAnswerError as group:
        raise CheckFailed(str(group.exceptions[0])) from None
    results["read_s"] = time.perf_counter() - start
    results["fetched_bytes"] = fetched

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        fetched = await _fetch_httpx(client, args.gateway, blocks, args.concurrency)
        results["httpx_read_s"] = time.perf_counter() - start
    if fetched != results["fetched_bytes"]:
        raise CheckFailed("httpx and plain GETs fetched different byte counts")
    return results


async def _fetch_httpx(client: Any, gateway: str, blocks: list[str], concurrency: int) -> int:
    import asyncio

    pending = iter(blocks)
    total = [0]

    async def fetch() -> None:
        for cid in pending:
            response = await client.get(f"{gateway}/ipfs/{cid}?format=raw")
            response.raise_for_status()
            total[0] += len(response.content)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(fetch())
    return total[0]


async def _list_blocks(client: Any, gateway: str, root: str) -> tuple[list[str], list[str]]:
    """Every node of the HAMT at ``root`` and every value it points to, as CID strings."""
    import dag_cbor
    from multiformats import CID

    nodes: list[str] = []
    values: list[str] = []
    stack = [root]
    while stack:
        cid = stack.pop()
        nodes.append(cid)
        response = await client.get(f"{gateway}/ipfs/{cid}?format=raw")
        response.raise_for_status()
        for slot in dag_cbor.decode(response.content):
            if isinstance(slot, list):
                stack.append(str(slot[0]))
            elif slot:
                for pointer in slot.values():
                    if CID.decode(str(pointer)).codec.name == "dag-pb":
                        # Only this benchmark's small chunks are supported: a UnixFS file
                        # would need its leaves listed too.
                        raise CheckFailed(f"value {pointer} is a UnixFS file")
                    values.append(str(pointer))
    return nodes, values


def _anyhamt_lib() -> Any:
    import types

    import anyhamt
    import anyhamt.zarr

    return types.SimpleNamespace(
        HAMT=anyhamt.HAMT,
        InMemoryCAS=anyhamt.InMemoryCAS,
        LocalCAS=anyhamt.LocalCAS,
        KuboCAS=anyhamt.KuboCAS,
        ZarrHAMTStore=anyhamt.zarr.ZarrHAMTStore,
    )


def _pyhamt_lib() -> Any:
    import types

    import py_hamt

    return types.SimpleNamespace(
        HAMT=py_hamt.HAMT,
        InMemoryCAS=py_hamt.InMemoryCAS,
        LocalCAS=None,  # py-hamt has no local block store
        KuboCAS=py_hamt.KuboCAS,
        ZarrHAMTStore=py_hamt.ZarrHAMTStore,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=["zarr", "anyhamt", "py-hamt", "gateway"], required=True)
    parser.add_argument("--store", choices=["memory", "local", "kubo"], required=True)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--shape", default="365,180,360")
    parser.add_argument("--chunks", default="30,45,90")
    parser.add_argument("--read-chunks", default="30,45,90", help="dask chunks for the read")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--rpc")
    parser.add_argument("--gateway")
    parser.add_argument("--root", help="--lib gateway: the HAMT root to fetch")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="kubo: GETs or gets in flight, no zarr"
    )
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    if args.lib == "py-hamt" and (args.backend != "asyncio" or args.store == "local"):
        parser.error("py-hamt runs on asyncio only and has no local store")

    info: dict[str, Any] = {
        "lib": args.lib,
        "store": args.store,
        "backend": args.backend,
        "shape": args.shape,
        "chunks": args.chunks,
        "read_chunks": args.read_chunks,
        "seed": args.seed,
        "python": platform.python_version(),
        "lib_version": _version({"zarr": "zarr", "gateway": "httpx"}.get(args.lib, args.lib)),
        "zarr_version": _version("zarr"),
        "xarray_version": _version("xarray"),
        "dask_version": _version("dask"),
        "load_start": os.getloadavg(),
    }
    workload: Workload | None = None
    try:
        if args.lib == "gateway":
            import asyncio

            results = asyncio.run(gateway_floor(args))
        else:
            workload = Workload(args)
            if args.lib == "zarr":
                workload.run_zarr()
            elif args.lib == "anyhamt":
                import anyio
                import anyio.to_thread

                async def run_all_anyio(fn: Any, count: int) -> None:
                    async with anyio.create_task_group() as tg:
                        for _ in range(count):
                            tg.start_soon(fn)

                anyio.run(
                    workload.run_hamt, _anyhamt_lib(), anyio.to_thread.run_sync, run_all_anyio,
                    backend=args.backend,
                )  # fmt: skip
            else:
                import asyncio

                async def run_all_asyncio(fn: Any, count: int) -> None:
                    async with asyncio.TaskGroup() as tg:
                        for _ in range(count):
                            tg.create_task(fn())

                asyncio.run(workload.run_hamt(_pyhamt_lib(), asyncio.to_thread, run_all_asyncio))
            results = workload.results
    except CheckFailed as exc:
        print(json.dumps({**info, "ok": False, "error": str(exc)}), flush=True)
        return 1
    finally:
        if workload is not None:
            workload.cleanup()
    info["load_end"] = os.getloadavg()
    print(json.dumps({**info, **results, "ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
