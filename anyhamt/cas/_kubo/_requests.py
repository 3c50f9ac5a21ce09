"""HTTP requests through httpx with retries, and Kubo's RPC on top of them.

Every request KuboCAS makes through httpx (all RPC calls, and the gateway reads the fast
path does not answer) goes through ``Requests.request``: credentials only for their
origins (per redirect hop), GET redirects followed by hand, transient failures (timeouts,
connection errors, 429 and 5xx other than Kubo's own JSON errors) retried with
exponential backoff and jitter or after the server's ``Retry-After``.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx

from ..._errors import BlockNotFoundError, KuboError
from ._config import normalize_rpc

if TYPE_CHECKING:
    from ._clients import LoopStates
    from ._config import Credentials

__all__ = ["Requests", "describe", "retry_after"]

# Statuses worth another attempt. A 500 is retried only when it is not one of Kubo's own
# JSON command errors, which are deterministic ("not found", "over 2MiB", ...).
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

# Redirect hops a gateway read follows (each hop re-decides which credentials to send).
_MAX_REDIRECTS: Final = 5


def retry_after(response: httpx.Response, cap: float) -> float | None:
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


def kubo_message(response: httpx.Response) -> str | None:
    """The ``Message`` of a Kubo RPC error body, or None if the body is not one."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("Type") == "error":
        return str(body.get("Message", ""))
    return None


def describe(response: httpx.Response) -> str:
    """``HTTP <status>: <Kubo's message or the start of the body>``, for error messages."""
    message = kubo_message(response)
    if message is None:
        message = response.content[:300].decode("utf-8", "replace").strip()
    return f"HTTP {response.status_code}: {message}" if message else f"HTTP {response.status_code}"


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


class Requests:
    """Requests with retries for one KuboCAS (its settings, credentials and clients).

    No ``__slots__``: tests replace ``backoff`` on an instance to see the schedule.
    """

    def __init__(
        self,
        clients: LoopStates,
        credentials: Credentials,
        timeout: httpx.Timeout,
        rpc_base_url: str,
        max_retries: int,
        initial_delay: float,
        backoff_factor: float,
        max_retry_after: float,
    ) -> None:
        self.clients = clients
        self.credentials = credentials
        self.timeout = timeout
        self.rpc_base_url = rpc_base_url
        self.max_retries = max_retries
        self.initial_delay = initial_delay
        self.backoff_factor = backoff_factor
        self.max_retry_after = max_retry_after

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1`` when the server named no time."""
        delay = self.initial_delay * self.backoff_factor**attempt
        return delay * random.uniform(0.8, 1.2)  # jitter: spread out synchronized retries

    async def _send_once(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        params: Any,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """One request (following GET redirects), with credentials only for their origins."""
        credentials = self.credentials
        for _ in range(_MAX_REDIRECTS + 1):
            trusted = credentials.trusted(url)
            request = httpx.Request(
                method,
                url,
                params=params,
                content=content,
                headers={**credentials.headers, **headers} if trusted else headers,
                extensions={"timeout": self.timeout.as_dict()},
            )
            if content is not None:
                request.stream = _Body(content)
            response = await client.send(
                request, auth=credentials.auth if trusted else None, follow_redirects=False
            )
            location = response.headers.get("Location")
            if not (method == "GET" and response.is_redirect and location):
                return response
            url = str(response.url.join(location))
            params = None
        raise KuboError(f"more than {_MAX_REDIRECTS} redirects from {url}", url=url)

    async def request(
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
        state = self.clients.state()
        client = state.http()
        attempt = 0
        while True:
            try:
                async with state.limiter:
                    response = await self._send_once(
                        client, method, url, params, content, headers or {}
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
                delay = self.backoff(attempt)
            else:
                status = response.status_code
                retry = status in _RETRY_STATUSES and not (
                    status == 500 and kubo_message(response) is not None
                )
                if not retry or attempt >= self.max_retries:
                    return response
                after = retry_after(response, self.max_retry_after)
                delay = self.backoff(attempt) if after is None else after
            attempt += 1
            await anyio.sleep(delay)

    async def rpc(
        self,
        path: str,
        params: Any,
        target_rpc: str | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``/api/v0/{path}``: the 200 response, ``BlockNotFoundError`` if Kubo says
        the block is not there, ``KuboError`` otherwise."""
        base = normalize_rpc(target_rpc) if target_rpc else self.rpc_base_url
        url = f"{base}/api/v0/{path}"
        response = await self.request("POST", url, params=params, content=content, headers=headers)
        if response.status_code == 200:
            return response
        message = kubo_message(response)
        if message is not None and _is_not_found(message):
            raise BlockNotFoundError(f"Kubo at {base}: {message}")
        raise KuboError(
            f"Kubo RPC {path} failed: {describe(response)}",
            status_code=response.status_code,
            url=url,
        )
