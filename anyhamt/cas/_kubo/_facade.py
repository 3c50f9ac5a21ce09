"""``KuboCAS``: the facade. It validates the configuration, wires the parts together and
answers the public API; the work happens in the parts:

* ``_config``: URLs, hash function, chunker, timeouts, credentials and their origins;
* ``_clients``: per-loop httpx clients, fast-path pools and limiters, closed on their loop;
* ``_requests``: httpx requests with retries, and Kubo's RPC;
* ``_gateways``: gateway reads (health and failover, the fast GET path, range checks);
* ``_uploads``: the write queue and batched uploads.

Every public async method checks for cancellation on entry
(``anyio.lowlevel.checkpoint_if_cancelled``): called in a cancelled scope it raises the
backend's cancellation before doing anything, as every trio call does. ``aclose`` is the
exception: it is cleanup, and it completes even in a cancelled scope.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from ..._codec import DAG_PB, Link, as_link, codec_code, make_link, verify_block
from ..._errors import InvalidConfigError
from ..._loops import checkpoint_if_cancelled, repair_sniffio
from .._base import ContentAddressedStore
from .._unixfs import build_file, file_size, read_file, read_file_range
from ._clients import UPLOADS_IN_FLIGHT, LoopStates
from ._config import (
    HASHERS,
    Credentials,
    normalize_gateway,
    normalize_rpc,
    origin,
    parse_chunker,
    whole_timeout,
)
from ._gateways import Gateways, slice_range
from ._requests import Requests
from ._uploads import Block, Uploads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from multiformats import CID

__all__ = ["KuboCAS"]


def _new_client(
    timeout: httpx.Timeout,
    concurrency: int,
    transport: httpx.AsyncBaseTransport | None,
    factory: Callable[[], httpx.AsyncClient] | None,
) -> httpx.AsyncClient:
    # A module function, not a method: the per-loop states hold it, and a bound method
    # would keep the KuboCAS alive from its own keeper tasks.
    if factory is not None:
        return factory()
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=concurrency + UPLOADS_IN_FLIGHT,
            max_keepalive_connections=concurrency,
        ),
        transport=transport,
    )


class KuboCAS(ContentAddressedStore):
    """Blocks on IPFS through a Kubo daemon: writes via its RPC API, reads via gateways.

    A drop-in for py-hamt's ``KuboCAS`` (same parameters and defaults, same CIDs), with
    these differences:

    * **Trustless by default.** Every block read is hashed and compared with its CID
      (raw and dag-cbor blocks directly; a dag-pb UnixFS value, which is what a value
      larger than the chunk size becomes, is read block by block and every block
      checked). Wrong bytes raise ``BlockVerificationError`` (after trying the other
      gateways); they are never returned. ``verify=False`` trusts the gateway and sends
      HTTP Range requests for partial reads instead of fetching whole blocks.
    * **Batched writes.** The HAMT's blocks are uploaded many per request; see
      ``anyhamt/cas/_kubo/_uploads.py`` for when they are durable.
    * **Any event loop.** One client and one concurrency limiter per running loop
      (asyncio or trio); one instance may be used from several loops and threads at once.
    * **Typed errors.** A missing block raises ``BlockNotFoundError``; any other failure,
      after retries, ``KuboError`` (with ``status_code``); never a raw httpx error.
    * **Cancellation points.** Every async method but ``aclose`` checks for cancellation
      on entry, so a call in an already-cancelled scope does nothing.

    Parameters (py-hamt's, plus a few):

    * ``rpc_base_url`` / ``gateway_base_url``: default to Kubo's local ports. A gateway URL
      may be given as ``http://host``, ``http://host/``, ``http://host/ipfs`` or with a CID
      path; an RPC URL with or without ``/api/v0``.
    * ``gateway_base_urls``: several gateways, tried one at a time in order (a gateway that
      failed three times in a row goes last for 30 s). Exclusive with ``gateway_base_url``.
    * ``headers`` / ``auth``: credentials. They are sent only to the RPC URL's origin and
      the first gateway's origin, never to another origin (not even through a redirect).
    * ``client``: an ``httpx.AsyncClient`` to use on the event loop it is first used on; it
      is never closed here. Its headers and auth count as credentials (same origin rule).
      On other loops KuboCAS creates its own clients with those credentials; pass
      ``client_factory`` to build every loop's client yourself (KuboCAS closes those).
    * ``transport``: an httpx transport for the clients KuboCAS creates (fault injection);
      it must work on every loop the store is used on (``httpx.MockTransport`` does).
    * ``hasher``: "blake3" (default) or "sha2-256"; CIDs are computed locally, so only hash
      functions anyhamt can compute are accepted.
    * ``chunker``: "size-<n>", "rabin" or "rabin-<min>-<avg>-<max>", as for ``ipfs add``.
      A value larger than one chunk is stored as the UnixFS file ``ipfs add`` would make
      (built locally for "size-<n>", through ``/api/v0/add`` for rabin).
    * ``pin_on_add``: pin every block written.
    * ``concurrency``: HTTP requests in flight at once, per event loop.
    * ``max_retries``, ``initial_delay``, ``backoff_factor``: timeouts, connection errors,
      429 and 5xx are retried with exponential backoff and jitter, or after the
      ``Retry-After`` the server asked for (capped at ``max_retry_after`` seconds).
    * ``timeout``: seconds for each HTTP request of the clients KuboCAS creates.
    * ``batch_blocks`` / ``batch_bytes``: the most blocks / bytes one upload carries.

    Reads of whole blocks from a plain ``http://`` gateway take a lean HTTP/1.1 path
    (``anyhamt/cas/_http.py``) when KuboCAS makes its own clients (no ``client``,
    ``client_factory`` or ``transport``) and the gateway needs no ``auth``.

    After ``aclose()`` the instance may be used again; it opens new clients as needed.
    """

    KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL: ClassVar[str] = "http://127.0.0.1:8080"
    KUBO_DEFAULT_LOCAL_RPC_BASE_URL: ClassVar[str] = "http://127.0.0.1:5001"
    DAG_PB_MARKER: ClassVar[int] = DAG_PB

    def __init__(
        self,
        hasher: str = "blake3",
        client: httpx.AsyncClient | None = None,
        rpc_base_url: str | None = None,
        gateway_base_url: str | None = None,
        concurrency: int = 32,
        *,
        gateway_base_urls: Sequence[str] | None = None,
        verify: bool = True,
        verify_content: bool | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | httpx.Auth | None = None,
        pin_on_add: bool = False,
        chunker: str = "size-1048576",
        max_retries: int = 3,
        initial_delay: float = 1.0,
        backoff_factor: float = 2.0,
        max_retry_after: float = 300.0,
        timeout: float = 60.0,
        batch_blocks: int = 1000,
        batch_bytes: int = 8 * 2**20,
    ) -> None:
        if hasher not in HASHERS:
            raise InvalidConfigError(
                f"hasher {hasher!r} is not supported: use one of {sorted(HASHERS)}"
            )
        chunk_size, single_block_max = parse_chunker(chunker)
        if sum(x is not None for x in (client, client_factory, transport)) > 1:
            raise InvalidConfigError("give at most one of client, client_factory and transport")
        if concurrency < 1:
            raise InvalidConfigError("concurrency must be a positive integer")
        if max_retries < 0:
            raise InvalidConfigError("max_retries must be non-negative")
        if initial_delay <= 0:
            raise InvalidConfigError("initial_delay must be positive")
        if backoff_factor < 1.0:
            raise InvalidConfigError("backoff_factor must be >= 1.0 for exponential backoff")
        if batch_blocks < 1 or batch_bytes < 1:
            raise InvalidConfigError("batch_blocks and batch_bytes must be positive")
        if gateway_base_urls is not None:
            if gateway_base_url is not None:
                raise InvalidConfigError("give gateway_base_url or gateway_base_urls, not both")
            if not gateway_base_urls:
                raise InvalidConfigError("gateway_base_urls must not be empty")
            gateways = list(dict.fromkeys(normalize_gateway(u) for u in gateway_base_urls))
        else:
            gateways = [
                normalize_gateway(gateway_base_url or self.KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL)
            ]

        self.hasher = hasher
        self.chunker = chunker
        # Values up to this size are one block; bigger ones become a UnixFS file.
        self.chunk_size = chunk_size
        self._single_block_max = single_block_max
        self.rpc_base_url = normalize_rpc(rpc_base_url or self.KUBO_DEFAULT_LOCAL_RPC_BASE_URL)
        self.gateway_base_urls = gateways
        self.gateway_base_url = gateways[0]
        self.verify = verify if verify_content is None else verify_content
        self.pin_on_add = pin_on_add
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.initial_delay = initial_delay
        self.backoff_factor = backoff_factor
        self.max_retry_after = max_retry_after
        self.batch_blocks = batch_blocks
        self.batch_bytes = batch_bytes

        # Credentials, sent only to these origins, attached per request.
        origins = {origin(self.rpc_base_url), origin(gateways[0])}
        if client is not None:
            if headers or auth:
                raise InvalidConfigError("configure headers and auth on the client you pass")
            credentials = Credentials.of_client(origins, client)
            self._timeout = client.timeout
        else:
            credentials = Credentials(origins, headers, auth)
            self._timeout = httpx.Timeout(timeout)
        self._credentials = credentials
        self._headers = credentials.headers
        self._auth: Any = credentials.auth
        self._client = client
        self._client_factory = client_factory
        self._transport = transport
        self._mh_code = HASHERS[hasher]

        self._clients = LoopStates(self, concurrency, client, self._client_maker())
        self._loops = self._clients.loops
        self._http = Requests(
            self._clients,
            credentials,
            self._timeout,
            self.rpc_base_url,
            max_retries,
            initial_delay,
            backoff_factor,
            max_retry_after,
        )
        # The fast path only where KuboCAS makes its own HTTP stack.
        own_stack = client is None and client_factory is None and transport is None
        self._gateways = Gateways(
            gateways,
            self._clients,
            self._http,
            credentials,
            whole_timeout(self._timeout),
            fast=own_stack,
        )
        self._uploads = Uploads(self._http, hasher, chunker, pin_on_add, batch_blocks, batch_bytes)
        self._pending = self._uploads.pending

    def _client_maker(self) -> Callable[[], httpx.AsyncClient]:
        return functools.partial(
            _new_client, self._timeout, self.concurrency, self._transport, self._client_factory
        )

    def _set_timeout(self, timeout: httpx.Timeout) -> None:
        """Replace the timeouts before first use (unpickling a client's uneven limits)."""
        self._timeout = timeout
        self._http.timeout = timeout
        self._clients._make = self._client_maker()
        if self._gateways.fast_timeout is not None:
            self._gateways.fast_timeout = whole_timeout(timeout)

    def __repr__(self) -> str:
        return f"KuboCAS(rpc={self.rpc_base_url!r}, gateways={self.gateway_base_urls!r})"

    def __reduce__(self) -> tuple[Callable[..., KuboCAS], tuple[Any, ...]]:
        """Pickle to the configuration, never to live clients, locks or queued blocks.

        The copy (a dask worker's, say) opens its own clients on first use. Credentials
        travel with it only when configured (``headers``/``auth``, or those of a ``client``
        passed in, which itself stays behind); ``client_factory`` and ``transport`` are
        pickled as they are, so they must be picklable. Blocks saved but not yet flushed
        stay here: flush (``make_read_only()``) before sending a store elsewhere.
        """
        from . import _unpickle_kubo

        settings = {
            "hasher": self.hasher,
            "rpc_base_url": self.rpc_base_url,
            "gateway_base_urls": list(self.gateway_base_urls),
            "concurrency": self.concurrency,
            "verify": self.verify,
            "client_factory": self._client_factory,
            "transport": self._transport,
            "headers": dict(self._headers) or None,
            "auth": self._auth,
            "pin_on_add": self.pin_on_add,
            "chunker": self.chunker,
            "max_retries": self.max_retries,
            "initial_delay": self.initial_delay,
            "backoff_factor": self.backoff_factor,
            "max_retry_after": self.max_retry_after,
            "batch_blocks": self.batch_blocks,
            "batch_bytes": self.batch_bytes,
        }
        timeout = self._timeout
        limits = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        return (_unpickle_kubo, (settings, limits))

    # -- ids ------------------------------------------------------------------------------

    def _link(self, codec: int, data: bytes) -> Link:
        return make_link(codec, data, self._mh_code)

    def _blocks_for(self, data: bytes, codec: int) -> tuple[Link, list[Block]] | None:
        """The blocks that store ``data`` and the id to return; None if Kubo must chunk."""
        data = bytes(data)
        if len(data) <= self._single_block_max:
            link = self._link(codec, data)
            return link, [Block(link, codec, data)]
        if self.chunk_size is None:
            return None
        root, blocks = build_file(data, self.chunk_size, self._link)
        return root, [Block(*b) for b in blocks]

    # -- lifetime -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP clients this store opened, on every loop; safe from any loop.

        The current loop's client is closed before this returns; clients of other running
        loops are closed on their own loops right after; those of finished loops are
        dropped. A supplied ``client`` is left open. Blocks queued by the HAMT's fast
        path and not yet flushed are discarded (a HAMT flushes before it reports a root).

        Cancellation: not a cancellation point (it is cleanup, and runs in a cancelled
        scope too); the close of this loop's client is shielded and completes.
        """
        repair_sniffio()
        self._uploads.discard()
        await self._clients.aclose()

    # -- writes ---------------------------------------------------------------------------

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> CID:
        """Store ``data`` on Kubo and return its CID once Kubo has confirmed it.

        Cancellation: checked on entry (nothing happens in a cancelled scope); cancelled
        later, the block may or may not have been stored; saving again is safe.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        code = codec_code(codec)
        planned = self._blocks_for(data, code)
        if planned is None:
            return (await self._uploads.add(bytes(data), code)).to_cid()
        root, blocks = planned
        await self._uploads.write_through(blocks)
        return root.to_cid()

    async def put_block(self, id: Any, data: bytes) -> None:
        """Queue a block named elsewhere (CAR import) after checking it; ``flush()`` stores it.

        Cancellation: checked on entry; the block is queued whole or not at all.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        link = as_link(id)
        verify_block(link, data)
        await self._uploads.enqueue([Block(link, link.codec, bytes(data))])

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Link:
        code = codec_code(codec)
        planned = self._blocks_for(data, code)
        if planned is None:
            return await self._uploads.add(bytes(data), code)
        root, blocks = planned
        await self._uploads.enqueue(blocks)
        return root

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[Link]:
        code = codec_code(codec)
        links: list[Link] = []
        queued: list[Block] = []
        for data in blocks:
            planned = self._blocks_for(data, code)
            if planned is None:
                links.append(await self._uploads.add(bytes(data), code))
                continue
            links.append(planned[0])
            queued.extend(planned[1])
        await self._uploads.enqueue(queued)
        return links

    async def flush(self) -> None:
        """Upload every queued block; return once Kubo has confirmed all of them.

        Raises ``KuboError`` if an upload fails; the blocks not confirmed stay queued, so
        calling ``flush()`` again (say, once the daemon is back) finishes the job.
        Cancellation: checked on entry; cancelled later, some blocks may have been stored
        and the rest stay queued.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        await self._uploads.flush()

    # -- reads ----------------------------------------------------------------------------

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        """The block ``id`` names (a ``multiformats.CID``, CID text or bytes), or a range.

        Cancellation: checked on entry; a cancelled read has no effect.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        return await self._load_id(as_link(id), offset, length, suffix)

    async def _load_id(
        self,
        ptr: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        link = ptr if type(ptr) is Link else as_link(ptr)
        slice_range(b"", offset, length, suffix)  # reject bad arguments before any I/O
        if (offset is not None and length == 0) or (offset is None and suffix == 0):
            return b""
        pending = self._pending.get(link)
        if link.codec == DAG_PB and (self.verify or pending is not None):
            # A UnixFS file, read block by block: each block verified, and for a range only
            # the blocks it covers. A queued root is read this way too (its bytes are the
            # node, not the file), since no gateway has it yet.
            if offset is None and length is None and suffix is None:
                return await read_file(link, self._block)
            return await read_file_range(
                link, self._block, offset, length, suffix, concurrency=self.concurrency
            )
        if pending is not None:
            return slice_range(pending.data, offset, length, suffix)
        if self.verify:
            return slice_range(await self._gateways.fetch(link), offset, length, suffix)
        return await self._gateways.fetch(link, offset, length, suffix, ranged=True)

    async def _size_id(self, ptr: Any) -> int:
        """The length of the value ``ptr`` names (see the base class): for a UnixFS file
        its root's filesize (the root is fetched and verified, nothing under it); for any
        other block the Content-Length a gateway gives a ``HEAD`` of its raw bytes, so the
        block is neither fetched nor verified. Queued blocks are answered from memory.

        Cancellation: nothing happens.
        """
        link = ptr if type(ptr) is Link else as_link(ptr)
        if link.codec == DAG_PB:
            return file_size(await self._block(link))
        pending = self._pending.get(link)
        if pending is not None:
            return len(pending.data)
        fn, digest = link.multihash()
        if fn == 0x00:  # identity: the block is inside the CID
            return len(digest)
        size = await self._gateways.head_size(link)
        # No gateway gave a usable answer to HEAD: a GET settles it (and raises as reads do).
        return len(await self._gateways.fetch(link)) if size is None else size

    async def has(self, id: Any) -> bool:
        """Whether Kubo (or this store's write queue) holds the value ``id`` names, asked
        with a ``HEAD`` (a UnixFS file: its root only).

        Cancellation: checked on entry; a cancelled check has no effect.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        return await super().has(id)

    async def get_block(self, id: Any) -> bytes:
        """The raw bytes of one block, always verified; for a dag-pb CID the encoded node,
        not the file it heads (``load`` gives the file).

        Cancellation: checked on entry; a cancelled read has no effect.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        return await self._block(as_link(id))

    async def _block(self, link: Link) -> bytes:
        pending = self._pending.get(link)
        if pending is not None:
            return pending.data
        return await self._gateways.fetch(link, verify=True)

    # -- pins -----------------------------------------------------------------------------

    async def pin_cid(self, id: Any, target_rpc: str | None = None) -> None:
        """Pin ``id`` and everything it links to (recursive) on ``target_rpc`` (default:
        this store's RPC). Queued blocks are flushed first.

        Cancellation: checked on entry; cancelled later, the pin may or may not have been
        added.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        await self._uploads.flush()
        await self._http.rpc("pin/add", {"arg": str(as_link(id)), "recursive": "true"}, target_rpc)

    async def unpin_cid(self, id: Any, target_rpc: str | None = None) -> None:
        """Remove the recursive pin of ``id``.

        Cancellation: checked on entry; cancelled later, it may or may not be removed.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        await self._http.rpc("pin/rm", {"arg": str(as_link(id)), "recursive": "true"}, target_rpc)

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str | None = None) -> None:
        """Move a recursive pin from ``old_id`` to ``new_id`` (Kubo pins only the difference).

        Cancellation: checked on entry; cancelled later, either pin may be in place.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        await self._uploads.flush()
        params = [("arg", str(as_link(old_id))), ("arg", str(as_link(new_id)))]
        await self._http.rpc("pin/update", params, target_rpc)

    async def pin_ls(self, target_rpc: str | None = None) -> dict[str, dict[str, Any]]:
        """Every pin, as Kubo's ``Keys`` map: ``{"bafy…": {"Type": "recursive"}, …}``.

        This is the shape py-hamt returned (its annotation said list), so ``str(cid) in
        await cas.pin_ls()`` keeps working. Cancellation: checked on entry; a cancelled
        listing has no effect.
        """
        await checkpoint_if_cancelled()
        repair_sniffio()
        response = await self._http.rpc("pin/ls", {"stream": "true"}, target_rpc)
        pins: dict[str, dict[str, Any]] = {}
        for line in response.content.splitlines():
            if line.strip():
                entry = json.loads(line)
                pins[entry["Cid"]] = {"Type": entry["Type"]}
        return pins
