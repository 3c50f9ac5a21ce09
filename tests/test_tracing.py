"""Tracing with OpenTelemetry: the spans and metrics ``anyhamt.tracing`` promises, read
back through the SDK's in-memory exporter and metric reader, on both backends."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest
from _helpers import array_metadata
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from anyhamt import HAMT, InMemoryCAS, InvalidConfigError, LocalCAS, tracing

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        tracing.instrument(provider, MeterProvider(metric_readers=[self.metrics]))

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def counter(self, name: str) -> int:
        data = self.metrics.get_metrics_data()
        total = 0
        if data is None:
            return 0
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points: Any = metric.data.data_points
                        total += sum(int(point.value) for point in points)
        return total


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    recorder = Telemetry()
    try:
        yield recorder
    finally:
        tracing.uninstrument()


async def test_hamt_reads_and_writes_are_spans_with_filterable_attributes(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    async with LocalCAS(tmp_path / "blocks.db") as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        await hamt.set("alpha", b"12345")
        await hamt.make_read_only()
        root = hamt.root_node_id
    async with LocalCAS(tmp_path / "blocks.db", read_only=True) as cas:
        reader = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        assert await reader.get("alpha") == b"12345"
        assert await reader.get("alpha") == b"12345"

    (written,) = telemetry.finished("anyhamt.hamt.set")
    assert written.attributes == {"anyhamt.key": "alpha", "anyhamt.bytes": 5}
    (flushed,) = telemetry.finished("anyhamt.hamt.make_read_only")
    assert flushed.attributes is not None and flushed.attributes["anyhamt.cid"] == str(root)
    saves = telemetry.finished("anyhamt.store.save") + telemetry.finished("anyhamt.store.save_many")
    assert saves and all(
        s.attributes and s.attributes["anyhamt.store"] == "LocalCAS" for s in saves
    )

    first, second = telemetry.finished("anyhamt.hamt.get")
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["anyhamt.cache_hit"] is False
    assert first.attributes["anyhamt.store_loads"] == 2  # the root node, then the value
    assert second.attributes["anyhamt.cache_hit"] is False  # values are not cached
    assert first.attributes["anyhamt.bytes"] == 5
    loads = telemetry.finished("anyhamt.store.load")
    assert len(loads) == 3  # the root once (then cached), the value twice
    assert {s.parent.span_id for s in loads if s.parent} == {
        first.context.span_id,
        second.context.span_id,
    }
    cids = [s.attributes["anyhamt.cid"] for s in loads if s.attributes]
    assert cids[0] == str(root)
    assert telemetry.counter("anyhamt.cache.misses") == 2


async def test_a_read_answered_from_the_node_cache_is_a_hit(telemetry: Telemetry) -> None:
    cas = InMemoryCAS()
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    await hamt.set("k", b"v")
    await hamt.make_read_only()
    reader = await HAMT.build(
        cas=cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
    )
    await reader.get_pointer("k")
    await reader.get_pointer("k")
    first, second = telemetry.finished("anyhamt.hamt.get_pointer")
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["anyhamt.cache_hit"], second.attributes["anyhamt.cache_hit"]) == (
        False,
        True,
    )
    assert telemetry.counter("anyhamt.cache.hits") == 1
    assert telemetry.counter("anyhamt.cache.misses") == 1


async def test_zarr_gets_and_sets_are_spans(telemetry: Telemetry) -> None:
    from zarr.core.buffer import default_buffer_prototype

    from anyhamt.zarr import ZarrHAMTStore

    hamt = await HAMT.build(cas=InMemoryCAS(), values_are_bytes=True)
    store = ZarrHAMTStore(hamt)
    prototype = default_buffer_prototype()
    await store.set("a/c/0", prototype.buffer.from_bytes(b"chunk"))
    got = await store.get("a/c/0", prototype)
    assert got is not None and got.to_bytes() == b"chunk"
    (wrote,) = telemetry.finished("anyhamt.zarr.set")
    (read,) = telemetry.finished("anyhamt.zarr.get")
    assert wrote.attributes == {"anyhamt.key": "a/c/0", "anyhamt.bytes": 5}
    assert read.attributes == {"anyhamt.key": "a/c/0", "anyhamt.bytes": 5}
    assert [s.parent.span_id for s in telemetry.finished("anyhamt.hamt.set") if s.parent] == [
        wrote.context.span_id
    ]


def test_uninstrument_puts_back_the_very_same_methods() -> None:
    originals: dict[str, Any] = {
        "get": HAMT.get,
        "set": HAMT.set,
        "load": LocalCAS._load_id,
    }
    tracing.instrument()
    try:
        assert tracing.is_instrumented()
        assert HAMT.get is not originals["get"]
        tracing.instrument()  # again: still one layer of wrapping
        assert HAMT.get.__wrapped__ is originals["get"]  # type: ignore[attr-defined]
    finally:
        tracing.uninstrument()
    assert not tracing.is_instrumented()
    assert (HAMT.get, HAMT.set, LocalCAS._load_id) == tuple(originals.values())


def test_without_opentelemetry_instrument_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(InvalidConfigError, match=r"anyhamt\[otel\]"):
        tracing.instrument()
    assert not tracing.is_instrumented()


async def test_a_sharded_store_read_traces_its_shard_load(telemetry: Telemetry) -> None:
    from zarr.core.buffer import default_buffer_prototype

    from anyhamt.zarr import ShardedZarrStore

    prototype = default_buffer_prototype()
    cas = InMemoryCAS()
    writer = await ShardedZarrStore.open(cas=cas, read_only=False, chunks_per_shard=2)
    await writer.set("a/zarr.json", prototype.buffer.from_bytes(array_metadata([4], [1])))
    await writer.set("a/c/3", prototype.buffer.from_bytes(b"x"))
    root = await writer.flush()
    reader = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
    got = await reader.get("a/c/3", prototype)
    assert got is not None and got.to_bytes() == b"x"
    await reader.get("a/c/2", prototype)  # the same shard: cached, no second load

    (loaded,) = telemetry.finished("anyhamt.zarr.shard_load")
    read = telemetry.finished("anyhamt.zarr.get")[-2]
    assert loaded.parent is not None and loaded.parent.span_id == read.context.span_id
    assert loaded.attributes is not None
    size = loaded.attributes["anyhamt.bytes"]
    assert isinstance(size, int) and size > 0
    assert isinstance(loaded.attributes["anyhamt.cid"], str)
