"""``ZarrHAMTStore``: a Zarr v3 store whose keys and values live in a HAMT."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final, Self

from zarr.abc.store import Store
from zarr.core.buffer import Buffer

from .._errors import (
    DetachedStoreError,
    InvalidConfigError,
    InvalidValueError,
    KeyNotFoundError,
    ReadOnlyError,
    StoreKeyNotFoundError,
    StoreReadOnlyError,
)
from .._hamt import HAMT
from .._loops import checkpoint_if_cancelled, repair_sniffio
from .._tasks import map_bounded
from ..cas._base import slice_block
from ._state import HamtTicket, hamt_state, ticket_for
from ._store_base import BlockStoreBase, buffer_bytes, range_args

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Hashable, Iterable

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import BufferPrototype

    from ._state import HamtState

__all__ = ["ZarrHAMTStore"]

# Values fetched at once by get_partial_values.
_PARTIAL_CONCURRENCY: Final = 32
_METADATA_SUFFIX: Final = "zarr.json"


def _dir_prefix(prefix: str) -> str:
    """``"a/b"`` and ``"a/b/"`` both name the directory ``"a/b/"``; ``""`` is the root."""
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


class ZarrHAMTStore(BlockStoreBase):
    """A Zarr v3 store on a HAMT: each Zarr key is a HAMT key, each value a raw block.

    The same constructor and behaviour as py-hamt's ``ZarrHAMTStore``, so data written by
    either library reads in the other::

        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        ds.to_zarr(store=ZarrHAMTStore(hamt), mode="w", zarr_format=3)
        await hamt.make_read_only()
        root = hamt.root_node_id

        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True,
                                values_are_bytes=True)
        ds = xarray.open_zarr(store=ZarrHAMTStore(hamt, read_only=True))

    ``hamt`` must have ``values_are_bytes=True``. ``read_only`` is the store's own flag:
    a read-only store over a writable HAMT reads (and never writes); a writable store over a
    read-only HAMT raises ``StoreReadOnlyError`` on writes, naming ``hamt.enable_write()``.
    py-hamt instead required both flags to agree.

    What it adds to py-hamt's store:

    * **Listing scales.** ``list``, ``list_prefix`` and ``list_dir`` answer from the HAMT's
      sorted key index (one walk of the map on first use, then kept in step by every write),
      in time proportional to what they return.
    * ``exists`` and ``getsize`` look up the value's id without fetching the value (a store
      that can size a block without reading it does so).
    * Byte ranges reach the content-addressed store, so a range of a value stored as a
      UnixFS file fetches only the leaves it covers.
    * Decoded ``zarr.json`` values are cached per HAMT (shared by every store over it) and
      dropped on every write to them, through a store or on the HAMT directly.
    * ``set_if_not_exists`` is atomic against every other write.
    * **Runs on any asyncio loop** (zarr's own ``zarr_io`` thread or the application's) and
      repairs the sniffio context a trio caller leaks into zarr's thread (``to_zarr``
      called directly from trio code).
    * **Pickles** for dask: a store over a read-only HAMT pickles to what reopens it (the
      content-addressed store's configuration, the root), never to live connections; the
      copy connects lazily. An unpickled copy in the same process shares the original HAMT.
      A copy of a store over a *writable* HAMT in another process cannot reach the
      original's buffered writes and raises ``DetachedStoreError`` on use: write with
      dask's threaded scheduler (the default for xarray), then ``make_read_only()``.
      ``__dask_tokenize__`` names a read-only store by its root, so dask never pickles the
      data to make a token.

    Zarr's optional synchronous protocols (``get_sync``/``set_sync``/``delete_sync``) are
    not implemented, none of them: every read may need I/O on an event loop, and blocking
    zarr's loop thread on it could deadlock.

    Cancellation: every async method checks for it on entry, so a call made in a cancelled
    scope raises the cancellation and does nothing. Cancelled later on, a ``set``,
    ``set_if_not_exists`` or ``delete`` happened entirely or not at all; a read (``get``,
    ``get_partial_values``, ``exists``, ``getsize``, ``is_empty``) or a listing changed
    nothing, and a listing stops.
    """

    _hamt: HAMT | None
    _ticket: HamtTicket | None
    _state: HamtState | None

    def __init__(self, hamt: HAMT, read_only: bool = False) -> None:
        if not isinstance(hamt, HAMT):
            raise InvalidConfigError(
                f"ZarrHAMTStore needs an anyhamt HAMT, got {type(hamt).__name__}"
            )
        if not hamt.values_are_bytes:
            raise InvalidConfigError(
                "ZarrHAMTStore needs a HAMT built with values_are_bytes=True (Zarr values "
                "are bytes; dag-cbor encoding them would break py-hamt compatibility)"
            )
        super().__init__(read_only=read_only)
        self._attach(hamt, None)

    def _attach(self, hamt: HAMT | None, ticket: HamtTicket | None) -> None:
        self._hamt = hamt
        self._ticket = ticket
        self._state = None if hamt is None else hamt_state(hamt)

    # -- what subclasses change -------------------------------------------------------------

    @property
    def _cache_view(self) -> Hashable:
        """Which decoded form of values this store caches (the encrypted store's differs)."""
        return None

    def _encode(self, data: bytes) -> bytes:
        """The bytes stored for a value."""
        return data

    async def _read(self, hamt: HAMT, key: str, offset: Any, length: Any, suffix: Any) -> bytes:
        """The value of ``key`` (or its range), as zarr wrote it."""
        return bytes(await hamt.get(key, offset, length, suffix))

    def _stored_size(self, size: int) -> int:
        """The size of a value zarr wrote, given the size of its stored block."""
        return size

    def _settings(self) -> tuple[Any, ...]:
        """What, beside the HAMT and the read-only flag, makes two stores equal."""
        return ()

    def _restore_settings(self, settings: tuple[Any, ...]) -> None:
        """Set what ``_settings`` returned on an unpickled copy."""

    # -- the HAMT ------------------------------------------------------------------------------

    @property
    def hamt(self) -> HAMT:
        """The HAMT holding the data. Flush it with ``await hamt.make_read_only()``."""
        hamt = self._hamt
        if hamt is None:
            raise DetachedStoreError(
                "this store is a copy, pickled to another process, of a store over a writable "
                "HAMT; it cannot reach that HAMT's buffered writes, and writing into a copy "
                "would lose the data. Write with dask's threaded scheduler (for example "
                "`dask.config.set(scheduler='threads')` or `ds.to_zarr(..., compute=True)` "
                "outside a distributed client), or call `await hamt.make_read_only()` first "
                "and send a store over the read-only HAMT"
            )
        return hamt

    @property
    def metadata_read_cache(self) -> dict[str, bytes]:
        """The decoded ``zarr.json`` values cached for this store (py-hamt's name)."""
        state = self._state
        if state is None:
            return {}
        return state.metadata.setdefault(self._cache_view, {})

    # -- zarr Store: identity (flags in BlockStoreBase) ----------------------------------------

    def _check_writable(self) -> None:
        # docstring inherited
        if self.read_only:
            raise StoreReadOnlyError(
                "store was opened in read-only mode and does not support writing; open a "
                "writable store with `store.with_read_only(False)` (its HAMT must be writable "
                "too: `await hamt.enable_write()`)"
            )

    def with_read_only(self, read_only: bool = False) -> Self:
        # docstring inherited
        clone = type(self).__new__(type(self))
        Store.__init__(clone, read_only=read_only)
        clone._attach(self._hamt, self._ticket)
        clone._restore_settings(self._settings())
        return clone

    def __eq__(self, other: object) -> bool:
        # docstring inherited
        if type(other) is not type(self):
            return False
        assert isinstance(other, ZarrHAMTStore)
        if self.read_only != other.read_only or self._settings() != other._settings():
            return False
        mine, theirs = self._hamt, other._hamt
        if mine is not None and mine is theirs:
            return True
        if mine is None or theirs is None:
            ticket, other_ticket = self._ticket, other._ticket
            return (
                ticket is not None
                and other_ticket is not None
                and (ticket.token == other_ticket.token)
            )
        # Two HAMTs, each read-only at the same root, hold the same content.
        root = mine._flushed_root()
        return (
            mine.read_only
            and theirs.read_only
            and root is not None
            and root == theirs._flushed_root()
        )

    def __str__(self) -> str:
        hamt = self._hamt
        if hamt is None:
            return "hamt://detached"
        root = hamt._flushed_root()
        if root is None:
            return f"hamt://unflushed-{id(hamt):x}"
        return f"hamt://{root.hex() if type(root) is bytes else root}"

    def __dask_tokenize__(self) -> Hashable:
        """A token that names the content, so dask never pickles the data to make one.

        Deterministic for a read-only HAMT (its root is its content); fresh every time for a
        writable one, whose content may change under the same object.
        """
        hamt = self._hamt
        root = None if hamt is None or not hamt.read_only else hamt._flushed_root()
        if root is not None:
            return (type(self).__qualname__, bytes(root), self.read_only, self._token())
        return (type(self).__qualname__, uuid.uuid4().hex)

    def _token(self) -> str:
        """What, beside the content, tells stores apart in a dask token (never a secret)."""
        return ""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        ticket = self._ticket if self._hamt is None else ticket_for(self._hamt)
        return (_unpickle, (type(self), ticket, self.read_only, self._settings()))

    # -- zarr Store: reads -----------------------------------------------------------------

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        hamt = self.hamt
        offset, length, suffix = range_args(byte_range)
        if key.endswith(_METADATA_SUFFIX):
            data = await self._metadata(hamt, key)
            if data is None:
                return None
            if byte_range is not None:
                data = slice_block(data, offset, length, suffix)
            return prototype.buffer.from_bytes(data)
        try:
            data = await self._read(hamt, key, offset, length, suffix)
        except KeyNotFoundError:
            return None
        return prototype.buffer.from_bytes(data)

    async def _metadata(self, hamt: HAMT, key: str) -> bytes | None:
        state = self._state
        assert state is not None
        view = self._cache_view
        cached = state.cached(view, key)
        if cached is not None:
            return cached
        generation = state.metadata_generation
        try:
            data = await self._read(hamt, key, None, None, None)
        except KeyNotFoundError:
            return None
        state.remember(view, key, data, generation)
        return data

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()

        async def one(request: tuple[str, ByteRequest | None]) -> Buffer | None:
            return await self.get(request[0], prototype, request[1])

        return await map_bounded(one, list(key_ranges), _PARTIAL_CONCURRENCY)

    async def exists(self, key: str) -> bool:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        hamt = self.hamt
        try:
            await hamt._get_pointer(key, hamt._hash(key))
        except KeyNotFoundError:
            return False
        return True

    async def getsize(self, key: str) -> int:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        hamt = self.hamt
        try:
            pointer = await hamt._get_pointer(key, hamt._hash(key))
        except KeyNotFoundError:
            raise StoreKeyNotFoundError(f"no key {key!r} in this store") from None
        return self._stored_size(await hamt.cas._size_id(pointer))

    # -- zarr Store: writes ----------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        self._check_writable()
        await self._write(key, value, only_if_absent=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        self._check_writable()
        await self._write(key, value, only_if_absent=True)

    async def _write(self, key: str, value: Buffer, *, only_if_absent: bool) -> None:
        if not isinstance(value, Buffer):
            raise InvalidValueError(
                f"Zarr stores take zarr Buffer values, got {type(value).__name__}"
            )
        hamt = self.hamt
        state = self._state
        assert state is not None
        data = buffer_bytes(value)
        is_metadata = key.endswith(_METADATA_SUFFIX)
        if is_metadata:
            state.forget(key)
        try:
            if only_if_absent:
                if not await hamt._set_if_absent(key, self._encode(data)):
                    return
            else:
                await hamt.set(key, self._encode(data))
        except StoreReadOnlyError:
            raise
        except ReadOnlyError as exc:
            raise _hamt_read_only(exc) from exc
        if is_metadata:
            state.forget(key)
            state.remember(self._cache_view, key, data, state.metadata_generation)

    async def delete(self, key: str) -> None:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        self._check_writable()
        hamt = self.hamt
        state = self._state
        assert state is not None
        is_metadata = key.endswith(_METADATA_SUFFIX)
        if is_metadata:
            state.forget(key)
        try:
            await hamt.delete(key)
        except KeyNotFoundError:
            pass  # zarr deletes keys that may not exist; deleting nothing is done
        except ReadOnlyError as exc:
            raise _hamt_read_only(exc) from exc
        if is_metadata:
            state.forget(key)

    # -- zarr Store: listing ---------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        index = await self.hamt._key_index()
        for key in index.with_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        index = await self.hamt._key_index()
        for key in index.with_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        index = await self.hamt._key_index()
        for name in index.children(_dir_prefix(prefix)):
            yield name

    async def is_empty(self, prefix: str) -> bool:
        # docstring inherited
        repair_sniffio()
        await checkpoint_if_cancelled()
        index = await self.hamt._key_index()
        return not index.has_prefix(_dir_prefix(prefix))


def _hamt_read_only(exc: ReadOnlyError) -> StoreReadOnlyError:
    return StoreReadOnlyError(
        f"this store is writable but its HAMT is read-only ({exc}); call "
        "`await hamt.enable_write()` before writing through the store"
    )


def _unpickle(
    cls: type[ZarrHAMTStore], ticket: HamtTicket, read_only: bool, settings: tuple[Any, ...]
) -> ZarrHAMTStore:
    store = cls.__new__(cls)
    Store.__init__(store, read_only=read_only)
    store._attach(ticket.find(), ticket)
    store._restore_settings(settings)
    return store
