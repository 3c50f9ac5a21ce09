"""Gateway faults on the reads users get by default: the raw-socket fast path, then httpx.

These tests talk to small HTTP servers on 127.0.0.1 (tests/kubo/_fake_gateway.py) that
misbehave on purpose, because Kubo cannot misbehave on demand: wrong bytes, bodies cut
short, 5xx with Retry-After, 206 for a whole block, answers that never come or come late,
idle keep-alive connections closed by the server. Unlike ``httpx.MockTransport``
(test_kubo_faults.py), which replaces the transport and so switches the fast path off,
nothing here is injected: each KuboCAS is built with default settings, so every read goes
through the same code it takes against a real gateway. No daemon is needed.
"""

from __future__ import annotations

import itertools
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from anyhamt import BlockNotFoundError, BlockVerificationError, InvalidRangeError, KuboError
from anyhamt._codec import RAW, make_link
from anyhamt.cas._kubo import _requests

from ._fake_gateway import Answer, fake_cas, plain
from ._helpers import pool_of

if TYPE_CHECKING:
    import httpx

    from ._fake_gateway import FakeGateways

DATA = bytes(range(256)) * 4
CID = make_link(RAW, DATA)
FAST_PATH = f"/ipfs/f{CID.hex()}?format=raw"  # what the fast path asks for
HTTPX_PATH = f"/ipfs/{CID}"  # what httpx asks for (base32, ``?format=raw`` in the query)


def status(code: str, *extra: str, body: bytes = b"") -> bytes:
    return plain(body, *extra, status=code)


def _no_backoff(attempt: int) -> float:
    raise AssertionError("waited on the backoff schedule where Retry-After should decide")


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """What ``Retry-After`` told each retry to wait (after the cap)."""
    seen: list[float | None] = []
    original = _requests.retry_after

    def recording(response: httpx.Response, cap: float) -> float | None:
        seen.append(original(response, cap))
        return seen[-1]

    monkeypatch.setattr(_requests, "retry_after", recording)
    return seen


# -- the fast path answers ------------------------------------------------------------------


@pytest.mark.usefixtures("no_resource_warnings")
async def test_plain_answers_take_the_fast_path(
    fake_gateway: FakeGateways, httpx_gets: list[str]
) -> None:
    gateway = await fake_gateway(lambda n, head: plain(DATA))
    for verify in (True, False):  # verify=False reads whole blocks on the fast path too
        async with fake_cas(gateway, verify=verify) as cas:
            assert await cas.load(CID) == DATA
            if verify:  # (unverified ranges are HTTP Range requests, through httpx)
                assert await cas.load(CID, offset=2, length=4) == DATA[2:6]
            assert await cas.get_block(CID) == DATA
            assert len(pool_of(cas)._open) == 1  # one keep-alive connection, reused
    assert httpx_gets == []
    assert set(gateway.paths) == {FAST_PATH}  # the CID in base16, which Kubo accepts
    head = gateway.heads[0]
    assert f"Host: 127.0.0.1:{gateway.port}".encode() in head
    assert b"Accept: application/vnd.ipld.raw" in head


@pytest.mark.parametrize("damage", ["short", "flipped"])
async def test_wrong_bytes_raise_and_are_never_returned(
    fake_gateway: FakeGateways, httpx_gets: list[str], damage: str
) -> None:
    bad = DATA[:-10] if damage == "short" else DATA[:5] + b"X" + DATA[6:]
    gateway = await fake_gateway(lambda n, head: plain(bad))
    async with fake_cas(gateway) as cas:
        with pytest.raises(BlockVerificationError, match=r"gateway http://127\.0\.0\.1"):
            await cas.load(CID)
        with pytest.raises(BlockVerificationError):
            await cas.load(CID, offset=0, length=4)  # ranges are verified too
    assert httpx_gets == []  # rejected on the fast path, not handed to httpx
    assert gateway.requests == 2


async def test_failover_to_the_next_gateway_on_wrong_bytes_and_404(
    fake_gateway: FakeGateways,
) -> None:
    wrong = await fake_gateway(lambda n, head: plain(b"not the block"))
    missing = await fake_gateway(lambda n, head: status("404 Not Found"))
    good = await fake_gateway(lambda n, head: plain(DATA))
    async with fake_cas(wrong, missing, good) as cas:
        assert await cas.load(CID) == DATA
    # Wrong bytes fail on the fast path; a 404 is asked again through httpx, which
    # decides it; the good gateway answers on the fast path.
    assert wrong.paths == [FAST_PATH]
    assert [p.split("?")[0] for p in missing.paths] == [FAST_PATH.split("?")[0], HTTPX_PATH]
    assert good.paths == [FAST_PATH]


async def test_404_everywhere_is_block_not_found(fake_gateway: FakeGateways) -> None:
    first = await fake_gateway(lambda n, head: status("404 Not Found"))
    second = await fake_gateway(lambda n, head: status("410 Gone"))
    async with fake_cas(first, second) as cas:
        with pytest.raises(BlockNotFoundError, match="any of the gateways"):
            await cas.load(CID)


# -- answers the fast path hands to httpx --------------------------------------------------


async def test_truncated_body_is_retried(fake_gateway: FakeGateways, httpx_gets: list[str]) -> None:
    """The connection drops mid-body twice: on the fast path, then on httpx's first try."""
    cut = Answer(plain(DATA)[:-100], close=True)
    gateway = await fake_gateway(lambda n, head: cut if n < 2 else plain(DATA))
    async with fake_cas(gateway) as cas:
        assert await cas.load(CID) == DATA
    assert gateway.requests == 3
    assert httpx_gets == [HTTPX_PATH, HTTPX_PATH]


async def test_503_retry_after_is_honoured(
    fake_gateway: FakeGateways, waits: list[float | None]
) -> None:
    answers = [
        status("503 Service Unavailable", "Retry-After: 0.05"),  # the fast path gives up
        status("503 Service Unavailable", "Retry-After: 0.05"),  # httpx waits 0.05 s
        # An HTTP date in the past means "now".
        status("503 Service Unavailable", f"Retry-After: {formatdate(usegmt=True)}"),
        plain(DATA),
    ]
    gateway = await fake_gateway(lambda n, head: answers[n])
    async with fake_cas(gateway) as cas:
        # Both waits must come from Retry-After, never from the backoff schedule.
        cas._http.backoff = _no_backoff  # type: ignore[method-assign]
        assert await cas.load(CID) == DATA
    assert gateway.requests == 4
    assert waits == [0.05, 0.0]


async def test_retry_after_is_capped(fake_gateway: FakeGateways, waits: list[float | None]) -> None:
    """A hostile Retry-After cannot stall a read (uncapped, it would wait a day)."""
    hostile = status("429 Too Many Requests", "Retry-After: 100000")
    gateway = await fake_gateway(lambda n, head: hostile if n < 2 else plain(DATA))
    async with fake_cas(gateway, max_retry_after=0.05) as cas:
        cas._http.backoff = _no_backoff  # type: ignore[method-assign]
        assert await cas.load(CID) == DATA
    assert waits == [0.05]


async def test_5xx_backoff_grows_then_a_typed_error(fake_gateway: FakeGateways) -> None:
    gateway = await fake_gateway(lambda n, head: status("502 Bad Gateway"))
    async with fake_cas(gateway, max_retries=3, initial_delay=0.01, backoff_factor=3) as cas:
        scheduled: list[float] = []
        backoff = cas._http.backoff

        def recording_backoff(attempt: int) -> float:
            scheduled.append(backoff(attempt))
            return scheduled[-1]

        cas._http.backoff = recording_backoff  # type: ignore[method-assign]
        with pytest.raises(KuboError) as info:
            await cas.load(CID)
    assert info.value.status_code == 502
    assert gateway.requests == 1 + 4  # the fast path once, then httpx with 3 retries
    # The schedule grows by backoff_factor (with +-20% jitter, so 3 * 0.8 / 1.2 at least).
    assert len(scheduled) == 3
    assert all(b >= a * 2 for a, b in itertools.pairwise(scheduled))


async def test_206_for_a_whole_block_is_an_error(fake_gateway: FakeGateways) -> None:
    partial = status("206 Partial Content", f"Content-Range: bytes 0-9/{len(DATA)}", body=DATA[:10])
    gateway = await fake_gateway(lambda n, head: partial)
    async with fake_cas(gateway, max_retries=0) as cas:
        with pytest.raises(KuboError, match="could not serve") as info:
            await cas.load(CID)
    assert info.value.status_code == 206
    assert gateway.requests == 2  # the fast path, then httpx


async def test_unusual_but_valid_answers_go_through_httpx(
    fake_gateway: FakeGateways, httpx_gets: list[str]
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(DATA):x}\r\n".encode()
        + DATA
        + b"\r\n0\r\n\r\n"
    )
    answers = [
        chunked,  # fast path: not plain, give up...
        chunked,  # ...and httpx reads it
        plain(DATA, "Content-Encoding: gzip"),
        plain(DATA),
        b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA,
        plain(DATA),
        plain(DATA, "Connection: close"),  # fine, but not kept
        plain(DATA),
    ]
    gateway = await fake_gateway(lambda n, head: answers[n])
    async with fake_cas(gateway) as cas:
        for _ in range(4):
            assert await cas.load(CID) == DATA
        assert len(httpx_gets) == 3
        assert not pool_of(cas)._open  # the last answer said Connection: close
        assert await cas.load(CID) == DATA
    assert len(httpx_gets) == 3  # the last read was the fast path's, on a new connection
    assert gateway.connections >= 2


# -- unverified ranges: HTTP Range requests, checked -----------------------------------------


async def test_416_and_bad_206_for_unverified_ranges(fake_gateway: FakeGateways) -> None:
    def respond(n: int, head: bytes) -> bytes:
        spec = next(
            (line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
             if line.lower().startswith(b"range:")),
            b"",
        )  # fmt: skip
        if spec in (b"bytes=5000-", b"bytes=10-"):
            return status("416 Range Not Satisfiable", f"Content-Range: bytes */{len(DATA)}")
        if spec == b"bytes=0-3":
            return status("206 Partial Content", "Content-Range: bytes 1-4/1024", body=b"abcd")
        if spec == b"bytes=4-7":
            return plain(DATA)  # a gateway that ignores Range: the whole body, sliced here
        return status("500 Internal Server Error")

    gateway = await fake_gateway(respond)
    async with fake_cas(gateway, verify=False, max_retries=0) as cas:
        assert await cas.load(CID, offset=5000) == b""
        with pytest.raises(InvalidRangeError):
            await cas.load(CID, offset=10)  # 416 for a range that exists: inconsistent
        with pytest.raises(KuboError, match="wrong window"):
            await cas.load(CID, offset=0, length=4)
        assert await cas.load(CID, offset=4, length=4) == DATA[4:8]


# -- slow answers, cancellation, connections -------------------------------------------------


async def test_slow_answer_is_waited_for(fake_gateway: FakeGateways, httpx_gets: list[str]) -> None:
    release = anyio.Event()
    gateway = await fake_gateway(lambda n, head: Answer(plain(DATA), wait=release))
    async with fake_cas(gateway) as cas:
        got: list[bytes] = []

        async def read() -> None:
            got.append(await cas.load(CID))

        async with anyio.create_task_group() as tg:
            arrived = gateway.arrived
            tg.start_soon(read)
            await arrived.wait()
            await anyio.wait_all_tasks_blocked()
            assert got == []  # still waiting for the answer
            release.set()
        assert got == [DATA]
    assert httpx_gets == []


async def test_answer_that_never_comes_times_out_then_a_typed_error(
    fake_gateway: FakeGateways,
) -> None:
    gateway = await fake_gateway(lambda n, head: None)
    async with fake_cas(gateway, timeout=0.2, max_retries=1) as cas:
        with pytest.raises(KuboError, match="timed out after 2 attempts"):
            await cas.load(CID)
    assert gateway.requests == 3  # the fast path's one try, then httpx's two
    assert gateway.closed_by_client >= 1  # the fast path closed its connection


@pytest.mark.usefixtures("no_resource_warnings")
async def test_cancelled_read_closes_its_connection(fake_gateway: FakeGateways) -> None:
    gateway = await fake_gateway(lambda n, head: None if n == 1 else plain(DATA))
    async with fake_cas(gateway) as cas:
        assert await cas.load(CID) == DATA
        pool = pool_of(cas)
        closed = gateway.client_closed
        async with anyio.create_task_group() as tg:
            arrived = gateway.arrived
            tg.start_soon(cas.load, CID)  # the gateway hangs on this one
            await arrived.wait()
            tg.cancel_scope.cancel()
        assert not pool._open  # closed, not returned to the pool
        await closed.wait()  # and the server saw it go
        assert await cas.load(CID) == DATA  # a new connection
        assert len(pool._open) == 1
    assert gateway.requests == 3 and gateway.connections == 2


@pytest.mark.usefixtures("no_resource_warnings")
async def test_closed_keep_alive_connection_is_retried_once(
    fake_gateway: FakeGateways, httpx_gets: list[str]
) -> None:
    answers: list[bytes | Answer] = [
        Answer(plain(DATA), close=True),  # kept by the client, then closed by the server
        plain(DATA),  # the read retries on a new connection
        Answer(plain(DATA), close=True),
        Answer(b"", close=True),  # the retry's new connection also dies: no third try...
        plain(DATA),  # ...httpx reads it
    ]
    gateway = await fake_gateway(lambda n, head: answers[n])
    async with fake_cas(gateway) as cas:
        assert await cas.load(CID) == DATA
        assert await cas.load(CID) == DATA
        assert httpx_gets == []
        assert gateway.connections == 2
        assert await cas.load(CID) == DATA
        assert await cas.load(CID) == DATA
    assert httpx_gets == [HTTPX_PATH]
    assert gateway.requests == 5


# -- credentials -----------------------------------------------------------------------------


async def test_credentials_stay_with_their_origins(fake_gateway: FakeGateways) -> None:
    other = await fake_gateway(lambda n, head: plain(DATA))
    redirect = f"Location: {other.url}/redirected/{CID}"
    trusted = await fake_gateway(lambda n, head: status("302 Found", redirect))
    async with fake_cas(trusted, other, headers={"X-Key": "secret"}) as cas:
        assert await cas.load(CID) == DATA
    # The fast path sends the credential header to the trusted gateway; so does httpx,
    # which follows the redirect to another origin without it.
    assert [b"X-Key: secret" in h or b"x-key: secret" in h for h in trusted.heads] == [True, True]
    assert [b"secret" in h for h in other.heads] == [False]
    # httpx.Auth flows are httpx's business: such a gateway is read through httpx only.
    async with fake_cas(trusted, other, auth=("user", "pass")) as cas:
        assert await cas.load(CID) == DATA
    assert trusted.paths[-1] == HTTPX_PATH + "?format=raw"
    assert b"authorization: basic" in trusted.heads[-1].lower()
    assert not any(b"authorization" in h.lower() for h in other.heads)


# -- cancellation points ---------------------------------------------------------------------


async def test_calls_in_a_cancelled_scope_do_nothing(fake_gateway: FakeGateways) -> None:
    gateway = await fake_gateway(lambda n, head: plain(DATA))
    other = make_link(RAW, b"other")
    calls: list[Any] = [
        lambda cas: cas.load(CID),
        lambda cas: cas.get_block(CID),
        lambda cas: cas.has(CID),
        lambda cas: cas.save(b"x", "raw"),
        lambda cas: cas.put_block(CID, DATA),
        lambda cas: cas.flush(),
        lambda cas: cas.pin_cid(CID),
        lambda cas: cas.unpin_cid(CID),
        lambda cas: cas.pin_update(CID, other),
        lambda cas: cas.pin_ls(),
    ]
    async with fake_cas(gateway, rpc_base_url=gateway.url) as cas:
        for call in calls:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await call(cas)
                pytest.fail("the call returned in a cancelled scope")  # pragma: no cover
            assert scope.cancelled_caught
        assert gateway.requests == 0  # no request, to the gateway or the RPC
        assert cas._pending == {}  # nothing queued
        assert cas._loops == {}  # not even a client or a pool
        assert await cas.load(CID) == DATA  # and the store works afterwards
