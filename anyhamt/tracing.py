"""OpenTelemetry spans and metrics for anyhamt (the ``otel`` extra).

Tracing is off until ``instrument()`` is called, and then costs nothing where it is not
wanted: ``instrument()`` replaces a fixed list of methods on anyhamt's classes with traced
versions, and ``uninstrument()`` puts the originals back. Without it, no tracing code is on
any path (not even a flag test), so tracing off is exactly the uninstrumented library; the
cost of tracing on is measured by ``benchmarks/run_tracing.py``.

Spans (all with ``anyhamt.`` attributes a user can filter on):

* ``anyhamt.hamt.get`` / ``set`` / ``delete`` / ``get_pointer`` / ``set_pointer``:
  ``anyhamt.key``; ``anyhamt.bytes`` (the value read or written, when it is bytes);
  for reads ``anyhamt.cache_hit`` (true when the call loaded nothing from its store) and
  ``anyhamt.store_loads``.
* ``anyhamt.hamt.make_read_only``: the flush of a writable map; ``anyhamt.cid`` (the root).
* ``anyhamt.store.load`` / ``anyhamt.store.save`` / ``anyhamt.store.save_many`` /
  ``anyhamt.store.flush``: ``anyhamt.store`` (the class), ``anyhamt.cid``,
  ``anyhamt.bytes``, ``anyhamt.blocks`` (save_many).
* ``anyhamt.zarr.get`` / ``anyhamt.zarr.set``: ``anyhamt.key`` (the Zarr key),
  ``anyhamt.bytes``; on stores that have them, ``anyhamt.zarr.shard_load`` for each shard
  read from the block store.

Metrics: ``anyhamt.cache.hits`` and ``anyhamt.cache.misses`` (HAMT reads answered without,
or with, a store load) and ``anyhamt.store.load.duration`` (seconds, by store class).

Spans nest through contextvars, which every anyio task copies from its parent, so the
same code traces on asyncio and on trio; a store load made for a HAMT read is the read's
child span.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import InvalidConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["instrument", "is_instrumented", "uninstrument"]

# Loads made by the current HAMT read, if one is being traced: a one-element list the
# store-load wrapper increments (contextvars copy the reference into child tasks).
_loads: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "anyhamt_tracing_loads", default=None
)

_lock = threading.Lock()
# (owner, attribute, original) for every method replaced, to put back.
_patched: list[tuple[type, str, Any]] = []


class _Instruments:
    """The tracer and metric instruments of one ``instrument()`` call."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        from . import __version__

        self.tracer = trace.get_tracer("anyhamt", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("anyhamt", __version__, meter_provider=meter_provider)
        self.hits = meter.create_counter(
            "anyhamt.cache.hits", unit="{read}", description="HAMT reads that loaded nothing"
        )
        self.misses = meter.create_counter(
            "anyhamt.cache.misses", unit="{read}", description="HAMT reads that loaded blocks"
        )
        self.load_duration = meter.create_histogram(
            "anyhamt.store.load.duration", unit="s", description="Time to load one value"
        )


def _cid_text(ptr: Any) -> str:
    # Link prints as CID text; InMemoryCAS ids are bytes, shown in hex.
    return ptr.hex() if type(ptr) is bytes else str(ptr)


def _size(value: Any) -> int | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return None


type _Method = Callable[..., Coroutine[Any, Any, Any]]


def _hamt_read(ins: _Instruments, name: str, original: _Method) -> _Method:
    span_name = f"anyhamt.hamt.{name}"

    @functools.wraps(original)
    async def traced(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        counter = [0]
        token = _loads.set(counter)
        try:
            with ins.tracer.start_as_current_span(
                span_name, attributes={"anyhamt.key": str(key)}
            ) as span:
                result = await original(self, key, *args, **kwargs)
                size = _size(result)
                if size is not None:
                    span.set_attribute("anyhamt.bytes", size)
                span.set_attribute("anyhamt.store_loads", counter[0])
                span.set_attribute("anyhamt.cache_hit", counter[0] == 0)
                (ins.misses if counter[0] else ins.hits).add(1)
                return result
        finally:
            _loads.reset(token)

    return traced


def _hamt_write(ins: _Instruments, name: str, original: _Method) -> _Method:
    span_name = f"anyhamt.hamt.{name}"

    @functools.wraps(original)
    async def traced(self: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        attributes: dict[str, Any] = {"anyhamt.key": str(key)}
        size = _size(args[0]) if args else None
        if size is not None:
            attributes["anyhamt.bytes"] = size
        with ins.tracer.start_as_current_span(span_name, attributes=attributes):
            return await original(self, key, *args, **kwargs)

    return traced


def _hamt_flush(ins: _Instruments, name: str, original: _Method) -> _Method:
    span_name = f"anyhamt.hamt.{name}"

    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(span_name) as span:
            result = await original(self, *args, **kwargs)
            root = getattr(self, "root_node_id", None)
            if root is not None:
                span.set_attribute("anyhamt.cid", str(root))
            return result

    return traced


def _store_load(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, ptr: Any, *args: Any, **kwargs: Any) -> Any:
        store = type(self).__name__
        counter = _loads.get()
        if counter is not None:
            counter[0] += 1
        with ins.tracer.start_as_current_span(
            "anyhamt.store.load", attributes={"anyhamt.store": store, "anyhamt.cid": _cid_text(ptr)}
        ) as span:
            start = time.perf_counter()
            data = await original(self, ptr, *args, **kwargs)
            ins.load_duration.record(time.perf_counter() - start, {"anyhamt.store": store})
            span.set_attribute("anyhamt.bytes", len(data))
            return data

    return traced


def _store_save(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, data: bytes, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(
            "anyhamt.store.save",
            attributes={"anyhamt.store": type(self).__name__, "anyhamt.bytes": len(data)},
        ) as span:
            ptr = await original(self, data, *args, **kwargs)
            span.set_attribute("anyhamt.cid", _cid_text(ptr))
            return ptr

    return traced


def _store_save_many(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, blocks: Any, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(
            "anyhamt.store.save_many",
            attributes={
                "anyhamt.store": type(self).__name__,
                "anyhamt.blocks": len(blocks),
                "anyhamt.bytes": sum(len(b) for b in blocks),
            },
        ):
            return await original(self, blocks, *args, **kwargs)

    return traced


def _store_flush(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(
            "anyhamt.store.flush", attributes={"anyhamt.store": type(self).__name__}
        ):
            return await original(self, *args, **kwargs)

    return traced


def _zarr_get(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(
            "anyhamt.zarr.get", attributes={"anyhamt.key": key}
        ) as span:
            buffer = await original(self, key, *args, **kwargs)
            if buffer is not None:
                span.set_attribute("anyhamt.bytes", len(buffer))
            return buffer

    return traced


def _zarr_set(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        attributes: dict[str, Any] = {"anyhamt.key": key}
        with contextlib.suppress(TypeError):  # a Buffer has a length; anything else not
            attributes["anyhamt.bytes"] = len(value)
        with ins.tracer.start_as_current_span("anyhamt.zarr.set", attributes=attributes):
            return await original(self, key, value, *args, **kwargs)

    return traced


def _shard_load(ins: _Instruments, name: str, original: _Method) -> _Method:
    @functools.wraps(original)
    async def traced(self: Any, ptr: Any, *args: Any, **kwargs: Any) -> Any:
        with ins.tracer.start_as_current_span(
            "anyhamt.zarr.shard_load", attributes={"anyhamt.cid": _cid_text(ptr)}
        ) as span:
            shard = await original(self, ptr, *args, **kwargs)
            data = getattr(shard, "data", None)
            if data is not None:
                span.set_attribute("anyhamt.bytes", len(data))
            return shard

    return traced


def _targets() -> list[tuple[type, str, Callable[[_Instruments, str, _Method], _Method]]]:
    """Every (class, method, wrapper) ``instrument()`` replaces."""
    from ._hamt import HAMT
    from .cas import ContentAddressedStore, InMemoryCAS, KuboCAS, LocalCAS

    targets: list[tuple[type, str, Callable[[_Instruments, str, _Method], _Method]]] = [
        (HAMT, "get", _hamt_read),
        (HAMT, "get_pointer", _hamt_read),
        (HAMT, "set", _hamt_write),
        (HAMT, "set_pointer", _hamt_write),
        (HAMT, "delete", _hamt_write),
        (HAMT, "make_read_only", _hamt_flush),
    ]
    # The base class's defaults trace stores written outside anyhamt.
    for store in (ContentAddressedStore, InMemoryCAS, LocalCAS, KuboCAS):
        targets += [
            (store, "_load_id", _store_load),
            (store, "_save_id", _store_save),
            (store, "_save_many", _store_save_many),
            (store, "flush", _store_flush),
        ]
    try:
        from . import zarr as zarr_stores
    except ImportError:  # no zarr extra: nothing Zarr to trace
        return targets
    from .zarr._sharded import _Core

    for cls in (
        zarr_stores.ZarrHAMTStore,
        zarr_stores.SimpleEncryptedZarrHAMTStore,
        zarr_stores.ShardedZarrStore,
    ):
        targets += [(cls, "get", _zarr_get), (cls, "set", _zarr_set)]
    targets.append((_Core, "load_shard", _shard_load))
    return targets


def instrument(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Trace anyhamt's HAMT, stores and Zarr stores from now on, in every thread.

    ``tracer_provider``/``meter_provider`` default to OpenTelemetry's global providers.
    Calling it again re-instruments with the new providers. Needs the ``otel`` extra.
    """
    try:
        ins = _Instruments(tracer_provider, meter_provider)
    except ImportError as exc:
        raise InvalidConfigError(
            f"tracing needs OpenTelemetry, which is not installed ({exc}); "
            "install the extra: pip install 'anyhamt[otel]'"
        ) from exc
    with _lock:
        _restore()
        for owner, name, make in _targets():
            # Only methods the class defines itself: a subclass that inherits one is
            # traced through its parent's, once.
            original = owner.__dict__.get(name)
            if original is None:
                continue
            _patched.append((owner, name, original))
            setattr(owner, name, make(ins, name, original))


def uninstrument() -> None:
    """Put every traced method back; tracing then costs nothing again."""
    with _lock:
        _restore()


def is_instrumented() -> bool:
    """Whether ``instrument()`` is in effect."""
    return bool(_patched)


def _restore() -> None:
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
