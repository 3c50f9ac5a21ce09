"""zarr's own conformance suite (``zarr.testing.store.StoreTests``) for each Zarr store.

The classes run on asyncio only: zarr's base class calls asyncio directly (``gather``,
``zarr.core.sync``), so under trio it would test zarr's limits, not ours. The stores' own
behaviour on trio is covered in test_loop_patterns.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from zarr.core.buffer import cpu
from zarr.testing.store import StoreTests

from anyhamt import HAMT, InMemoryCAS, LocalCAS
from anyhamt.zarr import SimpleEncryptedZarrHAMTStore, ZarrHAMTStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from zarr.core.buffer import Buffer

KEY = bytes(range(32))
HEADER = b"anyhamt-conformance"


def encrypt(data: bytes, key: bytes = KEY, header: bytes = HEADER) -> bytes:
    """py-hamt's format, written out independently of the store under test."""
    nonce = bytes(24)  # fixed nonce: fine for a test helper, never for real data
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(data)
    return nonce + tag + ciphertext


def decrypt(stored: bytes, key: bytes = KEY, header: bytes = HEADER) -> bytes:
    cipher = ChaCha20_Poly1305.new(key=key, nonce=stored[:24])
    cipher.update(header)
    return bytes(cipher.decrypt_and_verify(stored[40:], stored[24:40]))


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # zarr's StoreTests call asyncio directly
class TestZarrHAMTStore(StoreTests[ZarrHAMTStore, cpu.Buffer]):
    store_cls = ZarrHAMTStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"hamt": HAMT(InMemoryCAS(), values_are_bytes=True), "read_only": False}

    async def set(self, store: ZarrHAMTStore, key: str, value: Buffer) -> None:
        await store.hamt.set(key, value.to_bytes())

    async def get(self, store: ZarrHAMTStore, key: str) -> cpu.Buffer:
        return self.buffer_cls.from_bytes(await store.hamt.get(key))

    def test_store_repr(self, store: ZarrHAMTStore) -> None:
        assert repr(store).startswith("ZarrHAMTStore('hamt://")
        assert "read_only=False" in repr(store)

    def test_store_supports_writes(self, store: ZarrHAMTStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ZarrHAMTStore) -> None:
        assert store.supports_listing


class TestZarrHAMTStoreOnLocalCAS(TestZarrHAMTStore):
    """The same suite over the persistent store (values reach SQLite, not a dict)."""

    @pytest.fixture
    async def store_kwargs(self, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
        async with LocalCAS(tmp_path / "blocks.sqlite3") as cas:
            yield {"hamt": HAMT(cas, values_are_bytes=True), "read_only": False}


@pytest.mark.usefixtures("anyio_backend")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # zarr's StoreTests call asyncio directly
class TestSimpleEncryptedZarrHAMTStore(StoreTests[SimpleEncryptedZarrHAMTStore, cpu.Buffer]):
    store_cls = SimpleEncryptedZarrHAMTStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {
            "hamt": HAMT(InMemoryCAS(), values_are_bytes=True),
            "read_only": False,
            "encryption_key": KEY,
            "header": HEADER,
        }

    async def set(self, store: SimpleEncryptedZarrHAMTStore, key: str, value: Buffer) -> None:
        await store.hamt.set(key, encrypt(value.to_bytes()))

    async def get(self, store: SimpleEncryptedZarrHAMTStore, key: str) -> cpu.Buffer:
        return self.buffer_cls.from_bytes(decrypt(await store.hamt.get(key)))

    def test_store_repr(self, store: SimpleEncryptedZarrHAMTStore) -> None:
        assert repr(store).startswith("SimpleEncryptedZarrHAMTStore('hamt://")
        assert KEY.hex() not in repr(store) and repr(KEY) not in repr(store)

    def test_store_supports_writes(self, store: SimpleEncryptedZarrHAMTStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: SimpleEncryptedZarrHAMTStore) -> None:
        assert store.supports_listing
