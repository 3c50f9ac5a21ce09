"""The persistent embedded block store: one SQLite file, blocks named by CIDv1 + blake3."""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
from multiformats import CID

from .._codec import Link, codec_code, make_link, verify_block
from .._errors import (
    BlockNotFoundError,
    InvalidConfigError,
    InvalidIdError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
)
from ._base import ContentAddressedStore, slice_block

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["LocalCAS", "default_store_path"]

_SCHEMA_VERSION: Final = 1


def default_store_path() -> Path:
    """``$ANYHAMT_HOME/blocks.sqlite3``, else under ``$XDG_DATA_HOME`` or ``~/.local/share``."""
    home = os.environ.get("ANYHAMT_HOME")
    if home:
        return Path(home) / "blocks.sqlite3"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "anyhamt" / "blocks.sqlite3"


def as_link(id: Any) -> Link:
    """Accept the id forms users hold: ``Link``, ``multiformats.CID``, CID text, CID bytes."""
    if type(id) is Link:
        return id
    if isinstance(id, CID):
        return Link(bytes(id.set(version=1) if id.version != 1 else id))
    if isinstance(id, str):
        return Link.parse(id)
    if isinstance(id, (bytes, bytearray)) and id[:1] == b"\x01":
        return Link(id)
    raise InvalidIdError(
        f"expected a CID (multiformats.CID, its text or binary form), got {type(id).__name__}; "
        "ids from InMemoryCAS are not CIDs and cannot be loaded here"
    )


class _Database:
    """The SQLite file and the blocks not yet committed to it.

    Kept apart from ``LocalCAS`` so a finalizer can commit pending blocks when the store
    is dropped without ``aclose()``.
    """

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self.mutex = threading.Lock()  # guards pending, committing and the connections
        self.committed = threading.Condition(self.mutex)  # notified as commits finish
        self.write_lock = threading.Lock()  # one commit at a time
        self.pending: dict[Link, bytes] = {}
        self.pending_bytes = 0
        self.committing: list[dict[Link, bytes]] = []
        self.closed = False
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            if not self.path.exists():
                raise BlockNotFoundError(f"no anyhamt block store at {self.path}")
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL)"
            )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version > _SCHEMA_VERSION:
                conn.close()
                raise StoreError(
                    f"{self.path} was written by a newer anyhamt (format {version}); upgrade anyhamt"
                )
        return conn

    def reader(self) -> sqlite3.Connection:
        # Caller holds self.mutex.
        if self.closed:
            raise StoreClosedError(f"LocalCAS({self.path}) is closed")
        if self._reader is None:
            try:
                self._reader = self._connect()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open block store {self.path}: {exc}") from exc
        return self._reader

    def lookup(self, link: Link) -> tuple[bytes | None, bool]:
        """The block and whether it came from disk (and so needs checking)."""
        with self.mutex:
            data = self.pending.get(link)
            if data is not None:
                return data, False
            for batch in self.committing:
                data = batch.get(link)
                if data is not None:
                    return data, False
            try:
                row = self.reader().execute("SELECT data FROM blocks WHERE cid = ?", (link,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read block store {self.path}: {exc}") from exc
        return (row[0], True) if row else (None, False)

    def take_batch(self) -> dict[Link, bytes] | None:
        # Caller holds self.mutex.
        if not self.pending:
            return None
        batch = self.pending
        self.pending = {}
        self.pending_bytes = 0
        self.committing.append(batch)
        return batch

    def commit(self, batch: dict[Link, bytes]) -> None:
        """Write a batch in one transaction (runs in a worker thread or at exit)."""
        try:
            with self.write_lock:
                if self._writer is None:
                    self._writer = self._connect()
                conn = self._writer
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO blocks (cid, data) VALUES (?, ?)", batch.items()
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            with self.mutex:
                self.committing.remove(batch)
                # Keep the blocks readable and retry them on the next flush.
                for link, data in batch.items():
                    self.pending.setdefault(link, data)
                self.pending_bytes = sum(map(len, self.pending.values()))
                self.committed.notify_all()
            raise StoreError(f"cannot write to block store {self.path}: {exc}") from exc
        with self.mutex:
            self.committing.remove(batch)
            self.committed.notify_all()

    def wait_for_commits(self) -> None:
        """Block until no batch is being written."""
        with self.committed:
            self.committed.wait_for(lambda: not self.committing)

    def close(self) -> None:
        """Commit what is pending and close (idempotent; also the finalizer)."""
        with self.mutex:
            if self.closed:
                return
            batch = self.take_batch()
        if batch is not None:
            self.commit(batch)
        with self.mutex, self.write_lock:
            self.closed = True
            for conn in (self._reader, self._writer):
                if conn is not None:
                    conn.close()
            self._reader = self._writer = None

    def iter_links(self) -> Iterator[Link]:
        with self.mutex:
            links = list(self.pending)
            for batch in self.committing:
                links.extend(batch)
            rows = self.reader().execute("SELECT cid FROM blocks").fetchall()
        seen = set(links)
        yield from links
        for (cid,) in rows:
            link = Link(cid)
            if link not in seen:
                yield link


class LocalCAS(ContentAddressedStore):
    """A persistent block store in one SQLite file: anyhamt's embedded default.

    Ids are CIDv1 with a blake3 multihash and the codec asked for: exactly the CIDs Kubo
    returns for the same bytes, so a HAMT written here has the root it would have on IPFS
    and can be published later (as a CAR) under that root.

    * **Durability.** ``save`` makes a block readable at once and commits blocks in batches
      (one transaction per ``batch_blocks`` blocks or ``batch_bytes`` bytes). ``flush()``,
      ``aclose()`` and ``HAMT.make_read_only()`` commit everything saved before them. A crash
      loses at most the uncommitted batch and never leaves part of a block behind (each
      batch is one SQLite transaction; WAL mode, ``synchronous=NORMAL``).
    * **Verified reads.** Every block read from disk is hashed and compared with its CID;
      a mismatch raises ``BlockVerificationError``.
    * **Concurrency.** One instance may be shared by tasks on any event loop and thread;
      several processes may open the same file (SQLite locks it). Commits run in a worker
      thread, so the event loop keeps running while a batch is written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        verify: bool = True,
        batch_blocks: int = 8192,
        batch_bytes: int = 64 * 2**20,
    ) -> None:
        if batch_blocks < 1 or batch_bytes < 1:
            raise InvalidConfigError("batch_blocks and batch_bytes must be positive")
        self.path = Path(path) if path is not None else default_store_path()
        self.read_only = read_only
        self.verify = verify
        self.batch_blocks = batch_blocks
        self.batch_bytes = batch_bytes
        self._db = _Database(self.path, read_only)
        self._finalizer = weakref.finalize(self, self._db.close)

    default_path = staticmethod(default_store_path)

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "rw"
        return f"LocalCAS({str(self.path)!r}, mode={mode!r})"

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> CID:
        # docstring inherited
        return (await self._save_id(data, codec)).to_cid()

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        # docstring inherited
        return await self._load_id(as_link(id), offset, length, suffix)

    async def flush(self) -> None:
        """Commit every block saved so far (waits for commits other tasks started)."""
        db = self._db
        with db.mutex:
            if db.closed:
                return
            batch = db.take_batch()
        if batch is not None:
            await anyio.to_thread.run_sync(db.commit, batch)
        # Blocks other tasks handed to a commit are durable only once that commit ends.
        if db.committing:
            await anyio.to_thread.run_sync(db.wait_for_commits)

    async def aclose(self) -> None:
        # docstring inherited
        await anyio.to_thread.run_sync(self._finalizer)

    async def has(self, id: Any) -> bool:
        """Whether the store holds the block ``id`` names."""
        data, _ = self._db.lookup(as_link(id))
        return data is not None

    def links(self) -> Iterator[Link]:
        """Every block id in the store (unordered)."""
        return self._db.iter_links()

    async def put_block(self, id: Any, data: bytes) -> None:
        """Store a block under a CID that was computed elsewhere (CAR import), after checking it."""
        link = as_link(id)
        verify_block(link, data)
        await self._add(link, bytes(data))

    # -- internal fast protocol ---------------------------------------------------------

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Link:
        link = make_link(codec_code(codec), data)
        await self._add(link, bytes(data))
        return link

    async def _add(self, link: Link, data: bytes) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self!r} was opened read-only; open it with read_only=False")
        db = self._db
        with db.mutex:
            if db.closed:
                raise StoreClosedError(f"{self!r} is closed")
            if link in db.pending:
                return
            db.pending[link] = data
            db.pending_bytes += len(data)
            batch = None
            if len(db.pending) >= self.batch_blocks or db.pending_bytes >= self.batch_bytes:
                batch = db.take_batch()
        if batch is not None:
            await anyio.to_thread.run_sync(db.commit, batch)

    async def _load_id(
        self,
        ptr: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        link = ptr if type(ptr) is Link else as_link(ptr)
        data, from_disk = self._db.lookup(link)
        if data is None:
            raise BlockNotFoundError(f"{link} is not in {self!r}")
        if from_disk and self.verify:
            verify_block(link, data)
        return slice_block(data, offset, length, suffix)

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[Link]:
        code = codec_code(codec)
        links = []
        for data in blocks:
            link = make_link(code, data)
            await self._add(link, bytes(data))
            links.append(link)
        return links
