"""The persistent embedded block store: one SQLite file, blocks named by CIDv1 + blake3."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._codec import DAG_PB, Link, as_link, codec_code, make_link, verify_block
from .._errors import (
    AnyHamtError,
    BlockNotFoundError,
    InvalidConfigError,
    ReadOnlyError,
    StoreClosedError,
    StoreError,
)
from .._loops import checkpoint_if_cancelled
from ._base import ContentAddressedStore, slice_block
from ._unixfs import build_file, file_size, read_file, read_file_range

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from multiformats import CID

__all__ = ["LocalCAS", "default_store_path"]

_SCHEMA_VERSION: Final = 1
# Batches that may wait for the writer thread before savers are held back.
_MAX_QUEUED_BATCHES: Final = 2
# The page size of a new file (an existing file keeps its own). Blocks are mostly large
# blobs: with SQLite's default 4 KiB a 500 KB chunk spans 120 overflow pages, each its own
# write to the log and, at the checkpoint, to the file.
_PAGE_SIZE: Final = 65536
# The writer commits with SQLite's automatic checkpoint off, which would copy the log into
# the file inside the commit a flush waits for. Instead the writer thread checkpoints
# (PASSIVE: never waiting for readers or writers) after a batch has landed and its flushes
# were told, once this many bytes were committed since the log was last copied in full,
# and only when no batch is waiting...
_CHECKPOINT_BYTES: Final = 64 * 2**20
# ... unless the log has grown past this, when it checkpoints before the next batch anyway:
# a writer that never pauses must not grow the log without bound.
_CHECKPOINT_FORCE_BYTES: Final = 4 * _CHECKPOINT_BYTES
# The reader maps up to this much of the file: a block is then one copy out of the page
# cache instead of a read() per 64 KiB page of its overflow chain. Measured: 208 Zarr
# chunks of 460 KB (95 MB) came out of SQLite in 0.037 s instead of 0.089 s. Address
# space only; the file never shrinks (no VACUUM), so no mapped page vanishes under a read.
_READ_MMAP_BYTES: Final = 2**30


def default_store_path() -> Path:
    """``$ANYHAMT_HOME/blocks.sqlite3``, else under ``$XDG_DATA_HOME`` or ``~/.local/share``."""
    home = os.environ.get("ANYHAMT_HOME")
    if home:
        return Path(home) / "blocks.sqlite3"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(data) / "anyhamt" / "blocks.sqlite3"


class _Failure:
    """Why a batch did not land: a message naming the store, and the exception behind it.

    Each flush it reaches raises a fresh ``StoreError`` from it (one exception object
    raised in several tasks at once would collect their tracebacks).
    """

    __slots__ = ("cause", "message")

    def __init__(self, message: str, cause: BaseException | None) -> None:
        self.message = message
        self.cause = cause

    def error(self) -> StoreError:
        error = StoreError(self.message)
        error.__cause__ = self.cause
        return error


class _Waiter:
    """A ``flush()`` (or the close) waiting for the batches queued before it.

    It covers every batch whose sequence number is at most ``last`` and that had not
    landed when it started: all the batches that held a block saved before it. The writer
    hands each of those that fails to it, so every flush whose blocks were in a failed
    batch fails, however many wait for the same batch.
    """

    __slots__ = ("failure", "last", "released")

    def __init__(self, last: int, failure: _Failure | None) -> None:
        self.last = last
        self.failure = failure
        self.released = False


class _Database:
    """The SQLite file, the blocks not yet committed to it, and the thread that commits them.

    Saved blocks collect in ``pending``; a full batch (or a flush) moves them to
    ``committing``, a queue of numbered batches that a writer thread lands one transaction
    at a time, in order. Both stay readable until the commit has landed; a batch that fails
    goes back to ``pending``, so its blocks stay readable and the next flush retries them.
    Kept apart from ``LocalCAS`` so a finalizer can commit what is pending when the store
    is dropped without ``aclose()``.

    Nothing here can wait for ever: every batch queued lands (committed, or failed with its
    error handed to the flushes that cover it), and a writer thread that dies fails what is
    left with the reason and lets the next batch start a new one.
    """

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self.mutex = threading.Lock()  # guards every field below
        self.changed = threading.Condition(self.mutex)  # a batch was queued or landed
        self.pending: dict[Link, bytes] = {}
        self.pending_bytes = 0
        self.committing: list[tuple[int, dict[Link, bytes]]] = []
        self.queued = 0  # sequence number of the last batch queued
        self.landed = 0  # ... and of the last one the writer finished with
        self.waiters: set[_Waiter] = set()
        # A failure no waiting flush covered (a batch queued because it was full, or whose
        # flushes were all cancelled): the next flush reports it.
        self.unreported: _Failure | None = None
        self.closed = False
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None  # the writer thread's own
        self._reader: sqlite3.Connection | None = None
        # Bytes the writer committed since its last complete checkpoint (writer thread only).
        self._uncheckpointed = 0

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return self._connect_read_only()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL needs a moment of exclusive access that the busy timeout does
        # not wait for, so two processes opening a new file at once must retry.
        for attempt in range(100):
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 30000")
                # Takes effect only on a file not written yet, so before the switch to WAL.
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
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
            except BaseException:
                conn.close()
                raise
            self._check_version(conn, version)
            return conn
        raise StoreError(f"{self.path} stayed locked by another process; try again")

    def _connect_read_only(self) -> sqlite3.Connection:
        """Open the store for reading without writing anything, also on read-only media.

        ``mode=ro`` is the normal way, and sees commits a writer makes while it is open.
        But a WAL database is read through its ``-shm`` index, which a reader creates when
        it is missing (the last connection to close deletes it): on a read-only mount that
        fails with "unable to open database file". There the file is opened ``immutable``:
        SQLite then takes no locks and ignores the ``-shm``, trusting that nobody changes
        the file. That is safe exactly when no writer can be active, which holds when
        ``mode=ro`` failed because the filesystem is mounted read-only: nothing can write
        through this mount, and a writer through another, writable mount of the same
        directory would hold a ``-shm`` file there, with which ``mode=ro`` succeeds. One
        more condition: ``immutable`` ignores the ``-wal`` file, so commits still in it
        would be missed. ``LocalCAS`` checkpoints the log into the file when it closes
        (and SQLite deletes it with the last connection), so only a store whose writer did
        not close cleanly is refused, with that reason.
        """
        if not self.path.exists():
            raise BlockNotFoundError(f"no anyhamt block store at {self.path}")
        uri = self.path.absolute().as_uri()
        try:
            return self._open_uri(f"{uri}?mode=ro")
        except sqlite3.OperationalError as exc:
            if not _on_read_only_filesystem(self.path):
                raise
            refused = exc
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            unlanded = wal.stat().st_size
        except FileNotFoundError:
            unlanded = 0
        if unlanded:
            raise StoreError(
                f"cannot open block store {self.path} read-only ({refused}): it is on a "
                f"read-only filesystem and its write-ahead log {wal.name} holds {unlanded} "
                "bytes of commits not yet in the file (its writer did not close cleanly); "
                "open it once read-write on writable media to fold them in"
            ) from refused
        return self._open_uri(f"{uri}?immutable=1")

    def _open_uri(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            # Opening is lazy: this first read is where a missing -shm or a file that is
            # not a database shows up.
            self._check_version(conn, conn.execute("PRAGMA user_version").fetchone()[0])
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_version(self, conn: sqlite3.Connection, version: int) -> None:
        if version > _SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.path} was written by a newer anyhamt (format {version}); upgrade anyhamt"
            )

    def reader(self) -> sqlite3.Connection:
        # Caller holds self.mutex.
        if self.closed:
            raise StoreClosedError(f"LocalCAS({self.path}) is closed")
        if self._reader is None:
            try:
                reader = self._connect()
                reader.execute(f"PRAGMA mmap_size = {_READ_MMAP_BYTES}")
                self._reader = reader
            except AnyHamtError:
                raise
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open block store {self.path}: {exc}") from exc
        return self._reader

    # -- reads ------------------------------------------------------------------------------

    def lookup(self, link: Link) -> tuple[bytes | None, bool]:
        """The block and whether it came from disk (and so needs checking)."""
        with self.mutex:
            data = self.pending.get(link)
            if data is not None:
                return data, False
            for _, batch in self.committing:
                data = batch.get(link)
                if data is not None:
                    return data, False
            reader = self.reader()
            try:
                row = reader.execute("SELECT data FROM blocks WHERE cid = ?", (link,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot read block store {self.path}: {exc}") from exc
        return (row[0], True) if row else (None, False)

    def iter_links(self) -> Iterator[Link]:
        with self.mutex:
            links = list(self.pending)
            for _, batch in self.committing:
                links.extend(batch)
            reader = self.reader()
            try:
                rows = reader.execute("SELECT cid FROM blocks").fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot read block store {self.path}: {exc}") from exc
        seen = set(links)
        yield from links
        for (cid,) in rows:
            link = Link(cid)
            if link not in seen:
                yield link

    # -- commits ----------------------------------------------------------------------------

    def queue_pending(self) -> None:
        """Hand the pending blocks to the writer thread. Caller holds self.mutex."""
        if not self.pending or self.closed:
            return
        self.queued += 1
        self.committing.append((self.queued, self.pending))
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

    def watch(self) -> _Waiter:
        """Queue the pending blocks and start waiting for every batch not yet landed.

        Caller holds self.mutex. The waiter also takes over a failure no flush reported
        yet. Pass it to ``wait`` (unless ``done``) and then, always, to ``release``.
        """
        self.queue_pending()
        waiter = _Waiter(self.queued, self.unreported)
        self.unreported = None
        self.waiters.add(waiter)
        return waiter

    def done(self, waiter: _Waiter) -> bool:
        # Caller holds self.mutex.
        return waiter.released or self.landed >= waiter.last

    def wait(self, waiter: _Waiter) -> None:
        """Block until every batch the waiter covers has landed, or it is released."""
        with self.changed:
            self.changed.wait_for(lambda: self.done(waiter))

    def release(self, waiter: _Waiter, *, reported: bool) -> _Failure | None:
        """Stop waiting; the failure the waiter got, if any.

        A waiter released unreported (its flush was cancelled) hands its failure on to the
        next flush; so does a batch it covered that fails after it left, when no other
        flush waits for it (``_land``).
        """
        with self.changed:
            self.waiters.discard(waiter)
            waiter.released = True
            self.changed.notify_all()  # wakes a thread still waiting on its behalf
            if not reported and waiter.failure is not None and self.unreported is None:
                self.unreported = waiter.failure
            return waiter.failure

    def wait_until_queued_at_most(self, batches: int) -> None:
        """Block until the writer thread has at most ``batches`` batches left to write."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.committing) <= batches or self._thread is None)

    def _land(self, seq: int, batch: dict[Link, bytes], failure: _Failure | None) -> None:
        """The writer is done with batch ``seq``. Caller holds self.mutex."""
        self.landed = seq
        if failure is not None:
            # Keep the blocks readable; the next flush queues them again.
            for link, data in batch.items():
                if link not in self.pending:
                    self.pending[link] = data
                    self.pending_bytes += len(data)
            covered = False
            for waiter in self.waiters:
                if waiter.last >= seq:
                    covered = True
                    if waiter.failure is None:
                        waiter.failure = failure
            if not covered and self.unreported is None:
                self.unreported = failure
        self.changed.notify_all()

    def _write_queued(self) -> None:
        """The writer thread: land the queued batches in order until the store closes."""
        reason: BaseException | None = None
        try:
            self._write_until_closed()
        except BaseException as exc:  # it must not take the waiting flushes with it
            reason = exc
        finally:
            with self.changed:
                if self.committing:  # only when the thread died: fail what is left
                    failure = _Failure(
                        f"the writer thread of block store {self.path} stopped: {reason!r}",
                        reason,
                    )
                    while self.committing:
                        seq, batch = self.committing.pop(0)
                        self._land(seq, batch, failure)
                # In the same critical section: a batch queued from now on starts a new
                # thread, and none is left behind by this one.
                self._thread = None
                self.changed.notify_all()
            writer, self._writer = self._writer, None
            if writer is not None:
                _close_writer(writer)

    def _write_until_closed(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.committing or self.closed)
                if not self.committing:
                    return
                seq, batch = self.committing[0]
            failure: _Failure | None = None
            opening = True
            try:
                if self._writer is None:
                    self._writer = self._connect()
                    self._writer.execute("PRAGMA wal_autocheckpoint = 0")
                opening = False
                _write_batch(self._writer, batch)
            except Exception as exc:
                if isinstance(exc, StoreError):
                    failure = _Failure(str(exc), exc.__cause__)
                elif opening:
                    failure = _Failure(
                        f"cannot open block store {self.path} for writing: {exc}", exc
                    )
                else:
                    failure = _Failure(
                        f"cannot commit {len(batch)} blocks to block store {self.path}: {exc}",
                        exc,
                    )
                # Start the next batch on a fresh connection.
                writer, self._writer = self._writer, None
                if writer is not None:
                    _close_quietly(writer)
            with self.changed:
                self.committing.pop(0)
                self._land(seq, batch, failure)
                idle = not self.committing
            if failure is None:
                self._uncheckpointed += sum(map(len, batch.values()))
                self._checkpoint(idle)

    def _checkpoint(self, idle: bool) -> None:
        """Copy the log into the file when it has grown (writer thread, between batches).

        PASSIVE never waits: it copies what no reader still needs and leaves the rest for
        next time (a reader in another process holding an old snapshot can keep the log
        from being reset, as with SQLite's own automatic checkpoint). Best effort: a
        failure here loses nothing, the commits are in the log.
        """
        writer = self._writer
        if writer is None or self._uncheckpointed < _CHECKPOINT_BYTES:
            return
        if not idle and self._uncheckpointed < _CHECKPOINT_FORCE_BYTES:
            return
        try:
            busy, log, copied = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return
        if not busy and log == copied:
            self._uncheckpointed = 0

    def close(self) -> _Failure | None:
        """Commit what is pending, stop the writer and close (idempotent; the finalizer).

        Returns why blocks saved before it were not committed (they are lost), or a
        failure no flush reported yet; ``None`` when everything landed.
        """
        with self.changed:
            if self.closed:
                return None
            waiter = self.watch()
            self.closed = True  # no more saves; the writer stops once the queue is empty
            self.changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        failure = self.release(waiter, reported=True)
        with self.mutex:
            reader, self._reader = self._reader, None
        if reader is not None:
            _close_quietly(reader)
        return failure


def _write_batch(conn: sqlite3.Connection, batch: dict[Link, bytes]) -> None:
    """One transaction: all of the batch lands, or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO blocks (cid, data) VALUES (?, ?)", batch.items())
        conn.execute("COMMIT")
    except BaseException as exc:
        # After some errors (a full disk, an I/O error) SQLite has already rolled the
        # transaction back; a ROLLBACK then fails with "no transaction is active" and would
        # replace the error that says what went wrong.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_error:
                exc.add_note(f"(the rollback failed too: {rollback_error})")
        raise


def _close_writer(conn: sqlite3.Connection) -> None:
    """Close the writer connection, first copying the write-ahead log into the file.

    SQLite does that itself when the last connection closes, but another connection (in
    this process or another) may still be open; a store closed cleanly should not depend
    on it, so it can be read from read-only media, which ignore the log (see
    ``_connect_read_only``). Best effort, and bounded: the checkpoint waits at most a
    second for other connections, and a full disk only means the log stays.
    """
    try:
        conn.execute("PRAGMA busy_timeout = 1000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass
    _close_quietly(conn)


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def _on_read_only_filesystem(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _close_dropped(db: _Database) -> None:
    """The finalizer of a store dropped without ``aclose()``: commit what is pending.

    A garbage collection can run it in the middle of any code, including this store's own
    in this thread while it holds the mutex, where closing would wait for ever. So it
    closes here only when the mutex can be had, and otherwise from a thread of its own
    (not a daemon, so the interpreter waits for it at exit).
    """
    if db.mutex.acquire(timeout=1):
        db.mutex.release()
        _close_and_warn(db)
    else:
        threading.Thread(
            target=_close_and_warn, args=(db,), name=f"anyhamt-sqlite-close:{db.path.name}"
        ).start()


def _close_and_warn(db: _Database) -> None:
    failure = db.close()
    if failure is not None:
        warnings.warn(
            f"LocalCAS({str(db.path)!r}) was dropped without aclose() and could not commit "
            f"its last blocks: {failure.message}",
            RuntimeWarning,
            stacklevel=1,
        )


class LocalCAS(ContentAddressedStore):
    """A persistent block store in one SQLite file: anyhamt's embedded default.

    Ids are CIDv1 with a blake3 multihash and the codec asked for: exactly the CIDs Kubo
    returns for the same bytes, so a HAMT written here has the root it would have on IPFS
    and can be published later (as a CAR) under that root.

    * **Durability.** ``save`` makes a block readable at once and commits blocks in batches
      (one transaction per ``batch_blocks`` blocks or ``batch_bytes`` bytes). ``flush()``,
      ``aclose()`` and ``HAMT.make_read_only()`` commit everything saved before them, and
      return only once it is in the file: a root is reported only when every block under
      it is durable. A crash loses at most the blocks not yet committed and never leaves
      part of a block behind (each batch is one SQLite transaction; WAL mode,
      ``synchronous=NORMAL``). Dropping the store without ``aclose()`` still commits at
      garbage collection or exit.
    * **Failures.** A commit that fails (a full disk, a read-only filesystem, a path under a
      regular file, anything the writer thread meets) raises ``StoreError`` in every
      ``flush()`` that waited for it, naming the file, with SQLite's or the OS's own error
      chained and in the message. Its blocks stay readable and the next flush commits them
      again, so retrying ``make_read_only()`` once the cause is fixed gives the same root.
      Nothing waits for ever: not a flush, not ``aclose()``.
    * **Read-only media.** ``read_only=True`` opens the file without writing anything, also
      on a read-only mount (where SQLite cannot create the ``-shm`` index a WAL database is
      read through; see ``_Database._connect_read_only`` for why that is safe there).
    * **Verified reads.** Every block read from disk is hashed and compared with its CID;
      a mismatch raises ``BlockVerificationError``.
    * **Big values.** A value larger than ``chunk_size`` (1 MiB, Kubo's default chunker) is
      stored as the UnixFS file ``ipfs add`` would make of it, so its CID is Kubo's and
      py-hamt's too; ``load`` reassembles it from verified blocks.
    * **Concurrency.** One instance may be shared by tasks on any event loop and thread;
      several processes may open the same file (SQLite locks it). Commits run in a writer
      thread, so neither the event loop nor the saving task waits for the disk.
    * **Cancellation.** Every async method checks for it on entry: a call made in a
      cancelled scope raises it and does nothing (``aclose`` still closes first). Each
      method's docstring says what a cancellation later on means.
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
        self._finalizer = weakref.finalize(self, _close_dropped, self._db)

    default_path = staticmethod(default_store_path)

    def __repr__(self) -> str:
        mode = "r" if self.read_only else "rw"
        return f"LocalCAS({str(self.path)!r}, mode={mode!r})"

    def __reduce__(self) -> tuple[Callable[..., LocalCAS], tuple[Any, ...]]:
        """Pickle to the path and settings, never to connections, threads or locks.

        The copy (a dask worker's, say) opens the same file, in the same mode, on first
        use. Blocks saved here but not yet flushed are not in the file yet: flush
        (``make_read_only()``) before sending a store elsewhere.
        """
        settings = {
            "read_only": self.read_only,
            "verify": self.verify,
            "batch_blocks": self.batch_blocks,
            "batch_bytes": self.batch_bytes,
            "chunk_size": self.chunk_size,
        }
        return (_unpickle_local, (str(self.path), settings))

    async def save(self, data: bytes, codec: ContentAddressedStore.CodecInput) -> CID:
        """Store ``data`` and return its CID; it is readable at once, durable after a flush.

        Cancellation: the block may or may not be stored; saving it again is safe.
        """
        await checkpoint_if_cancelled()
        return (await self._save_id(data, codec)).to_cid()

    async def load(
        self,
        id: Any,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> bytes:
        """Return the value ``id`` names, or the byte range of it asked for, verified.

        Cancellation: nothing happened.
        """
        await checkpoint_if_cancelled()
        return await self._load_id(as_link(id), offset, length, suffix)

    async def flush(self) -> None:
        """Commit every block saved so far, including batches other tasks queued.

        Returns only once every block saved before the call is in the file. Raises
        ``StoreError`` (naming the store, its cause chained) if any of them was in a batch
        whose commit failed, or if a commit no flush reported has failed since the last
        one; every flush waiting for a failed batch raises, not just the first. The blocks
        of a failed batch stay readable and the next flush commits them again, so calling
        it again after fixing the cause (a full disk) is the retry.

        Cancellation stops the wait, not the commit: the blocks still land, and a failure
        the cancelled flush would have raised is raised by the next one.
        """
        await checkpoint_if_cancelled()
        db = self._db
        with db.mutex:
            waiter = db.watch()
            done = db.done(waiter)
        try:
            if not done:
                await anyio.to_thread.run_sync(db.wait, waiter, abandon_on_cancel=True)
        except BaseException:
            db.release(waiter, reported=False)
            raise
        failure = db.release(waiter, reported=True)
        if failure is not None:
            raise failure.error()

    async def aclose(self) -> None:
        """Commit everything pending and close the file (safe to call again).

        Raises ``StoreError`` if blocks could not be committed (they are lost with the
        store) or a failed commit was never reported by a flush. Cancellation does not
        interrupt it: the store is closed (its pending blocks committed) when it returns,
        and then the cancellation is raised.
        """
        if self._finalizer.detach() is None:
            await checkpoint_if_cancelled()
            return  # closed already, or closing in another task
        # Shielded: the thread call would otherwise raise at its start in a cancelled scope,
        # before closing anything, with the finalizer that would close the store detached.
        with anyio.CancelScope(shield=True):
            failure = await anyio.to_thread.run_sync(self._db.close)
        if failure is not None:
            raise failure.error()
        await checkpoint_if_cancelled()

    async def has(self, id: Any) -> bool:
        """Whether the store holds the block ``id`` names. Cancellation: nothing happened."""
        await checkpoint_if_cancelled()
        data, _ = self._db.lookup(as_link(id))
        return data is not None

    def links(self) -> Iterator[Link]:
        """Every block id in the store (unordered)."""
        return self._db.iter_links()

    async def get_block(self, id: Any) -> bytes:
        """The bytes of one block, verified; for a dag-pb CID the node itself, not the file
        it heads (``load`` gives the file). Cancellation: nothing happened."""
        await checkpoint_if_cancelled()
        return await self._block(as_link(id))

    async def put_block(self, id: Any, data: bytes) -> None:
        """Store a block under a CID that was computed elsewhere (CAR import), after checking it.

        Cancellation: the block may or may not be stored; storing it again is safe.
        """
        await checkpoint_if_cancelled()
        link = as_link(id)
        verify_block(link, data)
        await self._add(link, bytes(data))

    async def pin_cid(self, id: Any, target_rpc: str) -> None:
        """A no-op: a local file has no pins. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def unpin_cid(self, id: Any, target_rpc: str) -> None:
        """A no-op: a local file has no pins. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def pin_update(self, old_id: Any, new_id: Any, target_rpc: str) -> None:
        """A no-op: a local file has no pins. Cancellation: raised."""
        await checkpoint_if_cancelled()

    async def pin_ls(self, target_rpc: str) -> dict[str, dict[str, Any]]:
        """No pins in a local file: ``{}``. Cancellation: raised."""
        await checkpoint_if_cancelled()
        return {}

    # -- internal fast protocol: no cancellation check, the HAMT's public methods make it --

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
        if link.codec != DAG_PB:
            return slice_block(await self._block(link), offset, length, suffix)
        if offset is None and length is None and suffix is None:
            return await read_file(link, self._block)
        # Only the blocks the range covers are read (and verified). A lookup never waits,
        # so fetching siblings concurrently would add task overhead and save nothing.
        return await read_file_range(link, self._block, offset, length, suffix, concurrency=1)

    async def _size_id(self, ptr: Any) -> int:
        """The length of the value ``ptr`` names (see the base class), without reading it:
        for a UnixFS file its root's filesize (the root is read and verified, nothing
        under it); for any other block the stored length, which is not verified.

        Cancellation: nothing happens.
        """
        link = ptr if type(ptr) is Link else as_link(ptr)
        if link.codec == DAG_PB:
            return file_size(await self._block(link))
        db = self._db
        with db.mutex:
            data = db.pending.get(link)
            for _, batch in db.committing:
                if data is None:
                    data = batch.get(link)
            if data is not None:
                return len(data)
            reader = db.reader()
            try:
                row = reader.execute(
                    "SELECT length(data) FROM blocks WHERE cid = ?", (link,)
                ).fetchone()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot read block store {self.path}: {exc}") from exc
        if row is None:
            raise BlockNotFoundError(f"{link} is not in {self!r}")
        return int(row[0])

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


def _unpickle_local(path: str, settings: dict[str, Any]) -> LocalCAS:
    return LocalCAS(path, **settings)
