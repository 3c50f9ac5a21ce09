"""What several benchmark scripts share. Standard library only: it is imported by workers
that run in py-hamt's venv too."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

__all__ = ["GatewayAnswerError", "fetch_plain"]


class GatewayAnswerError(RuntimeError):
    """The gateway answered a plain GET with something other than the whole block."""


async def fetch_plain(gateway: str, blocks: list[str], concurrency: int) -> int:
    """GET every block (``/ipfs/<cid>?format=raw``) on ``concurrency`` keep-alive
    connections, reading each answer by its Content-Length: the floor a gateway client can
    reach. Returns the bytes fetched; no hashing, no parsing beyond the status line and
    the length."""
    url = urlsplit(gateway)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pending = iter(blocks)
    total = [0]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for cid in pending:
                writer.write(
                    f"GET /ipfs/{cid}?format=raw HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    "Accept: application/vnd.ipld.raw\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                if lines[0].split(b" ", 2)[1] != b"200":
                    raise GatewayAnswerError(f"GET {cid}: {lines[0]!r}")
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in lines[1:]
                    if line.lower().startswith(b"content-length:")
                ]
                if len(lengths) != 1:
                    raise GatewayAnswerError(f"GET {cid}: no Content-Length (chunked?)")
                body = await reader.readexactly(lengths[0])
                total[0] += len(body)  # not `+= len(await ...)`: that reads total first
        finally:
            writer.close()

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(connection())
    return total[0]
