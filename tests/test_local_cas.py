"""LocalCAS, the persistent SQLite block store: durability, crash safety, verified reads,
read-only mode and sharing between tasks, loops, threads, instances and processes.

Subprocess tests run the child on the same backend as the test (``anyio_backend``).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
import threading
from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import pytest
from _helpers import build_map
from anyio.streams.buffered import BufferedByteReceiveStream
from multiformats import CID, multihash

from anyhamt import (
    HAMT,
    BlockNotFoundError,
    BlockVerificationError,
    CorruptBlockError,
    InvalidIdError,
    Link,
    LocalCAS,
    ReadOnlyError,
    StoreClosedError,
)

if TYPE_CHECKING:
    from pathlib import Path

# Children run with warnings as errors too, so a ResourceWarning at exit fails the test.
PYTHON = [sys.executable, "-W", "error", "-c"]

WRITE_HAMT = """
import sys, anyio
from anyhamt import HAMT, LocalCAS

async def main(path, count, prefix, batch_blocks):
    async with LocalCAS(path, batch_blocks=batch_blocks) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        for i in range(count):
            await hamt.set(f"{prefix}key-{i}", f"value-{i}".encode())
        await hamt.make_read_only()
        print(hamt.root_node_id, flush=True)

path, count, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prefix, batch_blocks = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 4 else ("", 8192)
anyio.run(main, path, count, prefix, batch_blocks, backend=backend)
"""

READ_HAMT = """
import sys, anyio
from anyhamt import HAMT, LocalCAS

async def main(path, root, count):
    async with LocalCAS(path, read_only=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True,
                                values_are_bytes=True)
        for i in range(count):
            value = await hamt.get(f"key-{i}")
            assert value == f"value-{i}".encode(), (i, value)
        assert await hamt.len() == count
        print("read", count, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), backend=sys.argv[4])
"""

# Saves blocks, flushes some, saves more and exits normally without flush() or aclose().
# "global" keeps the store alive until interpreter exit; "dropped" lets it go out of
# scope when main() returns.
EXIT_WITHOUT_CLOSE = """
import sys, anyio
from anyhamt import LocalCAS

KEEP = []

async def main(path, mode):
    cas = LocalCAS(path)  # default batch size: nothing is committed on its own here
    flushed = [await cas.save(b"flushed-%d" % i, "raw") for i in range(20)]
    await cas.flush()
    unflushed = [await cas.save(b"unflushed-%d" % i, "dag-cbor") for i in range(20)]
    print(*flushed)
    print(*unflushed, flush=True)
    if mode == "global":
        KEEP.append(cas)

anyio.run(main, sys.argv[1], sys.argv[2], backend=sys.argv[3])
"""

# Flushes a few rounds of blocks (printing their CIDs once durable), then keeps writing
# in small batches until it is killed.
CRASH_WRITER = """
import sys, anyio
from anyhamt import LocalCAS

async def main(path, seed, flushed_rounds):
    cas = LocalCAS(path, batch_blocks=5)
    n = 0
    round = 0
    while True:
        cids = []
        for _ in range(25):
            data = (f"{seed}-{n}|".encode() * 9000)[: 1000 + n * 7919 % 60000]
            cids.append(await cas.save(data, "raw" if n % 2 else "dag-cbor"))
            n += 1
        if round < flushed_rounds:
            await cas.flush()
            print("FLUSHED", *cids, flush=True)
        elif round == flushed_rounds:
            print("WRITING", flush=True)
        round += 1

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), backend=sys.argv[4])
"""


def items(count: int, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}key-{i}": f"value-{i}".encode() for i in range(count)}


async def all_keys(hamt: HAMT) -> set[str]:
    keys = hamt.keys()  # an async iterator (a HAMT itself is not iterable)
    return {key async for key in keys}


async def run_child(script: str, *args: str) -> list[str]:
    result = await anyio.run_process([*PYTHON, script, *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode().splitlines()


async def assert_every_block_verifies(cas: LocalCAS) -> int:
    """Load every block in the store (loads from disk check the CID); return the count."""
    count = 0
    for link in cas.links():
        data = await cas.get_block(link)
        assert isinstance(data, bytes)
        count += 1
    return count


def integrity_check(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# -- persistence across processes --------------------------------------------------------


async def test_hamt_survives_process_restart(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "blocks.db"
    count = 2000
    (root_text,) = await run_child(WRITE_HAMT, str(path), str(count), anyio_backend)
    assert root_text.startswith("bafyr4i")

    # A second process reopens the file read-only and reads every key from that root.
    assert await run_child(READ_HAMT, str(path), root_text, str(count), anyio_backend) == [
        f"read {count}"
    ]

    # And this process too.
    expected = items(count)
    async with LocalCAS(path, read_only=True) as cas:
        hamt = await HAMT.build(
            cas=cas, root_node_id=root_text, read_only=True, values_are_bytes=True
        )
        assert str(hamt.root_node_id) == root_text
        assert await all_keys(hamt) == set(expected)
        for key, value in expected.items():
            assert await hamt.get(key) == value

    # Same contents written here, to another file, give the same root.
    async with LocalCAS(tmp_path / "other.db") as other:
        assert str((await build_map(other, expected)).root_node_id) == root_text


async def test_two_processes_write_one_file_at_once(tmp_path: Path, anyio_backend: str) -> None:
    """The docstring: several processes may open the same file (SQLite locks it)."""
    path = tmp_path / "blocks.db"
    roots: dict[str, str] = {}

    async def write(prefix: str) -> None:
        (roots[prefix],) = await run_child(
            WRITE_HAMT, str(path), "1500", anyio_backend, prefix, "20"
        )

    async with anyio.create_task_group() as tg:
        for prefix in ("p-", "q-"):
            tg.start_soon(write, prefix)

    assert integrity_check(path) == "ok"
    async with LocalCAS(path, read_only=True) as cas:
        await assert_every_block_verifies(cas)
        for prefix, root in roots.items():
            hamt = await HAMT.build(
                cas=cas, root_node_id=root, read_only=True, values_are_bytes=True
            )
            assert await hamt.len() == 1500
            for key, value in items(1500, prefix).items():
                assert await hamt.get(key) == value


@pytest.mark.parametrize("mode", ["global", "dropped"])
async def test_exit_without_aclose(tmp_path: Path, anyio_backend: str, mode: str) -> None:
    """The contract (LocalCAS docstring): blocks saved before flush()/aclose()/make_read_only()
    are durable. Blocks saved after the last flush are not promised by that contract; what
    we observe is that a normal interpreter exit still commits them, through the store's
    weakref finalizer (on garbage collection or at exit), which is what ``_Database`` is
    documented to exist for. A SIGKILL runs no finalizer; the crash test checks what
    survives that.
    """
    path = tmp_path / "blocks.db"
    flushed_line, unflushed_line = await run_child(
        EXIT_WITHOUT_CLOSE, str(path), mode, anyio_backend
    )
    flushed = flushed_line.split()
    unflushed = unflushed_line.split()
    assert len(flushed) == len(unflushed) == 20

    async with LocalCAS(path, read_only=True) as cas:
        # The contract.
        for i, cid in enumerate(flushed):
            assert await cas.load(cid) == b"flushed-%d" % i
        # The observed (finalizer) behaviour on a normal exit.
        for i, cid in enumerate(unflushed):
            assert await cas.load(cid) == b"unflushed-%d" % i
        assert await assert_every_block_verifies(cas) == 40


# -- crash safety ----------------------------------------------------------------------------


async def kill_while_writing(path: Path, seed: str, backend: str, delay: float) -> list[str]:
    """Run CRASH_WRITER, SIGKILL it ``delay`` s after it starts its unflushed writes; return
    the CIDs it reported as flushed."""
    flushed: list[str] = []
    async with await anyio.open_process(
        [*PYTHON, CRASH_WRITER, str(path), seed, "3", backend]
    ) as process:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(30):
                while True:
                    try:
                        line = (await lines.receive_until(b"\n", 2**20)).decode().split()
                    except (anyio.EndOfStream, anyio.IncompleteRead):
                        assert process.stderr is not None
                        errors = b"".join([chunk async for chunk in process.stderr])
                        pytest.fail(f"the writer died early: {errors.decode()}")
                    if line[0] == "WRITING":
                        break
                    assert line[0] == "FLUSHED"
                    flushed.extend(line[1:])
                await anyio.sleep(delay)
                assert process.returncode is None, "the writer stopped on its own"
        finally:
            process.kill()
        assert await process.wait() == -signal.SIGKILL
    assert len(flushed) == 75
    return flushed


async def test_sigkill_while_writing_loses_nothing_flushed(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "blocks.db"
    all_flushed: list[str] = []
    rng = random.Random(anyio_backend)
    # Twice on the same file: the second writer starts from a crashed database.
    for seed in ("a", "b"):
        all_flushed += await kill_while_writing(path, seed, anyio_backend, rng.uniform(0.1, 0.4))

        # First open read-only, straight after the crash: the WAL is still there.
        assert path.with_name(path.name + "-wal").exists()
        async with LocalCAS(path, read_only=True) as cas:
            # Every block in the file, including whatever the killed writer committed after
            # its last report, is whole: it loads and hashes to its CID.
            count = await assert_every_block_verifies(cas)
            # The writer's fourth round (25 blocks, batch_blocks=5) was committed before it
            # printed WRITING, without a flush.
            assert count > len(all_flushed)
            for cid in all_flushed:
                assert await cas.has(cid)
                await cas.load(cid)
        assert integrity_check(path) == "ok"
        async with LocalCAS(path) as cas:
            assert await assert_every_block_verifies(cas) == count
            # The store is still writable.
            after = await cas.save(b"after the crash", "raw")
            await cas.flush()
        async with LocalCAS(path, read_only=True) as cas:
            assert await cas.load(after) == b"after the crash"


# -- verified reads --------------------------------------------------------------------------


def tamper(path: Path, cid: Any, data: bytes) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        cursor = conn.execute(
            "UPDATE blocks SET data = ? WHERE cid = ?", (data, bytes(Link.parse(str(cid))))
        )
        assert cursor.rowcount == 1


async def test_tampered_blocks_fail_verification(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    contents = items(300)
    async with LocalCAS(path) as cas:
        hamt = await build_map(cas, contents)
        root = hamt.root_node_id
        value_cid = await hamt.get_pointer("key-7")
        empty = await cas.save(b"", "raw")
    tamper(path, value_cid, b"value-8")  # plausible but wrong bytes

    async with LocalCAS(path) as cas:
        with pytest.raises(BlockVerificationError):
            await cas.load(value_cid)
        with pytest.raises(BlockVerificationError):  # ranges of a bad block too
            await cas.load(value_cid, offset=0, length=2)
        assert await cas.load(empty) == b""
        reader = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        with pytest.raises(BlockVerificationError):
            await reader.get("key-7")
        assert await reader.get("key-6") == b"value-6"

    # A node: the root, replaced by a valid but different node (a one-key map).
    async with LocalCAS(tmp_path / "scratch.db") as scratch:
        decoy = await build_map(scratch, {"key-0": b"value-0"})
        decoy_bytes = await scratch.load(decoy.root_node_id)
    tamper(path, root, decoy_bytes)

    async with LocalCAS(path) as cas:
        with pytest.raises(BlockVerificationError):
            await cas.load(root)
        reader = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        with pytest.raises(BlockVerificationError):
            await reader.get("key-1")  # not a wrong KeyError from the decoy
        with pytest.raises(BlockVerificationError):
            await reader.len()
        writer = await HAMT.build(cas=cas, root_node_id=root, values_are_bytes=True)
        with pytest.raises(CorruptBlockError):
            await writer.set("new", b"x")

    # verify=False skips the hash check: it trusts the disk and returns whatever is there.
    # That is the point of the flag (speed on trusted storage), and why it is not the default.
    async with LocalCAS(path, verify=False) as cas:
        assert await cas.load(value_cid) == b"value-8"
        assert await cas.load(root) == decoy_bytes
        reader = await HAMT.build(cas=cas, root_node_id=root, read_only=True, values_are_bytes=True)
        assert await reader.len() == 1  # the decoy's contents, silently
        with pytest.raises(KeyError):
            await reader.get("key-1")


# -- read-only mode --------------------------------------------------------------------------


async def test_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as cas:
        cid = await cas.save(b"data", "raw")
        hamt = await build_map(cas, items(50))

    async with LocalCAS(path, read_only=True) as cas:
        assert cas.read_only
        assert await cas.load(cid) == b"data"
        assert await cas.has(cid)
        with pytest.raises(ReadOnlyError, match="read-only"):
            await cas.save(b"new", "raw")
        with pytest.raises(ReadOnlyError):
            await cas.put_block(cid, b"data")
        with pytest.raises(PermissionError):
            await cas.save(b"new", "dag-cbor")
        reader = await HAMT.build(
            cas=cas, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
        )
        assert await reader.get("key-49") == b"value-49"
        # A writable HAMT over a read-only store fails at the store, not silently.
        writer = await HAMT.build(cas=cas, root_node_id=hamt.root_node_id, values_are_bytes=True)
        with pytest.raises(ReadOnlyError):
            await writer.set("new", b"x")
        await cas.flush()  # nothing to commit: fine


async def test_read_only_store_at_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "blocks.db"
    cas = LocalCAS(path, read_only=True)  # opening is lazy: no error yet
    async with LocalCAS(tmp_path / "real.db") as real:
        cid = await real.save(b"x", "raw")
    with pytest.raises(BlockNotFoundError, match="no anyhamt block store"):
        await cas.load(cid)
    with pytest.raises(FileNotFoundError):
        await cas.has(cid)
    assert not path.exists() and not path.parent.exists()
    await cas.aclose()


# -- concurrency -----------------------------------------------------------------------------


async def test_many_tasks_on_one_loop_share_one_store(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    maps = 4
    tasks_per_map = 8
    keys_per_task = 40
    expected: list[dict[str, bytes]] = [{} for _ in range(maps)]
    raw: dict[Any, bytes] = {}

    async with LocalCAS(path, batch_blocks=16) as cas:
        hamts = [await HAMT.build(cas=cas, values_are_bytes=True) for _ in range(maps)]

        async def writer(task: int) -> None:
            m = task % maps
            for i in range(keys_per_task):
                key = f"t{task}-{i}"
                value = f"{task}:{i}".encode() * (1 + i % 5)
                await hamts[m].set(key, value)
                expected[m][key] = value
                data = b"raw-%d-%d" % (task, i)
                raw[await cas.save(data, "raw")] = data
                if i % 13 == 0:
                    await hamts[m].cache_vacate()  # flushes while other tasks write
                if i % 7 == 0:
                    await cas.flush()

        async with anyio.create_task_group() as tg:
            for task in range(maps * tasks_per_map):
                tg.start_soon(writer, task)

        roots = []
        for hamt, contents in zip(hamts, expected, strict=True):
            await hamt.make_read_only()
            assert await hamt.len() == len(contents) == tasks_per_map * keys_per_task
            for key, value in contents.items():
                assert await hamt.get(key) == value
            roots.append(hamt.root_node_id)
        for cid, data in raw.items():
            assert await cas.load(cid) == data

    # The roots are those of the same contents written in one go, elsewhere.
    async with LocalCAS(tmp_path / "reference.db") as reference:
        for root, contents in zip(roots, expected, strict=True):
            assert (await build_map(reference, contents)).root_node_id == root

    async with LocalCAS(path, read_only=True) as fresh:
        await assert_every_block_verifies(fresh)
        for root, contents in zip(roots, expected, strict=True):
            hamt = await HAMT.build(
                cas=fresh, root_node_id=root, read_only=True, values_are_bytes=True
            )
            assert await all_keys(hamt) == set(contents)
        for cid, data in raw.items():
            assert await fresh.load(cid) == data


def test_two_threads_with_their_own_loops_share_one_store(tmp_path: Path) -> None:
    # A sync test: it starts one asyncio and one trio loop itself, so no anyio_backend.
    path = tmp_path / "blocks.db"
    cas = LocalCAS(path, batch_blocks=7)
    saved: list[tuple[Any, bytes]] = []  # appended to from both threads (atomic appends)
    expected: dict[str, dict[str, bytes]] = {}
    roots: dict[str, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)

    async def worker(name: str) -> None:
        rng = random.Random(name)
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        contents: dict[str, bytes] = {}

        async def task(t: int) -> None:
            for i in range(60):
                data = f"{name}/{t}/{i}".encode() * (1 + i % 4)
                cid = await cas.save(data, "raw" if i % 2 else "dag-cbor")
                saved.append((cid, data))
                await hamt.set(f"{t}-{i}", data)
                contents[f"{t}-{i}"] = data
                # Load blocks either thread saved, committed or not.
                for _ in range(3):
                    other_cid, other_data = saved[rng.randrange(len(saved))]
                    assert await cas.load(other_cid) == other_data
                if i % 20 == 0:
                    await cas.flush()
                await anyio.lowlevel.checkpoint()

        await anyio.to_thread.run_sync(barrier.wait)
        async with anyio.create_task_group() as tg:
            for t in range(4):
                tg.start_soon(task, t)
        await hamt.make_read_only()
        expected[name] = contents
        roots[name] = hamt.root_node_id

    def thread_main(backend: str) -> None:
        try:
            anyio.run(worker, backend, backend=backend)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    assert len(saved) == 2 * 4 * 60

    async def check(store: LocalCAS) -> None:
        for cid, data in saved:
            assert await store.load(cid) == data
        for name, contents in expected.items():
            hamt = await HAMT.build(
                cas=store, root_node_id=roots[name], read_only=True, values_are_bytes=True
            )
            assert await hamt.len() == len(contents) == 240
            for key, value in contents.items():
                assert await hamt.get(key) == value

    anyio.run(check, cas, backend="trio")
    anyio.run(cas.aclose, backend="asyncio")

    async def check_fresh() -> None:
        async with LocalCAS(path, read_only=True) as fresh:
            await assert_every_block_verifies(fresh)
            await check(fresh)

    anyio.run(check_fresh, backend="asyncio")


async def test_two_instances_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    async with LocalCAS(path) as writer, LocalCAS(path) as reader:
        cids = [await writer.save(b"block %d" % i, "raw") for i in range(100)]
        # Saved but not committed: visible to the writer only.
        assert await writer.has(cids[0])
        assert not await reader.has(cids[0])
        hamt = await build_map(writer, items(200))  # make_read_only commits everything
        for i, cid in enumerate(cids):
            assert await reader.load(cid) == b"block %d" % i
        shared = await HAMT.build(
            cas=reader, root_node_id=hamt.root_node_id, read_only=True, values_are_bytes=True
        )
        assert await shared.len() == 200
        assert await shared.get("key-199") == b"value-199"

        # Blocks the reader writes become visible to the writer the same way.
        cid = await reader.save(b"from the reader", "raw")
        await reader.flush()
        assert await writer.load(cid) == b"from the reader"

    # Both instances committing small batches at the same time (SQLite's file lock).
    async with LocalCAS(path, batch_blocks=3) as one, LocalCAS(path, batch_blocks=4) as two:
        saved: dict[Any, bytes] = {}

        async def save_many(store: LocalCAS, name: str) -> None:
            for i in range(200):
                data = b"%s %d" % (name.encode(), i)
                saved[await store.save(data, "raw")] = data

        async with anyio.create_task_group() as tg:
            for t in range(3):
                tg.start_soon(save_many, one, f"one-{t}")
                tg.start_soon(save_many, two, f"two-{t}")
    async with LocalCAS(path, read_only=True) as fresh:
        for cid, data in saved.items():
            assert await fresh.load(cid) == data


# -- block API, ids, closing -----------------------------------------------------------------


async def test_put_block_checks_the_bytes_against_the_cid(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "source.db") as source:
        cid = await source.save(b"the real bytes", "dag-cbor")
    async with LocalCAS(tmp_path / "blocks.db") as cas:
        assert not await cas.has(cid)
        with pytest.raises(BlockVerificationError):
            await cas.put_block(cid, b"other bytes")
        assert not await cas.has(cid)
        with pytest.raises(BlockNotFoundError):
            await cas.load(cid)
        await cas.put_block(cid, b"the real bytes")
        assert await cas.has(cid)
        assert await cas.has(str(cid))
        assert await cas.has(bytes(cid))
        assert await cas.load(cid) == b"the real bytes"
        await cas.put_block(cid, b"the real bytes")  # again: no-op
        await cas.flush()
        assert list(cas.links()) == [Link(bytes(cid))]
    async with LocalCAS(tmp_path / "blocks.db", read_only=True) as cas:
        assert await cas.load(str(cid)) == b"the real bytes"


async def test_put_block_accepts_foreign_cids(tmp_path: Path) -> None:
    """CAR imports bring CIDs made elsewhere: sha2-256 CIDv1, and CIDv0 (stored as v1)."""
    v1 = CID("base32", 1, "raw", multihash.digest(b"sha block", "sha2-256"))
    v0 = CID("base58btc", 0, "dag-pb", multihash.digest(b"pb block", "sha2-256"))
    async with LocalCAS(tmp_path / "blocks.db") as cas:
        with pytest.raises(BlockVerificationError):
            await cas.put_block(v1, b"sha blocks")
        await cas.put_block(v1, b"sha block")
        await cas.put_block(v0, b"pb block")
        with pytest.raises(InvalidIdError):  # an InMemoryCAS id is not a CID
            await cas.load(b"\x1e\x20" + bytes(32))
    async with LocalCAS(tmp_path / "blocks.db", read_only=True) as cas:
        assert await cas.load(v1) == b"sha block"
        # Raw block access: load() of a dag-pb CID would read the UnixFS file it heads.
        assert await cas.get_block(str(v0)) == b"pb block"
        assert await cas.get_block(v0.set(version=1)) == b"pb block"
        await assert_every_block_verifies(cas)


async def test_aclose_twice_and_use_after_close(tmp_path: Path) -> None:
    cas = LocalCAS(tmp_path / "blocks.db")
    cid = await cas.save(b"x", "raw")
    await cas.aclose()
    await cas.aclose()
    with pytest.raises(StoreClosedError):
        await cas.save(b"y", "raw")
    with pytest.raises(StoreClosedError):
        await cas.load(cid)
    with pytest.raises(StoreClosedError):
        await cas.has(cid)
    async with LocalCAS(tmp_path / "blocks.db") as again:
        assert await again.load(cid) == b"x"  # aclose committed it
        await again.aclose()  # inside `async with`: the exit closes a second time


async def test_same_bytes_same_cid_across_stores(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "a.db") as a, LocalCAS(tmp_path / "b.db") as b:
        codecs: tuple[tuple[Literal["raw", "dag-cbor"], str], ...] = (
            ("raw", "bafkr4i"),
            ("dag-cbor", "bafyr4i"),
        )
        for codec, prefix in codecs:
            cid_a = await a.save(b"same bytes", codec)
            cid_b = await b.save(b"same bytes", codec)
            assert isinstance(cid_a, CID)
            assert cid_a == cid_b
            assert str(cid_a).startswith(prefix)
        assert await a.save(b"same bytes", "raw") != await a.save(b"same bytes", "dag-cbor")

        # Same contents, different insertion order and history: same root in both files.
        contents = items(500)
        hamt_a = await build_map(a, contents)
        hamt_b = await HAMT.build(cas=b, values_are_bytes=True)
        for key in reversed(contents):
            await hamt_b.set(key, b"stale")
        for i in range(100):
            await hamt_b.set(f"extra-{i}", b"x")
        for key, value in contents.items():
            await hamt_b.set(key, value)
        for i in range(100):
            await hamt_b.delete(f"extra-{i}")
        await hamt_b.make_read_only()
        assert isinstance(hamt_a.root_node_id, CID)
        assert hamt_a.root_node_id == hamt_b.root_node_id


async def test_new_file_gets_large_pages_and_an_old_file_keeps_its_own(tmp_path: Path) -> None:
    async with LocalCAS(tmp_path / "new.db") as cas:
        await cas.save(b"x", "raw")
    with closing(sqlite3.connect(tmp_path / "new.db")) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 65536
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL)")
        conn.commit()
    async with LocalCAS(old) as cas:
        cid = await cas.save(b"y" * 100_000, "raw")
    async with LocalCAS(old, read_only=True) as cas:
        assert await cas.load(cid) == b"y" * 100_000
    with closing(sqlite3.connect(old)) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096


async def test_log_stays_bounded_while_writing_and_is_emptied_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits skip SQLite's automatic checkpoint; the writer's own keeps the log small,
    even when batches arrive back to back, and a clean close leaves no log behind."""
    from anyhamt.cas import _local

    monkeypatch.setattr(_local, "_CHECKPOINT_BYTES", 2**20)
    monkeypatch.setattr(_local, "_CHECKPOINT_FORCE_BYTES", 4 * 2**20)
    path = tmp_path / "blocks.db"
    wal = path.with_name(path.name + "-wal")
    rng = random.Random(7)
    cids = []
    largest = 0
    async with LocalCAS(path, batch_bytes=256 * 1024) as cas:
        for _ in range(40):  # 40 MiB, never waiting for a commit in between
            for _ in range(16):
                cids.append(await cas.save(rng.randbytes(65536), "raw"))
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
        await cas.flush()
        largest = max(largest, wal.stat().st_size)
    assert largest < 16 * 2**20
    assert not wal.exists() or wal.stat().st_size == 0
    async with LocalCAS(path, read_only=True) as cas:
        for cid in cids[::50]:
            assert len(await cas.load(cid)) == 65536
    assert integrity_check(path) == "ok"
