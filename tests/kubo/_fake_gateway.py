"""A tiny HTTP/1.1 server on 127.0.0.1 that answers as a test scripts it.

Kubo cannot misbehave on demand (send wrong bytes, stop half-way through a body, answer
503 with Retry-After, 206 to a request without Range, hang, drop an idle keep-alive
connection), so the tests of those cases talk to this instead, over real sockets: the
reads under test take the same path they take against a real gateway, the raw-socket fast
path included. Each request is answered by ``respond(n, head)`` (``n`` counts requests
from 0, ``head`` is the request head):

* ``bytes``: sent as they are; the connection stays open unless they say
  ``Connection: close``;
* ``Answer(data, close=..., wait=...)``: ``data`` sent once ``wait`` is set, then the
  connection closed if ``close`` (``data`` may be a truncated response);
* ``None``: no answer; the server waits for the client to go away.

Events instead of clocks: ``arrived`` is set at every request, ``client_closed`` when a
client closes a connection the server was still reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from anyhamt import KuboCAS

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream

__all__ = ["Answer", "FakeGateway", "FakeGateways", "fake_cas", "plain"]


def plain(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    """An HTTP/1.1 response with a Content-Length, ``extra`` header lines and ``body``."""
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


@dataclass
class Answer:
    data: bytes
    close: bool = False
    wait: anyio.Event | None = None


class FakeGateway:
    """One listening server; see the module documentation."""

    def __init__(self, respond: Callable[[int, bytes], bytes | Answer | None]) -> None:
        self.respond = respond
        self.requests = 0
        self.connections = 0
        self.closed_by_client = 0
        self.port = 0
        self.heads: list[bytes] = []
        self.arrived = anyio.Event()
        self.client_closed = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def paths(self) -> list[str]:
        """The request-target of every request so far."""
        return [head.split(b" ", 2)[1].decode() for head in self.heads]

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            buffer = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.heads.append(head)
                    answer = self.respond(self.requests, head)
                    self.requests += 1
                    self.arrived.set()
                    self.arrived = anyio.Event()
                    if answer is None:
                        buffer += await stream.receive()  # hang until the client goes
                        continue
                    if isinstance(answer, bytes):
                        answer = Answer(answer, close=b"Connection: close" in answer)
                    if answer.wait is not None:
                        await answer.wait.wait()
                    await stream.send(answer.data)
                    if answer.close:
                        return
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self.closed_by_client += 1
                self.client_closed.set()


async def _serve(listener: anyio.abc.Listener[SocketStream], gateway: FakeGateway) -> None:
    async with listener:
        await listener.serve(gateway.handle)


class FakeGateways:
    """Starts fake gateways (``await servers(respond)``) and stops them all on exit."""

    def __init__(self) -> None:
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> FakeGateways:
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def __call__(self, respond: Callable[[int, bytes], bytes | Answer | None]) -> FakeGateway:
        gateway = FakeGateway(respond)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        gateway.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._tg.start_soon(_serve, listener, gateway)
        return gateway


def fake_cas(*gateways: FakeGateway, **kwargs: object) -> KuboCAS:
    """A KuboCAS reading from ``gateways`` (in order), its RPC on a port nothing listens
    on, retrying quickly."""
    kwargs.setdefault("initial_delay", 0.01)
    kwargs.setdefault("rpc_base_url", "http://127.0.0.1:9")
    return KuboCAS(gateway_base_urls=[g.url for g in gateways], **kwargs)  # type: ignore[arg-type]
