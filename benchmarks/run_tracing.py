"""What tracing costs: HAMT get throughput with anyhamt.tracing off, and on, in one run.

``anyhamt.tracing.instrument()`` replaces methods with traced versions and
``uninstrument()`` restores them, so "off" should be the uninstrumented library exactly.
This measures it rather than assuming it. One process, one read-only map of ``--keys``
keys on ``InMemoryCAS`` (every node cached after the first pass, so a get is pure CPU and
any per-call overhead shows at its largest), and rounds that cycle through:

* ``never``: the library without tracing (before the first instrument() call, and
  between rounds the same functions, put back by uninstrument());
* ``off``: right after instrument() then uninstrument() (what a user who switched tracing
  off runs);
* ``noop``: instrumented with OpenTelemetry's API alone (no SDK: non-recording spans);
* ``sdk``: instrumented with the SDK's TracerProvider and MeterProvider, spans going to an
  in-memory exporter that is cleared between rounds.

Each round gets every key once in a tight loop (after a garbage collection); the table
shows the median gets/s of ``--rounds`` rounds per mode and the ratio to ``never``. Rounds
alternate between modes (``never`` and ``off`` swap order every round), so drift in
machine load spreads over all of them.

Run: ``python benchmarks/run_tracing.py [--keys 20000] [--rounds 9] [--backend trio]``
(needs the ``otel`` extra and opentelemetry-sdk).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from typing import Any

import anyio

from anyhamt import HAMT, InMemoryCAS, tracing


async def build(n: int) -> tuple[InMemoryCAS, Any, list[str]]:
    cas = InMemoryCAS()
    writer = await HAMT.build(cas=cas, values_are_bytes=True)
    keys = [f"key-{i}" for i in range(n)]
    for key in keys:
        await writer.set(key, b"v" * 100)
    await writer.make_read_only()
    return cas, writer.root_node_id, keys


async def one_round(cas: InMemoryCAS, root: Any, keys: list[str]) -> float:
    hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
    for key in keys:  # warm the node cache: the timed pass is pure CPU
        await hamt.get(key)
    gc.collect()  # no round pays for another's garbage
    start = time.perf_counter()
    for key in keys:
        await hamt.get(key)
    return len(keys) / (time.perf_counter() - start)


def sdk_providers() -> tuple[Any, Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, MeterProvider(metric_readers=[InMemoryMetricReader()]), exporter


async def main(args: argparse.Namespace) -> str:
    cas, root, keys = await build(args.keys)
    results: dict[str, list[float]] = {"never": [], "off": [], "noop": [], "sdk": []}
    for round_number in range(args.rounds):
        # never/off in alternating order, so neither always runs first after the SDK round.
        for mode in ("never", "off") if round_number % 2 == 0 else ("off", "never"):
            if mode == "off":
                tracing.instrument()
                tracing.uninstrument()
            results[mode].append(await one_round(cas, root, keys))
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        tracing.instrument(NoOpTracerProvider(), NoOpMeterProvider())
        results["noop"].append(await one_round(cas, root, keys))
        provider, meters, exporter = sdk_providers()
        tracing.instrument(provider, meters)
        results["sdk"].append(await one_round(cas, root, keys))
        tracing.uninstrument()
        exporter.clear()
    base = statistics.median(results["never"])
    lines = [
        f"# Tracing cost: HAMT get throughput, {args.keys} keys, InMemoryCAS, cached nodes",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, backend {args.backend}, median of "
        f"{args.rounds} alternating rounds; load average {os.getloadavg()[0]:.2f}.",
        "",
        f"Command: `python benchmarks/run_tracing.py --keys {args.keys} --rounds {args.rounds}"
        f" --backend {args.backend}`",
        "",
        "| mode | gets/s (median) | vs never instrumented |",
        "|---|---:|---:|",
    ]
    labels = {
        "never": "never instrumented",
        "off": "tracing off (instrument() then uninstrument())",
        "noop": "on, OpenTelemetry API only (no SDK)",
        "sdk": "on, SDK with in-memory exporter",
    }
    for mode, rates in results.items():
        median = statistics.median(rates)
        lines.append(f"| {labels[mode]} | {median:,.0f} | {median / base:.3f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--out", default="benchmarks/results/tracing.md")
    arguments = parser.parse_args()
    table = anyio.run(main, arguments, backend=arguments.backend)
    print(table)
    with open(arguments.out, "w") as f:
        f.write(table)
