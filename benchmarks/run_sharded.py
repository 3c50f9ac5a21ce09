"""Sharded Zarr store benchmark: anyhamt vs zarr's stores and codec vs py-hamt 3.6.0.

anyhamt's ShardedZarrStore against zarr's own stores, zarr's sharding codec and py-hamt
3.6.0's ShardedZarrStore, in one run.

    python benchmarks/run_sharded.py [--rounds 3] [--parts memory,codec,kubo]
                                     [--out benchmarks/results/sharded.md]

Every cell runs in a fresh process (``_sharded_worker.py``; the HAMT store through
``_zarr_worker.py``, exactly as ``run_zarr.py`` runs it). Parts:

* ``memory``: 365x180x360 float32 in chunks of 30x45x90 (95 MB, 208 chunks), 64 chunks per
  shard, formats v1 and v2: anyhamt on ``InMemoryCAS``, py-hamt on a dict-backed store that
  returns CIDs (its sharded store cannot use its own ``InMemoryCAS``), zarr's
  ``MemoryStore`` without sharding making the same xarray calls (the floor).
* ``codec``: zarr's own ``ShardingCodec`` (64 chunks per shard) on ``MemoryStore`` and
  ``LocalStore``, the same data.
* ``kubo``: one throwaway offline daemon; the same shape in 3,700 chunks of 10x18x36, read
  cold with dask chunks 73x180x360: anyhamt's sharded store (v2), anyhamt's HAMT store,
  py-hamt's sharded store (v2). Each library writes data of its own (a seed per cell and
  round), so none finds its blocks already stored.

Medians of ``--rounds`` rounds (``--kubo-rounds`` for the Kubo part), the order of the cells
rotated each round; the load average is recorded before and after each part. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run_zarr import (  # noqa: E402
    BIG_CHUNKS,
    SHAPE,
    SMALL_CHUNKS,
    _git_head,
    _loadavg,
    _version,
    _warm_up,
    ensure_pyhamt_venv,
    log,
    run_worker,
)

SHARDED_WORKER = HERE / "_sharded_worker.py"
ZARR_WORKER = HERE / "_zarr_worker.py"
PER_SHARD = 64


class Cell:
    """One column of a table: its runs over the rounds."""

    def __init__(self, label: str, python: str, worker: Path, *args: str) -> None:
        self.label = label
        self.python = python
        self.worker = worker
        self.args = list(args)
        self.runs: list[dict[str, Any]] = []

    def run(self, *more: str, timeout: float) -> dict[str, Any]:
        log(f"  {self.label} ...")
        result = run_worker(self.python, *self.args, *more, timeout=timeout, worker=self.worker)
        if result.get("ok"):
            log(f"    write {result['write_s']:.2f} s, read {result['read_s']:.2f} s")
        else:
            log(f"    FAILED: {result.get('error')}")
        self.runs.append(result)
        return result

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.get("ok") for r in self.runs)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get("ok") and key in r]
        return statistics.median(values) if values else None

    def rate(self, phase: str) -> float | None:
        """MB/s of array data from the median seconds."""
        seconds, nbytes = self.median(f"{phase}_s"), self.median("nbytes")
        return None if seconds is None or not nbytes else nbytes / seconds / 1e6


def rotate(cells: list[Cell], rounds: int, timeout: float) -> None:
    for round_ in range(rounds):
        log(f"round {round_ + 1}/{rounds}")
        shift = round_ % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            cell.run(timeout=timeout)


def run_kubo(cells: dict[str, Cell], rounds: int, timeout: float) -> None:
    from tests.kubo._daemon import KuboDaemon, find_kubo_binary

    binary = find_kubo_binary()
    if binary is None:
        raise SystemExit("no Kubo binary: run scripts/install-kubo.sh or set ANYHAMT_KUBO_BIN")
    with KuboDaemon(binary) as daemon:
        urls = ("--rpc", daemon.rpc_url, "--gateway", daemon.gateway_url)
        _warm_up(daemon.rpc_url)
        names = list(cells)
        for round_ in range(rounds):
            log(f"round {round_ + 1}/{rounds}")
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                seed = str(3000 + 100 * names.index(name) + round_)
                cells[name].run(*urls, "--seed", seed, timeout=timeout)


# -- report --------------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def report(parts: dict[str, dict[str, Cell]], loads: dict[str, tuple[str, str]], args: Any) -> str:
    out: list[str] = []
    targets: list[str] = []

    def check(name: str, value: float | None, target: float) -> None:
        met = value is not None and value >= target
        targets.append(
            f"| {name} | {_fmt(value, '{:.2f}x')} ({'met' if met else 'MISSED'}, "
            f"target >= {target}x) |"
        )

    x = "{:.2f}x"
    out.append("# Sharded Zarr store: anyhamt vs zarr's own stores vs py-hamt 3.6.0\n")
    out.append(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, anyhamt at {_git_head()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"(py-hamt: its own venv, Python 3.12, zarr 3.0.9), zarr {_version('zarr')}, "
        f"xarray {_version('xarray')}, dask {_version('dask')}; "
        f"median of {args.rounds} fresh processes per cell"
        + (f" ({args.kubo_rounds} for Kubo)" if args.kubo_rounds else "")
        + ", cells rotated each round"
        + (
            f"; in the memory and codec parts each process times {args.repeat} runs after "
            "an untimed warm-up and reports their median (a cold write of 95 MB takes "
            "~0.45 s and its time varies by 25% between processes)"
            if args.repeat > 1
            else ""
        )
        + ".\n"
    )
    out.append(f"Command: `{' '.join(['python', *sys.argv])}`\n")
    out.append("Load average (1, 5, 15 min) before / after each part:\n")
    for part, (before, after) in loads.items():
        out.append(f"- {part}: {before} / {after}")
    out.append("")
    big = f"{SHAPE.replace(',', 'x')} float32, chunks {BIG_CHUNKS.replace(',', 'x')}"

    if "memory" in parts:
        cells = parts["memory"]
        out.append(f"## {big} (95 MB, 208 chunks), {PER_SHARD} chunks per shard: MB/s\n")
        out.append(
            "| format | phase | zarr MemoryStore (floor) | anyhamt | py-hamt 3.6.0 "
            "| anyhamt / floor | anyhamt / py-hamt | py-hamt / floor |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for layout in ("v1", "v2"):
            floor = cells[f"floor-{layout}"]
            ours, theirs = cells[f"anyhamt-{layout}"], cells.get(f"py-hamt-{layout}")
            for phase in ("write", "read"):
                f, a = floor.rate(phase), ours.rate(phase)
                p = theirs.rate(phase) if theirs else None
                out.append(
                    f"| sharded_zarr_{layout} | {phase} | {_fmt(f)} | {_fmt(a)} | {_fmt(p)} "
                    f"| {_fmt(_ratio(a, f), x)} | {_fmt(_ratio(a, p), x)} "
                    f"| {_fmt(_ratio(p, f), x)} |"
                )
                check(f"InMemoryCAS {layout} {phase} >= 0.9x MemoryStore", _ratio(a, f), 0.9)
        flushes = ", ".join(
            f"{name} {_fmt(cells[name].median('flush_s'), '{:.3f}')} s"
            for name in cells
            if not name.startswith("floor")
        )
        out.append(f"\nMedian seconds of `flush()` alone, inside write: {flushes}.")
        out.append(
            "\nwrite = `to_zarr` + `await store.flush()` (zarr: `to_zarr`); read = a new "
            "read-only store on the root, `open_zarr` (dask chunks 30x45x90) and "
            "`temp.mean().compute()`. anyhamt runs on its `InMemoryCAS`. py-hamt's sharded "
            "store fails on py-hamt's own `InMemoryCAS` (it needs ids that are CIDs), so it "
            "runs on a minimal dict-backed store inside its worker whose `save` returns a "
            "blake3 CIDv1 and whose `load` looks the CID's multihash up: no I/O, as close "
            "to py-hamt's InMemoryCAS as its sharded store allows. py-hamt runs on the zarr "
            "it pins (3.0.9). v2 writes go to group `0` for both libraries (py-hamt's v2 "
            "refuses writes outside a group) and read with `consolidated=None` (both drop "
            "the root's consolidated metadata once every array sits in a group); v1 and the "
            "floor use consolidated metadata. The floor of each format is zarr's "
            "`MemoryStore` without sharding making the same xarray calls (v1: no group; v2: "
            "group `0`, read with `consolidated=None`, where it finds zarr's consolidated "
            "metadata).\n"
        )

    if "codec" in parts:
        cells = parts["codec"]
        shards = next((r.get("shards") for r in cells["codec-memory"].runs if r.get("ok")), None)
        shard_text = "x".join(map(str, shards)) if shards else "?"
        out.append(
            f"## zarr's own ShardingCodec, {big}, shards {shard_text} "
            f"({PER_SHARD} chunks each): MB/s\n"
        )
        out.append(
            "| store | phase | zarr, no sharding | zarr ShardingCodec | anyhamt sharded v2 "
            "| codec / no sharding | anyhamt v2 / codec |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|")
        mem = parts.get("memory", {})
        for store, plain in (("MemoryStore", mem.get("floor-v1")), ("LocalStore", None)):
            codec = cells[f"codec-{store[:-5].lower()}"]
            mine = mem.get("anyhamt-v2") if store == "MemoryStore" else None
            for phase in ("write", "read"):
                p = plain.rate(phase) if plain else None
                c = codec.rate(phase)
                a = mine.rate(phase) if mine else None
                out.append(
                    f"| {store} | {phase} | {_fmt(p)} | {_fmt(c)} | {_fmt(a)} "
                    f"| {_fmt(_ratio(c, p), x)} | {_fmt(_ratio(a, c), x)} |"
                )
        out.append(
            "\nThe codec packs 64 encoded chunks and an index into one stored object per "
            "shard; a read of one chunk is a byte-range read of that object. The "
            "no-sharding column is the memory part's v1 floor (the same calls: no group, "
            "consolidated metadata); the anyhamt column is the memory part's v2 cell "
            "(`InMemoryCAS`, group `0`).\n"
        )

    if "kubo" in parts:
        cells = parts["kubo"]
        out.append(
            f"## Kubo: {SHAPE.replace(',', 'x')} float32, chunks "
            f"{SMALL_CHUNKS.replace(',', 'x')} (3,700 chunks), {PER_SHARD} chunks per shard, "
            f"read cold with dask chunks {args.kubo_read_chunks.replace(',', 'x')}: "
            "seconds (lower is better)\n"
        )
        ours, hamt, theirs = cells["anyhamt-v2"], cells["anyhamt-hamt"], cells.get("py-hamt-v2")
        out.append(
            "| phase | anyhamt sharded v2 | anyhamt HAMT | py-hamt 3.6.0 sharded v2 "
            "| sharded vs HAMT | sharded vs py-hamt sharded |"
        )
        out.append("|---|---:|---:|---:|---:|---:|")
        s2 = "{:.2f}"
        for phase, label in (("write", "write + flush"), ("read", "cold read: open_zarr + mean")):
            a, h = ours.median(f"{phase}_s"), hamt.median(f"{phase}_s")
            p = theirs.median(f"{phase}_s") if theirs else None
            out.append(
                f"| {label} | {_fmt(a, s2)} | {_fmt(h, s2)} | {_fmt(p, s2)} "
                f"| {_fmt(_ratio(h, a), x)} | {_fmt(_ratio(p, a), x)} |"
            )
            if phase == "read":
                check("Kubo cold read, sharded >= 2x py-hamt's sharded", _ratio(p, a), 2)
        out.append(
            "\nEach cell is a fresh process with a new Kubo client: the read opens a new "
            "read-only store on the root the same process wrote (the HAMT store: "
            "`make_read_only()` instead of `flush()`, a new read-only HAMT; as in "
            "`run_zarr.py`). Ratios are the other's seconds / anyhamt sharded's. The "
            "HAMT store uses consolidated metadata; the sharded stores write to group `0` "
            "and read the group's metadata documents (see above).\n"
        )

    out.append("## Targets\n")
    out.append("| target | this run |")
    out.append("|---|---|")
    out.extend(targets)
    out.append("")
    failures = [
        f"- {cell.label}: {run.get('error')}"
        for cells in parts.values()
        for cell in cells.values()
        for run in cell.runs
        if not run.get("ok")
    ]
    if failures:
        out.append("## Failed runs\n")
        out.extend(failures)
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="memory,codec,kubo")
    parser.add_argument("--skip-pyhamt", action="store_true")
    parser.add_argument("--pyhamt-python", help="an interpreter with py-hamt, xarray, dask")
    parser.add_argument("--kubo-rounds", type=int, help="rounds of the kubo part (--rounds)")
    parser.add_argument(
        "--repeat", type=int, default=5,
        help="memory and codec parts: timed runs per process after a warm-up (1: one cold run)",
    )  # fmt: skip
    parser.add_argument("--kubo-read-chunks", default="73,180,360")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(HERE / "results" / "sharded.md"))
    args = parser.parse_args()
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]

    here = sys.executable
    pyhamt = None if args.skip_pyhamt else (args.pyhamt_python or ensure_pyhamt_venv())
    cps = ("--chunks-per-shard", str(PER_SHARD))
    warm = ("--repeat", str(args.repeat))  # not for Kubo: its reads are cold by design
    big = ("--shape", SHAPE, "--chunks", BIG_CHUNKS, "--read-chunks", BIG_CHUNKS)
    parts: dict[str, dict[str, Cell]] = {}
    loads: dict[str, tuple[str, str]] = {}

    def timed_part(name: str, cells: dict[str, Cell], run: Any) -> None:
        log(f"== {name}")
        before = _loadavg()
        run(cells)
        loads[name] = (before, _loadavg())
        parts[name] = cells

    if "memory" in wanted:
        cells = {}
        for layout in ("v1", "v2"):
            common: tuple[str, ...] = ("--layout", layout, "--store", "memory", *big, *cps, *warm)
            floor = f"zarr MemoryStore ({layout} calls)"
            cells[f"floor-{layout}"] = Cell(floor, here, SHARDED_WORKER, "--lib", "zarr", *common)
            ours = ("--lib", "anyhamt", *common)
            cells[f"anyhamt-{layout}"] = Cell(
                f"anyhamt sharded {layout}", here, SHARDED_WORKER, *ours
            )
            if pyhamt:
                theirs = ("--lib", "py-hamt", *common)
                label = f"py-hamt sharded {layout}"
                cells[f"py-hamt-{layout}"] = Cell(label, pyhamt, SHARDED_WORKER, *theirs)
        timed_part("memory", cells, lambda c: rotate(list(c.values()), args.rounds, args.timeout))

    if "codec" in wanted:
        cells = {}
        for store in ("memory", "local"):
            codec = ("--lib", "zarr", "--layout", "codec", "--store", store, *big, *cps, *warm)
            label = f"zarr ShardingCodec {store}"
            cells[f"codec-{store}"] = Cell(label, here, SHARDED_WORKER, *codec)
        timed_part("codec", cells, lambda c: rotate(list(c.values()), args.rounds, args.timeout))

    if "kubo" in wanted:
        sys.path[:0] = [str(REPO)]
        small: tuple[str, ...] = ("--shape", SHAPE, "--chunks", SMALL_CHUNKS)
        small = (*small, "--read-chunks", args.kubo_read_chunks)
        common = ("--layout", "v2", "--store", "kubo", *small, *cps)
        hamt = ("--lib", "anyhamt", "--store", "kubo", *small, "--concurrency", "32")
        cells = {
            "anyhamt-v2": Cell(
                "anyhamt sharded v2 (kubo)", here, SHARDED_WORKER, "--lib", "anyhamt", *common
            ),
            "anyhamt-hamt": Cell("anyhamt HAMT (kubo)", here, ZARR_WORKER, *hamt),
        }
        if pyhamt:
            theirs = ("--lib", "py-hamt", *common)
            cells["py-hamt-v2"] = Cell("py-hamt sharded v2 (kubo)", pyhamt, SHARDED_WORKER, *theirs)
        kubo_rounds = args.kubo_rounds or args.rounds
        timed_part("kubo", cells, lambda c: run_kubo(c, kubo_rounds, args.timeout))

    text = report(parts, loads, args)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    raw = {part: {name: cell.runs for name, cell in cells.items()} for part, cells in parts.items()}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    return 0 if all(cell.ok for cells in parts.values() for cell in cells.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
