"""KuboCAS configuration: URLs, hash function, chunker, timeouts, credentials and where
they may be sent. Everything here is decided once, in ``KuboCAS.__init__``, and pickled as
it is (``KuboCAS.__reduce__``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ..._errors import InvalidConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

__all__ = [
    "HASHERS",
    "Credentials",
    "normalize_gateway",
    "normalize_rpc",
    "origin",
    "parse_chunker",
    "whole_timeout",
]

# Hash functions anyhamt can compute locally (CIDs are computed here, never taken on trust).
HASHERS: Final = {"blake3": 0x1E, "sha2-256": 0x12}

_CHUNKER: Final = re.compile(r"size-([1-9]\d*)|rabin(?:-([1-9]\d*)-([1-9]\d*)-([1-9]\d*))?")
_RABIN_DEFAULT_MIN: Final = 256 * 1024 // 3  # Kubo's "rabin" = rabin-<avg/3>-<avg>-<avg*1.5>

# Headers httpx adds by default; a supplied client's other headers count as credentials.
_BENIGN_HEADERS: Final = frozenset({"accept", "accept-encoding", "connection", "user-agent"})

Origin = tuple[str, str, int | None]


def origin(url: str) -> Origin:
    """(scheme, host, port) of ``url``, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(scheme),
    )


def normalize_rpc(url: str) -> str:
    """``http://host:5001``, with or without a trailing ``/api/v0``, → ``http://host:5001``."""
    url = url.strip().rstrip("/")
    if url.endswith("/api/v0"):
        url = url[: -len("/api/v0")]
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidConfigError(f"RPC URL {url!r} must start with http:// or https://")
    return url


def normalize_gateway(url: str) -> str:
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


def parse_chunker(chunker: str) -> tuple[int | None, int]:
    """(fixed chunk size or None for rabin, the largest value stored as one block)."""
    match = _CHUNKER.fullmatch(chunker)
    if match is None:
        raise InvalidConfigError(
            f"invalid chunker {chunker!r}: use 'size-<n>', 'rabin' or 'rabin-<min>-<avg>-<max>'"
        )
    if match.group(1):
        size = int(match.group(1))
        return size, size
    return None, int(match.group(2)) if match.group(2) else _RABIN_DEFAULT_MIN


def whole_timeout(timeout: httpx.Timeout) -> float | None:
    """One bound for a whole fast-path exchange: the longest of the four limits, or None
    (no bound) if any of them is unbounded."""
    limits = [t for t in timeout.as_dict().values() if t is not None]
    return max(limits) if len(limits) == 4 else None


class Credentials:
    """Headers and auth, sent only to the RPC URL's origin and the first gateway's.

    Never to another origin, not even through a redirect: ``for_url`` is asked per request
    (and per redirect hop).
    """

    __slots__ = ("auth", "headers", "origins")

    def __init__(self, origins: set[Origin], headers: Mapping[str, str] | None, auth: Any) -> None:
        self.origins = origins
        self.headers = dict(headers or {})
        self.auth = auth

    @classmethod
    def of_client(cls, origins: set[Origin], client: httpx.AsyncClient) -> Credentials:
        """A supplied client's headers (those httpx does not add itself) and auth."""
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in client.headers.raw
            if k.decode("latin-1").lower() not in _BENIGN_HEADERS
        }
        return cls(origins, headers, client.auth)

    def trusted(self, url: str) -> bool:
        return origin(url) in self.origins
