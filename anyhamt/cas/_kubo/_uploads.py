"""Writes: the queue of blocks named but not yet stored, and batched uploads to Kubo.

``save`` (the public, py-hamt method) writes through: when it returns, Kubo has the
block. The HAMT's fast path (``_save_id``/``_save_many``) only queues blocks and names
them locally; queued blocks are served to reads from memory and uploaded in batches of up
to ``batch_blocks`` blocks / ``batch_bytes`` bytes, when a batch fills up (in the
background, at most ``UPLOADS_IN_FLIGHT`` at once) and on ``flush()``. The HAMT flushes
before it reports a root, so a root is never reported before everything under it is
stored. A block counts as stored only once Kubo has answered for it with the CID computed
here; an unconfirmed block goes back to the queue.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio

from ..._codec import DAG_PB, Link, codec_name, verify_block
from ..._errors import KuboError
from ..._loops import spawn_system_task
from ..._tasks import map_bounded
from ._clients import UPLOADS_IN_FLIGHT

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._requests import Requests

__all__ = ["Block", "Uploads", "confirms"]

# While background uploads run, a writer that only queues blocks yields this often (s).
_WRITER_YIELD_EVERY: Final = 0.002

_BASE32: Final = b"abcdefghijklmnopqrstuvwxyz234567"
_BASE32_TO_HEX: Final = bytes.maketrans(_BASE32, b"0123456789abcdefghijklmnopqrstuv")


def confirms(line: bytes, link: Link) -> bool:
    """Whether one line of Kubo's block/put answer, ``{"Key":"b…","Size":…}``, names
    ``link``: its base32 text compared without encoding the CID (thousands per upload).

    Exact: the text must be as long as ``link``'s, use only the base32 alphabet, and read
    as a number (base32 maps letter for letter onto ``int``'s base-32 digits) equal
    ``link``'s bytes followed by zero bits. False sends the caller to the slow check.
    """
    if not line.startswith(b'{"Key":"b'):
        return False
    end = line.find(b'"', 9)
    text = line[9:end]
    width = (len(link) * 8 + 4) // 5
    if end < 0 or len(text) != width or text.translate(None, _BASE32):
        return False
    value = int(text.translate(_BASE32_TO_HEX), 32)
    return value == int.from_bytes(link) << (width * 5 - len(link) * 8)


class Block(NamedTuple):
    link: Link
    codec: int
    data: bytes


class Uploads:
    """The write side of one KuboCAS. Thread-safe: any loop may queue and flush."""

    __slots__ = (
        "_background",
        "_mutex",
        "_next_yield",
        "_queue",
        "_queued_blocks",
        "_queued_bytes",
        "_uploading",
        "batch_blocks",
        "batch_bytes",
        "chunker",
        "hasher",
        "pending",
        "pin_on_add",
        "requests",
    )

    def __init__(
        self,
        requests: Requests,
        hasher: str,
        chunker: str,
        pin_on_add: bool,
        batch_blocks: int,
        batch_bytes: int,
    ) -> None:
        self.requests = requests
        self.hasher = hasher
        self.chunker = chunker
        self.pin_on_add = pin_on_add
        self.batch_blocks = batch_blocks
        self.batch_bytes = batch_bytes
        self._mutex = threading.Lock()
        # Blocks named but not yet confirmed by Kubo: served to reads from here.
        self.pending: dict[Link, Block] = {}
        # The subset not yet handed to an upload, per codec, in save order.
        self._queue: dict[int, dict[Link, None]] = {}
        self._queued_bytes = 0
        self._queued_blocks = 0
        self._uploading = 0  # blocks in uploads now running (flush waits for them)
        self._background = 0  # uploads running as background tasks
        self._next_yield = 0.0  # when a writer next lets the background uploads run

    def discard(self) -> None:
        """Forget every queued block (``KuboCAS.aclose``)."""
        with self._mutex:
            self.pending.clear()
            self._queue.clear()
            self._queued_blocks = self._queued_bytes = 0

    async def flush(self) -> None:
        """Upload every queued block; return once Kubo has confirmed all of them."""
        while True:
            batches = self._take_batches(everything=True)
            if batches:
                await self._upload_batches(batches)
            elif self._uploading:
                # Another task's upload holds blocks saved before this flush; it may run on
                # another loop, so poll rather than wait on a loop-bound event.
                await anyio.sleep(0.005)
            else:
                return

    async def enqueue(self, blocks: Iterable[Block]) -> None:
        """Queue blocks for upload; start uploads of full batches."""
        with self._mutex:
            for block in blocks:
                if block.link in self.pending:
                    continue
                self.pending[block.link] = block
                self._queue.setdefault(block.codec, {})[block.link] = None
                self._queued_blocks += 1
                self._queued_bytes += len(block.data)
            full = (
                self._queued_blocks >= self.batch_blocks or self._queued_bytes >= self.batch_bytes
            )
        if full:
            batches = self._take_batches(everything=False)
            if batches:
                await self._start_uploads(batches)
        elif self._background and time.monotonic() >= self._next_yield:
            # A writer that never waits would starve the background uploads on its loop;
            # one that yields on every save costs a loop iteration (an I/O poll) per save,
            # and on asyncio each poll hands Kubo's streamed answer (a line per block) to
            # httpx as a separate small read. Yielding every few milliseconds is enough for
            # uploads that take a hundred, and their answers arrive in fewer, larger reads.
            self._next_yield = time.monotonic() + _WRITER_YIELD_EVERY
            await anyio.lowlevel.checkpoint()

    async def _start_uploads(self, batches: list[list[Block]]) -> None:
        """Upload full batches in the background, so the writer keeps going while Kubo
        stores them; with ``UPLOADS_IN_FLIGHT`` already running, upload here instead
        (back-pressure: memory stays bounded)."""
        inline: list[list[Block]] = []
        for batch in batches:
            with self._mutex:
                spawn = self._background < UPLOADS_IN_FLIGHT
                if spawn:
                    self._background += 1
            if spawn:
                spawn_system_task(functools.partial(self._upload_in_background, batch))
            else:
                inline.append(batch)
        if inline:
            await self._upload_batches(inline)

    async def _upload_in_background(self, batch: list[Block]) -> None:
        try:
            await self._upload_batch(batch)
        except Exception:
            # The unconfirmed blocks are back in the queue: flush() uploads them again and
            # reports the failure if it persists. A background task has no one to tell.
            pass
        finally:
            with self._mutex:
                self._background -= 1

    def _take_batches(self, everything: bool) -> list[list[Block]]:
        """Move queued blocks into upload batches (only full ones unless ``everything``)."""
        batches: list[list[Block]] = []
        with self._mutex:
            for codec in list(self._queue):
                links = self._queue[codec]
                taken: list[Block] = []
                batch: list[Block] = []
                size = 0
                for link in links:
                    block = self.pending[link]
                    if batch and (
                        len(batch) >= self.batch_blocks or size + len(block.data) > self.batch_bytes
                    ):
                        batches.append(batch)
                        taken += batch
                        batch, size = [], 0
                    batch.append(block)
                    size += len(block.data)
                if batch and (
                    everything or len(batch) >= self.batch_blocks or size >= self.batch_bytes
                ):
                    batches.append(batch)
                    taken += batch
                for block in taken:
                    del links[block.link]
                    self._queued_bytes -= len(block.data)
                self._queued_blocks -= len(taken)
                self._uploading += len(taken)
                if not links:
                    del self._queue[codec]
        return batches

    async def _upload_batches(self, batches: list[list[Block]]) -> None:
        await map_bounded(self._upload_batch, batches, UPLOADS_IN_FLIGHT)

    async def _upload_batch(self, batch: list[Block]) -> None:
        confirmed, error = 0, None
        try:
            confirmed, error = await self._block_put(batch)
        finally:
            # Confirmed blocks leave the buffer; the rest go back to the queue, so nothing
            # unconfirmed is ever treated as stored and a later flush retries it.
            with self._mutex:
                self._uploading -= len(batch)
                for block in batch[:confirmed]:
                    self.pending.pop(block.link, None)
                for block in batch[confirmed:]:
                    if block.link in self.pending:
                        self._queue.setdefault(block.codec, {})[block.link] = None
                        self._queued_blocks += 1
                        self._queued_bytes += len(block.data)
        if error is not None:
            raise error

    async def write_through(self, blocks: list[Block]) -> None:
        """Store blocks now (not via the queue), in batches per codec."""
        by_codec: dict[int, list[Block]] = {}
        for block in blocks:
            by_codec.setdefault(block.codec, []).append(block)
        batches: list[list[Block]] = []
        for group in by_codec.values():
            for start in range(0, len(group), self.batch_blocks):
                batches.append(group[start : start + self.batch_blocks])

        async def put(batch: list[Block]) -> None:
            _, error = await self._block_put(batch)
            if error is not None:
                raise error

        await map_bounded(put, batches, UPLOADS_IN_FLIGHT)

    async def _block_put(self, batch: list[Block]) -> tuple[int, KuboError | None]:
        """Upload one batch (one codec) in one request: how many blocks Kubo confirmed, and
        the error if that is not all of them.

        Kubo answers one JSON line per block, in order. A block that fails part-way (one
        over 2 MiB, say) ends the response early with HTTP 200 and the error only in a
        trailer, so fewer lines than blocks is a failure: the blocks before it are stored,
        the rest are not. A request that fails outright raises ``KuboError``.
        """
        boundary = secrets.token_hex(16).encode()
        head = (
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="block"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts: list[bytes] = []
        for block in batch:
            parts += (head, block.data, b"\r\n")
        parts.append(b"--" + boundary + b"--\r\n")
        params = {
            "cid-codec": codec_name(batch[0].codec),
            "mhtype": self.hasher,
            "mhlen": "32",
            "pin": "true" if self.pin_on_add else "false",
        }
        response = await self.requests.rpc(
            "block/put",
            params,
            content=b"".join(parts),
            headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
        )
        confirmed = 0
        for line, block in zip(response.content.splitlines(), batch, strict=False):
            if confirms(line, block.link):
                confirmed += 1
                continue
            try:
                key = json.loads(line).get("Key")
            except (ValueError, AttributeError):
                key = None
            if key != str(block.link):
                return confirmed, KuboError(
                    f"Kubo stored block {confirmed} of a batch as {key!r}, expected "
                    f"{block.link}; check that the daemon supports hasher {self.hasher!r}",
                    url=str(response.url),
                )
            confirmed += 1
        if confirmed < len(batch):
            return confirmed, KuboError(
                f"Kubo confirmed only {confirmed} of {len(batch)} blocks in one block/put "
                "request (the error is in an HTTP trailer; a block over 2 MiB causes this); "
                "the unconfirmed blocks were not stored",
                url=str(response.url),
            )
        return confirmed, None

    async def add(self, data: bytes, codec: int) -> Link:
        """Store a value through ``/api/v0/add`` (rabin chunkers, which only Kubo can apply)."""
        boundary = secrets.token_hex(16)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        params = {
            "hash": self.hasher,
            "chunker": self.chunker,
            "pin": "true" if self.pin_on_add else "false",
            "cid-version": "1",
            "raw-leaves": "true",
        }
        response = await self.requests.rpc(
            "add",
            params,
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            link = Link.parse(json.loads(response.content.splitlines()[-1])["Hash"])
        except (ValueError, KeyError, IndexError) as exc:
            raise KuboError(f"unexpected answer from Kubo add: {response.text[:200]!r}") from exc
        if link.codec != DAG_PB:
            # One raw block: name it with the codec asked for (Kubo keys blocks by hash).
            link = Link(bytes([0x01, codec]) + link[2:])
            verify_block(link, data)
        return link
