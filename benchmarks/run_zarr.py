"""Zarr through the HAMT: anyhamt against zarr's own stores and py-hamt 3.6.0, in one run.

    python benchmarks/run_zarr.py [--rounds 3] [--parts memory,local,kubo]
                                  [--backend trio] [--out benchmarks/results/zarr.md]

Every cell runs in a fresh process (``_zarr_worker.py``): ``to_zarr`` of a float32 dataset
(+ ``make_read_only`` for the HAMT stores), then a new store on the root, ``open_zarr`` and
``.mean().compute()``. Parts:

* ``memory``: zarr's ``MemoryStore`` (the floor: zarr's codec pipeline with a dict behind
  it), anyhamt on ``InMemoryCAS``, py-hamt 3.6.0 on its ``InMemoryCAS`` (its venv, the zarr
  it pins). 365x180x360, chunks 30x45x90 (95 MB, 208 chunks).
* ``local``: zarr's ``LocalStore`` (a directory of files) and anyhamt on ``LocalCAS`` (one
  SQLite file), the same dataset.
* ``kubo``: one throwaway offline Kubo daemon (tests/kubo/_daemon.py): anyhamt's and
  py-hamt's ``KuboCAS``, the same shape in many small chunks (10x18x36, 3,700 chunks of
  26 KB); and the floor for the cold read, plain concurrent HTTP GETs of every block that
  anyhamt's dataset of the same round consists of (HAMT nodes, metadata, chunks).

With ``--rounds N`` every cell runs N times, the order of the libraries rotated each round,
and the tables show medians. The load average is recorded before and after each part. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_zarr_worker.py"
PYHAMT_VERSION = "3.6.0"
DEFAULT_VENV = Path("~/.cache/anyhamt/bench-pyhamt-zarr-venv").expanduser()
# py-hamt 3.6.0 does not depend on xarray or dask; the benchmark needs both beside it.
PYHAMT_VENV_PACKAGES = [f"py-hamt=={PYHAMT_VERSION}", "xarray", "dask"]

SHAPE = "365,180,360"
BIG_CHUNKS = "30,45,90"
SMALL_CHUNKS = "10,18,36"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- py-hamt's venv ------------------------------------------------------------------------


def _venv_ready(python: Path) -> bool:
    probe = (
        "from importlib.metadata import version; import sys, xarray, dask.array; "
        f"sys.exit(0 if version('py-hamt') == {PYHAMT_VERSION!r} else 1)"
    )
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_pyhamt_venv() -> str:
    """py-hamt 3.6.0 with xarray and dask in a venv of its own (created on first use)."""
    venv = Path(os.environ.get("ANYHAMT_BENCH_ZARR_VENV") or DEFAULT_VENV).expanduser()
    python = venv / "bin" / "python"
    if python.exists() and _venv_ready(python):
        return str(python)
    sys.path.insert(0, str(HERE))
    from run_core import find_python312

    if not python.exists():
        base = find_python312()
        log(f"creating py-hamt venv at {venv} with {base}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log(f"installing {' '.join(PYHAMT_VENV_PACKAGES)} into {venv}")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PYHAMT_VENV_PACKAGES], check=True
    )
    if not _venv_ready(python):
        raise SystemExit(f"{venv} still lacks py-hamt {PYHAMT_VERSION}, xarray or dask")
    return str(python)


# -- workers -------------------------------------------------------------------------------


def run_worker(
    python: str, *worker_args: str, timeout: float, worker: Path = WORKER
) -> dict[str, Any]:
    """Run ``worker`` (default ``_zarr_worker.py``) under ``python``; its last JSON line."""
    command = [python, "-W", "ignore", str(worker), *worker_args]
    env = dict(os.environ)
    if python == sys.executable:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    else:
        env.pop("PYTHONPATH", None)  # py-hamt's venv must not see this checkout
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        return {"ok": False, "error": f"exit {done.returncode}: " + "\n".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - started
    if done.returncode != 0 and result.get("ok"):
        result.update(ok=False, error=f"exit {done.returncode}")
    return result


class Cell:
    """One (library, store) column: its runs over the rounds."""

    def __init__(self, label: str, python: str, lib: str, store: str, *extra: str) -> None:
        self.label = label
        self.python = python
        self.lib = lib
        self.store = store
        self.extra = list(extra)
        self.runs: list[dict[str, Any]] = []

    def run(self, *more: str, timeout: float) -> dict[str, Any]:
        log(f"  {self.label} ({self.store}) ...")
        result = run_worker(
            self.python, "--lib", self.lib, "--store", self.store, *self.extra, *more,
            timeout=timeout,
        )  # fmt: skip
        if not result.get("ok"):
            log(f"    FAILED: {result.get('error')}")
        else:
            log(
                f"    write {result.get('write_s', float('nan')):.2f} s,"
                f" read {result['read_s']:.2f} s"
            )
        self.runs.append(result)
        return result

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.get("ok") for r in self.runs)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get("ok") and key in r]
        return statistics.median(values) if values else None


def run_rounds(cells: list[Cell], rounds: int, timeout: float, *more: str) -> None:
    for round_ in range(rounds):
        shift = round_ % len(cells)
        log(f"round {round_ + 1}/{rounds}")
        for cell in cells[shift:] + cells[:shift]:
            cell.run(*more, timeout=timeout)


def run_kubo_rounds(
    anyhamt: Cell, pyhamt: Cell | None, floor: Cell, codec: Cell, rounds: int, timeout: float
) -> None:
    """Each library writes data of its own (a seed per library and round), so none finds
    blocks another already stored; the floor fetches the blocks of anyhamt's write of the
    same round, right after anyhamt read them. ``codec`` (zarr's MemoryStore, the same
    chunks) needs no daemon: it shows what zarr's decoding alone costs for this layout."""
    sys.path[:0] = [str(REPO)]
    from tests.kubo._daemon import KuboDaemon, find_kubo_binary

    binary = find_kubo_binary()
    if binary is None:
        raise SystemExit("no Kubo binary: run scripts/install-kubo.sh or set ANYHAMT_KUBO_BIN")
    with KuboDaemon(binary) as daemon:
        urls = ("--rpc", daemon.rpc_url, "--gateway", daemon.gateway_url)
        _warm_up(daemon.rpc_url)
        for round_ in range(rounds):
            log(f"round {round_ + 1}/{rounds}")

            def run_anyhamt(round_: int = round_) -> None:
                result = anyhamt.run(*urls, "--seed", str(1000 + round_), timeout=timeout)
                if result.get("ok"):
                    floor.run(*urls, "--root", result["root"], timeout=timeout)

            order = [run_anyhamt, lambda: codec.run(timeout=timeout)]
            if pyhamt is not None:
                order.append(
                    lambda round_=round_: pyhamt.run(
                        *urls, "--seed", str(2000 + round_), timeout=timeout
                    )
                )
            for step in order[round_ % len(order) :] + order[: round_ % len(order)]:
                step()


def _warm_up(rpc_url: str) -> None:
    """A new repo creates its block-store directories on first use; do that before any
    library runs, so that whichever runs first does not pay for it."""
    import random

    import httpx

    rng = random.Random("warm-up")
    files = [("file", ("b", rng.randbytes(26_000))) for _ in range(500)]
    with httpx.Client(timeout=120) as client:
        client.post(
            f"{rpc_url}/api/v0/block/put",
            params={"cid-codec": "raw", "mhtype": "blake3", "pin": "false"},
            files=files,
        ).raise_for_status()


# -- report --------------------------------------------------------------------------------


def _rate(cell: Cell | None, key: str) -> float | None:
    """MB/s (10^6 bytes of array data) from the median seconds."""
    if cell is None:
        return None
    seconds = cell.median(key)
    nbytes = cell.median("nbytes")
    if seconds is None or not nbytes:
        return None
    return nbytes / seconds / 1e6


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "anyhamt"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() + (" (anyhamt/ modified)" if dirty.stdout.strip() else "")


def report(
    parts: dict[str, dict[str, Cell | None]], loads: dict[str, tuple[str, str]], args: Any
) -> tuple[str, list[tuple[str, float | None, float, bool]]]:
    out: list[str] = []
    checks: list[tuple[str, float | None, float, bool]] = []

    def check(name: str, value: float | None, target: float) -> str:
        met = value is not None and value >= target
        checks.append((name, value, target, met))
        return f"{_fmt(value, '{:.2f}x')} ({'met' if met else 'MISSED'}, target >= {target}x)"

    out.append("# Zarr benchmark: anyhamt vs zarr's own stores vs py-hamt 3.6.0\n")
    out.append(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, anyhamt at {_git_head()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"(py-hamt: its own venv, Python 3.12), zarr {_version('zarr')}, "
        f"xarray {_version('xarray')}, dask {_version('dask')}; "
        f"median of {args.rounds} fresh processes per cell.\n"
    )
    out.append(f"Command: `{' '.join(['python', *sys.argv])}`\n")
    out.append("Load average (1, 5, 15 min) before / after each part:\n")
    for part, (before, after) in loads.items():
        out.append(f"- {part}: {before} / {after}")
    out.append("")

    if "memory" in parts or "local" in parts:
        out.append(
            f"## {SHAPE.replace(',', 'x')} float32, chunks {BIG_CHUNKS.replace(',', 'x')} "
            "(95 MB, 208 chunks): MB/s of array data\n"
        )
        out.append(
            "| store | phase | zarr floor | anyhamt | py-hamt 3.6.0 "
            "| anyhamt / floor | anyhamt / py-hamt | py-hamt / floor |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for part, floor_name in (("memory", "MemoryStore"), ("local", "LocalStore")):
            if part not in parts:
                continue
            cells = parts[part]
            floor, ours, theirs = cells["floor"], cells["anyhamt"], cells.get("py-hamt")
            store_name = "InMemoryCAS" if part == "memory" else "LocalCAS"
            for phase in ("write", "read"):
                f, a, p = (_rate(c, f"{phase}_s") for c in (floor, ours, theirs))
                out.append(
                    f"| {store_name} vs {floor_name} | {phase} | {_fmt(f)} | {_fmt(a)} "
                    f"| {_fmt(p)} | {_fmt(_ratio(a, f), '{:.2f}x')} "
                    f"| {_fmt(_ratio(a, p), '{:.2f}x')} | {_fmt(_ratio(p, f), '{:.2f}x')} |"
                )
            trio = cells.get("anyhamt-trio")
            if trio is not None:
                for phase in ("write", "read"):
                    f, a = _rate(floor, f"{phase}_s"), _rate(trio, f"{phase}_s")
                    out.append(
                        f"| {store_name} (anyhamt on trio) | {phase} | {_fmt(f)} | {_fmt(a)} "
                        f"| | {_fmt(_ratio(a, f), '{:.2f}x')} | | |"
                    )
        out.append("")

    if "kubo" in parts:
        cells = parts["kubo"]
        ours, theirs, floor = cells["anyhamt"], cells.get("py-hamt"), cells["floor"]
        assert ours is not None and floor is not None
        out.append(
            f"## Kubo: {SHAPE.replace(',', 'x')} float32, chunks "
            f"{SMALL_CHUNKS.replace(',', 'x')} (3,700 chunks), read with dask chunks "
            f"{args.kubo_read_chunks.replace(',', 'x')}: seconds (lower is better)\n"
        )
        codec = cells["codec"]
        assert codec is not None
        nodes, values = floor.median("nodes"), floor.median("values")
        out.append(
            "| phase | anyhamt | py-hamt 3.6.0 | plain GETs (floor) | httpx GETs "
            "| zarr MemoryStore | anyhamt vs py-hamt | anyhamt vs floor |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        aw, pw = ours.median("write_s"), theirs.median("write_s") if theirs else None
        ar, pr = ours.median("read_s"), theirs.median("read_s") if theirs else None
        af, pf = ours.median("fetch_s"), theirs.median("fetch_s") if theirs else None
        fr, hr = floor.median("read_s"), floor.median("httpx_read_s")
        cw, cr = codec.median("write_s"), codec.median("read_s")
        floor_read = None if fr is None or cr is None else fr + cr
        s2 = "{:.2f}"
        out.append(
            f"| write + make_read_only | {_fmt(aw, s2)} | {_fmt(pw, s2)} | | "
            f"| {_fmt(cw, s2)} | {_fmt(_ratio(pw, aw), '{:.2f}x')} | |"
        )
        out.append(
            f"| cold read: open_zarr + mean | {_fmt(ar, s2)} | {_fmt(pr, s2)} "
            f"| {_fmt(fr, s2)} + {_fmt(cr, s2)} | | {_fmt(cr, s2)} "
            f"| {_fmt(_ratio(pr, ar), '{:.2f}x')} | {_fmt(_ratio(floor_read, ar), '{:.2f}x')} |"
        )
        out.append(
            f"| cold fetch of every block, no zarr | {_fmt(af, s2)} | {_fmt(pf, s2)} "
            f"| {_fmt(fr, s2)} | {_fmt(hr, s2)} | | {_fmt(_ratio(pf, af), '{:.2f}x')} "
            f"| {_fmt(_ratio(fr, af), '{:.2f}x')} |"
        )
        out.append(
            f"\nThe floor fetched the {_fmt(nodes, '{:.0f}')} HAMT nodes and "
            f"{_fmt(values, '{:.0f}')} values (metadata and chunks) of anyhamt's dataset with "
            f"{args.gateway_concurrency} bare HTTP/1.1 keep-alive connections (asyncio "
            "streams); the httpx column fetched the same list through one httpx client with "
            "as many connections. Neither hashes nor decodes. The zarr MemoryStore column is "
            "zarr's decoding and the mean alone for this chunk layout, so the read row's floor "
            "is plain GETs + MemoryStore. The fetch row: each library's own store path, a new "
            f"client and read-only HAMT, keys() then get() of every value with "
            f"{args.gateway_concurrency} tasks (verified reads for anyhamt), no zarr."
        )
        out.append("")

    out.append("## Targets\n")
    out.append("| target | this run |")
    out.append("|---|---|")
    if "memory" in parts:
        m = parts["memory"]
        for phase in ("write", "read"):
            value = _ratio(_rate(m["anyhamt"], f"{phase}_s"), _rate(m["floor"], f"{phase}_s"))
            out.append(
                f"| InMemoryCAS {phase} >= 0.9x MemoryStore "
                f"| {check(f'memory {phase}', value, 0.9)} |"
            )
    if "local" in parts:
        m = parts["local"]
        for phase in ("write", "read"):
            value = _ratio(_rate(m["anyhamt"], f"{phase}_s"), _rate(m["floor"], f"{phase}_s"))
            out.append(
                f"| LocalCAS {phase} >= 0.8x LocalStore | {check(f'local {phase}', value, 0.8)} |"
            )
    if "kubo" in parts:
        k = parts["kubo"]
        ours, theirs, floor = k["anyhamt"], k.get("py-hamt"), k["floor"]
        assert ours is not None and floor is not None
        ar = ours.median("read_s")
        if theirs is not None:
            value = _ratio(theirs.median("write_s"), ours.median("write_s"))
            out.append(f"| Kubo write >= 5x py-hamt | {check('kubo write', value, 5)} |")
            value = _ratio(theirs.median("read_s"), ar)
            out.append(f"| Kubo cold read >= 2x py-hamt | {check('kubo read', value, 2)} |")
        fr, cr = floor.median("read_s"), k["codec"].median("read_s") if k["codec"] else None
        value = _ratio(fr, ours.median("fetch_s"))
        out.append(
            "| Kubo cold read >= 0.8x plain GETs: the store's fetch of every block vs the "
            f"floor's | {check('kubo fetch vs floor', value, 0.8)} |"
        )
        value = _ratio(None if fr is None or cr is None else fr + cr, ar)
        out.append(
            "| (the same, end to end: open_zarr + mean vs plain GETs + zarr's decoding) "
            f"| {check('kubo read vs floor + codec', value, 0.8)} |"
        )
        value = _ratio(fr, ar)
        out.append(
            "| (literally: open_zarr + mean vs plain GETs alone; zarr's decoding by itself "
            f"takes {_fmt(cr, '{:.2f}')} s) | {check('kubo read vs floor', value, 0.8)} |"
        )
    out.append("")
    failures = [
        f"- {cell.label} ({cell.store}): {run.get('error')}"
        for part in parts.values()
        for cell in part.values()
        if cell is not None
        for run in cell.runs
        if not run.get("ok")
    ]
    if failures:
        out.append("## Failed runs\n")
        out.extend(failures)
        out.append("")
    return "\n".join(out), checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="memory,local,kubo")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                        help="trio: also run anyhamt on trio (extra rows)")  # fmt: skip
    parser.add_argument("--skip-pyhamt", action="store_true")
    parser.add_argument("--pyhamt-python", help="an interpreter with py-hamt, xarray, dask")
    parser.add_argument(
        "--kubo-read-chunks",
        default="73,180,360",
        help="dask chunks for the Kubo read: each dask task reads many zarr chunks, so "
        "zarr's own concurrency (not 2 dask threads) bounds the requests in flight",
    )
    parser.add_argument("--gateway-concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=str(HERE / "results" / "zarr.md"))
    args = parser.parse_args()
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]

    here = sys.executable
    pyhamt = None if args.skip_pyhamt else (args.pyhamt_python or ensure_pyhamt_venv())
    backend = ("--backend", "asyncio")
    parts: dict[str, dict[str, Cell | None]] = {}
    loads: dict[str, tuple[str, str]] = {}
    big = ("--shape", SHAPE, "--chunks", BIG_CHUNKS, "--read-chunks", BIG_CHUNKS)

    for part in ("memory", "local"):
        if part not in wanted:
            continue
        cells: dict[str, Cell | None] = {
            "floor": Cell("zarr", here, "zarr", part, *big),
            "anyhamt": Cell("anyhamt", here, "anyhamt", part, *big, *backend),
        }
        if args.backend == "trio":
            cells["anyhamt-trio"] = Cell(
                "anyhamt trio", here, "anyhamt", part, *big, "--backend", "trio"
            )
        if part == "memory" and pyhamt is not None:
            cells["py-hamt"] = Cell("py-hamt", pyhamt, "py-hamt", part, *big)
        log(f"== {part}")
        before = _loadavg()
        run_rounds([c for c in cells.values() if c is not None], args.rounds, args.timeout)
        loads[part] = (before, _loadavg())
        parts[part] = cells

    if "kubo" in wanted:
        small = ("--shape", SHAPE, "--chunks", SMALL_CHUNKS, "--read-chunks")
        small_read = (*small, args.kubo_read_chunks)
        fetch = ("--concurrency", str(args.gateway_concurrency))
        ours = Cell("anyhamt", here, "anyhamt", "kubo", *small_read, *fetch, *backend)
        theirs = Cell("py-hamt", pyhamt, "py-hamt", "kubo", *small_read, *fetch) if pyhamt else None
        floor = Cell("plain GETs", here, "gateway", "kubo", *fetch)
        codec = Cell("zarr", here, "zarr", "memory", *small_read)
        log("== kubo")
        before = _loadavg()
        run_kubo_rounds(ours, theirs, floor, codec, args.rounds, args.timeout)
        loads["kubo"] = (before, _loadavg())
        parts["kubo"] = {"anyhamt": ours, "py-hamt": theirs, "floor": floor, "codec": codec}

    text, _ = report(parts, loads, args)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    raw = {
        part: {name: cell.runs for name, cell in cells.items() if cell is not None}
        for part, cells in parts.items()
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    failed = any(
        not cell.ok for cells in parts.values() for cell in cells.values() if cell is not None
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
