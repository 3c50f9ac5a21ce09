"""One benchmark workload in one process: prints a single JSON line of results.

Run by ``run_core.py`` in a fresh interpreter per (library, store, size, backend), so the
peak RSS it reports belongs to that workload alone. It runs under anyhamt's interpreter and
under the py-hamt venv's, so it imports each library only inside the code for that library.

    python benchmarks/_worker.py --lib anyhamt --store memory --size 20000 [--backend trio]
    python benchmarks/_worker.py --lib py-hamt --store memory --size 20000
    python benchmarks/_worker.py --lib py-hamt --store local --size 20000

``--store local`` is anyhamt's ``LocalCAS`` (one SQLite file in a temp directory) for both
libraries. py-hamt has no local store of its own, so its HAMT gets ``LocalCAS`` through an
adapter that subclasses py-hamt's ``ContentAddressedStore`` and forwards ``save``/``load`` to
LocalCAS's public API (CIDs in and out, the kind of ids py-hamt gets from Kubo); that needs
anyhamt installed in py-hamt's venv, which ``run_core.py`` arranges.

The phases, in order, all in this process and on the same store:

1. insert ``size`` keys one after another, then ``make_read_only()``;
2. a new read-only HAMT on the root (empty node cache): get every key in order;
3. another new read-only HAMT, reading through a store wrapper that yields to the event
   loop on every load: ``--concurrency`` tasks get every key, pulling indices from one
   shared iterator;
4. another new read-only HAMT: iterate ``keys()``;
5. peak RSS (``ru_maxrss``).

Every value read is compared with the value written, inside the timed loops, with the same
code for both libraries; any mismatch makes the worker exit non-zero.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

VALUE_SIZE = 100


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _peak_rss_kib() -> int:
    # Linux reports ru_maxrss in KiB; macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


class CheckFailed(Exception):
    pass


# -- store wrappers that yield to the event loop on every load ---------------------------


def yielding_anyhamt_store(inner: Any) -> Any:
    import sniffio

    import anyhamt

    # The backend's own yield, as py-hamt's wrapper uses asyncio's: the wrapper stands in
    # for a network store, and its cost should not be anyio's dispatch on one side only.
    if sniffio.current_async_library() == "trio":
        import trio

        checkpoint = trio.lowlevel.checkpoint
    else:
        import asyncio

        async def checkpoint() -> None:
            await asyncio.sleep(0)

    from anyhamt.testing import WrapperCAS

    class YieldingCAS(WrapperCAS):
        """Forwards to ``inner`` after a checkpoint, as a network store would yield."""

        async def before(self, operation: str, id: Any = None) -> None:
            if operation != "flush":
                await checkpoint()

        # Saves one block at a time, each yielding, as a network store without batching.
        _save_many = anyhamt.ContentAddressedStore._save_many

    return YieldingCAS(inner)


def yielding_pyhamt_store(inner: Any) -> Any:
    import asyncio

    import py_hamt

    class YieldingCAS(py_hamt.ContentAddressedStore):
        """Forwards to ``inner`` after ``asyncio.sleep(0)`` (py-hamt is asyncio-only)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def save(self, data: bytes, codec: Any) -> Any:
            await asyncio.sleep(0)
            return await self.inner.save(data, codec)

        async def load(
            self,
            id: Any,
            offset: int | None = None,
            length: int | None = None,
            suffix: int | None = None,
        ) -> bytes:
            await asyncio.sleep(0)
            return await self.inner.load(id, offset=offset, length=length, suffix=suffix)

    return YieldingCAS(inner)


def pyhamt_local_store(path: str, read_only: bool = False) -> Any:
    """anyhamt's ``LocalCAS`` behind py-hamt's store interface, via LocalCAS's public API."""
    import py_hamt

    import anyhamt

    class LocalCASForPyHamt(py_hamt.ContentAddressedStore):
        """Forwards py-hamt's ``save``/``load`` to a ``LocalCAS``: CIDs out, CIDs in."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def save(self, data: bytes, codec: Any) -> Any:
            return await self.inner.save(data, codec)

        async def load(
            self,
            id: Any,
            offset: int | None = None,
            length: int | None = None,
            suffix: int | None = None,
        ) -> bytes:
            return await self.inner.load(id, offset, length, suffix)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return LocalCASForPyHamt(anyhamt.LocalCAS(path, read_only=read_only))


# -- the workload -----------------------------------------------------------------------


class Workload:
    """The phases above, written once; ``lib`` supplies the HAMT class and a task runner."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.size
        self.concurrency: int = args.concurrency
        self.results: dict[str, Any] = {}
        self.tmpdir: str | None = None
        # The values: 100 random bytes per key, the same for both libraries (same seed,
        # same CPython random). Generated up front, so RSS at start includes them.
        self.blob = random.Random(args.seed).randbytes(VALUE_SIZE * self.n)
        self.view = memoryview(self.blob)

        if args.lib == "anyhamt":
            import anyhamt

            self.HAMT = anyhamt.HAMT
            self.make_yielding = yielding_anyhamt_store
        else:
            import py_hamt

            self.HAMT = py_hamt.HAMT
            self.make_yielding = yielding_pyhamt_store

    # Stores ----------------------------------------------------------------------------

    def open_write_store(self) -> Any:
        args = self.args
        if args.store == "memory":
            if args.lib == "anyhamt":
                import anyhamt

                return anyhamt.InMemoryCAS()
            import py_hamt

            return py_hamt.InMemoryCAS()
        self.tmpdir = tempfile.mkdtemp(prefix=f"{args.lib}-bench-", dir=args.tmpdir)
        self.db_path = os.path.join(self.tmpdir, "blocks.sqlite3")
        return self.open_local(read_only=False)

    def open_local(self, read_only: bool) -> Any:
        if self.args.lib == "anyhamt":
            import anyhamt

            return anyhamt.LocalCAS(self.db_path, read_only=read_only)
        return pyhamt_local_store(self.db_path, read_only=read_only)

    async def reopen_store(self, cas: Any) -> Any:
        """The store the read phases use: the same dict, or the SQLite file reopened."""
        if self.args.store == "memory":
            return cas
        await cas.aclose()
        self.results["db_bytes"] = self._db_bytes()
        return self.open_local(read_only=True)

    def _db_bytes(self) -> int:
        assert self.tmpdir is not None
        return sum(os.path.getsize(os.path.join(self.tmpdir, f)) for f in os.listdir(self.tmpdir))

    async def close_store(self, cas: Any) -> None:
        if self.args.store == "local":
            await cas.aclose()

    async def read_hamt(self, cas: Any, root: Any) -> Any:
        return await self.HAMT.build(
            cas=cas, root_node_id=root, read_only=True, values_are_bytes=True
        )

    # Phases ----------------------------------------------------------------------------

    async def run(self, run_concurrently: Any) -> dict[str, Any]:
        res = self.results
        res["rss_start_kib"] = _peak_rss_kib()
        cas = self.open_write_store()
        # Each phase is its own method, so its HAMT (and node cache) is dropped on return;
        # gc.collect() (untimed) frees it even when it sits in reference cycles.
        root = await self.insert(cas)
        gc.collect()
        cas = await self.reopen_store(cas)
        await self.get_sequential(cas, root)
        gc.collect()
        await self.get_concurrent(cas, root, run_concurrently)
        gc.collect()
        await self.iterate_keys(cas, root)
        await self.close_store(cas)
        res["rss_peak_kib"] = _peak_rss_kib()
        return res

    async def insert(self, cas: Any) -> Any:
        """Phase 1: set every key, then make_read_only; returns the root."""
        n, blob, res = self.n, self.blob, self.results
        hamt = await self.HAMT.build(cas=cas, values_are_bytes=True)
        t0 = time.perf_counter()
        for i in range(n):
            o = i * VALUE_SIZE
            await hamt.set(f"key-{i}", blob[o : o + VALUE_SIZE])
        t1 = time.perf_counter()
        await hamt.make_read_only()
        t2 = time.perf_counter()
        root = hamt.root_node_id
        res["set_s"] = t1 - t0
        res["make_read_only_s"] = t2 - t1
        res["insert_s"] = t2 - t0
        res["insert_per_s"] = n / (t2 - t0)
        res["root"] = root.hex() if isinstance(root, bytes) else str(root)
        return root

    async def get_sequential(self, cas: Any, root: Any) -> None:
        """Phase 2: get every key in order from a new read-only HAMT."""
        n, view, res = self.n, self.view, self.results
        hamt = await self.read_hamt(cas, root)
        bad = 0
        t0 = time.perf_counter()
        for i in range(n):
            o = i * VALUE_SIZE
            if await hamt.get(f"key-{i}") != view[o : o + VALUE_SIZE]:
                bad += 1
        t1 = time.perf_counter()
        if bad:
            raise CheckFailed(f"sequential get: {bad} of {n} values differ from those written")
        res["get_s"] = t1 - t0
        res["get_per_s"] = n / (t1 - t0)

    async def get_concurrent(self, cas: Any, root: Any, run_concurrently: Any) -> None:
        """Phase 3: many tasks get every key through a store that yields on each load."""
        n, view, res = self.n, self.view, self.results
        hamt = await self.read_hamt(self.make_yielding(cas), root)
        get = hamt.get
        indices = iter(range(n))
        mismatches = [0]

        async def getter() -> None:
            for i in indices:
                o = i * VALUE_SIZE
                if await get(f"key-{i}") != view[o : o + VALUE_SIZE]:
                    mismatches[0] += 1

        t0 = time.perf_counter()
        await run_concurrently(getter, self.concurrency)
        t1 = time.perf_counter()
        if mismatches[0]:
            raise CheckFailed(f"concurrent get: {mismatches[0]} of {n} values differ")
        res["cget_s"] = t1 - t0
        res["cget_per_s"] = n / (t1 - t0)

    async def iterate_keys(self, cas: Any, root: Any) -> None:
        """Phase 4: iterate keys() of a new read-only HAMT; every key exactly once."""
        n, res = self.n, self.results
        hamt = await self.read_hamt(cas, root)
        keys = []
        append = keys.append
        t0 = time.perf_counter()
        async for key in hamt.keys():
            append(key)
        t1 = time.perf_counter()
        seen = bytearray(n)
        for key in keys:
            i = int(key[4:])
            if seen[i]:
                raise CheckFailed(f"keys(): {key!r} came twice")
            seen[i] = 1
        if len(keys) != n:
            raise CheckFailed(f"keys(): {len(keys)} keys, expected {n}")
        res["keys_s"] = t1 - t0
        res["keys_per_s"] = n / (t1 - t0)

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=["anyhamt", "py-hamt"], required=True)
    parser.add_argument("--store", choices=["memory", "local"], required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--tmpdir", default=None, help="where the local store's file goes")
    args = parser.parse_args()
    if args.lib == "py-hamt" and args.backend != "asyncio":
        parser.error("py-hamt runs on asyncio only")

    info: dict[str, Any] = {
        "lib": args.lib,
        "store": args.store,
        "n": args.size,
        "backend": args.backend,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "executable": sys.executable,
        "lib_version": _version("anyhamt" if args.lib == "anyhamt" else "py-hamt"),
        # The store's library, for py-hamt on LocalCAS.
        "store_lib_version": _version("anyhamt") if args.store == "local" else None,
        "anyio_version": _version("anyio"),
        "trio_version": _version("trio") if args.backend == "trio" else None,
    }

    workload = Workload(args)
    try:
        if args.lib == "anyhamt":
            import anyio

            async def run_concurrently(fn: Any, count: int) -> None:
                async with anyio.create_task_group() as tg:
                    for _ in range(count):
                        tg.start_soon(fn)

            results = anyio.run(workload.run, run_concurrently, backend=args.backend)
        else:
            import asyncio

            async def run_concurrently(fn: Any, count: int) -> None:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(count):
                        tg.create_task(fn())

            results = asyncio.run(workload.run(run_concurrently))
    except CheckFailed as exc:
        print(json.dumps({**info, "ok": False, "error": str(exc)}), flush=True)
        return 1
    finally:
        workload.cleanup()
    print(json.dumps({**info, **results, "ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
