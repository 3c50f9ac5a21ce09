"""Core HAMT benchmark: anyhamt against py-hamt 3.6.0, same workloads, same run.

    python benchmarks/run_core.py [--sizes 20000,200000] [--stores memory,local]
                                  [--out benchmarks/results/core.md] [--backend trio]

anyhamt runs under this interpreter; py-hamt runs under a Python 3.12 venv that this script
creates on first use at ``${ANYHAMT_BENCH_VENV:-~/.cache/anyhamt/bench-pyhamt-venv}``
(``pip install py-hamt==3.6.0 psutil``). For the ``local`` store, py-hamt's HAMT runs on
anyhamt's ``LocalCAS``, so this checkout is also installed into that venv, editable and
without touching py-hamt's pinned dependencies (``pip install --no-deps -e``; any anyhamt
dependency the venv lacks is added with every installed package pinned as a constraint).
Every (library, store, size, backend) workload runs in a fresh process (``_worker.py``), so
each peak RSS belongs to one workload. The markdown table goes to stdout and to ``--out``.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_worker.py"
PYHAMT_VERSION = "3.6.0"
DEFAULT_VENV = Path("~/.cache/anyhamt/bench-pyhamt-venv").expanduser()

# (result field, label, kind): kind "rate" = per second (higher is better),
# "seconds" and "rss" = lower is better.
ROWS: list[tuple[str, str, str]] = [
    ("insert_per_s", "insert + make_read_only (keys/s)", "rate"),
    ("make_read_only_s", "make_read_only alone (s, lower is better)", "seconds"),
    ("get_per_s", "get, sequential, cold cache (gets/s)", "rate"),
    ("cget_per_s", "get, {c} concurrent tasks, yielding store (gets/s)", "rate"),
    ("keys_per_s", "keys() full iteration (keys/s)", "rate"),
    ("rss_peak_kib", "peak RSS (MiB, lower is better)", "rss"),
    ("rss_start_kib", "RSS at start: imports + values (MiB, for reference)", "rss"),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the py-hamt venv ---------------------------------------------------------------------


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python312() -> str:
    """A Python 3.12 interpreter: ``python3.12`` on PATH, else pyenv's."""
    candidates: list[str] = []
    on_path = shutil.which("python3.12")
    if on_path:
        candidates.append(on_path)
    pyenv = shutil.which("pyenv") or str(Path("~/.pyenv/bin/pyenv").expanduser())
    if os.access(pyenv, os.X_OK):
        try:
            out = subprocess.run(
                [pyenv, "prefix", "3.12"], capture_output=True, text=True, timeout=60
            )
            if out.returncode == 0:
                for prefix in out.stdout.strip().split(os.pathsep):
                    if prefix:
                        candidates.append(os.path.join(prefix, "bin", "python"))
        except (OSError, subprocess.TimeoutExpired):
            pass
    root = os.environ.get("PYENV_ROOT") or str(Path("~/.pyenv").expanduser())
    candidates.extend(
        sorted(glob.glob(os.path.join(root, "versions", "3.12*", "bin", "python")), reverse=True)
    )
    for candidate in candidates:
        if _python_version(candidate) == (3, 12):
            return candidate
    raise SystemExit(
        "no Python 3.12 found (tried python3.12 on PATH, `pyenv prefix 3.12`, "
        f"{root}/versions/3.12*); install one or pass --pyhamt-python"
    )


def _venv_ready(python: Path) -> bool:
    if not python.exists():
        return False
    probe = (
        "from importlib.metadata import version; import sys; "
        f"sys.exit(0 if version('py-hamt') == {PYHAMT_VERSION!r} and version('psutil') else 1)"
    )
    try:
        return (
            subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_pyhamt_venv() -> str:
    venv = Path(os.environ.get("ANYHAMT_BENCH_VENV") or DEFAULT_VENV).expanduser()
    python = venv / "bin" / "python"
    if _venv_ready(python):
        return str(python)
    if not python.exists() or _python_version(str(python)) != (3, 12):
        base = find_python312()
        log(f"creating py-hamt venv at {venv} with {base}")
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log(f"installing py-hamt=={PYHAMT_VERSION} psutil into {venv}")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"py-hamt=={PYHAMT_VERSION}",
            "psutil",
        ],
        check=True,
    )
    if not _venv_ready(python):
        raise SystemExit(f"{venv} still lacks py-hamt=={PYHAMT_VERSION} after pip install")
    return str(python)


# Run in the py-hamt venv: what it knows of anyhamt (installed from where, importable from
# where) and of anyhamt's runtime requirements (missing or not satisfied).
_ANYHAMT_PROBE = r"""
import json, re, sys
from importlib import metadata

out = {"pyhamt": None, "version": None, "url": None, "editable": False, "file": None,
       "import_error": None, "missing": [], "unsatisfied": []}
try:
    out["pyhamt"] = metadata.version("py-hamt")
except metadata.PackageNotFoundError:
    pass
try:
    dist = metadata.distribution("anyhamt")
except metadata.PackageNotFoundError:
    dist = None
if dist is not None:
    out["version"] = dist.version
    direct = dist.read_text("direct_url.json")
    if direct:
        info = json.loads(direct)
        out["url"] = info.get("url")
        out["editable"] = bool(info.get("dir_info", {}).get("editable"))
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out["missing"].append(str(req))
            continue
        if not req.specifier.contains(have, prereleases=True):
            out["unsatisfied"].append(f"{req} (have {have})")
    try:
        import anyhamt
        out["file"] = anyhamt.__file__
    except Exception as exc:
        out["import_error"] = repr(exc)
print(json.dumps(out))
"""


def _probe_anyhamt(python: str) -> dict[str, Any]:
    out = subprocess.run(
        [python, "-c", _ANYHAMT_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # so the checkout is not importable merely by being the working directory
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if out.returncode != 0:
        raise SystemExit(f"probing anyhamt in {python} failed: {out.stderr.strip()[-2000:]}")
    probe: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return probe


def _anyhamt_from_here(probe: dict[str, Any]) -> bool:
    if not (probe["editable"] and probe["url"] == REPO.as_uri() and probe["file"]):
        return False
    return Path(probe["file"]).resolve().is_relative_to(REPO / "anyhamt")


def _pip(python: str, *args: str) -> None:
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    log("  $ " + shlex.join(cmd))
    subprocess.run(cmd, check=True, cwd="/")


def ensure_anyhamt_in_venv(python: str) -> dict[str, Any]:
    """Make this checkout's anyhamt importable in the py-hamt venv, leaving its pins alone.

    Installs editable with ``--no-deps`` (again when the venv's anyhamt points elsewhere,
    e.g. another checkout); installs a missing anyhamt dependency with every package already
    in the venv pinned as a constraint; refuses if an installed one is too old for anyhamt.
    """
    probe = _probe_anyhamt(python)
    if not _anyhamt_from_here(probe):
        was = probe["url"] or probe["file"] or "not installed"
        log(f"installing anyhamt from {REPO} into the py-hamt venv (was: {was})")
        _pip(python, "--no-deps", "--force-reinstall", "-e", str(REPO))
        probe = _probe_anyhamt(python)
    if probe["missing"]:
        log(f"adding anyhamt's missing dependencies to the py-hamt venv: {probe['missing']}")
        freeze = subprocess.run(
            [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        ).stdout
        pins = [line for line in freeze.splitlines() if re.match(r"^[A-Za-z0-9._-]+==", line)]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(pins) + "\n")
            constraints = f.name
        try:
            _pip(python, "-c", constraints, *probe["missing"])
        finally:
            os.unlink(constraints)
        probe = _probe_anyhamt(python)
    if probe["unsatisfied"] or probe["missing"]:
        raise SystemExit(
            f"the py-hamt venv ({python}) cannot run anyhamt without changing py-hamt's pins: "
            f"missing {probe['missing']}, too old {probe['unsatisfied']}"
        )
    if probe["pyhamt"] != PYHAMT_VERSION:
        raise SystemExit(f"py-hamt in {python} is {probe['pyhamt']}, expected {PYHAMT_VERSION}")
    if not _anyhamt_from_here(probe):
        raise SystemExit(
            f"anyhamt in {python} does not import from {REPO}: "
            f"{probe['import_error'] or probe['file'] or probe['url']}"
        )
    return probe


# -- machine and source info --------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _source_digest() -> str:
    """A hash of anyhamt's sources, to notice edits made while the benchmark runs."""
    h = hashlib.sha256()
    for path in sorted((REPO / "anyhamt").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# -- running workers ----------------------------------------------------------------------


def run_worker(
    python: str, lib: str, store: str, n: int, backend: str, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [
        python,
        str(WORKER),
        "--lib",
        lib,
        "--store",
        store,
        "--size",
        str(n),
        "--backend",
        backend,
        "--concurrency",
        str(args.concurrency),
        "--seed",
        str(args.seed),
    ]
    if args.tmpdir:
        cmd += ["--tmpdir", args.tmpdir]
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    if lib == "anyhamt":
        # Import anyhamt from this checkout even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    else:
        env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {args.timeout} s"}
    wall = time.perf_counter() - started
    result: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"ok": False, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    if proc.returncode != 0 and result.get("ok"):
        result = {**result, "ok": False, "error": f"exit {proc.returncode}"}
    result["wall_s"] = wall
    return result


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result per cell: the median of each figure over the repeats."""
    good = [r for r in runs if r.get("ok")]
    if len(good) != len(runs):
        bad = next(r for r in runs if not r.get("ok"))
        return {"ok": False, "error": bad.get("error", "failed")}
    merged = dict(good[0])
    for key, value in good[0].items():
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in ("n", "seed", "concurrency")
        ):
            merged[key] = statistics.median(r[key] for r in good)
    roots = {r["root"] for r in good}
    if len(roots) != 1:
        merged["ok"] = False
        merged["error"] = f"root differs between repeats: {sorted(roots)}"
    return merged


# -- the report ---------------------------------------------------------------------------


def fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "seconds":
        return f"{value:.3f}"
    if kind == "rss":
        return f"{value / 1024:,.1f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def cell(result: dict[str, Any] | None, key: str, kind: str) -> tuple[str, float | None]:
    if result is None:
        return "not run", None
    if not result.get("ok"):
        return "FAILED", None
    value = result.get(key)
    return fmt(kind, value), value


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    results: dict[tuple[str, str, int, str], dict[str, Any]],
    sizes: list[int],
    stores: list[str],
    backends: list[str],
) -> tuple[str, bool]:
    """The markdown report, and whether everything ran and checked out."""
    ok = True
    trio = "trio" in backends
    any_info = next((r for (lib, *_), r in results.items() if lib == "anyhamt" and r.get("ok")), {})
    py_info = next((r for (lib, *_), r in results.items() if lib == "py-hamt" and r.get("ok")), {})

    lines: list[str] = []
    add = lines.append
    add("# anyhamt vs py-hamt 3.6.0: core HAMT benchmark")
    add("")
    add(f"- date: {info['date']} (UTC); run took {info['elapsed_s']:.0f} s")
    mem = f", {info['mem_gib']:.1f} GiB RAM" if info["mem_gib"] else ""
    add(
        f"- machine: {info['platform']}; CPU {info['cpu']}; nproc {info['nproc']} "
        f"(usable {info['usable_cpus']}){mem}; load average at start {info['load_start']}, "
        f"at end {info['load_end']}"
    )
    trio_v = f", trio {any_info.get('trio_version') or info.get('trio_version')}" if trio else ""
    add(
        f"- anyhamt {any_info.get('lib_version', '?')} (git {info['git']}, sources "
        f"{info['digest_start']}) on {any_info.get('python_impl', '')} "
        f"{any_info.get('python', '?')}, anyio {any_info.get('anyio_version', '?')}{trio_v}"
    )
    py_local = (
        f"; its local rows on anyhamt {info['pyhamt_anyhamt']} `LocalCAS` (editable install "
        "of this checkout in that venv)"
        if info.get("pyhamt_anyhamt")
        else ""
    )
    add(
        f"- py-hamt {py_info.get('lib_version', '?')} on {py_info.get('python_impl', '')} "
        f"{py_info.get('python', '?')}, anyio {py_info.get('anyio_version', '?')} "
        f"(`{info['pyhamt_python']}`){py_local}"
    )
    add(
        f"- workload: N keys `key-{{i}}`, 100-byte random values (seed {args.seed}, the same "
        "bytes for both libraries), `values_are_bytes=True`; each (library, store, N, backend) "
        f"in a fresh process; {args.repeat} run(s) per cell"
        + (", median shown" if args.repeat > 1 else "")
    )
    add(f"- command: `{info['command']}`")
    if info["digest_start"] != info["digest_end"]:
        ok = False
        add(
            f"- **WARNING: anyhamt/ sources changed during the run** ({info['digest_start']} -> "
            f"{info['digest_end']}); figures may mix versions"
        )
    add("")

    header = ["store", "N", "workload", "py-hamt", "anyhamt", "ratio"]
    if trio:
        header += ["anyhamt (trio)", "ratio (trio)"]
    add("| " + " | ".join(header) + " |")
    add(
        "|"
        + "|".join(
            ["---", "---:", "---", "---:", "---:", "---:"] + (["---:", "---:"] if trio else [])
        )
        + "|"
    )

    root_notes: list[str] = []
    failures: list[str] = []
    for store in stores:
        for n in sizes:
            base = results.get(("py-hamt", store, n, "asyncio"))
            mine = results.get(("anyhamt", store, n, "asyncio"))
            mine_trio = results.get(("anyhamt", store, n, "trio")) if trio else None
            for res in (base, mine, mine_trio):
                if res is not None and not res.get("ok"):
                    ok = False
                    failures.append(f"{res.get('lib', '?')} {store} N={n}: {res.get('error')}")
            store_label = "memory" if store == "memory" else "local¹"
            for key, label, kind in ROWS:
                label = label.format(c=args.concurrency)
                py_s, py_v = cell(base, key, kind)
                an_s, an_v = cell(mine, key, kind)
                row = [store_label, f"{n:,}", label, py_s, an_s, ratio(an_v, py_v)]
                if trio:
                    tr_s, tr_v = cell(mine_trio, key, kind)
                    row += [tr_s, ratio(tr_v, py_v)]
                add("| " + " | ".join(row) + " |")
            # Wire compatibility: both libraries must reach the same root id.
            roots = {"py-hamt": base, "anyhamt": mine}
            if trio:
                roots["anyhamt (trio)"] = mine_trio
            hexes = {
                k: (r or {}).get("root") if (r or {}).get("ok") else None for k, r in roots.items()
            }
            present = [h for h in hexes.values() if h]
            if len(present) == len(hexes):
                same = len(set(present)) == 1
                verdict = "identical" if same else "**DIFFERENT**"
                if not same:
                    ok = False
                    failures.append(f"{store} N={n}: root ids differ: {hexes}")
            else:
                verdict = "n/a"
                ok = False
                failures.append(f"{store} N={n}: root ids missing: {hexes}")

            def short(h: str | None) -> str:
                return f"`{h[:16]}…`" if h else "n/a"

            row = [
                store_label,
                f"{n:,}",
                "root id (wire compat)",
                short(hexes["py-hamt"]),
                short(hexes["anyhamt"]),
                verdict,
            ]
            if trio:
                row += [short(hexes["anyhamt (trio)"]), verdict]
            add("| " + " | ".join(row) + " |")
            for name, h in hexes.items():
                root_notes.append(f"  - {store} N={n:,} {name}: `{h}`")

    add("")
    add(
        "Ratio = anyhamt / py-hamt, both on the same kind of store. For per-second rows "
        "higher is better; for seconds and RSS rows lower is better. Every value read is "
        "compared with the value written inside the timed loops (same code for both "
        "libraries); keys() output is checked for every key exactly once. "
        '"Cold cache": each read phase builds a new read-only HAMT on the root, '
        "so its node cache starts empty. The concurrent phase reads through a wrapper store that "
        "subclasses each library's `ContentAddressedStore` and yields to the event loop before "
        "every load with the backend's own yield (`asyncio.sleep(0)` on asyncio for both "
        "libraries, `trio.lowlevel.checkpoint()` for anyhamt on trio). "
        "Peak RSS is `ru_maxrss` of the worker process at the end (all phases); it includes "
        "the interpreter, the imports (py-hamt's package imports zarr and numpy), the "
        f"{100} x N-byte value buffer and, for the memory store, the store's blocks."
    )
    add("")
    if "local" in stores:
        add(
            "¹ local rows: both libraries on anyhamt's `LocalCAS`, each on its own SQLite file "
            "in a temp directory; the writer is closed after make_read_only and the read "
            "phases reopen the file read-only, so every node and value comes from SQLite and "
            "is hashed against its CID. py-hamt has no local store, so its HAMT gets `LocalCAS` "
            "through an adapter subclassing py-hamt's `ContentAddressedStore` that forwards "
            "`save`/`load` to LocalCAS's public API: `save` returns a `multiformats.CID` and "
            "`load` takes one, the same kind of ids py-hamt gets from Kubo (anyhamt installed "
            "editable, `--no-deps`, in py-hamt's venv; py-hamt's pins untouched). anyhamt uses "
            "`LocalCAS` directly, including its internal id fast path. In the concurrent phase "
            "the yielding wrapper sits on top of each library's store (for py-hamt, on top of "
            "the adapter). py-hamt's local RSS includes importing anyhamt as well."
        )
        add("")
    if root_notes:
        add(
            "Root ids (memory store: raw blake3 multihash bytes, as both `InMemoryCAS`es "
            "return them; local store: CIDv1, as `LocalCAS` returns them to both libraries):"
        )
        add("")
        lines.extend(root_notes)
        add("")

    # Targets from the issue.
    targets: list[tuple[str, str, float | None, float, bool]] = []

    def metric(lib: str, store: str, n: int, key: str, backend: str = "asyncio") -> float | None:
        r = results.get((lib, store, n, backend))
        return r.get(key) if r and r.get("ok") else None

    for store in stores:
        for n, tput, get in ((200_000, 10.0, 5.0), (20_000, 5.0, 5.0)):
            if n not in sizes:
                continue
            for key, label, floor in (
                ("insert_per_s", "insert + make_read_only", tput),
                ("get_per_s", "get, sequential", get),
                ("cget_per_s", f"get, {args.concurrency} concurrent", get),
            ):
                a, b = metric("anyhamt", store, n, key), metric("py-hamt", store, n, key)
                r = a / b if a is not None and b else None
                targets.append(
                    (
                        f"{store}, N={n:,}: {label} >= {floor:g}x py-hamt",
                        f"{r:.2f}x" if r else "n/a",
                        r,
                        floor,
                        r is not None and r >= floor,
                    )
                )
        if 200_000 in sizes:
            a, b = (
                metric("anyhamt", store, 200_000, "rss_peak_kib"),
                metric("py-hamt", store, 200_000, "rss_peak_kib"),
            )
            r = a / b if a is not None and b else None
            targets.append(
                (
                    f"{store}, N=200,000: anyhamt peak RSS <= 0.5x py-hamt's",
                    f"{r:.2f}x" if r else "n/a",
                    r,
                    0.5,
                    r is not None and r <= 0.5,
                )
            )
    if targets:
        add(
            "Targets (from the issue: at 200k keys >= 10x py-hamt's insert+make_read_only "
            "throughput and >= 5x its get throughput; at 20k keys >= 5x both; anyhamt peak RSS at "
            "200k <= half of py-hamt's; checked on asyncio):"
        )
        add("")
        add("| target | measured | met |")
        add("|---|---:|---|")
        for label, measured, _r, _floor, met in targets:
            add(f"| {label} | {measured} | {'yes' if met else '**no**'} |")
        add("")
    if failures:
        add("Failures:")
        add("")
        lines.extend(f"- {f}" for f in failures)
        add("")
    return "\n".join(lines), ok


# -- main ---------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description="anyhamt vs py-hamt 3.6.0 core HAMT benchmark")
    parser.add_argument("--sizes", default="20000,200000", help="comma-separated key counts")
    parser.add_argument("--stores", default="memory,local", help="comma-separated: memory, local")
    parser.add_argument(
        "--out", default=str(HERE / "results" / "core.md"), help="markdown report file"
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="trio: also run anyhamt on trio (extra columns; py-hamt stays on asyncio)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="fresh runs per cell; the median is shown"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="tasks in the concurrent-get phase"
    )
    parser.add_argument("--seed", type=int, default=20250101, help="seed of the random values")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per worker")
    parser.add_argument("--tmpdir", default=None, help="directory for the local store's temp files")
    parser.add_argument(
        "--pyhamt-python", default=None, help="use this interpreter for py-hamt instead of the venv"
    )
    args = parser.parse_args()

    try:
        sizes = [int(s.replace("_", "")) for s in _csv(args.sizes)]
    except ValueError:
        parser.error(f"--sizes must be integers, got {args.sizes!r}")
    stores = _csv(args.stores)
    for store in stores:
        if store not in ("memory", "local"):
            parser.error(f"unknown store {store!r} (memory, local)")
    if not sizes or any(n < 1 for n in sizes) or not stores or args.repeat < 1:
        parser.error("need at least one size >= 1, one store and --repeat >= 1")
    backends = ["asyncio", "trio"] if args.backend == "trio" else ["asyncio"]
    if "trio" in backends and _dist_version("trio") is None:
        parser.error("--backend trio needs trio installed in this interpreter")

    pyhamt_python = args.pyhamt_python or ensure_pyhamt_venv()
    # py-hamt's local rows run its HAMT on anyhamt's LocalCAS: this checkout, in its venv.
    pyhamt_anyhamt = ensure_anyhamt_in_venv(pyhamt_python) if "local" in stores else None

    started = time.perf_counter()
    git = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "anyhamt"):
        git += ", anyhamt/ modified"
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "mem_gib": _mem_total_gib(),
        "load_start": _loadavg(),
        "git": git,
        "digest_start": _source_digest(),
        "pyhamt_python": pyhamt_python,
        "pyhamt_anyhamt": pyhamt_anyhamt["version"] if pyhamt_anyhamt else None,
        "trio_version": _dist_version("trio"),
        "command": shlex.join(["python", os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]]),
    }

    plan: list[tuple[str, str, int, str]] = []
    for n in sizes:
        for store in stores:
            plan.append(("py-hamt", store, n, "asyncio"))
            for backend in backends:
                plan.append(("anyhamt", store, n, backend))
    runs: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {cell: [] for cell in plan}
    total = len(plan) * args.repeat
    done = 0
    for rep in range(args.repeat):
        for lib, store, n, backend in plan:
            done += 1
            python = sys.executable if lib == "anyhamt" else pyhamt_python
            log(f"[{done}/{total}] {lib} {store} N={n} {backend} (run {rep + 1}/{args.repeat}) ...")
            result = run_worker(python, lib, store, n, backend, args)
            runs[(lib, store, n, backend)].append(result)
            if result.get("ok"):
                r = result
                log(
                    f"    insert {r['insert_per_s']:,.0f}/s, get {r['get_per_s']:,.0f}/s, "
                    f"concurrent get {r['cget_per_s']:,.0f}/s, keys {r['keys_per_s']:,.0f}/s, "
                    f"peak RSS {r['rss_peak_kib'] / 1024:,.1f} MiB ({r['wall_s']:.1f} s)"
                )
            else:
                log(f"    FAILED: {result.get('error')}")

    results = {cell: median_result(rs) for cell, rs in runs.items()}
    info["elapsed_s"] = time.perf_counter() - started
    info["load_end"] = _loadavg()
    info["digest_end"] = _source_digest()

    report, ok = render(args, info, results, sizes, stores, backends)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    raw = out.with_suffix(".json")
    raw.write_text(
        json.dumps(
            {"info": info, "runs": [dict(r, cell=list(c)) for c, rs in runs.items() for r in rs]},
            indent=1,
        )
        + "\n"
    )
    log(f"wrote {out} and {raw}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
