"""A lean HTTP/1.1 GET for the one request KuboCAS makes most: a whole raw block from a
plain ``http://`` gateway.

httpx spends ~0.6 ms of Python per request (URL parsing, h11, header models, cookies);
a keep-alive socket needs ~0.1 ms. This module sends ``GET /ipfs/{cid}?format=raw`` on a
small per-loop pool of keep-alive connections and accepts only the plainest answer:
``HTTP/1.1 200`` with one ``Content-Length`` and no transfer or content coding. Anything
else (another status, chunked or compressed bodies, a redirect, a broken connection, a
timeout) yields ``None`` and the connection is closed: the caller then makes the same
request through httpx, which owns retries, redirects, failover and error mapping.

Two kinds of connection, one parser (``_parse_head``) and the same limits:

* On asyncio, an ``asyncio.Protocol`` (``_ProtocolConnection``) that collects the whole
  response in ``data_received`` and wakes the waiting task once. anyio's asyncio
  ``SocketStream`` resumes and pauses reading around every ``receive()`` (an
  ``epoll_ctl`` pair each: ~8,000 calls where a protocol makes ~130 for the same reads)
  and costs a loop round trip after each send; a read here is CPU-bound, so that is most
  of the distance to plain GETs. The timeout is a loop timer, not a cancel scope per
  request (an anyio scope costs ~20 µs on asyncio).
* On trio, anyio's ``SocketStream`` (``_StreamConnection``), under ``move_on_after``.

A pooled connection the server closed while idle (end of stream or reset before any byte
of the response) is retried once on a new connection. A cancelled or timed-out request
closes its connection; a connection goes back to the pool only after a complete response,
so a half-read response is never left for the next request.

A ``FastPool`` belongs to one event loop (its connections do); KuboCAS closes it from that
loop's keeper task, like its httpx client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio
import sniffio

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import ByteReceiveStream, SocketStream

__all__ = ["FastPool", "FastTarget", "fast_target"]

# A response head longer than this is not one we expect from a gateway: give up.
_MAX_HEAD: Final = 64 * 1024

_IO_ERRORS: Final = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)

# Headers the fast path sets itself or that change the framing or coding of the response:
# a gateway configured with any of them as a credential header goes through httpx.
_RESERVED: Final = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "content-length",
        "expect",
        "keep-alive",
        "proxy-connection",
        "range",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_TOKEN_CHARS: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class FastTarget(NamedTuple):
    """Where and how to send a gateway's block requests."""

    host: str
    port: int
    prefix: bytes  # request-target up to the CID: b"GET /ipfs/"
    suffix: bytes  # from after the CID to the end of the request head


def fast_target(gateway: str, headers: Mapping[str, str] | None) -> FastTarget | None:
    """The fast-path target for a normalized gateway URL (``http://host[:port]/…/ipfs/``),
    or None if its requests must go through httpx."""
    from urllib.parse import urlsplit

    parts = urlsplit(gateway)
    if parts.scheme.lower() != "http" or parts.username is not None or parts.password is not None:
        return None
    try:
        host = parts.hostname
        port = parts.port or 80
    except ValueError:
        return None
    if not host or parts.query or parts.fragment:
        return None
    path = parts.path
    if not path.startswith("/") or any(c <= " " or c > "~" for c in path):
        return None
    lines = [f"Host: {parts.netloc}", "Accept: application/vnd.ipld.raw"]
    for name, value in (headers or {}).items():
        if (
            not name
            or not set(name.encode("latin-1", "replace")) <= _TOKEN_CHARS
            or name.lower() in _RESERVED
            or any(c in value for c in "\r\n\0")
        ):
            return None
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return None
        lines.append(f"{name}: {value.strip()}")
    try:
        suffix = ("?format=raw HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        prefix = f"GET {path}".encode("ascii")
    except UnicodeEncodeError:
        return None
    return FastTarget(host, port, prefix, suffix)


_SEVERAL: Final = b"\0"  # a header that appears more than once (no value contains NUL)


def _header(head: bytes, marker: bytes) -> bytes | None:
    """The stripped value of the header ``marker`` names, None if it is absent, or
    ``_SEVERAL`` (``head`` is lower-cased, each line between CRLFs)."""
    start = head.find(marker)
    if start < 0:
        return None
    start += len(marker)
    stop = head.find(b"\r\n", start)
    if head.find(marker, stop) >= 0:
        return _SEVERAL
    return head[start:stop].strip()


def _parse_head(head: bytes) -> tuple[int, bool] | None:
    """(Content-Length, keep-alive) of a response head (without its final CRLFCRLF), or
    None if it is not a plain ``HTTP/1.1 200`` with one Content-Length and no coding."""
    if not head.startswith(b"HTTP/1.1 200") or head[12:13] not in (b" ", b"\r", b""):
        return None
    # The head, lower-cased, ends with CRLF so that every header line is "\r\nname:…\r\n".
    head = head.lower() + b"\r\n"
    if b"\r\n " in head or b"\r\n\t" in head or b"\r\ntransfer-encoding:" in head:
        return None  # obsolete folded headers; chunked or other transfer codings
    length_value = _header(head, b"\r\ncontent-length:")
    if length_value is None or not length_value.isdigit():  # also rejects _SEVERAL
        return None  # none, several, or not a number
    coding = _header(head, b"\r\ncontent-encoding:")
    if coding not in (None, b"", b"identity"):
        return None
    connection = _header(head, b"\r\nconnection:")
    keep = connection is None or (connection != _SEVERAL and b"close" not in connection)
    return int(length_value), keep


async def _response(stream: ByteReceiveStream, data: bytes) -> tuple[bytes, bool] | None:
    """Read the rest of a response that starts with ``data``: (body, keep-alive), or None
    if it is not a plain 200 with a Content-Length. Stream errors propagate."""
    end = data.find(b"\r\n\r\n")
    while end < 0:
        if len(data) > _MAX_HEAD:
            return None
        start = max(len(data) - 3, 0)
        data += await stream.receive()
        end = data.find(b"\r\n\r\n", start)
    parsed = _parse_head(data[:end])
    if parsed is None:
        return None
    length, keep = parsed
    body = data[end + 4 :]
    if len(body) < length:
        parts = [body]
        have = len(body)
        while have < length:
            chunk = await stream.receive(min(length - have, 1 << 20))
            parts.append(chunk)
            have += len(chunk)
        body = b"".join(parts)
    if len(body) != length:
        return None  # more bytes than announced: out of step, do not trust it
    return body, keep


class _Stale(Exception):
    """A reused connection ended before the first byte of the response."""


# -- asyncio: a protocol that collects one response per request -----------------------------

_STALE: Final = object()  # a waiter's result: the connection ended before any response byte
_Outcome = tuple[bytes, bool] | None | object


class _ProtocolConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time.

    ``data_received`` parses as bytes arrive (the same ``_parse_head`` and limits as the
    stream path) and resolves the waiter once the response is complete, not acceptable,
    or broken off. Bytes that arrive while no request waits put the connection out of step:
    it is not reused.
    """

    __slots__ = ("body_start", "buffer", "keep", "length", "lost", "scan", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[_Outcome] | None = None
        self.buffer: bytes | bytearray = b""
        self.scan = 0
        self.length: int | None = None
        self.keep = False
        self.body_start = 0
        self.lost = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.lost = True  # unasked-for bytes: out of step, never reuse
            return
        if not self.buffer:
            self.buffer = data
        else:
            if type(self.buffer) is bytes:
                self.buffer = bytearray(self.buffer)
            self.buffer += data
        self._advance(waiter)

    def eof_received(self) -> bool:
        self._ended()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    # -- the request ----------------------------------------------------------------------

    async def exchange(self, request: bytes, deadline: float | None) -> tuple[bytes, bool] | None:
        """Send ``request``; the (body, keep-alive) of a plain 200, or None (anything else,
        or ``deadline`` passed). Raises ``_Stale`` if the connection ended before any byte
        of the response arrived."""
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise _Stale
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Outcome] = loop.create_future()
        self.waiter = waiter
        self.buffer = b""
        self.scan = 0
        self.length = None
        transport.write(request)
        timer = None if deadline is None else loop.call_at(deadline, self._expire)
        try:
            outcome = await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self.waiter = None
            self.buffer = b""
        if outcome is _STALE:
            raise _Stale
        return outcome  # type: ignore[return-value]

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals ------------------------------------------------------------------------

    def _advance(self, waiter: asyncio.Future[_Outcome]) -> None:
        buffer = self.buffer
        if self.length is None:
            end = buffer.find(b"\r\n\r\n", self.scan)
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._finish(waiter, None)
                else:
                    self.scan = max(len(buffer) - 3, 0)
                return
            parsed = _parse_head(bytes(buffer[:end]))
            if parsed is None:
                self._finish(waiter, None)
                return
            self.length, self.keep = parsed
            self.body_start = end + 4
        have = len(buffer) - self.body_start
        if have < self.length:
            return
        if have > self.length:
            self._finish(waiter, None)  # more bytes than announced: out of step
            return
        self._finish(waiter, (bytes(buffer[self.body_start :]), self.keep))

    def _finish(self, waiter: asyncio.Future[_Outcome], outcome: _Outcome) -> None:
        if outcome is None:
            self.lost = True  # not a plain answer: the rest of it would be read as the next
        waiter.set_result(outcome)

    def _ended(self) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            # Nothing of the response yet: the server had closed the idle connection.
            waiter.set_result(_STALE if not self.buffer else None)

    def _expire(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.lost = True
            waiter.set_result(None)


# -- the pool --------------------------------------------------------------------------------


class FastPool:
    """Keep-alive connections of one event loop, at most ``size`` idle per target.

    Build it on the loop that will use it: it picks the asyncio protocol or anyio's stream
    by the library running then.
    """

    __slots__ = ("_asyncio", "_idle", "_open", "closed", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.closed = False
        self._asyncio = sniffio.current_async_library() == "asyncio"
        self._idle: dict[tuple[str, int], list[SocketStream | _ProtocolConnection]] = {}
        self._open: set[SocketStream | _ProtocolConnection] = set()

    async def get(self, target: FastTarget, cid: str, limit: float | None) -> bytes | None:
        """The body of a plain 200 response to ``GET {path}{cid}?format=raw``, or None.

        ``limit``: seconds for the whole exchange (then None: httpx tries again).
        Cancellation: the connection in use is closed, never returned to the pool."""
        request = b"".join((target.prefix, cid.encode("ascii"), target.suffix))
        if self._asyncio:
            return await self._get_asyncio(target, request, limit)
        return await self._get_stream(target, request, limit)

    async def _get_asyncio(
        self, target: FastTarget, request: bytes, limit: float | None
    ) -> bytes | None:
        key = (target.host, target.port)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        idle = self._idle.get(key)
        if idle:
            reused = idle.pop()
            try:
                return await self._exchange_protocol(key, reused, request, deadline)  # type: ignore[arg-type]
            except _Stale:
                pass  # the server closed it while idle: once more on a new one
        if self.closed:
            return None
        # A scope only here: new connections are rare (at most ``size`` stay open).
        connection: _ProtocolConnection | None = None
        with anyio.move_on_after(None if deadline is None else deadline - loop.time()):
            try:
                _, connection = await loop.create_connection(
                    _ProtocolConnection, target.host, target.port
                )
            except OSError:
                return None
        if connection is None:
            return None  # timed out while connecting
        if self.closed:
            connection.close()
            return None
        self._open.add(connection)
        try:
            return await self._exchange_protocol(key, connection, request, deadline)
        except _Stale:
            return None

    async def _exchange_protocol(
        self,
        key: tuple[str, int],
        connection: _ProtocolConnection,
        request: bytes,
        deadline: float | None,
    ) -> bytes | None:
        keep = False
        try:
            result = await connection.exchange(request, deadline)
            if result is None:
                return None
            body, keep = result
            return body
        finally:
            if not self._keep(key, connection, keep):
                connection.close()

    async def _get_stream(
        self, target: FastTarget, request: bytes, limit: float | None
    ) -> bytes | None:
        key = (target.host, target.port)
        idle = self._idle.get(key)
        with anyio.move_on_after(limit):
            if idle:
                reused = idle.pop()
                try:
                    return await self._exchange_stream(key, reused, request)  # type: ignore[arg-type]
                except _Stale:
                    pass  # the server closed it while idle: once more on a new one
            if self.closed:
                return None
            try:
                stream = await anyio.connect_tcp(target.host, target.port)
            except OSError:
                return None
            self._open.add(stream)
            try:
                return await self._exchange_stream(key, stream, request)
            except _Stale:
                return None
        return None  # timed out (the stream was closed on the way out)

    async def _exchange_stream(
        self, key: tuple[str, int], stream: SocketStream, request: bytes
    ) -> bytes | None:
        """One request and response. Returns the stream to the pool after a complete plain
        response; closes it otherwise (also on cancellation). Raises ``_Stale`` if the
        stream ended before any response byte."""
        keep = False
        try:
            try:
                await stream.send(request)
                data = await stream.receive()
            except _IO_ERRORS as exc:
                raise _Stale from exc
            result = await _response(stream, data)
            if result is None:
                return None
            body, keep = result
            return body
        except _IO_ERRORS:
            return None
        finally:
            if not self._keep(key, stream, keep):
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    def _keep(
        self, key: tuple[str, int], connection: SocketStream | _ProtocolConnection, keep: bool
    ) -> bool:
        """Back to the pool after a complete response, if there is room; else forgotten
        (the caller closes it)."""
        if keep and not self.closed:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.size:
                idle.append(connection)
                return True
        self._open.discard(connection)
        return False

    # The stream parser, for tests that feed it pieces.
    _response = staticmethod(_response)

    async def aclose(self) -> None:
        """Close every connection (idle or in use); later requests go through httpx."""
        self.closed = True
        connections = list(self._open)
        self._open.clear()
        self._idle.clear()
        with anyio.CancelScope(shield=True):
            for connection in connections:
                if isinstance(connection, _ProtocolConnection):
                    connection.close()
                else:
                    await connection.aclose()
            if self._asyncio and connections:
                # abort() closes the socket in a callback: let it run before the loop ends.
                await asyncio.sleep(0)
