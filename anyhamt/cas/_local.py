"""The persistent embedded block store: one SQLite file, blocks named by CIDv1 + blake3."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
from multiformats import CID

from .._codec import DAG_PB, Link, codec_code, make_link, verify_block
from .._errors import (
    BlockNotFoundError,
    InvalidConfigError,
    InvalidIdError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
)
from ._base import ContentAddressedStore, slice_block
from ._unixfs import build_file, read_file

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["LocalCAS", "default_store_path"]

_SCHEMA_VERSION: Final = 1
# Batches that may wait for the writer thread before savers are held back.
_MAX_QUEUED_BATCHES: Final = 2


def default_store_path() -> Path:
    """``$ANYHAMT_HOME/blocks.sqlite3``, else under ``$XDG_DATA_HOME`` or ``~/.local/share``."""
    home = os.environ.get("ANYHAMT_HOME")
    if home:
        return Path(home) / "blocks.sqlite3"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
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
    """The SQLite file, the blocks not yet committed to it, and the thread that commits them.

    Saved blocks collect in ``pending``; a full batch moves to ``committing``, a queue a
    writer thread empties one transaction at a time. Both stay readable until the commit
    has landed. Kept apart from ``LocalCAS`` so a finalizer can commit what is pending when
    the store is dropped without ``aclose()``.
    """

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self.mutex = threading.Lock()  # guards every field below
        self.changed = threading.Condition(self.mutex)  # a batch was queued or landed
        self.pending: dict[Link, bytes] = {}
        self.pending_bytes = 0
        self.committing: list[dict[Link, bytes]] = []
        self.error: StoreError | None = None
        self.closed = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            if not self.path.exists():
                raise BlockNotFoundError(f"no anyhamt block store at {self.path}")
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL needs a moment of exclusive access that the busy timeout does
        # not wait for, so two processes opening a new file at once must retry.
        for attempt in range(100):
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 30000")
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL)"
                )
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(min(0.01 * (attempt + 1), 0.2))
                continue
            if version > _SCHEMA_VERSION:
                conn.close()
                raise StoreError(
                    f"{self.path} was written by a newer anyhamt (format {version}); "
                    "upgrade anyhamt"
                )
            return conn
        raise StoreError(f"{self.path} stayed locked by another process; try again")

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
                row = (
                    self.reader()
                    .execute("SELECT data FROM blocks WHERE cid = ?", (link,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read block store {self.path}: {exc}") from exc
        return (row[0], True) if row else (None, False)

    def queue_pending(self) -> None:
        """Hand the pending blocks to the writer thread. Caller holds self.mutex."""
        if not self.pending:
            return
        self.committing.append(self.pending)
        self.pending = {}
        self.pending_bytes = 0
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_queued,
                name=f"anyhamt-sqlite-writer:{self.path.name}",
                daemon=True,
            )
            self._thread.start()
        self.changed.notify_all()

    def wait_until_queued_at_most(self, batches: int) -> None:
        """Block until the writer thread has at most ``batches`` batches left to write."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.committing) <= batches or self._thread is None)

    def take_error(self) -> StoreError | None:
        with self.mutex:
            error, self.error = self.error, None
            return error

    def _write_queued(self) -> None:
        writer: sqlite3.Connection | None = None
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.committing or self._stopping)
                if not self.committing:
                    break
                batch = self.committing[0]
            failure: StoreError | None = None
            try:
                if writer is None:
                    writer = self._connect()
                _write_batch(writer, batch)
            except (sqlite3.Error, StoreError) as exc:
                failure = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(f"cannot write to block store {self.path}: {exc}")
                )
            with self.changed:
                self.committing.pop(0)
                if failure is not None:
                    # Keep the blocks readable; the next flush queues them again.
                    for link, data in batch.items():
                        if link not in self.pending:
                            self.pending[link] = data
                            self.pending_bytes += len(data)
                    self.error = failure
                self.changed.notify_all()
        if writer is not None:
            writer.close()
        with self.changed:
            self._thread = None
            self.changed.notify_all()

    def close(self) -> None:
        """Commit what is pending, stop the writer and close (idempotent; the finalizer)."""
        with self.changed:
            if self.closed:
                return
            self.queue_pending()
            self._stopping = True
            self.changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self.mutex:
            self.closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None

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


def _write_batch(conn: sqlite3.Connection, batch: dict[Link, bytes]) -> None:
    """One transaction: all of the batch lands, or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO blocks (cid, data) VALUES (?, ?)", batch.items())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class LocalCAS(ContentAddressedStore):
    """A persistent block store in one SQLite file: anyhamt's embedded default.

    Ids are CIDv1 with a blake3 multihash and the codec asked for: exactly the CIDs Kubo
    returns for the same bytes, so a HAMT written here has the root it would have on IPFS
    and can be published later (as a CAR) under that root.

    * **Durability.** ``save`` makes a block readable at once and commits blocks in batches
      (one transaction per ``batch_blocks`` blocks or ``batch_bytes`` bytes). ``flush()``,
      ``aclose()`` and ``HAMT.make_read_only()`` commit everything saved before them. A crash
      loses at most the blocks not yet committed and never leaves part of a block behind
      (each batch is one SQLite transaction; WAL mode, ``synchronous=NORMAL``). Dropping
      the store without ``aclose()`` still commits at garbage collection or exit.
    * **Verified reads.** Every block read from disk is hashed and compared with its CID;
      a mismatch raises ``BlockVerificationError``.
    * **Big values.** A value larger than ``chunk_size`` (1 MiB, Kubo's default chunker) is
      stored as the UnixFS file ``ipfs add`` would make of it, so its CID is Kubo's and
      py-hamt's too; ``load`` reassembles it from verified blocks.
    * **Concurrency.** One instance may be shared by tasks on any event loop and thread;
      several processes may open the same file (SQLite locks it). Commits run in a writer
      thread, so neither the event loop nor the saving task waits for the disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        verify: bool = True,
        batch_blocks: int = 8192,
        batch_bytes: int = 64 * 2**20,
        chunk_size: int = 1024 * 1024,
    ) -> None:
        if batch_blocks < 1 or batch_bytes < 1 or chunk_size < 1:
            raise InvalidConfigError("batch_blocks, batch_bytes and chunk_size must be positive")
        self.path = Path(path) if path is not None else default_store_path()
        self.read_only = read_only
        self.verify = verify
        self.batch_blocks = batch_blocks
        self.batch_bytes = batch_bytes
        self.chunk_size = chunk_size
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
        """Commit every block saved so far, including batches other tasks queued.

        Raises ``StoreError`` if a commit failed since the last flush; the blocks it held
        stay readable and are retried by the next flush. Cancellation stops the wait, not
        the commit.
        """
        db = self._db
        with db.mutex:
            if db.closed:
                return
            db.queue_pending()
            busy = bool(db.committing)
        if busy:
            await anyio.to_thread.run_sync(db.wait_until_queued_at_most, 0)
        error = db.take_error()
        if error is not None:
            raise error

    async def aclose(self) -> None:
        """Commit everything pending and close the file (safe to call again)."""
        await anyio.to_thread.run_sync(self._finalizer)
        error = self._db.take_error()
        if error is not None:
            raise error

    async def has(self, id: Any) -> bool:
        """Whether the store holds the block ``id`` names."""
        data, _ = self._db.lookup(as_link(id))
        return data is not None

    def links(self) -> Iterator[Link]:
        """Every block id in the store (unordered)."""
        return self._db.iter_links()

    async def get_block(self, id: Any) -> bytes:
        """The bytes of one block, verified; for a dag-pb CID the node itself, not the file
        it heads (``load`` gives the file)."""
        return await self._block(as_link(id))

    async def put_block(self, id: Any, data: bytes) -> None:
        """Store a block under a CID that was computed elsewhere (CAR import), after checking it."""
        link = as_link(id)
        verify_block(link, data)
        await self._add(link, bytes(data))

    # -- internal fast protocol ---------------------------------------------------------

    async def _save_id(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> Link:
        code = codec_code(codec)
        if len(data) > self.chunk_size:
            return await self._save_file(bytes(data))
        link = make_link(code, data)
        await self._add(link, bytes(data))
        return link

    async def _save_file(self, data: bytes) -> Link:
        # What Kubo's add (and so py-hamt) makes of a value over one chunk: a UnixFS file.
        root, blocks = build_file(data, self.chunk_size, make_link)
        for link, _, block in blocks:
            await self._add(link, block)
        return root

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
            if len(db.pending) < self.batch_blocks and db.pending_bytes < self.batch_bytes:
                return
            db.queue_pending()
            backlog = len(db.committing)
        # Commits run in the writer thread; wait only when it falls behind, which bounds
        # the memory held by blocks not yet on disk.
        if backlog > _MAX_QUEUED_BATCHES:
            await anyio.to_thread.run_sync(db.wait_until_queued_at_most, _MAX_QUEUED_BATCHES)

    async def _load_id(
        self,
        ptr: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        link = ptr if type(ptr) is Link else as_link(ptr)
        if link.codec == DAG_PB:
            data = await read_file(link, self._block)
        else:
            data = await self._block(link)
        return slice_block(data, offset, length, suffix)

    async def _block(self, link: Link) -> bytes:
        data, from_disk = self._db.lookup(link)
        if data is None:
            raise BlockNotFoundError(f"{link} is not in {self!r}")
        if from_disk and self.verify:
            verify_block(link, data)
        return data

    async def _save_many(
        self, blocks: Sequence[bytes], codec: ContentAddressedStore.CodecInput
    ) -> list[Link]:
        code = codec_code(codec)
        links = []
        for data in blocks:
            if len(data) > self.chunk_size:
                links.append(await self._save_file(bytes(data)))
                continue
            link = make_link(code, data)
            await self._add(link, bytes(data))
            links.append(link)
        return links
