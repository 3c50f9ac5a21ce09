"""A lean HTTP/1.1 GET for the one request KuboCAS makes most: a whole raw block from a
plain ``http://`` gateway.

httpx spends ~0.6 ms of Python per request (URL parsing, h11, header models, cookies);
a keep-alive socket needs ~0.1 ms. This module sends ``GET /ipfs/{cid}?format=raw`` on a
small per-loop pool of keep-alive connections (``anyio.connect_tcp``) and accepts only the
plainest answer: ``HTTP/1.1 200`` with one ``Content-Length`` and no transfer or content
coding. Anything else (another status, chunked or compressed bodies, a redirect, a broken
connection, a timeout) yields ``None`` and the connection is closed: the caller then makes
the same request through httpx, which owns retries, redirects, failover and error mapping.

A pooled connection the server closed while idle (end of stream or reset before any byte
of the response) is retried once on a new connection. A cancelled request closes its
connection; a connection goes back to the pool only after a complete response.

A ``FastPool`` belongs to one event loop (its streams do); KuboCAS closes it from that
loop's keeper task, like its httpx client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import urlsplit

import anyio

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import SocketStream

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


class _Stale(Exception):
    """A reused connection ended before the first byte of the response."""


class FastPool:
    """Keep-alive connections of one event loop, at most ``size`` idle per target."""

    __slots__ = ("_idle", "_open", "closed", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.closed = False
        self._idle: dict[tuple[str, int], list[SocketStream]] = {}
        self._open: set[SocketStream] = set()

    async def get(self, target: FastTarget, cid: str, limit: float | None) -> bytes | None:
        """The body of a plain 200 response to ``GET {path}{cid}?format=raw``, or None.

        ``limit``: seconds for the whole exchange (then None: httpx tries again)."""
        request = b"".join((target.prefix, cid.encode("ascii"), target.suffix))
        key = (target.host, target.port)
        idle = self._idle.get(key)
        with anyio.move_on_after(limit):
            stream = idle.pop() if idle else None
            if stream is not None:
                try:
                    return await self._exchange(key, stream, request)
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
                return await self._exchange(key, stream, request)
            except _Stale:
                return None
        return None  # timed out (the stream was closed on the way out)

    async def _exchange(
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
            result = await self._response(stream, data)
            if result is None:
                return None
            body, keep = result
            return body
        except _IO_ERRORS:
            return None
        finally:
            if keep and not self.closed:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.size:
                    idle.append(stream)
                else:
                    keep = False
            if not keep:
                self._open.discard(stream)
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    @staticmethod
    async def _response(stream: SocketStream, data: bytes) -> tuple[bytes, bool] | None:
        """Read the rest of a response that starts with ``data``: (body, keep-alive), or
        None if it is not a plain 200 with a Content-Length."""
        end = data.find(b"\r\n\r\n")
        while end < 0:
            if len(data) > _MAX_HEAD:
                return None
            start = max(len(data) - 3, 0)
            data += await stream.receive()
            end = data.find(b"\r\n\r\n", start)
        if not data.startswith(b"HTTP/1.1 200") or data[12:13] not in (b" ", b"\r"):
            return None
        # The head, lower-cased, ends with CRLF so that every header line is "\r\nname:…\r\n".
        head = data[:end].lower() + b"\r\n"
        if b"\r\n " in head or b"\r\n\t" in head or b"\r\ntransfer-encoding:" in head:
            return None  # obsolete folded headers; chunked or other transfer codings
        length_value = _header(head, b"\r\ncontent-length:")
        if length_value is None or not length_value.isdigit():  # also rejects _SEVERAL
            return None  # none, several, or not a number
        length = int(length_value)
        coding = _header(head, b"\r\ncontent-encoding:")
        if coding not in (None, b"", b"identity"):
            return None
        connection = _header(head, b"\r\nconnection:")
        keep = connection is None or (connection != _SEVERAL and b"close" not in connection)
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

    async def aclose(self) -> None:
        """Close every connection (idle or in use); later requests go through httpx."""
        self.closed = True
        streams = list(self._open)
        self._open.clear()
        self._idle.clear()
        with anyio.CancelScope(shield=True):
            for stream in streams:
                await stream.aclose()
