"""``SimpleEncryptedZarrHAMTStore``: every value encrypted, wire-compatible with py-hamt."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any, Final

from Crypto.Cipher import ChaCha20_Poly1305

from .._errors import DecryptionError, InvalidConfigError
from ..cas._base import slice_block
from ._hamt_store import ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import Hashable

    from .._hamt import HAMT

__all__ = ["SimpleEncryptedZarrHAMTStore"]

_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 24  # a 24-byte nonce makes pycryptodome's ChaCha20 XChaCha20
_TAG_BYTES: Final = 16
_OVERHEAD: Final = _NONCE_BYTES + _TAG_BYTES


class SimpleEncryptedZarrHAMTStore(ZarrHAMTStore):
    """A ``ZarrHAMTStore`` that encrypts every value, metadata included.

    The format is py-hamt 3.6.0's, so either library reads what the other wrote:
    XChaCha20-Poly1305 (pycryptodome's ``ChaCha20_Poly1305`` with a 24-byte nonce), a fresh
    random nonce per value, stored as ``nonce (24) || tag (16) || ciphertext``, with
    ``header`` as the associated data. ``encryption_key`` must be 32 bytes.

    **Key names are not encrypted** (as in py-hamt): array names, chunk coordinates and
    the dataset's layout are visible to anyone holding the blocks; values are not.

    A byte-range read returns exactly that range of the plaintext (py-hamt returned the
    whole value). Authenticated encryption has to check the whole ciphertext, so the whole
    value is fetched and decrypted first.

    A wrong key, a wrong header or an altered block raises ``DecryptionError``, which says
    only that decryption failed. Pickling a store (dask) includes the key.

    Cancellation: as for ``ZarrHAMTStore``; every async method checks for it on entry, and
    a cancelled write stored the encrypted value entirely or not at all.
    """

    def __init__(self, hamt: HAMT, read_only: bool, encryption_key: bytes, header: bytes) -> None:
        if not isinstance(encryption_key, (bytes, bytearray)) or len(encryption_key) != _KEY_BYTES:
            size = len(encryption_key) if isinstance(encryption_key, (bytes, bytearray)) else None
            raise InvalidConfigError(
                f"encryption_key must be exactly {_KEY_BYTES} bytes, got "
                f"{type(encryption_key).__name__}"
                + (f" of {size} bytes" if size is not None else "")
                + "; make one with `secrets.token_bytes(32)` and keep it safe"
            )
        if not isinstance(header, (bytes, bytearray)):
            raise InvalidConfigError(f"header must be bytes, got {type(header).__name__}")
        super().__init__(hamt, read_only=read_only)
        self.encryption_key = bytes(encryption_key)
        self.header = bytes(header)

    @property
    def _cache_view(self) -> Hashable:
        return ("encrypted", self.encryption_key, self.header)

    def _settings(self) -> tuple[Any, ...]:
        return (self.encryption_key, self.header)

    def _restore_settings(self, settings: tuple[Any, ...]) -> None:
        self.encryption_key, self.header = settings

    def _token(self) -> str:
        # A digest, never the key itself: dask shows tokens in task names and dashboards.
        digest = hashlib.sha256(b"anyhamt-zarr-token\0" + self.encryption_key)
        digest.update(self.header)
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        # docstring inherited; the key is compared in constant time
        if not isinstance(other, SimpleEncryptedZarrHAMTStore):
            return False
        if not hmac.compare_digest(self.encryption_key, other.encryption_key):
            return False
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, as BlockStoreBase

    def _encode(self, data: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        cipher = ChaCha20_Poly1305.new(key=self.encryption_key, nonce=nonce)
        cipher.update(self.header)
        ciphertext, tag = cipher.encrypt_and_digest(data)
        return nonce + tag + ciphertext

    def _decrypt(self, key: str, stored: bytes) -> bytes:
        if len(stored) < _OVERHEAD:
            raise DecryptionError(
                f"decryption of {key!r} failed: wrong key or header, or the data was altered"
            )
        cipher = ChaCha20_Poly1305.new(key=self.encryption_key, nonce=stored[:_NONCE_BYTES])
        cipher.update(self.header)
        try:
            return bytes(
                cipher.decrypt_and_verify(stored[_OVERHEAD:], stored[_NONCE_BYTES:_OVERHEAD])
            )
        except ValueError:
            # pycryptodome's message ("MAC check failed") adds nothing; say only that it failed.
            raise DecryptionError(
                f"decryption of {key!r} failed: wrong key or header, or the data was altered"
            ) from None

    async def _read(self, hamt: HAMT, key: str, offset: Any, length: Any, suffix: Any) -> bytes:
        plaintext = self._decrypt(key, bytes(await hamt.get(key)))
        return slice_block(plaintext, offset, length, suffix)

    def _stored_size(self, size: int) -> int:
        return max(size - _OVERHEAD, 0)
