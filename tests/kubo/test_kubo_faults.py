"""Faults: a daemon that dies during a flush (real), and injected HTTP faults.

The real daemon cannot produce a 503 with Retry-After, a timeout, a truncated or corrupted
body or a malformed 206 on demand; those tests use ``httpx.MockTransport`` and say so.
An injected transport switches the raw-socket fast path off, so these cover the httpx
path of a store built with ``transport=``; the same faults on the default read path,
from scripted servers on 127.0.0.1, are in test_kubo_fake_gateway.py. Only the tests that
use a daemon carry the ``kubo`` mark.
"""

from __future__ import annotations

import itertools
import os
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from anyhamt import (
    HAMT,
    BlockNotFoundError,
    BlockVerificationError,
    InvalidRangeError,
    KuboCAS,
    KuboError,
    LocalCAS,
)
from anyhamt._codec import RAW, make_link
from anyhamt.cas._kubo._requests import retry_after as _retry_after

from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from ._daemon import KuboDaemon


GATEWAY = "http://gw.test"
OTHER_GATEWAY = "http://other-gw.test"
RPC = "http://rpc.test"
DATA = bytes(range(256)) * 4
CID = make_link(RAW, DATA)


def mock_cas(handler: Callable[[httpx.Request], Any], **kwargs: Any) -> KuboCAS:
    kwargs.setdefault("initial_delay", 0.01)
    kwargs.setdefault("gateway_base_url", GATEWAY)
    return KuboCAS(rpc_base_url=RPC, transport=httpx.MockTransport(handler), **kwargs)


# -- the real daemon dies during a flush ------------------------------------------------


@pytest.mark.kubo
async def test_daemon_stopped_during_flush_then_restarted(
    fresh_kubo_daemon: KuboDaemon, tmp_path: Path
) -> None:
    """Kill the daemon after a few batches of make_read_only; nothing unconfirmed counts
    as written; after a restart the same flush completes with the reference root."""
    daemon = fresh_kubo_daemon
    contents = {f"key-{i}": os.urandom(40) for i in range(2500)}
    async with LocalCAS(tmp_path / "ref.sqlite3") as local:
        reference = await HAMT.build(cas=local, values_are_bytes=True)
        for key, value in contents.items():
            await reference.set(key, value)
        await reference.make_read_only()

    puts = 0
    armed = False

    async def kill_after_some_puts(response: httpx.Response) -> None:
        nonlocal puts
        if armed and response.request.url.path.endswith("/block/put"):
            puts += 1
            if puts == 3:
                await anyio.to_thread.run_sync(daemon.kill)

    def factory() -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"response": [kill_after_some_puts]})

    cas = cas_for(
        daemon,
        client_factory=factory,
        batch_blocks=200,
        max_retries=1,
        initial_delay=0.05,
    )
    async with cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        for key, value in contents.items():
            await hamt.set(key, value)  # full batches of values go up as they fill
        armed = True
        with pytest.raises(KuboError):
            await hamt.make_read_only()
        assert puts >= 3
        assert hamt.root_node_id is None  # no root reported for a write that did not finish
        assert cas._pending  # the unconfirmed blocks are still queued

        daemon.start()
        # Every block KuboCAS treats as written (saved and no longer pending) is really
        # on the daemon: check a sample through the gateway.
        stored = [make_link(RAW, v) for v in contents.values()]
        confirmed = [link for link in stored if link not in cas._pending]
        assert confirmed
        async with cas_for(daemon) as checker:
            for link in confirmed[::50]:
                assert await checker._load_id(link)

        await hamt.make_read_only()  # the retry finishes the flush
        assert hamt.root_node_id == reference.root_node_id
        assert not cas._pending

    async with cas_for(daemon) as cas2:
        again = await HAMT.build(
            cas=cas2, root_node_id=reference.root_node_id, values_are_bytes=True, read_only=True
        )
        async for key in again.keys():
            assert await again.get(key) == contents[key]
        assert await again.len() == len(contents)


@pytest.mark.kubo
async def test_block_failing_mid_batch_is_not_reported_written(kubo_daemon: KuboDaemon) -> None:
    """Kubo answers 200 with fewer lines when a block in the middle fails (over 2 MiB)."""
    big = os.urandom(3 * 2**20)
    async with cas_for(
        kubo_daemon,
        chunker="size-4194304",  # so the 3 MiB value is one (too big) block
    ) as cas:
        small_before, small_after = os.urandom(10), os.urandom(10)
        links = await cas._save_many([small_before, big, small_after], "raw")
        with pytest.raises(KuboError, match="confirmed only 1 of 3"):
            await cas.flush()
        assert links[0] not in cas._pending
        assert links[1] in cas._pending and links[2] in cas._pending
    async with cas_for(kubo_daemon) as reader:
        assert await reader._load_id(links[0]) == small_before
        with pytest.raises(BlockNotFoundError):
            await reader._load_id(links[2])


# -- injected faults (httpx.MockTransport) ----------------------------------------------


def _no_backoff(attempt: int) -> float:
    raise AssertionError("waited on the backoff schedule where Retry-After should decide")


async def test_503_retry_after_is_honoured() -> None:
    """Injected with MockTransport: Kubo does not send 503 on demand."""
    attempts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.4"})
        if len(attempts) == 2:
            # An HTTP date in the past means "now".
            return httpx.Response(503, headers={"Retry-After": formatdate(usegmt=True)})
        return httpx.Response(200, content=DATA)

    async with mock_cas(handler) as cas:
        # Both waits must come from Retry-After, never from the backoff schedule.
        cas._http.backoff = _no_backoff  # type: ignore[method-assign]
        assert await cas._load_id(CID) == DATA
    assert len(attempts) == 3
    # A lower bound only: a loaded machine makes sleeps longer, never shorter.
    assert attempts[1] - attempts[0] >= 0.35


async def test_retry_after_is_capped() -> None:
    """Injected with MockTransport: a hostile Retry-After cannot stall a read."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"Retry-After": "100000"})
        return httpx.Response(200, content=DATA)

    assert _retry_after(httpx.Response(429, headers={"Retry-After": "100000"}), 0.1) == 0.1
    # Uncapped, this read would sleep for a day and the per-test timeout would fail it.
    async with mock_cas(handler, max_retry_after=0.1) as cas:
        cas._http.backoff = _no_backoff  # type: ignore[method-assign]
        assert await cas._load_id(CID) == DATA
    assert calls == 2


async def test_timeouts_are_retried_then_raise_a_typed_error() -> None:
    """Injected with MockTransport: a read timeout on every attempt."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("timed out", request=request)

    async with mock_cas(handler, max_retries=2) as cas:
        with pytest.raises(KuboError, match="timed out after 3 attempts") as info:
            await cas._load_id(CID)
        assert info.value.status_code is None
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        with pytest.raises(KuboError):
            await cas.save(b"x", "raw")
    assert calls == 6


async def test_5xx_backoff_grows() -> None:
    """Injected with MockTransport: exponential backoff between attempts."""
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return httpx.Response(502)

    async with mock_cas(handler, max_retries=3, initial_delay=0.05, backoff_factor=3) as cas:
        scheduled: list[float] = []
        backoff = cas._http.backoff

        def recording_backoff(attempt: int) -> float:
            scheduled.append(backoff(attempt))
            return scheduled[-1]

        cas._http.backoff = recording_backoff  # type: ignore[method-assign]
        with pytest.raises(KuboError) as info:
            await cas._load_id(CID)
    assert info.value.status_code == 502
    # The schedule grows by backoff_factor (with +-20% jitter, so 3 * 0.8 / 1.2 at least).
    assert len(scheduled) == 3
    assert all(b >= a * 2 for a, b in itertools.pairwise(scheduled))
    assert 0.04 <= scheduled[0] <= 0.06
    # Each wait really happened: gaps are at least what was scheduled (lower bounds only;
    # a loaded machine makes them longer, never shorter).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert all(gap >= want * 0.95 for gap, want in zip(gaps, scheduled, strict=True))


async def test_kubo_deterministic_500_is_not_retried() -> None:
    """Injected with MockTransport: Kubo's JSON 500 errors are answers, not glitches."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        body = {
            "Message": "produced block is over 2MiB: big blocks can't be exchanged",
            "Code": 0,
            "Type": "error",
        }
        return httpx.Response(500, json=body)

    async with mock_cas(handler) as cas:
        with pytest.raises(KuboError, match="over 2MiB"):
            await cas.save(b"x", "raw")
    assert calls == 1


class _TruncatedStream(httpx.AsyncByteStream):
    """A body that stops half-way, the way a dropped connection looks to httpx."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: len(self.data) // 2]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_truncated_body_is_retried() -> None:
    """Injected with MockTransport: the connection drops mid-body once."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(200, stream=_TruncatedStream(DATA))
        return httpx.Response(200, content=DATA)

    async with mock_cas(handler) as cas:
        assert await cas._load_id(CID) == DATA
    assert calls == 2


@pytest.mark.parametrize("damage", ["short", "flipped"])
async def test_wrong_bytes_raise_and_are_never_returned(damage: str) -> None:
    """Injected with MockTransport: a gateway that serves a short or altered body."""
    bad = DATA[:-10] if damage == "short" else DATA[:5] + b"X" + DATA[6:]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bad)

    async with mock_cas(handler) as cas:
        with pytest.raises(BlockVerificationError):
            await cas._load_id(CID)
        with pytest.raises(BlockVerificationError):
            await cas.load(CID.to_cid(), offset=0, length=4)  # ranges are verified too


async def test_failover_to_the_next_gateway_on_wrong_bytes_and_404() -> None:
    """Injected with MockTransport: two bad gateways, then a good one."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "gw.test":
            return httpx.Response(200, content=b"not the block")
        if request.url.host == "other-gw.test":
            return httpx.Response(404)
        return httpx.Response(200, content=DATA)

    async with KuboCAS(
        rpc_base_url=RPC,
        gateway_base_urls=[GATEWAY, OTHER_GATEWAY + "/ipfs/", "http://third.test/"],
        transport=httpx.MockTransport(handler),
    ) as cas:
        assert await cas._load_id(CID) == DATA
    assert hosts == ["gw.test", "other-gw.test", "third.test"]


async def test_404_everywhere_is_block_not_found() -> None:
    """Injected with MockTransport: no gateway has the block."""
    async with KuboCAS(
        rpc_base_url=RPC,
        gateway_base_urls=[GATEWAY, OTHER_GATEWAY],
        transport=httpx.MockTransport(lambda r: httpx.Response(404)),
    ) as cas:
        with pytest.raises(BlockNotFoundError):
            await cas._load_id(CID)


async def test_416_and_bad_206_for_unverified_ranges() -> None:
    """Injected with MockTransport: range answers Kubo gives, and a broken one."""

    def handler(request: httpx.Request) -> httpx.Response:
        spec = request.headers.get("Range", "")
        if spec == "bytes=5000-":
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(DATA)}"})
        if spec == "bytes=10-":
            return httpx.Response(416, headers={"Content-Range": f"bytes */{len(DATA)}"})
        if spec == "bytes=0-3":
            return httpx.Response(206, content=b"abcd", headers={"Content-Range": "bytes 1-4/1024"})
        if spec == "bytes=4-7":
            # A gateway that ignores Range: the whole body, sliced here.
            return httpx.Response(200, content=DATA)
        return httpx.Response(500)

    async with mock_cas(handler, verify=False, max_retries=0) as cas:
        assert await cas._load_id(CID, offset=5000) == b""
        with pytest.raises(InvalidRangeError):
            await cas._load_id(CID, offset=10)  # 416 for a range that exists: inconsistent
        with pytest.raises(KuboError, match="wrong window"):
            await cas._load_id(CID, offset=0, length=4)
        assert await cas._load_id(CID, offset=4, length=4) == DATA[4:8]


async def test_credentials_stay_with_their_origins() -> None:
    """Injected with MockTransport: we need to see each request's headers."""
    seen: list[tuple[str, str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (request.url.host, request.headers.get("Authorization"), request.headers.get("X-Key"))
        )
        if request.url.host == "gw.test" and request.url.path.startswith("/ipfs/"):
            # The trusted gateway redirects to a foreign one.
            return httpx.Response(302, headers={"Location": f"{OTHER_GATEWAY}/redirected/{CID}"})
        if request.url.path.startswith("/api/v0/block/put"):
            return httpx.Response(200, text=f'{{"Key":"{make_link(RAW, b"x")}","Size":1}}\n')
        return httpx.Response(200, content=DATA)

    async with KuboCAS(
        rpc_base_url=RPC,
        gateway_base_urls=[GATEWAY, OTHER_GATEWAY],
        transport=httpx.MockTransport(handler),
        headers={"X-Key": "secret"},
        auth=("user", "pass"),
    ) as cas:
        await cas.save(b"x", "raw")
        assert await cas._load_id(CID) == DATA
    rpc, gateway, redirected = seen
    assert rpc[0] == "rpc.test" and rpc[1] and rpc[2] == "secret"
    assert gateway[0] == "gw.test" and gateway[1] and gateway[2] == "secret"
    assert redirected == ("other-gw.test", None, None)
