"""Gateway reads: which gateway to ask (health and failover), the fast GET path, and what
an answer must be to count (verified bytes, a 206 for exactly the window asked for).

A read asks the gateways one at a time, healthiest first (``Health``). Each attempt is
one call, ``_attempt``, that returns the bytes or raises: ``_NotHere`` for a gateway that
does not have the block, ``KuboError``/``BlockVerificationError`` for one that failed (it
is marked failed and the error remembered; the next gateway is tried). When every gateway
lacked the block the read raises ``BlockNotFoundError``; otherwise the last failure.

Within an attempt, a whole raw block from a plain ``http://`` gateway goes through the
lean HTTP/1.1 path (``anyhamt/cas/_http.py``), verified or not as configured; any answer
but a plain 200 is asked again through httpx (``Requests``), which owns retries,
redirects and error mapping.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Final

import anyio

from ..._codec import DAG_PB, Link, verify_block
from ..._errors import BlockNotFoundError, BlockVerificationError, InvalidRangeError, KuboError
from .._base import slice_block
from .._http import fast_target
from ._requests import describe

if TYPE_CHECKING:
    import httpx

    from .._http import FastTarget
    from ._clients import LoopStates
    from ._config import Credentials
    from ._requests import Requests

__all__ = ["Gateways", "slice_range"]

# Gateway health: after this many failures in a row a gateway is tried last for a while.
_GATEWAY_TRIP_AFTER: Final = 3
_GATEWAY_COOLDOWN: Final = 30.0


def slice_range(data: bytes, offset: int | None, length: int | None, suffix: int | None) -> bytes:
    """``slice_block``, with a suffix longer than the block meaning the whole block."""
    # slice_block computes data[len - suffix:], which wraps round when the suffix is longer
    # than the block; clamp it (HTTP serves the whole body then).
    if suffix is not None and suffix > len(data):
        suffix = len(data)
    return slice_block(data, offset, length, suffix)


class Health:
    """A gateway's recent failures: three in a row send it to the back for 30 s."""

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


class _NotHere(Exception):
    """The gateway answered 404 or 410: it does not have the block."""


class Gateways:
    """Reads from a list of gateways for one KuboCAS."""

    __slots__ = ("clients", "fast_targets", "fast_timeout", "health", "requests", "urls")

    def __init__(
        self,
        urls: list[str],
        clients: LoopStates,
        requests: Requests,
        credentials: Credentials,
        fast_timeout: float | None,
        fast: bool,
    ) -> None:
        self.urls = urls
        self.clients = clients
        self.requests = requests
        self.health = {url: Health() for url in urls}
        self.fast_timeout = fast_timeout
        # Whole-block reads from a plain http:// gateway skip httpx (see _http.py), unless
        # the caller brought their own HTTP stack (``fast`` false) or the gateway needs
        # httpx's auth.
        self.fast_targets: dict[str, FastTarget | None] = {}
        if fast:
            for url in urls:
                trusted = credentials.trusted(url)
                if not (trusted and credentials.auth is not None):
                    headers = credentials.headers if trusted else None
                    self.fast_targets[url] = fast_target(url, headers)

    def ordered(self) -> list[str]:
        if len(self.urls) == 1:
            return self.urls
        return sorted(self.urls, key=lambda url: not self.health[url].healthy())

    def _not_found(self, link: Link, not_found: int) -> BlockNotFoundError:
        return BlockNotFoundError(
            f"{link} is not on {'any of the gateways' if not_found > 1 else 'the gateway'} "
            f"({', '.join(self.urls)})"
        )

    async def fetch(
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
            return slice_range(digest, offset, length, suffix) if ranged else digest
        headers: dict[str, str] = {}
        if ranged and (offset is not None or suffix is not None):
            if suffix is not None:
                headers["Range"] = f"bytes=-{suffix}"
            elif length is not None:
                headers["Range"] = f"bytes={offset}-{offset + length - 1}"  # type: ignore[operator]
            else:
                headers["Range"] = f"bytes={offset}-"
        # A dag-pb value read unverified: let the gateway reassemble the file.
        raw = not (link.codec == DAG_PB and not verify)
        window = (offset, length, suffix) if ranged else None
        failures: list[Exception] = []
        not_found = 0
        for gateway in self.ordered():
            health = self.health[gateway]
            try:
                body = await self._attempt(gateway, link, headers, raw, verify, window)
            except _NotHere:
                not_found += 1
                continue
            except InvalidRangeError:
                health.ok()  # the gateway answered well; the range itself is bad
                raise
            except (KuboError, BlockVerificationError) as exc:
                health.failed()
                failures.append(exc)
                continue
            health.ok()
            return body
        if not failures:
            raise self._not_found(link, not_found)
        raise failures[-1]

    async def _attempt(
        self,
        gateway: str,
        link: Link,
        headers: dict[str, str],
        raw: bool,
        verify: bool,
        window: tuple[int | None, int | None, int | None] | None,
    ) -> bytes:
        """One gateway's answer: the bytes, or an exception saying why not (see module)."""
        target = self.fast_targets.get(gateway) if raw and not headers else None
        if target is not None:
            body = await self._fast_get(target, link)
            if body is not None:
                if verify:
                    self._verify(gateway, link, body)
                return body if window is None else slice_range(body, *window)
            # Not a plain 200 (a missing block, say): httpx asks again and decides.
        url = f"{gateway}{link}{'?format=raw' if raw else ''}"
        response = await self.requests.request("GET", url, headers=headers)
        if response.status_code == 400 and "Range" in headers:
            # Kubo rejects a suffix longer than the block with 400 where HTTP says to
            # serve it all: ask for the whole block and take the range here.
            response = await self.requests.request("GET", url)
        status = response.status_code
        if status in (404, 410):
            raise _NotHere
        offset, length, suffix = window or (None, None, None)
        if status == 416 and "Range" in headers:
            return _unsatisfiable(response, offset, suffix)
        if status not in (200, 206) or (
            status == 206 and response.request.headers.get("Range") is None
        ):
            raise KuboError(
                f"gateway {gateway} could not serve {link}: {describe(response)}",
                status_code=status,
                url=url,
            )
        body = response.content
        if status == 206:
            _check_partial(response, offset, length, suffix, len(body))
            return body
        if verify:
            self._verify(gateway, link, body)
        # A 200 to a range request is the whole body: take the range here.
        return body if window is None else slice_range(body, *window)

    @staticmethod
    def _verify(gateway: str, link: Link, body: bytes) -> None:
        try:
            verify_block(link, body)
        except BlockVerificationError as exc:
            raise BlockVerificationError(f"gateway {gateway}: {exc}") from None

    async def _fast_get(self, target: FastTarget, link: Link) -> bytes | None:
        """A whole block through the lean HTTP path, or None to go through httpx.

        The CID goes in base16 (``f`` + hex, which Kubo's gateway accepts as it does any
        multibase): encoding base32 costs ~3 µs a block, hex is one C call.
        """
        state = self.clients.state()
        limiter = state.limiter
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            return await state.fast.get(target, "f" + link.hex(), self.fast_timeout)
        finally:
            limiter.release()

    async def head_size(self, link: Link) -> int | None:
        """A block's size from the first gateway that answers ``HEAD`` with a plain 200 and
        a Content-Length; ``BlockNotFoundError`` if every gateway says it has no such
        block; None otherwise."""
        not_found = 0
        text = str(link)
        for gateway in self.ordered():
            health = self.health[gateway]
            try:
                response = await self.requests.request("HEAD", f"{gateway}{text}?format=raw")
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
        if not_found == len(self.urls):
            raise self._not_found(link, not_found)
        return None


def _unsatisfiable(response: httpx.Response, offset: int | None, suffix: int | None) -> bytes:
    # 416 with "bytes */N": empty when Python slicing would be (offset at or past the end,
    # or any suffix of an empty block); otherwise the range really is bad.
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    if match is not None:
        total = int(match.group(1))
        if (suffix is not None and total == 0) or (offset is not None and offset >= total):
            return b""
    size = response.headers.get("Content-Range", "no size given")
    raise InvalidRangeError(f"the gateway cannot serve that range ({size})")


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
