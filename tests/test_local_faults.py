"""LocalCAS under faults: nothing hangs, no root is reported before its blocks are durable,
errors keep their cause, and read-only stores open on read-only media.

Two kinds of fault. Real ones, on a small tmpfs mounted for the test (a full disk, a
read-only filesystem); these need root, which tests and CI have on these machines, and skip,
saying why, only when the kernel refuses the mount. And injected ones: the writer thread's
commit (``_write_batch``) replaced by a stand-in that holds each commit until the test lets
it go, then fails it or lets it through, so the test decides what is waiting when it fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from _ci import on_ci
from _helpers import build_map

from anyhamt import HAMT, LocalCAS, StoreClosedError, StoreError
from anyhamt.cas import _local

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


# -- helpers -------------------------------------------------------------------------------


def items(count: int, prefix: str = "key", size: int = 8) -> dict[str, bytes]:
    """``count`` distinct keys and values of about ``size`` bytes each."""
    return {
        f"{prefix}-{i}": (f"{prefix}-{i}|".encode() * (size // 4 + 1))[:size] for i in range(count)
    }


async def assert_reads_back(path: Path, root: Any, contents: dict[str, bytes]) -> None:
    """A fresh read-only store on ``path``, so only committed blocks count, has every key."""
    async with LocalCAS(path, read_only=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        assert await hamt.len() == len(contents)
        for key, value in contents.items():
            assert await hamt.get(key) == value


def stored_cids(path: Path) -> set[bytes]:
    """The CIDs committed to the file, through a separate read-only connection."""
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
        return {bytes(cid) for (cid,) in conn.execute("SELECT cid FROM blocks")}


def cid_bytes(cid: Any) -> bytes:
    return bytes(cid)


def assert_store_error(exc: BaseException, path: Path, cause: type[BaseException]) -> None:
    """A StoreError that names the store and chains the exception behind it."""
    assert isinstance(exc, StoreError), repr(exc)
    assert str(path) in str(exc), str(exc)
    assert isinstance(exc.__cause__, cause), repr(exc.__cause__)
    assert str(exc.__cause__) in str(exc)


class HeldCommits:
    """Stands in for the writer thread's commit: holds every commit until ``release`` is
    set, then raises what ``fail_with`` makes (for ``failures`` commits) or commits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = _local._write_batch
        self.entered = threading.Event()  # a commit has started
        self.release = threading.Event()
        self.fail_with: Callable[[], BaseException] | None = None
        self.failures = 1_000_000
        monkeypatch.setattr(_local, "_write_batch", self)

    def __call__(self, conn: sqlite3.Connection, batch: dict[Any, bytes]) -> None:
        self.entered.set()
        if not self.release.wait(120):
            raise TimeoutError("the test never released the commit")
        if self.fail_with is not None and self.failures > 0:
            self.failures -= 1
            raise self.fail_with()
        self.real(conn, batch)

    async def wait_entered(self) -> None:
        assert await anyio.to_thread.run_sync(self.entered.wait, 60), "no commit started"


def disk_full() -> BaseException:
    return sqlite3.OperationalError("database or disk is full")


# -- tmpfs ---------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of the given size under ``tmp_path``; unmounts it after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        if shutil.which("mount") is None:
            if on_ci():
                pytest.fail("CI is set but there is no mount command to make a tmpfs with")
            pytest.skip("no mount command: these tests need a tmpfs of their own")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            # The one case these tests skip, under CI too: the kernel said no (not root,
            # or no CAP_SYS_ADMIN in this container).
            refused = result.stderr.strip() or f"exit status {result.returncode}"
            pytest.skip(
                f"mounting a {size} tmpfs was refused ({refused}); these tests need root "
                "with CAP_SYS_ADMIN" + (" (skipped although CI is set)" if on_ci() else "")
            )
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


async def remount(where: Path, options: str) -> None:
    await anyio.run_process(["mount", "-o", f"remount,{options}", str(where)])


# -- nothing hangs: every writer failure reaches every flush --------------------------------


async def test_store_under_a_regular_file_fails_instead_of_hanging(
    tmp_path: Path, anyio_backend: str
) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("a file, not a directory")
    path = blocker / "b.db"
    contents = items(20)

    cas = LocalCAS(path)
    hamt = await HAMT.build(cas=cas, values_are_bytes=True)
    for key, value in contents.items():
        await hamt.set(key, value)
    with anyio.fail_after(120):
        with pytest.raises(StoreError) as caught:
            await hamt.make_read_only()
        assert_store_error(caught.value, path, OSError)
        assert str(caught.value).startswith("cannot open block store"), str(caught.value)
        # The map is intact and its blocks readable; a retry fails the same way.
        for key, value in contents.items():
            assert await hamt.get(key) == value
        with pytest.raises(StoreError):
            await hamt.make_read_only()
        with pytest.raises(StoreError):
            await cas.flush()
        # Closing with blocks that cannot land says so, and closes.
        with pytest.raises(StoreError) as caught:
            await cas.aclose()
        assert_store_error(caught.value, path, OSError)
    with pytest.raises(StoreClosedError):
        await cas.save(b"late", "raw")
    await cas.aclose()  # closed: nothing more to report


async def test_read_path_errors_are_store_errors(tmp_path: Path, anyio_backend: str) -> None:
    async with LocalCAS(tmp_path / "real.db") as real:
        cid = await real.save(b"x", "raw")
    blocker = tmp_path / "f"
    blocker.write_text("a file, not a directory")
    path = blocker / "b.db"
    async with LocalCAS(path, read_only=True) as cas:
        assert cas.read_only  # a missing read-only store is a missing block, as before
    cas = LocalCAS(path)
    with pytest.raises(StoreError) as caught:
        await cas.load(cid)
    assert_store_error(caught.value, path, OSError)
    with pytest.raises(StoreError):
        await cas.has(cid)
    with pytest.raises(StoreError):
        list(cas.links())
    await cas.aclose()

    # A file that is not a database, either way.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 1000)
    for read_only in (True, False):
        async with LocalCAS(junk, read_only=read_only) as cas:
            with pytest.raises(StoreError) as caught:
                await cas.load(cid)
            assert_store_error(caught.value, junk, sqlite3.DatabaseError)


async def test_cli_put_into_a_store_under_a_file_exits_with_one_line(
    tmp_path: Path, anyio_backend: str
) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("a file, not a directory")
    store = blocker / "b.db"
    command = [sys.executable, "-m", "anyhamt.cli", "put", "k", "v", "--store", str(store)]
    with anyio.fail_after(120):  # a hang is killed and fails here
        result = await anyio.run_process([*command, "--backend", anyio_backend], check=False)
    assert result.returncode == 1, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    assert lines[0].startswith("anyhamt: StoreError: "), lines[0]
    assert str(store) in lines[0]
    assert result.stdout == b""


async def test_any_writer_exception_reaches_every_waiting_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """Not only sqlite3.Error: anything the commit raises is a StoreError from it."""
    held = HeldCommits(monkeypatch)
    held.fail_with = lambda: RuntimeError("injected: not an OSError, not a sqlite3.Error")
    held.release.set()
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        cids = [await cas.save(b"block %d" % i, "raw") for i in range(10)]
        errors: list[BaseException] = []

        async def flush() -> None:
            try:
                await cas.flush()
            except StoreError as exc:
                errors.append(exc)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(flush)
        assert len(errors) == 3
        for error in errors:
            assert_store_error(error, path, RuntimeError)
        held.fail_with = None
        await cas.flush()  # the retry
    assert stored_cids(path) >= {cid_bytes(cid) for cid in cids}


class _WriterKilled(BaseException):
    """Not an Exception: takes the writer thread down (as SystemExit would)."""


async def test_a_writer_thread_that_dies_wakes_its_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    held = HeldCommits(monkeypatch)
    held.fail_with = lambda: _WriterKilled("injected")
    held.failures = 1
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        cid = await cas.save(b"survivor", "raw")
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                failed: list[BaseException] = []

                async def flush() -> None:
                    with pytest.raises(StoreError) as caught:
                        await cas.flush()
                    failed.append(caught.value)

                tg.start_soon(flush)
                await held.wait_entered()
                tg.start_soon(flush)
                await anyio.wait_all_tasks_blocked()
                held.release.set()
        assert len(failed) == 2
        for error in failed:
            assert_store_error(error, path, _WriterKilled)
            assert "writer thread" in str(error)
        assert await cas.load(cid) == b"survivor"
        with anyio.fail_after(120):
            await cas.flush()  # a new writer thread commits it
    assert cid_bytes(cid) in stored_cids(path)


# -- durability per flush ------------------------------------------------------------------


async def test_every_flush_waiting_for_a_failed_batch_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """One failure, three flushes covering it: three errors, not one."""
    held = HeldCommits(monkeypatch)
    held.fail_with = disk_full
    held.failures = 1
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        cids = [await cas.save(b"block %d" % i, "raw") for i in range(10)]
        outcomes: list[BaseException | None] = []

        async def flush() -> None:
            try:
                await cas.flush()
            except StoreError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush)
                await held.wait_entered()  # the first flush's batch is committing
                tg.start_soon(flush)
                tg.start_soon(flush)
                await anyio.wait_all_tasks_blocked()  # all three wait for it
                held.release.set()
        assert len(outcomes) == 3
        assert None not in outcomes, "a flush returned although its blocks did not land"
        for outcome in outcomes:
            assert outcome is not None
            assert_store_error(outcome, path, sqlite3.OperationalError)
        assert not stored_cids(path) & {cid_bytes(cid) for cid in cids}
        await cas.flush()
    assert stored_cids(path) >= {cid_bytes(cid) for cid in cids}


async def test_a_failure_no_flush_waited_for_is_reported_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    held = HeldCommits(monkeypatch)
    held.fail_with = disk_full
    held.failures = 1
    held.release.set()
    path = tmp_path / "blocks.db"
    async with LocalCAS(path, batch_blocks=2) as cas:
        cids = [await cas.save(b"block %d" % i, "raw") for i in range(2)]  # queued: full
        with anyio.fail_after(120):
            with pytest.raises(StoreError, match="database or disk is full"):
                await cas.flush()  # the retry lands, but the failure is still reported
            await cas.flush()
    assert stored_cids(path) >= {cid_bytes(cid) for cid in cids}


async def test_two_maps_flushing_into_a_full_disk_both_fail_and_retry(
    tmpfs: Callable[[str], Path], tmp_path: Path, anyio_backend: str
) -> None:
    """Issue 6, item 3: two HAMTs share a LocalCAS on a 1 MiB tmpfs and call
    make_read_only() at once; the commit fails for want of space. Both must fail (neither
    may report a root whose blocks are not in the file), SQLite's own message must reach
    them, and once the disk is grown a retry gives the roots the same contents have
    anywhere, with every key."""
    small = tmpfs("1m")
    path = small / "blocks.db"
    contents = {name: items(110, name, 6000) for name in ("a", "b")}  # 1.3 MB in all

    cas = LocalCAS(path)
    holder: sqlite3.Connection | None = None
    try:
        await cas.save(b"the store exists", "raw")
        await cas.flush()
        hamts = {name: await HAMT.build(cas=cas, values_are_bytes=True) for name in contents}
        for name, pairs in contents.items():
            for key, value in pairs.items():
                await hamts[name].set(key, value)

        # Hold SQLite's write lock, so neither commit starts before both maps wait for it.
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        flushing = 0
        both_waiting = anyio.Event()
        real_flush = cas.flush

        async def counting_flush() -> None:
            nonlocal flushing
            flushing += 1
            if flushing == 2:
                both_waiting.set()  # seen only once the second flush has queued and waits
            await real_flush()

        cas.flush = counting_flush  # type: ignore[method-assign]
        outcomes: dict[str, Any] = {}

        async def finish(name: str) -> None:
            try:
                await hamts[name].make_read_only()
            except StoreError as exc:
                outcomes[name] = exc
            else:
                outcomes[name] = hamts[name].root_node_id

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for name in hamts:
                    tg.start_soon(finish, name)
                await both_waiting.wait()
                holder.execute("ROLLBACK")
                holder.close()
                holder = None
        del cas.flush

        # No root was reported whose blocks are not all in the file.
        committed = stored_cids(path)
        for name, outcome in outcomes.items():
            if not isinstance(outcome, StoreError):
                assert cid_bytes(outcome) in committed, f"{name}: root reported, not stored"
                await assert_reads_back(path, outcome, contents[name])
        for name, outcome in outcomes.items():
            assert isinstance(outcome, StoreError), f"{name} returned although the disk is full"
            # SQLite's own words, not those of a failed ROLLBACK after it.
            assert "database or disk is full" in str(outcome), str(outcome)
            assert "cannot rollback" not in str(outcome)
            assert_store_error(outcome, path, sqlite3.OperationalError)
        # The maps are intact, their blocks readable from the store.
        for name, pairs in contents.items():
            for key, value in pairs.items():
                assert await hamts[name].get(key) == value

        await remount(small, "size=64m")
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for name in hamts:
                    tg.start_soon(hamts[name].make_read_only)
    finally:
        if holder is not None:
            holder.close()
        await remount(small, "size=64m")
        await cas.aclose()

    async with LocalCAS(tmp_path / "reference.db") as reference:
        for name, pairs in contents.items():
            expected = (await build_map(reference, pairs)).root_node_id
            assert hamts[name].root_node_id == expected
    committed = stored_cids(path)
    for name, pairs in contents.items():
        assert cid_bytes(hamts[name].root_node_id) in committed
        await assert_reads_back(path, hamts[name].root_node_id, pairs)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_disk_full_keeps_sqlites_message(
    tmpfs: Callable[[str], Path], anyio_backend: str
) -> None:
    small = tmpfs("1m")
    path = small / "blocks.db"
    cas = LocalCAS(path)
    try:
        cids = [await cas.save(os.urandom(4096), "raw") for _ in range(300)]
        with anyio.fail_after(120):
            with pytest.raises(StoreError) as caught:
                await cas.flush()
        message = str(caught.value)
        assert "database or disk is full" in message, message
        assert "cannot rollback" not in message, message
        assert message.startswith("cannot commit"), message  # it opened; the commit failed
        assert_store_error(caught.value, path, sqlite3.OperationalError)
        assert caught.value.__cause__.sqlite_errorname == "SQLITE_FULL"  # type: ignore[union-attr]
        await remount(small, "size=64m")
        await cas.flush()
    finally:
        await remount(small, "size=64m")
        await cas.aclose()
    assert stored_cids(path) >= {cid_bytes(cid) for cid in cids}


# -- cancellation and closing ----------------------------------------------------------------


@pytest.mark.parametrize("commit", ["lands", "fails"])
async def test_a_cancelled_flush_stops_the_wait_not_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str, commit: str
) -> None:
    held = HeldCommits(monkeypatch)
    if commit == "fails":
        held.fail_with = disk_full
        held.failures = 1
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        cid = await cas.save(b"held", "raw")
        scope = anyio.CancelScope()
        flush_ended = anyio.Event()

        async def flush() -> None:
            with scope:
                await cas.flush()
            flush_ended.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush)
                await held.wait_entered()
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                with anyio.move_on_after(60):
                    await flush_ended.wait()
                # Checked before the commit is let go: the wait stopped, the commit did not.
                stopped_waiting = flush_ended.is_set()
                held.release.set()
        finally:
            held.release.set()
        assert stopped_waiting, "cancelling flush() did not stop its wait"
        assert scope.cancelled_caught
        assert await cas.load(cid) == b"held"
        with anyio.fail_after(120):
            if commit == "fails":
                # The failure the cancelled flush would have raised comes with the next.
                with pytest.raises(StoreError, match="database or disk is full"):
                    await cas.flush()
            await cas.flush()
        assert cid_bytes(cid) in stored_cids(path)


async def test_closing_while_a_failed_batch_is_pending_reports_and_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    held = HeldCommits(monkeypatch)
    held.fail_with = lambda: OSError(errno.EIO, "injected I/O error")
    path = tmp_path / "blocks.db"
    cas = LocalCAS(path)
    await cas.save(b"doomed", "raw")
    errors: dict[str, BaseException] = {}

    async def flush() -> None:
        with pytest.raises(StoreError) as caught:
            await cas.flush()
        errors["flush"] = caught.value

    async def close() -> None:
        with pytest.raises(StoreError) as caught:
            await cas.aclose()
        errors["aclose"] = caught.value

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await held.wait_entered()
            tg.start_soon(close)  # while the flush waits for a commit that will fail
            await anyio.wait_all_tasks_blocked()
            held.release.set()
    for error in errors.values():
        assert_store_error(error, path, OSError)
    assert set(errors) == {"flush", "aclose"}
    with pytest.raises(StoreClosedError):
        await cas.save(b"late", "raw")
    await cas.flush()  # closed: nothing left to wait for, and nothing hangs
    await cas.aclose()


# -- read-only media -------------------------------------------------------------------------


async def test_read_only_store_on_a_read_only_mount(
    tmpfs: Callable[[str], Path], anyio_backend: str
) -> None:
    media = tmpfs("64m")
    path = media / "blocks.db"
    contents = items(600, size=40)
    big = os.urandom(3 * 2**20 + 5)  # a UnixFS file of several blocks
    async with LocalCAS(path) as cas:
        hamt = await build_map(cas, contents)
        big_cid = await cas.save(big, "raw")
    await remount(media, "ro")

    async with LocalCAS(path, read_only=True) as cas:
        reader = await HAMT.build(
            cas=cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
        )
        assert {key async for key in reader.keys()} == set(contents)
        for key, value in contents.items():
            assert await reader.get(key) == value
        assert await cas.load(big_cid) == big
        for link in cas.links():
            await cas.get_block(link)  # every block verifies
    assert sorted(os.listdir(media)) == ["blocks.db"]  # nothing was written there

    # Writing there fails with a StoreError, at once, also in a new directory.
    for where in (path, media / "new" / "blocks.db"):
        cas = LocalCAS(where)
        await cas.save(b"new", "raw")
        with anyio.fail_after(120):
            with pytest.raises(StoreError) as caught:
                await cas.flush()
            assert str(where) in str(caught.value)
            assert isinstance(caught.value.__cause__, (OSError, sqlite3.Error))
            with pytest.raises(StoreError):
                await cas.aclose()


async def test_read_only_mount_with_commits_left_in_the_log_is_refused_with_the_reason(
    tmpfs: Callable[[str], Path], tmp_path: Path, anyio_backend: str
) -> None:
    """A store whose writer did not close cleanly: the file alone misses commits that
    only its write-ahead log holds, so opening it immutable would silently miss blocks."""
    live = tmp_path / "live.db"
    async with LocalCAS(live) as cas:
        cid = await cas.save(b"only in the log", "raw")
        await cas.flush()
        media = tmpfs("64m")
        # A copy taken while the writer is open: the file and its log, without the -shm.
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{live}{suffix}", media / f"blocks.db{suffix}")
    assert (media / "blocks.db-wal").stat().st_size > 0
    await remount(media, "ro")
    async with LocalCAS(media / "blocks.db", read_only=True) as cas:
        with pytest.raises(StoreError, match="write-ahead log") as caught:
            await cas.load(cid)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_close_empties_the_log_while_another_connection_is_open(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SQLite folds the log into the file when its last connection closes; LocalCAS does it
    on close anyway, so a store closed cleanly reads the same from its file alone (as on
    read-only media) while other connections still hold it open."""
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        await cas.save(b"first", "raw")
        await cas.flush()
        with closing(sqlite3.connect(path)) as other:
            other.execute("SELECT count(*) FROM blocks").fetchone()  # now it holds the file
            cids = [await cas.save(b"block %d" % i, "raw") for i in range(200)]
            await cas.aclose()
            assert path.with_name("blocks.db-wal").stat().st_size == 0
            immutable = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
            with closing(immutable):
                in_file = {bytes(c) for (c,) in immutable.execute("SELECT cid FROM blocks")}
            assert in_file >= {cid_bytes(cid) for cid in cids}


def test_a_finalizer_run_while_this_thread_holds_the_store_lock_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """A garbage collection can run a dropped store's finalizer in the middle of the
    store's own code, in the thread that holds its lock. (A sync test: no event loop.)"""
    path = tmp_path / "blocks.db"
    cas = LocalCAS(path)
    cid = anyio.run(cas.save, b"saved, never flushed", "raw")
    db = cas._db
    with db.mutex:
        cas._finalizer()  # what a collection would run here: it must return
    for thread in threading.enumerate():
        if thread.name.startswith("anyhamt-sqlite-close"):
            thread.join(60)
            assert not thread.is_alive()
    assert db.closed
    assert cid_bytes(cid) in stored_cids(path)  # committed once the lock was free
