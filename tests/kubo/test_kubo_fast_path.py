"""The lean HTTP/1.1 path for whole-block gateway reads (anyhamt/cas/_http.py).

Against the real daemon: the fast path answers, its bytes are verified, a missing block
still ends as BlockNotFoundError (through httpx), a restarted daemon's dead keep-alive
connections are replaced, and every loop's connections are closed without warnings.
A tiny in-process gateway produces what Kubo will not on demand: a hung response, wrong
bytes, a chunked answer, ``Connection: close``.
"""

from __future__ import annotations

import gc
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import sniffio

from anyhamt import BlockNotFoundError, BlockVerificationError, KuboCAS
from anyhamt._codec import RAW, make_link

from .test_kubo_loops import run_in_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


def cas_for(daemon: KuboDaemon, **kwargs: Any) -> KuboCAS:
    return KuboCAS(rpc_base_url=daemon.rpc_url, gateway_base_url=daemon.gateway_url, **kwargs)


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


@pytest.fixture
def httpx_gets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the gateway GETs that went through httpx."""
    seen: list[str] = []
    send = httpx.AsyncClient.send

    async def counting(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        if request.method == "GET":
            seen.append(request.url.path)
        return await send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting)
    return seen


def pool_of(cas: KuboCAS) -> Any:
    return cas._loops[anyio.lowlevel.current_token().native_token].fast


async def store(daemon: KuboDaemon, blocks: list[bytes]) -> list[Any]:
    async with cas_for(daemon) as writer:
        return [await writer.save(b, "raw") for b in blocks]


@pytest.mark.usefixtures("no_resource_warnings")
async def test_reads_take_the_fast_path_and_are_verified(
    kubo_daemon: KuboDaemon, httpx_gets: list[str]
) -> None:
    blocks = [f"fast block {i}".encode() * (i + 1) for i in range(40)]
    blocks.append(b"x" * 300_000)  # a body that arrives in many reads
    cids = await store(kubo_daemon, blocks)
    async with cas_for(kubo_daemon) as cas:
        for cid, data in zip(cids, blocks, strict=True):
            assert await cas.load(cid) == data
            assert await cas.get_block(cid) == data
        assert cas._fast_reads == 2 * len(blocks)
        assert httpx_gets == []
        # Sequential reads reuse one keep-alive connection.
        assert len(pool_of(cas)._open) == 1
        # Concurrent reads use several, at most the limiter's size stay open.
        async with anyio.create_task_group() as tg:
            for cid in cids * 3:
                tg.start_soon(cas.load, cid)
        assert 1 <= len(pool_of(cas)._open) <= cas.concurrency
        assert httpx_gets == []


async def test_missing_block_falls_back_to_httpx(
    kubo_daemon: KuboDaemon, httpx_gets: list[str]
) -> None:
    async with cas_for(kubo_daemon) as cas:
        cid = await cas.save(b"present", "raw")
        await cas.load(cid)
        missing = make_link(RAW, b"never stored, fast path")
        with pytest.raises(BlockNotFoundError):
            await cas.load(missing)
        assert httpx_gets == [f"/ipfs/{missing}"]  # the 404 was decided by httpx
        assert await cas.load(cid) == b"present"  # and the pool is fine
        assert cas._fast_reads == 2


async def test_restarted_daemon_stale_connections_are_replaced(
    fresh_kubo_daemon: KuboDaemon, httpx_gets: list[str]
) -> None:
    cids = await store(fresh_kubo_daemon, [b"before restart", b"after restart"])
    async with cas_for(fresh_kubo_daemon, max_retries=0) as cas:
        assert await cas.load(cids[0]) == b"before restart"
        assert len(pool_of(cas)._open) == 1
        # The daemon goes away and comes back on the same port: the idle connection in
        # the pool is dead; the read retries once on a new one, still on the fast path.
        await anyio.to_thread.run_sync(fresh_kubo_daemon.stop)
        await anyio.to_thread.run_sync(fresh_kubo_daemon.start)
        assert await cas.load(cids[1]) == b"after restart"
        assert await cas.load(cids[0]) == b"before restart"
        assert cas._fast_reads == 3
        assert httpx_gets == []


@pytest.mark.usefixtures("no_resource_warnings")
async def test_aclose_from_another_loop_closes_fast_connections(kubo_daemon: KuboDaemon) -> None:
    (cid,) = await store(kubo_daemon, [b"closed from elsewhere"])
    cas = cas_for(kubo_daemon)
    assert await cas.load(cid) == b"closed from elsewhere"
    pool = pool_of(cas)
    streams = set(pool._open)
    assert streams

    async def close_there() -> None:
        await cas.aclose()

    other = "trio" if sniffio.current_async_library() == "asyncio" else "asyncio"
    thread, outcome = run_in_thread(other, close_there)
    await anyio.to_thread.run_sync(thread.join, 30)
    assert outcome == [None]
    for _ in range(6000):  # the keeper closes them on this loop, soon (bounded: 60 s)
        if pool.closed and not pool._open:
            break
        await anyio.sleep(0.01)
    assert pool.closed and not pool._open
    # Usable again: a new state and pool.
    assert await cas.load(cid) == b"closed from elsewhere"
    assert pool_of(cas) is not pool
    await cas.aclose()


@pytest.mark.usefixtures("no_resource_warnings")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_loop_ending_without_aclose_closes_fast_connections(
    kubo_daemon: KuboDaemon, backend: str
) -> None:
    (cid,) = await store(kubo_daemon, [b"loop ends"])
    cas = cas_for(kubo_daemon)
    pools: list[Any] = []

    async def read_and_leave() -> bytes:
        data = await cas.load(cid)
        pools.append(pool_of(cas))
        return data

    thread, outcome = run_in_thread(backend, read_and_leave)
    await anyio.to_thread.run_sync(thread.join, 30)
    assert outcome == [b"loop ends"]
    assert pools[0].closed and not pools[0]._open
    await cas.aclose()


# -- an in-process gateway for what Kubo will not do on demand ---------------------------

DATA = b"served by the fake gateway " * 10
CID = make_link(RAW, DATA)


def plain(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


class FakeGateway:
    """Answers each request with ``respond(n)`` (n counts requests from 0); None: hang."""

    def __init__(self, respond: Callable[[int], bytes | None]) -> None:
        self.respond = respond
        self.requests = 0
        self.connections = 0
        self.closed_by_client = 0
        self.port = 0
        self.heads: list[bytes] = []

    async def handle(self, stream: Any) -> None:
        self.connections += 1
        async with stream:
            buffer = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.heads.append(head)
                    answer = self.respond(self.requests)
                    self.requests += 1
                    if answer is None:
                        buffer += await stream.receive()  # hang until the client goes
                        continue
                    await stream.send(answer)
                    if b"Connection: close" in answer:
                        return
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self.closed_by_client += 1


@pytest.fixture
async def fake_gateway() -> AsyncIterator[Callable[[Callable[[int], bytes | None]], Any]]:
    async def serve(listener: Any, gateway: FakeGateway) -> None:
        async with listener:
            await listener.serve(gateway.handle)

    async with anyio.create_task_group() as tg:
        servers: list[FakeGateway] = []

        async def start(respond: Callable[[int], bytes | None]) -> FakeGateway:
            gateway = FakeGateway(respond)
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            gateway.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(serve, listener, gateway)
            servers.append(gateway)
            return gateway

        yield start
        tg.cancel_scope.cancel()


def fake_cas(gateway: FakeGateway, **kwargs: Any) -> KuboCAS:
    kwargs.setdefault("initial_delay", 0.01)
    return KuboCAS(
        rpc_base_url="http://127.0.0.1:9",
        gateway_base_url=f"http://127.0.0.1:{gateway.port}",
        **kwargs,
    )


@pytest.mark.usefixtures("no_resource_warnings")
async def test_cancelled_read_closes_its_connection(fake_gateway: Any) -> None:
    gateway = await fake_gateway(lambda n: None if n == 1 else plain(DATA))
    async with fake_cas(gateway) as cas:
        assert await cas.load(CID) == DATA
        with anyio.move_on_after(0.2) as scope:
            await cas.load(CID)  # the gateway hangs on this one
        assert scope.cancelled_caught
        pool = pool_of(cas)
        assert not pool._open  # closed, not returned to the pool
        for _ in range(6000):  # bounded poll, 60 s: the close is seen by another task
            if gateway.closed_by_client:
                break
            await anyio.sleep(0.01)
        assert gateway.closed_by_client == 1
        assert await cas.load(CID) == DATA  # a new connection
        assert len(pool._open) == 1
        assert cas._fast_reads == 2


async def test_wrong_bytes_are_rejected(fake_gateway: Any) -> None:
    gateway = await fake_gateway(lambda n: plain(DATA[:-1] + b"!"))
    async with fake_cas(gateway) as cas:
        with pytest.raises(BlockVerificationError):
            await cas.load(CID)
        assert cas._fast_reads == 1


async def test_unusual_answers_go_through_httpx(fake_gateway: Any, httpx_gets: list[str]) -> None:
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
    gateway = await fake_gateway(lambda n: answers[n])
    async with fake_cas(gateway) as cas:
        for _ in range(4):
            assert await cas.load(CID) == DATA
        assert len(httpx_gets) == 3
        assert cas._fast_reads == 1
        assert not pool_of(cas)._open  # the last answer said Connection: close
        assert await cas.load(CID) == DATA
        assert cas._fast_reads == 2


async def test_headers_are_sent_and_auth_disables_the_fast_path(fake_gateway: Any) -> None:
    gateway = await fake_gateway(lambda n: plain(DATA))
    async with fake_cas(gateway, headers={"Authorization": "Bearer t0ken"}) as cas:
        assert await cas.load(CID) == DATA
        assert cas._fast_reads == 1
    head = gateway.heads[0]
    assert head.startswith(f"GET /ipfs/{CID}?format=raw HTTP/1.1\r\n".encode())
    assert f"Host: 127.0.0.1:{gateway.port}".encode() in head
    assert b"Accept: application/vnd.ipld.raw" in head
    assert b"Authorization: Bearer t0ken" in head
    # httpx.Auth flows are httpx's business: such a gateway is read through httpx.
    async with fake_cas(gateway, auth=("user", "pass")) as cas:
        assert await cas.load(CID) == DATA
        assert cas._fast_reads == 0
    assert b"Authorization: Basic" in gateway.heads[-1]


# -- the parts that need no server -------------------------------------------------------


class Chunks:
    """A stream that hands out the given pieces, then ends."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.pieces:
            raise anyio.EndOfStream
        piece = self.pieces.pop(0)
        if len(piece) > max_bytes:
            piece, rest = piece[:max_bytes], piece[max_bytes:]
            self.pieces.insert(0, rest)
        return piece


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (plain(DATA), (DATA, True)),
        (b"HTTP/1.1 200\r\ncontent-length: 3\r\n\r\nabc", (b"abc", True)),
        (plain(DATA, "Connection: close"), (DATA, False)),
        (plain(DATA, "Content-Encoding: identity"), (DATA, True)),
        (plain(b""), (b"", True)),
        (plain(DATA, f"Content-Length: {len(DATA)}"), None),  # twice
        (plain(DATA, "Content-Encoding: gzip"), None),
        (plain(DATA, "Content-Encoding: identity", "Content-Encoding: gzip"), None),
        (plain(DATA, "Transfer-Encoding: chunked"), None),
        (plain(DATA, "X-Folded: a", " b"), None),
        (plain(DATA) + b"extra", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\n\r\n" + DATA, None),  # no length: read to the end, no
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", None),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", None),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", None),
    ],
)
async def test_only_plain_answers_pass(answer: bytes, expected: Any) -> None:
    from anyhamt.cas._http import FastPool

    # Whole, and split at every awkward place (inside the head's CRLFCRLF, in the body).
    for cut in (len(answer), 5, answer.find(b"\r\n\r\n") + 2, len(answer) - 1):
        stream = Chunks(answer[:cut], answer[cut:]) if 0 < cut < len(answer) else Chunks(answer)
        first = await stream.receive()
        assert await FastPool._response(stream, first) == expected  # type: ignore[arg-type]


async def test_truncated_body_is_an_error() -> None:
    from anyhamt.cas._http import FastPool

    stream = Chunks(plain(DATA)[:-5])
    with pytest.raises(anyio.EndOfStream):
        await FastPool._response(stream, await stream.receive())  # type: ignore[arg-type]


def test_block_put_lines_are_checked_exactly() -> None:
    import hashlib
    import json

    from anyhamt._codec import DAG_CBOR, Link
    from anyhamt.cas._kubo import _confirms

    for codec in (RAW, DAG_CBOR):
        for i in range(200):
            data = f"block {i}".encode()
            link = make_link(codec, data)
            sha = Link(bytes([1, codec, 0x12, 32]) + hashlib.sha256(data).digest())
            for cid in (link, sha):
                line = json.dumps({"Key": str(cid), "Size": len(data)}, separators=(",", ":"))
                assert _confirms(line.encode(), cid)
            text = str(link)
            assert not _confirms(f'{{"Key":"{sha}","Size":1}}'.encode(), link)
            assert not _confirms(f'{{"Key":"{make_link(codec, data + b"!")}"}}'.encode(), link)
            # One character off (also in the last character's padding bits), a character
            # outside the alphabet, too short, too long, another shape: all fail.
            for bad in (
                text[:-1] + ("b" if text[-1] == "a" else "a"),
                text[:-1] + "0",
                text[:-1],
                text + "a",
                text[:20] + "_" + text[21:],
                text.upper(),
            ):
                assert not _confirms(f'{{"Key":"{bad}","Size":1}}'.encode(), link)
            assert not _confirms(f'{{"Size":1,"Key":"{text}"}}'.encode(), link)  # slow path
