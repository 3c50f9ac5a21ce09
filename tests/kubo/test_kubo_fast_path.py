"""The lean HTTP/1.1 path for whole-block gateway reads (anyhamt/cas/_http.py).

Against the real daemon: the fast path answers, its bytes are verified, a missing block
still ends as BlockNotFoundError (through httpx), a restarted daemon's dead keep-alive
connections are replaced, and every loop's connections are closed without warnings.
What Kubo will not do on demand (hangs, wrong bytes, odd answers) is in
test_kubo_fake_gateway.py; the response parser's own cases are at the end of this module.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import sniffio

from anyhamt import BlockNotFoundError
from anyhamt._codec import RAW, make_link
from anyhamt.cas._http import FastPool, _ProtocolConnection

from ._fake_gateway import plain
from ._helpers import cas_for, pool_of, run_in_thread, store

if TYPE_CHECKING:
    from ._daemon import KuboDaemon


@pytest.mark.usefixtures("no_resource_warnings")
@pytest.mark.kubo
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
        assert httpx_gets == []  # every read above was the fast path's
        # Sequential reads reuse one keep-alive connection.
        assert len(pool_of(cas)._open) == 1
        # Concurrent reads use several, at most the limiter's size stay open.
        async with anyio.create_task_group() as tg:
            for cid in cids * 3:
                tg.start_soon(cas.load, cid)
        assert 1 <= len(pool_of(cas)._open) <= cas.concurrency
        assert httpx_gets == []


@pytest.mark.kubo
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
        assert httpx_gets == [f"/ipfs/{missing}"]  # the fast path read the others


@pytest.mark.kubo
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
        assert httpx_gets == []  # all three on the fast path


@pytest.mark.kubo
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


@pytest.mark.kubo
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


# -- the response parsers: anyio streams (trio) and the asyncio protocol -------------------

DATA = b"served by the fake gateway " * 10
ANSWERS = [
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
]


def pieces_of(answer: bytes) -> list[list[bytes]]:
    """The answer whole, and split at every awkward place (inside the head's CRLFCRLF, in
    the body)."""
    cuts = (len(answer), 5, answer.find(b"\r\n\r\n") + 2, len(answer) - 1)
    return [[answer[:c], answer[c:]] if 0 < c < len(answer) else [answer] for c in cuts]


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


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
async def test_only_plain_answers_pass(answer: bytes, expected: Any) -> None:
    for pieces in pieces_of(answer):
        stream = Chunks(*pieces)
        first = await stream.receive()
        assert await FastPool._response(stream, first) == expected  # type: ignore[arg-type]


class Transport:
    """What ``_ProtocolConnection`` needs of an asyncio transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def exchange(pieces: list[bytes], end: bool = False) -> Any:
    """Feed ``pieces`` to a protocol connection (then end of stream), as the loop would."""
    connection = _ProtocolConnection()
    connection.connection_made(Transport())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for piece in pieces:
        loop.call_soon(connection.data_received, piece)
    if end:
        loop.call_soon(connection.connection_lost, None)
    return await connection.exchange(b"GET / HTTP/1.1\r\n\r\n", None)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the protocol is asyncio's own
@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
async def test_the_asyncio_protocol_passes_the_same_answers(answer: bytes, expected: Any) -> None:
    for pieces in pieces_of(answer):
        assert await exchange(pieces) == expected


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the protocol is asyncio's own
async def test_the_asyncio_protocol_on_a_closed_connection() -> None:
    from anyhamt.cas._http import _Stale

    # Cut off mid-body: not an answer (the caller asks httpx).
    assert await exchange([plain(DATA)[:-5]], end=True) is None
    # Closed before any byte: stale (the caller retries once on a new connection).
    with pytest.raises(_Stale):
        await exchange([], end=True)
    # A head longer than any gateway sends: given up on without waiting for its end.
    assert await exchange([b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000]) is None


async def test_truncated_body_is_an_error() -> None:
    stream = Chunks(plain(DATA)[:-5])
    with pytest.raises(anyio.EndOfStream):
        await FastPool._response(stream, await stream.receive())  # type: ignore[arg-type]


def test_block_put_lines_are_checked_exactly() -> None:
    import hashlib
    import json

    from anyhamt._codec import DAG_CBOR, Link
    from anyhamt.cas._kubo._uploads import confirms as _confirms

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
