"""One sharded-store benchmark workload in one fresh process: prints one JSON line.

Run by ``run_sharded.py``, once per (library, layout, store, round), under anyhamt's
interpreter (``--lib anyhamt``, ``--lib zarr``) or py-hamt 3.6.0's venv (``--lib py-hamt``,
with the zarr py-hamt pins). The dataset, the checks and the two timed phases are
``_zarr_worker.py``'s (``Workload``); only the stores differ:

* ``--lib anyhamt|py-hamt --layout v1|v2``: the library's ``ShardedZarrStore`` with
  ``--chunks-per-shard`` chunks per shard. **write** = ``to_zarr`` + ``await store.flush()``
  (the root is known only then); **read** = a new read-only store on the root (empty shard
  cache; a new Kubo client), ``open_zarr`` and ``temp.mean().compute()``.
  v1 is opened with the dataset's shape and chunk shape (the format needs them); v2 with
  ``chunks_per_shard`` only, and the dataset goes in group ``0`` for every library
  (py-hamt's v2 refuses writes outside a group).
* ``--lib zarr --layout codec``: zarr's own ``ShardingCodec`` (xarray encoding ``shards=``,
  shards of ``--chunks-per-shard`` chunks taken along time first) on ``MemoryStore`` or
  ``LocalStore``; ``--lib zarr --layout v1|v2``: no sharding, the same xarray calls as the
  sharded cells of that layout (the floor).

Stores: ``memory`` is anyhamt's ``InMemoryCAS``; py-hamt's sharded store cannot run on
py-hamt's own ``InMemoryCAS`` (its shards hold ``multiformats.CID`` objects, and that store
returns raw hash bytes), so py-hamt runs on ``CIDMemoryCAS`` below: a dict behind py-hamt's
``ContentAddressedStore`` interface whose ``save`` returns a CIDv1 (blake3) as Kubo's does.
``kubo`` is each library's ``KuboCAS`` on the daemon at ``--rpc``/``--gateway``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _zarr_worker import VARIABLE, CheckFailed, Workload, _ints, _version

V2_GROUP = "0"


def shard_shape(shape: tuple[int, ...], chunks: tuple[int, ...], per_shard: int) -> tuple[int, ...]:
    """A shard shape of ``per_shard`` chunks: whole trailing dimensions of the chunk grid
    first (as a C-order index groups them), then as many leading chunks as fit."""
    grid = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    counts = [1] * len(grid)
    left = per_shard
    for dim in reversed(range(len(grid))):
        take = min(grid[dim], left)
        while left % take:
            take -= 1
        counts[dim] = take
        left //= take
    if left != 1:
        raise SystemExit(f"cannot make shards of {per_shard} chunks from grid {grid}")
    return tuple(n * c for n, c in zip(counts, chunks, strict=True))


class ShardedWorkload(Workload):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.group = V2_GROUP if args.layout == "v2" else None
        if args.layout == "codec":
            shards = shard_shape(self.data.shape, _ints(args.chunks), args.chunks_per_shard)
            self.encoding = {VARIABLE: {"chunks": _ints(args.chunks), "shards": shards}}
            self.results["shards"] = list(shards)

    def write(self, store: Any) -> None:
        self.ds.to_zarr(
            store=store, mode="w", encoding=self.encoding, consolidated=True, group=self.group
        )

    def read(self, store: Any) -> None:
        import xarray as xr

        # v2 in a group: both libraries drop the root's consolidated metadata (py-hamt's
        # format rule), so zarr reads the group's metadata documents instead.
        consolidated = None if self.group is not None else True
        ds = xr.open_zarr(
            store, chunks=self.read_chunks, consolidated=consolidated, group=self.group
        )
        mean = float(ds[VARIABLE].mean().compute())
        self.results["mean"] = mean
        if not abs(mean - self.expected_mean) <= 1e-5 * abs(self.expected_mean):
            raise CheckFailed(f"mean read back {mean!r}, expected {self.expected_mean!r}")
        self.ds_read = ds

    # zarr's own stores (--lib zarr): Workload.run_zarr, with this class's write() and
    # read(): --layout codec is zarr's ShardingCodec; v1/v2 no sharding, the same xarray
    # calls as that layout's sharded cells (v2: group 0), the floor.

    # -- the sharded stores: the same code for anyhamt and py-hamt ---------------------------

    async def run_sharded(self, lib: Any, to_thread: Any) -> None:
        args = self.args
        cas = self.open_cas(lib)
        geometry: dict[str, Any] = {"chunks_per_shard": args.chunks_per_shard}
        if args.layout == "v1":
            geometry.update(
                array_shape=self.data.shape,
                chunk_shape=_ints(args.chunks),
                manifest_version="sharded_zarr_v1",
            )
        else:
            geometry["manifest_version"] = "sharded_zarr_v2"
        start = time.perf_counter()
        store = await lib.ShardedZarrStore.open(cas=cas, read_only=False, **geometry)
        await to_thread(self.write, store)
        flushing = time.perf_counter()
        root = await store.flush()
        self.timed("write", start)
        self.timed("flush", flushing)
        self.results["root"] = root.hex() if isinstance(root, bytes) else str(root)
        if args.store != "memory":
            await self.close_cas(cas)
            cas = self.open_cas(lib)
        del store

        start = time.perf_counter()
        reader = await lib.ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
        await to_thread(self.read, reader)
        self.timed("read", start)
        await to_thread(self.check_slice)
        await self.close_cas(cas)

    def open_cas(self, lib: Any, read_only: bool = False) -> Any:
        if self.args.store == "memory":
            return lib.MemoryCAS()
        if self.args.store == "kubo":
            return lib.KuboCAS(rpc_base_url=self.args.rpc, gateway_base_url=self.args.gateway)
        raise SystemExit("the sharded stores run on --store memory or kubo")

    async def close_cas(self, cas: Any, keep: bool = False) -> None:
        if hasattr(cas, "aclose"):
            await cas.aclose()


def _anyhamt_lib() -> Any:
    import types

    import anyhamt
    from anyhamt.zarr import ShardedZarrStore

    return types.SimpleNamespace(
        MemoryCAS=anyhamt.InMemoryCAS, KuboCAS=anyhamt.KuboCAS, ShardedZarrStore=ShardedZarrStore
    )


def _pyhamt_lib() -> Any:
    import types

    import py_hamt  # type: ignore[import-not-found]  # only in py-hamt's venv
    from multiformats import CID, multihash
    from py_hamt.sharded_zarr_store import ShardedZarrStore  # type: ignore[import-not-found]
    from py_hamt.store_httpx import _slice_requested_range  # type: ignore[import-not-found]

    class CIDMemoryCAS(py_hamt.ContentAddressedStore):  # type: ignore[misc]
        """A dict of blocks that hands out CIDs, as py-hamt's sharded store needs (its
        own InMemoryCAS returns hash bytes, which that store cannot keep in a shard)."""

        def __init__(self) -> None:
            self.blocks: dict[bytes, bytes] = {}

        async def save(self, data: bytes, codec: Any) -> Any:
            digest = multihash.digest(data, "blake3", size=32)
            self.blocks[bytes(digest)] = data
            return CID("base32", 1, codec, digest)

        async def load(
            self,
            id: Any,
            offset: int | None = None,
            length: int | None = None,
            suffix: int | None = None,
        ) -> bytes:
            cid = id if isinstance(id, CID) else CID.decode(str(id))
            data = self.blocks[bytes(cid.digest)]
            return bytes(_slice_requested_range(data, offset, length, suffix))

    return types.SimpleNamespace(
        MemoryCAS=CIDMemoryCAS, KuboCAS=py_hamt.KuboCAS, ShardedZarrStore=ShardedZarrStore
    )


def repeated(once: Any, results: dict[str, Any], repeat: int) -> None:
    """Run ``once()``; with ``repeat`` > 1, one untimed warm-up and then ``repeat`` timed
    runs in this process, reporting the median of each phase (and every sample)."""
    if repeat <= 1:
        once()
        return
    once()  # warm-up: imports, zarr's codec set-up, first-use caches
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        once()
        for key in ("write_s", "read_s", "flush_s"):
            if key in results:
                samples.setdefault(key, []).append(results[key])
    for key, values in samples.items():
        results[key] = statistics.median(values)
    results["samples"] = samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=["zarr", "anyhamt", "py-hamt"], required=True)
    parser.add_argument("--layout", choices=["v1", "v2", "codec"], required=True)
    parser.add_argument("--store", choices=["memory", "local", "kubo"], required=True)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--shape", default="365,180,360")
    parser.add_argument("--chunks", default="30,45,90")
    parser.add_argument("--read-chunks", default="30,45,90", help="dask chunks for the read")
    parser.add_argument("--chunks-per-shard", type=int, default=64)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--rpc")
    parser.add_argument("--gateway")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="timed runs in this process after a warm-up (1: one cold run, no warm-up)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.lib != "zarr" and args.layout == "codec":
        parser.error("--layout codec is zarr's own sharding codec: --lib zarr")

    info: dict[str, Any] = {
        "lib": args.lib,
        "layout": args.layout,
        "store": args.store,
        "backend": args.backend,
        "shape": args.shape,
        "chunks": args.chunks,
        "read_chunks": args.read_chunks,
        "chunks_per_shard": args.chunks_per_shard,
        "seed": args.seed,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "lib_version": _version(args.lib),
        "zarr_version": _version("zarr"),
        "load_start": os.getloadavg(),
    }
    workload = ShardedWorkload(args)
    try:
        if args.lib == "zarr":
            once = workload.run_zarr
        elif args.lib == "anyhamt":
            import anyio
            import anyio.to_thread

            lib = _anyhamt_lib()

            def once() -> None:
                anyio.run(workload.run_sharded, lib, anyio.to_thread.run_sync, backend=args.backend)
        else:
            import asyncio

            lib = _pyhamt_lib()

            def once() -> None:
                asyncio.run(workload.run_sharded(lib, asyncio.to_thread))

        repeated(once, workload.results, args.repeat)
    except CheckFailed as exc:
        print(json.dumps({**info, "ok": False, "error": str(exc)}), flush=True)
        return 1
    finally:
        workload.cleanup()
    info["load_end"] = os.getloadavg()
    print(json.dumps({**info, **workload.results, "ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
