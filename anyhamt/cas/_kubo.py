"""KuboCAS: blocks on IPFS through a Kubo daemon's RPC API and HTTP gateways.

Writes go to the RPC API (``/api/v0/block/put``), many blocks per request; reads go to a
gateway (``/ipfs/{cid}?format=raw``) and every block read is checked against its CID.

Event loops. An ``httpx.AsyncClient`` and an ``anyio.CapacityLimiter`` belong to the loop
that created them (docs/architecture.md §3), so a KuboCAS keeps one of each per running
loop, keyed by the loop's token, in a dict guarded by a ``threading.Lock``. Next to each
client it starts a small background task on that loop (the "keeper") whose only job is to
close the client on that loop: when ``aclose()`` asks (from whichever loop), when the
store is garbage collected, or when the loop itself shuts down and cancels its tasks. That
is what lets one KuboCAS serve zarr's asyncio loop and a trio application at the same time
without leaking connections or warnings.

Writes. ``save`` (the public, py-hamt method) writes through: when it returns, Kubo has
the block. The HAMT's fast path (``_save_id``/``_save_many``) only queues blocks and names
them locally; queued blocks are served to reads from memory and uploaded in batches of up
to ``batch_blocks`` blocks / ``batch_bytes`` bytes, when a batch fills up and on
``flush()``. The HAMT flushes before it reports a root, so a root is never reported before
everything under it is stored. A block counts as stored only once Kubo has answered for it
with the CID computed here.

Reads. A whole-block read from a plain ``http://`` gateway goes through a lean HTTP/1.1
path (``_http.py``, keep-alive connections per loop, closed by the keeper like the client)
when KuboCAS made its own clients; any answer but a plain 200 is asked again through
httpx, which owns retries, redirects, failover and error mapping. The bytes are verified
either way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import re
import secrets
import threading
import time
import weakref
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple
from urllib.parse import urlsplit

import anyio
import httpx

from .._codec import (
    DAG_PB,
    Link,
    as_link,
    codec_code,
    codec_name,
    make_link,
    verify_block,
)
from .._errors import (
    BlockNotFoundError,
    BlockVerificationError,
    InvalidConfigError,
    InvalidRangeError,
    KuboError,
)
from .._loops import LoopHandle, current_loop_key, repair_sniffio, spawn_system_task
from .._tasks import map_bounded
from ._base import ContentAddressedStore, slice_block
from ._http import FastPool, FastTarget, fast_target
from ._unixfs import build_file, file_size, read_file, read_file_range

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from multiformats import CID

__all__ = ["KuboCAS"]

# Statuses worth another attempt. A 500 is retried only when it is not one of Kubo's own
# JSON command errors, which are deterministic ("not found", "over 2MiB", ...).
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

# Gateway health: after this many failures in a row a gateway is tried last for a while.
_GATEWAY_TRIP_AFTER: Final = 3
_GATEWAY_COOLDOWN: Final = 30.0

# Batch uploads in flight at once during a flush (each also takes a limiter token).
_UPLOADS_IN_FLIGHT: Final = 4

# While background uploads run, a writer that only queues blocks yields this often (s).
_WRITER_YIELD_EVERY: Final = 0.002

# Redirect hops a gateway read follows (each hop re-decides which credentials to send).
_MAX_REDIRECTS: Final = 5

# Headers httpx adds by default; a supplied client's other headers count as credentials.
_BENIGN_HEADERS: Final = frozenset({"accept", "accept-encoding", "connection", "user-agent"})

_HASHERS: Final = {"blake3": 0x1E, "sha2-256": 0x12}

_CHUNKER: Final = re.compile(r"size-([1-9]\d*)|rabin(?:-([1-9]\d*)-([1-9]\d*)-([1-9]\d*))?")
_RABIN_DEFAULT_MIN: Final = 256 * 1024 // 3  # Kubo's "rabin" = rabin-<avg/3>-<avg>-<avg*1.5>

_Origin = tuple[str, str, int | None]


def _origin(url: str) -> _Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(scheme),
    )


def _normalize_rpc(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.endswith("/api/v0"):
        url = url[: -len("/api/v0")]
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidConfigError(f"RPC URL {url!r} must start with http:// or https://")
    return url


def _normalize_gateway(url: str) -> str:
    """``https://host``, ``https://host/``, ``https://host/ipfs/``, ``…/ipfs/CID`` → ``https://host/ipfs/``."""
    url = url.strip()
    if "/ipfs/" in url:
        url = url.split("/ipfs/", 1)[0]
    url = url.rstrip("/")
    if url.endswith("/ipfs"):
        url = url[: -len("/ipfs")]
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidConfigError(f"gateway URL {url!r} must start with http:// or https://")
    return url + "/ipfs/"


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    """The server's Retry-After in seconds (capped), or None if absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def _kubo_message(response: httpx.Response) -> str | None:
    """The ``Message`` of a Kubo RPC error body, or None if the body is not one."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("Type") == "error":
        return str(body.get("Message", ""))
    return None


def _describe(response: httpx.Response) -> str:
    message = _kubo_message(response)
    if message is None:
        message = response.content[:300].decode("utf-8", "replace").strip()
    return f"HTTP {response.status_code}: {message}" if message else f"HTTP {response.status_code}"


def _slice(data: bytes, offset: int | None, length: int | None, suffix: int | None) -> bytes:
    # slice_block computes data[len - suffix:], which wraps round when the suffix is longer
    # than the block; clamp it (HTTP serves the whole body then).
    if suffix is not None and suffix > len(data):
        suffix = len(data)
    return slice_block(data, offset, length, suffix)


_BASE32: Final = b"abcdefghijklmnopqrstuvwxyz234567"
_BASE32_TO_HEX: Final = bytes.maketrans(_BASE32, b"0123456789abcdefghijklmnopqrstuv")


def _confirms(line: bytes, link: Link) -> bool:
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


def _is_not_found(message: str) -> bool:
    return "not found" in message or "could not find" in message


class _Body(httpx.AsyncByteStream):
    """A request body in one chunk.

    httpx's own byte stream is an async generator; when a connection dies mid-upload it
    is left unfinished, and trio warns (ResourceWarning) when it is collected. A plain
    iterator has nothing to finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return _Once(self._data)


class _Once:
    __slots__ = ("_data",)

    def __init__(self, data: bytes | None) -> None:
        self._data = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


class _LoopState:
    """The client, fast-path connections and limiter of one running loop, and the task that
    will close the client and the connections."""

    __slots__ = ("client", "closing", "fast", "keeper", "key", "limiter", "loop", "owned")

    def __init__(self, client: httpx.AsyncClient, limit: int, owned: bool) -> None:
        self.loop = LoopHandle()
        self.key = self.loop.key
        self.client = client
        self.fast = FastPool(limit)
        self.limiter = anyio.CapacityLimiter(limit)
        self.owned = owned
        self.keeper: anyio.CancelScope | None = None
        self.closing = False

    def start_keeper(self) -> None:
        async def keep() -> None:
            try:
                with anyio.CancelScope() as scope:
                    self.keeper = scope
                    if not self.closing:
                        await anyio.sleep_forever()
            finally:
                # Runs when aclose() or the finalizer cancels us, or when the loop shuts
                # down and cancels its tasks: either way, on the client's own loop.
                await self.aclose()

        spawn_system_task(keep)

    async def aclose(self) -> None:
        """Close the client and the fast-path connections; on the state's own loop."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self.fast.aclose()
            if self.owned:
                with contextlib.suppress(Exception):
                    await self.client.aclose()

    def close_soon(self) -> None:
        """Ask the keeper to close the client, from any thread. A finished loop: drop it."""
        self.closing = True

        def cancel() -> None:
            if self.keeper is not None:
                self.keeper.cancel()

        # If the loop has finished, there is nothing to close: its sockets went with it.
        self.loop.call_soon(cancel)


def _release_all(states: dict[object, _LoopState]) -> None:
    # The finalizer: a KuboCAS dropped without aclose() still closes its clients.
    for state in list(states.values()):
        if state.owned:
            state.close_soon()
    states.clear()


class _Health:
    __slots__ = ("failures", "tripped_at")

    def __init__(self) -> None:
        self.failures = 0
        self.tripped_at: float | None = None

    def ok(self) -> None:
        self.failures = 0
        self.tripped_at = None

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= _GATEWAY_TRIP_AFTER:
            self.tripped_at = time.monotonic()

    def healthy(self) -> bool:
        if self.tripped_at is None:
            return True
        if time.monotonic() - self.tripped_at >= _GATEWAY_COOLDOWN:
            # Probation: the next failure trips it again at once.
            self.tripped_at = None
            self.failures = _GATEWAY_TRIP_AFTER - 1
            return True
        return False


class _Block(NamedTuple):
    link: Link
    codec: int
    data: bytes


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
    * **Batched writes.** The HAMT's blocks are uploaded many per request; see the module
      documentation for when they are durable.
    * **Any event loop.** One client and one concurrency limiter per running loop
      (asyncio or trio); one instance may be used from several loops and threads at once.
    * **Typed errors.** A missing block raises ``BlockNotFoundError``; any other failure,
      after retries, ``KuboError`` (with ``status_code``); never a raw httpx error.

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
        if hasher not in _HASHERS:
            raise InvalidConfigError(
                f"hasher {hasher!r} is not supported: use one of {sorted(_HASHERS)}"
            )
        match = _CHUNKER.fullmatch(chunker)
        if match is None:
            raise InvalidConfigError(
                f"invalid chunker {chunker!r}: use 'size-<n>', 'rabin' or 'rabin-<min>-<avg>-<max>'"
            )
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
            gateways = list(dict.fromkeys(_normalize_gateway(u) for u in gateway_base_urls))
        else:
            gateways = [
                _normalize_gateway(gateway_base_url or self.KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL)
            ]

        self.hasher = hasher
        self.chunker = chunker
        # Values up to this size are one block; bigger ones become a UnixFS file.
        if match.group(1):
            self.chunk_size: int | None = int(match.group(1))
            self._single_block_max = self.chunk_size
        else:
            self.chunk_size = None
            self._single_block_max = int(match.group(2)) if match.group(2) else _RABIN_DEFAULT_MIN
        self.rpc_base_url = _normalize_rpc(rpc_base_url or self.KUBO_DEFAULT_LOCAL_RPC_BASE_URL)
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
        self._credential_origins = {_origin(self.rpc_base_url), _origin(gateways[0])}
        if client is not None:
            self._headers = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in client.headers.raw
                if k.decode("latin-1").lower() not in _BENIGN_HEADERS
            }
            self._auth: Any = client.auth
            self._timeout = client.timeout
        else:
            self._headers = dict(headers or {})
            self._auth = auth
            self._timeout = httpx.Timeout(timeout)
        if client is not None and (headers or auth):
            raise InvalidConfigError("configure headers and auth on the client you pass")
        self._client = client
        self._client_key: object | None = None
        self._client_factory = client_factory
        self._transport = transport
        self._mh_code = _HASHERS[hasher]
        # Whole-block reads from a plain http:// gateway skip httpx (see _http.py), unless
        # the caller brought their own HTTP stack or the gateway needs httpx's auth.
        self._fast_targets: dict[str, FastTarget | None] = {}
        self._fast_timeout: float | None = None
        self._fast_reads = 0  # reads the fast path answered (tests look at it)
        if client is None and client_factory is None and transport is None:
            timeouts = [t for t in self._timeout.as_dict().values() if t is not None]
            self._fast_timeout = max(timeouts) if len(timeouts) == 4 else None
            for url in gateways:
                trusted = _origin(url) in self._credential_origins
                if not (trusted and auth is not None):
                    self._fast_targets[url] = fast_target(url, self._headers if trusted else None)

        self._mutex = threading.Lock()
        self._loops: dict[object, _LoopState] = {}
        self._health = {url: _Health() for url in gateways}
        # Blocks named but not yet confirmed by Kubo: served to reads from here.
        self._pending: dict[Link, _Block] = {}
        # The subset not yet handed to an upload, per codec, in save order.
        self._queue: dict[int, dict[Link, None]] = {}
        self._queued_bytes = 0
        self._queued_blocks = 0
        self._uploading = 0  # blocks in uploads now running (flush waits for them)
        self._background = 0  # uploads running as background tasks
        self._next_yield = 0.0  # when a writer next lets the background uploads run
        self._finalizer = weakref.finalize(self, _release_all, self._loops)

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

    def _blocks_for(self, data: bytes, codec: int) -> tuple[Link, list[_Block]] | None:
        """The blocks that store ``data`` and the id to return; None if Kubo must chunk."""
        data = bytes(data)
        if len(data) <= self._single_block_max:
            link = self._link(codec, data)
            return link, [_Block(link, codec, data)]
        if self.chunk_size is None:
            return None
        root, blocks = build_file(data, self.chunk_size, self._link)
        return root, [_Block(*b) for b in blocks]

    # -- per-loop clients -----------------------------------------------------------------

    def _state(self) -> _LoopState:
        key = current_loop_key()
        state = self._loops.get(key)
        return state if state is not None else self._new_state(key)

    def _new_state(self, key: object) -> _LoopState:
        with self._mutex:
            state = self._loops.get(key)
            if state is not None:
                return state
            if self._client is not None and self._client_key in (None, key):
                # A supplied client serves the first loop that uses it, and only that one.
                self._client_key = key
                state = _LoopState(self._client, self.concurrency, owned=False)
            else:
                if self._client_factory is not None:
                    client = self._client_factory()
                else:
                    client = httpx.AsyncClient(
                        timeout=self._timeout,
                        limits=httpx.Limits(
                            max_connections=self.concurrency + _UPLOADS_IN_FLIGHT,
                            max_keepalive_connections=self.concurrency,
                        ),
                        transport=self._transport,
                    )
                state = _LoopState(client, self.concurrency, owned=True)
            self._loops[key] = state
        if state.owned:
            state.start_keeper()
        return state

    async def aclose(self) -> None:
        """Close the HTTP clients this store opened, on every loop; safe from any loop.

        The current loop's client is closed before this returns; clients of other running
        loops are closed on their own loops right after; those of finished loops are
        dropped. A supplied ``client`` is left open. Blocks queued by the HAMT's fast
        path and not yet flushed are discarded (a HAMT flushes before it reports a root).
        Cancellation: the close of this loop's client is shielded and completes.
        """
        repair_sniffio()
        with self._mutex:
            states = list(self._loops.values())
            self._loops.clear()
            self._client_key = None
            self._pending.clear()
            self._queue.clear()
            self._queued_blocks = self._queued_bytes = 0
        try:
            here: object | None = current_loop_key()
        except RuntimeError:
            here = None
        for state in states:
            if not state.owned:
                continue
            state.close_soon()
            if state.key is here:
                await state.aclose()

    # -- HTTP -----------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay = self.initial_delay * self.backoff_factor**attempt
        return delay * random.uniform(0.8, 1.2)  # jitter: spread out synchronized retries

    async def _send_once(
        self,
        state: _LoopState,
        method: str,
        url: str,
        params: Any,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """One request (following GET redirects), with credentials only for their origins."""
        for _ in range(_MAX_REDIRECTS + 1):
            trusted = _origin(url) in self._credential_origins
            request = httpx.Request(
                method,
                url,
                params=params,
                content=content,
                headers={**self._headers, **headers} if trusted else headers,
                extensions={"timeout": self._timeout.as_dict()},
            )
            if content is not None:
                request.stream = _Body(content)
            response = await state.client.send(
                request, auth=self._auth if trusted else None, follow_redirects=False
            )
            location = response.headers.get("Location")
            if not (method == "GET" and response.is_redirect and location):
                return response
            url = str(response.url.join(location))
            params = None
        raise KuboError(f"more than {_MAX_REDIRECTS} redirects from {url}", url=url)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; return the last response.

        Raises ``KuboError`` only when no response came at all; the caller decides what a
        final error status means.
        """
        state = self._state()
        attempt = 0
        while True:
            try:
                async with state.limiter:
                    response = await self._send_once(
                        state, method, url, params, content, headers or {}
                    )
            except httpx.RequestError as exc:
                # Timeouts, refused or reset connections, truncated bodies. A URL httpx
                # cannot send to will not get better by waiting.
                if attempt >= self.max_retries or isinstance(
                    exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
                ):
                    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
                    raise KuboError(
                        f"{method} {url} {kind} after {attempt + 1} attempts: {exc!r}", url=url
                    ) from exc
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                retry = status in _RETRY_STATUSES and not (
                    status == 500 and _kubo_message(response) is not None
                )
                if not retry or attempt >= self.max_retries:
                    return response
                after = _retry_after(response, self.max_retry_after)
                delay = self._backoff(attempt) if after is None else after
            attempt += 1
            await anyio.sleep(delay)

    async def _rpc(
        self,
        path: str,
        params: Any,
        target_rpc: str | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        base = _normalize_rpc(target_rpc) if target_rpc else self.rpc_base_url
        url = f"{base}/api/v0/{path}"
        response = await self._request("POST", url, params=params, content=content, headers=headers)
        if response.status_code == 200:
            return response
        message = _kubo_message(response)
        if message is not None and _is_not_found(message):
            raise BlockNotFoundError(f"Kubo at {base}: {message}")
        raise KuboError(
            f"Kubo RPC {path} failed: {_describe(response)}",
            status_code=response.status_code,
            url=url,
        )

    # -- writes ---------------------------------------------------------------------------

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> CID:
        """Store ``data`` on Kubo and return its CID once Kubo has confirmed it.

        Cancellation: the block may or may not have been stored; saving again is safe.
        """
        repair_sniffio()
        code = codec_code(codec)
        planned = self._blocks_for(data, code)
        if planned is None:
            return (await self._add(bytes(data), code)).to_cid()
        root, blocks = planned
        await self._upload(blocks)
        return root.to_cid()

    async def put_block(self, id: Any, data: bytes) -> None:
        """Queue a block named elsewhere (CAR import) after checking it; ``flush()`` stores it."""
        repair_sniffio()
        link = as_link(id)
        verify_block(link, data)
        await self._enqueue([_Block(link, link.codec, bytes(data))])

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Link:
        code = codec_code(codec)
        planned = self._blocks_for(data, code)
        if planned is None:
            return await self._add(bytes(data), code)
        root, blocks = planned
        await self._enqueue(blocks)
        return root

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[Link]:
        code = codec_code(codec)
        links: list[Link] = []
        queued: list[_Block] = []
        for data in blocks:
            planned = self._blocks_for(data, code)
            if planned is None:
                links.append(await self._add(bytes(data), code))
                continue
            links.append(planned[0])
            queued.extend(planned[1])
        await self._enqueue(queued)
        return links

    async def flush(self) -> None:
        """Upload every queued block; return once Kubo has confirmed all of them.

        Raises ``KuboError`` if an upload fails; the blocks not confirmed stay queued, so
        calling ``flush()`` again (say, once the daemon is back) finishes the job.
        Cancellation: some blocks may have been stored; the rest stay queued.
        """
        repair_sniffio()
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

    async def _enqueue(self, blocks: Iterable[_Block]) -> None:
        with self._mutex:
            for block in blocks:
                if block.link in self._pending:
                    continue
                self._pending[block.link] = block
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

    async def _start_uploads(self, batches: list[list[_Block]]) -> None:
        """Upload full batches in the background, so the writer keeps going while Kubo
        stores them; with ``_UPLOADS_IN_FLIGHT`` already running, upload here instead
        (back-pressure: memory stays bounded)."""
        inline: list[list[_Block]] = []
        for batch in batches:
            with self._mutex:
                spawn = self._background < _UPLOADS_IN_FLIGHT
                if spawn:
                    self._background += 1
            if spawn:
                spawn_system_task(functools.partial(self._upload_in_background, batch))
            else:
                inline.append(batch)
        if inline:
            await self._upload_batches(inline)

    async def _upload_in_background(self, batch: list[_Block]) -> None:
        try:
            await self._upload_batch(batch)
        except Exception:
            # The unconfirmed blocks are back in the queue: flush() uploads them again and
            # reports the failure if it persists. A background task has no one to tell.
            pass
        finally:
            with self._mutex:
                self._background -= 1

    def _take_batches(self, everything: bool) -> list[list[_Block]]:
        """Move queued blocks into upload batches (only full ones unless ``everything``)."""
        batches: list[list[_Block]] = []
        with self._mutex:
            for codec in list(self._queue):
                links = self._queue[codec]
                taken: list[_Block] = []
                batch: list[_Block] = []
                size = 0
                for link in links:
                    block = self._pending[link]
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

    async def _upload_batches(self, batches: list[list[_Block]]) -> None:
        await map_bounded(self._upload_batch, batches, _UPLOADS_IN_FLIGHT)

    async def _upload_batch(self, batch: list[_Block]) -> None:
        confirmed, error = 0, None
        try:
            confirmed, error = await self._block_put(batch)
        finally:
            # Confirmed blocks leave the buffer; the rest go back to the queue, so nothing
            # unconfirmed is ever treated as stored and a later flush retries it.
            with self._mutex:
                self._uploading -= len(batch)
                for block in batch[:confirmed]:
                    self._pending.pop(block.link, None)
                for block in batch[confirmed:]:
                    if block.link in self._pending:
                        self._queue.setdefault(block.codec, {})[block.link] = None
                        self._queued_blocks += 1
                        self._queued_bytes += len(block.data)
        if error is not None:
            raise error

    async def _upload(self, blocks: list[_Block]) -> None:
        """Write blocks through now (not via the queue), in batches per codec."""
        by_codec: dict[int, list[_Block]] = {}
        for block in blocks:
            by_codec.setdefault(block.codec, []).append(block)
        batches: list[list[_Block]] = []
        for group in by_codec.values():
            for start in range(0, len(group), self.batch_blocks):
                batches.append(group[start : start + self.batch_blocks])

        async def put(batch: list[_Block]) -> None:
            _, error = await self._block_put(batch)
            if error is not None:
                raise error

        await map_bounded(put, batches, _UPLOADS_IN_FLIGHT)

    async def _block_put(self, batch: list[_Block]) -> tuple[int, KuboError | None]:
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
        response = await self._rpc(
            "block/put",
            params,
            content=b"".join(parts),
            headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
        )
        confirmed = 0
        for line, block in zip(response.content.splitlines(), batch, strict=False):
            if _confirms(line, block.link):
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

    async def _add(self, data: bytes, codec: int) -> Link:
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
        response = await self._rpc(
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

    # -- reads ----------------------------------------------------------------------------

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        """The block ``id`` names (a ``multiformats.CID``, CID text or bytes), or a range.

        Cancellation: nothing happens.
        """
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
        _slice(b"", offset, length, suffix)  # reject bad arguments before any I/O
        if (offset is not None and length == 0) or (offset is None and suffix == 0):
            return b""
        if link.codec == DAG_PB and (self.verify or link in self._pending):
            # A UnixFS file, read block by block: each block verified, and for a range only
            # the blocks it covers. A queued root is read this way too (its bytes are the
            # node, not the file), since no gateway has it yet.
            if offset is None and length is None and suffix is None:
                return await read_file(link, self._block)
            return await read_file_range(
                link, self._block, offset, length, suffix, concurrency=self.concurrency
            )
        pending = self._pending.get(link)
        if pending is not None:
            return _slice(pending.data, offset, length, suffix)
        if self.verify:
            return _slice(await self._fetch(link), offset, length, suffix)
        return await self._fetch(link, offset, length, suffix, ranged=True)

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
        size = await self._head_size(link)
        # No gateway gave a usable answer to HEAD: a GET settles it (and raises as reads do).
        return len(await self._fetch(link)) if size is None else size

    async def _head_size(self, link: Link) -> int | None:
        """A block's size from the first gateway that answers ``HEAD`` with a plain 200 and
        a Content-Length; ``BlockNotFoundError`` if every gateway says it has no such
        block; None otherwise."""
        not_found = 0
        text = str(link)
        for gateway in self._ordered_gateways():
            health = self._health[gateway]
            try:
                response = await self._request("HEAD", f"{gateway}{text}?format=raw")
            except KuboError:
                health.failed()
                continue
            if response.status_code in (404, 410):
                not_found += 1
                continue
            length = response.headers.get("Content-Length", "")
            if response.status_code == 200 and length.isdigit():
                health.ok()
                return int(length)
        if not_found == len(self.gateway_base_urls):
            raise BlockNotFoundError(
                f"{link} is not on {'any of the gateways' if not_found > 1 else 'the gateway'} "
                f"({', '.join(self.gateway_base_urls)})"
            )
        return None

    async def get_block(self, id: Any) -> bytes:
        """The raw bytes of one block, always verified; for a dag-pb CID the encoded node,
        not the file it heads (``load`` gives the file). Cancellation: nothing happens."""
        repair_sniffio()
        return await self._block(as_link(id))

    async def _block(self, link: Link) -> bytes:
        pending = self._pending.get(link)
        if pending is not None:
            return pending.data
        return await self._fetch(link, verify=True)

    def _ordered_gateways(self) -> list[str]:
        if len(self.gateway_base_urls) == 1:
            return self.gateway_base_urls
        return sorted(self.gateway_base_urls, key=lambda url: not self._health[url].healthy())

    async def _fetch(
        self,
        link: Link,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
        *,
        ranged: bool = False,
        verify: bool | None = None,
    ) -> bytes:
        """Read a block (or, with ``ranged``, a range of it) from the first gateway that can.

        With ``verify`` (the default unless ``ranged``) the whole raw block is fetched and
        checked; a gateway that sends wrong bytes counts as failed and the next is tried.
        """
        if verify is None:
            verify = not ranged
        fn, digest = link.multihash()
        if fn == 0x00:  # identity: the block is inside the CID
            return _slice(digest, offset, length, suffix) if ranged else digest
        headers: dict[str, str] = {}
        if ranged and (offset is not None or suffix is not None):
            if suffix is not None:
                headers["Range"] = f"bytes=-{suffix}"
            elif length is not None:
                headers["Range"] = f"bytes={offset}-{offset + length - 1}"  # type: ignore[operator]
            else:
                headers["Range"] = f"bytes={offset}-"
        # A dag-pb value read unverified: let the gateway reassemble the file.
        query = "" if (link.codec == DAG_PB and not verify) else "?format=raw"
        failures: list[Exception] = []
        not_found = 0
        text = str(link)
        for gateway in self._ordered_gateways():
            url = f"{gateway}{text}{query}"
            health = self._health[gateway]
            target = self._fast_targets.get(gateway) if verify and not headers else None
            if target is not None:
                body = await self._fast_get(target, text)
                if body is not None:
                    try:
                        verify_block(link, body)
                    except BlockVerificationError as exc:
                        health.failed()
                        failures.append(BlockVerificationError(f"gateway {gateway}: {exc}"))
                        continue
                    health.ok()
                    return body
                # Not a plain 200 (a missing block, say): httpx asks again and decides.
            try:
                response = await self._request("GET", url, headers=headers)
                if response.status_code == 400 and "Range" in headers:
                    # Kubo rejects a suffix longer than the block with 400 where HTTP says
                    # to serve it all: ask for the whole block and take the range here.
                    response = await self._request("GET", url)
            except KuboError as exc:
                health.failed()
                failures.append(exc)
                continue
            status = response.status_code
            if status in (404, 410):
                not_found += 1
                continue
            if status == 416 and "Range" in headers:
                health.ok()
                return self._unsatisfiable(response, offset, suffix)
            if status not in (200, 206) or (
                status == 206 and response.request.headers.get("Range") is None
            ):
                health.failed()
                failures.append(
                    KuboError(
                        f"gateway {gateway} could not serve {link}: {_describe(response)}",
                        status_code=status,
                        url=url,
                    )
                )
                continue
            body = response.content
            if status == 206:
                try:
                    self._check_partial(response, offset, length, suffix, len(body))
                except KuboError as exc:
                    health.failed()
                    failures.append(exc)
                    continue
                health.ok()
                return body
            if verify:
                try:
                    verify_block(link, body)
                except BlockVerificationError as exc:
                    health.failed()
                    failures.append(BlockVerificationError(f"gateway {gateway}: {exc}"))
                    continue
            health.ok()
            # A 200 to a range request is the whole body: take the range here.
            return _slice(body, offset, length, suffix) if ranged else body
        if not failures:
            raise BlockNotFoundError(
                f"{link} is not on {'any of the gateways' if not_found > 1 else 'the gateway'} "
                f"({', '.join(self.gateway_base_urls)})"
            )
        raise failures[-1]

    async def _fast_get(self, target: FastTarget, cid: str) -> bytes | None:
        """A whole block through the lean HTTP path, or None to go through httpx."""
        state = self._state()
        limiter = state.limiter
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            body = await state.fast.get(target, cid, self._fast_timeout)
        finally:
            limiter.release()
        if body is not None:
            self._fast_reads += 1
        return body

    @staticmethod
    def _unsatisfiable(response: httpx.Response, offset: int | None, suffix: int | None) -> bytes:
        # 416 with "bytes */N": empty when Python slicing would be (offset at or past the
        # end, or any suffix of an empty block); otherwise the range really is bad.
        match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
        if match is not None:
            total = int(match.group(1))
            if (suffix is not None and total == 0) or (offset is not None and offset >= total):
                return b""
        size = response.headers.get("Content-Range", "no size given")
        raise InvalidRangeError(f"the gateway cannot serve that range ({size})")

    @staticmethod
    def _check_partial(
        response: httpx.Response,
        offset: int | None,
        length: int | None,
        suffix: int | None,
        received: int,
    ) -> None:
        # A 206 must carry exactly the window asked for; anything else is a broken gateway.
        text = response.headers.get("Content-Range", "").strip()
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", text)
        if match is None:
            raise KuboError(f"206 response with bad Content-Range {text!r}", status_code=206)
        start, end, total = map(int, match.groups())
        if suffix is not None:
            want_start, want_len = max(total - suffix, 0), min(suffix, total)
        else:
            want_start = offset or 0
            rest = max(total - want_start, 0)
            want_len = rest if length is None else min(length, rest)
        if (start, end - start + 1, received) != (want_start, want_len, want_len):
            raise KuboError(
                f"206 response for the wrong window: {text!r} with {received} bytes, wanted "
                f"{want_len} bytes from {want_start}",
                status_code=206,
            )

    # -- pins -----------------------------------------------------------------------------

    async def pin_cid(self, id: Any, target_rpc: str | None = None) -> None:
        """Pin ``id`` and everything it links to (recursive) on ``target_rpc`` (default:
        this store's RPC). Queued blocks are flushed first.

        Cancellation: the pin may or may not have been added.
        """
        repair_sniffio()
        await self.flush()
        await self._rpc("pin/add", {"arg": str(as_link(id)), "recursive": "true"}, target_rpc)

    async def unpin_cid(self, id: Any, target_rpc: str | None = None) -> None:
        """Remove the recursive pin of ``id``. Cancellation: it may or may not be removed."""
        repair_sniffio()
        await self._rpc("pin/rm", {"arg": str(as_link(id)), "recursive": "true"}, target_rpc)

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str | None = None) -> None:
        """Move a recursive pin from ``old_id`` to ``new_id`` (Kubo pins only the difference).

        Cancellation: either pin may be in place afterwards.
        """
        repair_sniffio()
        await self.flush()
        params = [("arg", str(as_link(old_id))), ("arg", str(as_link(new_id)))]
        await self._rpc("pin/update", params, target_rpc)

    async def pin_ls(self, target_rpc: str | None = None) -> dict[str, dict[str, Any]]:
        """Every pin, as Kubo's ``Keys`` map: ``{"bafy…": {"Type": "recursive"}, …}``.

        This is the shape py-hamt returned (its annotation said list), so ``str(cid) in
        await cas.pin_ls()`` keeps working. Cancellation: nothing happens.
        """
        repair_sniffio()
        response = await self._rpc("pin/ls", {"stream": "true"}, target_rpc)
        pins: dict[str, dict[str, Any]] = {}
        for line in response.content.splitlines():
            if line.strip():
                entry = json.loads(line)
                pins[entry["Cid"]] = {"Type": entry["Type"]}
        return pins


def _unpickle_kubo(settings: dict[str, Any], limits: tuple[float | None, ...]) -> KuboCAS:
    if len(set(limits)) == 1 and limits[0] is not None:
        return KuboCAS(**settings, timeout=limits[0])
    # Uneven limits came from a client's Timeout: keep them, as the original did.
    cas = KuboCAS(**settings)
    connect, read, write, pool = limits
    cas._timeout = httpx.Timeout(connect=connect, read=read, write=write, pool=pool)
    known = [t for t in limits if t is not None]
    if cas._fast_timeout is not None:
        cas._fast_timeout = max(known) if len(known) == 4 else None
    return cas
