"""KuboCAS against a real Kubo daemon: HAMTs, CID identity, batching, pins, dag-pb values."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx
import pytest

from anyhamt import HAMT, BlockNotFoundError, KuboCAS, KuboError, LocalCAS
from anyhamt._codec import DAG_CBOR, RAW, make_link

from ._helpers import cas_for

if TYPE_CHECKING:
    from pathlib import Path

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo

ADD_PARAMS = {"hash": "blake3", "cid-version": "1", "pin": "false", "chunker": "size-1048576"}


def kubo_add(daemon: KuboDaemon, data: bytes, chunker: str = "size-1048576") -> str:
    """What py-hamt does for every value: /api/v0/add."""
    response = httpx.post(
        f"{daemon.rpc_url}/api/v0/add",
        params={**ADD_PARAMS, "chunker": chunker},
        files={"file": data},
        timeout=60,
    )
    response.raise_for_status()
    cid: str = response.json()["Hash"]
    return cid


async def test_hamt_round_trip_on_kubo(kubo_cas: KuboCAS) -> None:
    hamt = await HAMT.build(cas=kubo_cas, values_are_bytes=True)
    for i in range(600):
        await hamt.set(f"k{i}", f"value-{i}".encode())
    await hamt.make_read_only()
    root = hamt.root_node_id
    assert str(root).startswith("bafyr4i")

    # A fresh store: everything must come from the daemon, not from a buffer.
    async with KuboCAS(
        rpc_base_url=kubo_cas.rpc_base_url, gateway_base_url=kubo_cas.gateway_base_url
    ) as reader:
        again = await HAMT.build(
            cas=reader, root_node_id=root, values_are_bytes=True, read_only=True
        )
        for i in range(0, 600, 7):
            assert await again.get(f"k{i}") == f"value-{i}".encode()
        assert await again.len() == 600


async def test_same_bytes_same_cid_as_local_store_and_kubo_add(
    kubo_cas: KuboCAS, kubo_daemon: KuboDaemon, tmp_path: Path
) -> None:
    async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
        for codec, code in (("raw", RAW), ("dag-cbor", DAG_CBOR)):
            data = os.urandom(300)
            kubo_id = await kubo_cas.save(data, codec)  # type: ignore[arg-type]
            assert kubo_id == await local.save(data, codec)  # type: ignore[arg-type]
            assert bytes(kubo_id) == make_link(code, data)
        # What py-hamt gets from /api/v0/add, for a small value and for one bigger than a
        # chunk (a UnixFS file that KuboCAS and LocalCAS both build locally).
        for size in (1000, 1024 * 1024, 2 * 1024 * 1024 + 17):
            data = os.urandom(size)
            added = kubo_add(kubo_daemon, data)
            assert str(await kubo_cas.save(data, "raw")) == added
            local_id = await local.save(data, "raw")
            assert str(local_id) == added
            assert await local.load(local_id) == data
            assert await local.load(local_id, offset=size - 20, length=5) == data[-20:-15]


async def test_same_contents_same_root_on_local_store_and_kubo(
    kubo_cas: KuboCAS, tmp_path: Path
) -> None:
    big = os.urandom(3 * 1024 * 1024 + 5)  # stored as a UnixFS file by both stores
    roots = []
    async with LocalCAS(tmp_path / "blocks.sqlite3") as local:
        for cas in (local, kubo_cas):
            hamt = await HAMT.build(cas=cas, values_are_bytes=True)
            for i in range(300):
                await hamt.set(f"key-{i}", f"v{i}".encode() * (i % 5 + 1))
            await hamt.set("big", big)
            await hamt.make_read_only()
            assert await hamt.get("big") == big
            roots.append(hamt.root_node_id)
    assert roots[0] == roots[1]


async def test_values_bigger_than_a_chunk_are_read_and_verified_block_by_block(
    kubo_daemon: KuboDaemon,
) -> None:
    """A small chunker makes a deep UnixFS tree; every block is fetched raw and checked."""
    data = os.urandom(64 * 174 + 1000)
    async with cas_for(kubo_daemon, chunker="size-64") as cas:
        cid = await cas.save(data, "raw")
        assert str(cid) == kubo_add(kubo_daemon, data, "size-64")
        assert cid.codec.name == "dag-pb"
    async with cas_for(kubo_daemon) as reader:
        assert await reader.load(cid) == data
        assert await reader.load(cid, offset=100, length=50) == data[100:150]
        assert await reader.load(cid, suffix=10) == data[-10:]
    # Unverified: the gateway reassembles the file and serves the range.
    async with cas_for(kubo_daemon, verify=False) as trusting:
        assert await trusting.load(cid) == data
        assert await trusting.load(cid, offset=100, length=50) == data[100:150]


async def test_unverified_ranges_use_http_range_requests(kubo_daemon: KuboDaemon) -> None:
    seen: list[str | None] = []

    async def record(request: httpx.Request) -> None:
        if request.method == "GET":
            seen.append(request.headers.get("Range"))

    def factory() -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [record]})

    async with cas_for(kubo_daemon, verify=False, client_factory=factory) as cas:
        cid = await cas.save(bytes(range(64)), "raw")
        assert await cas.load(cid, offset=0, length=10) == bytes(range(10))
        assert await cas.load(cid, suffix=8) == bytes(range(56, 64))
        assert await cas.load(cid, offset=60, length=100) == bytes(range(60, 64))
        assert await cas.load(cid, offset=64) == b""  # 416 from Kubo: empty, as slicing gives
        assert await cas.load(cid, offset=1000, length=5) == b""
        assert await cas.load(cid, suffix=100) == bytes(range(64))
    assert seen[:5] == ["bytes=0-9", "bytes=-8", "bytes=60-159", "bytes=64-", "bytes=1000-1004"]


async def test_make_read_only_batches_blocks(kubo_daemon: KuboDaemon) -> None:
    requests: list[str] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request.url.path)

    def factory() -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [record]})

    async with cas_for(kubo_daemon, client_factory=factory, batch_blocks=500) as cas:
        hamt = await HAMT.build(cas=cas, values_are_bytes=True)
        for i in range(3000):
            await hamt.set(f"k{i}", os.urandom(20))
        await hamt.make_read_only()
        blocks = 3000 + sum(1 for _ in range(1))  # at least the values and a root
        puts = [p for p in requests if p.endswith("/block/put")]
        # 3000 values and ~a few hundred nodes, 500 per request.
        assert blocks / 500 <= len(puts) <= 12, puts
        assert not [p for p in requests if p.endswith("/add")]


async def test_missing_block_and_bad_cid(kubo_cas: KuboCAS) -> None:
    with pytest.raises(BlockNotFoundError):
        await kubo_cas.load(make_link(RAW, b"nobody saved this").to_cid())
    with pytest.raises(BlockNotFoundError):
        await kubo_cas.pin_cid(make_link(RAW, b"nobody saved this either").to_cid())


async def test_pins(kubo_cas: KuboCAS) -> None:
    first = await kubo_cas.save(b"pin me", "raw")
    second = await kubo_cas.save(b"pin me next", "raw")
    await kubo_cas.pin_cid(first)
    pins = {cid: info["Type"] for cid, info in (await kubo_cas.pin_ls()).items()}
    assert pins[str(first)] == "recursive"
    await kubo_cas.pin_update(first, second)
    pins = {cid: info["Type"] for cid, info in (await kubo_cas.pin_ls()).items()}
    assert str(second) in pins and str(first) not in pins
    await kubo_cas.unpin_cid(second)
    assert str(second) not in await kubo_cas.pin_ls()
    with pytest.raises(KuboError, match="not pinned"):
        await kubo_cas.unpin_cid(second)


async def test_pin_on_add(kubo_daemon: KuboDaemon) -> None:
    async with cas_for(kubo_daemon, pin_on_add=True) as cas:
        cid = await cas.save(b"pinned on the way in", "raw")
        assert str(cid) in await cas.pin_ls()


async def test_identity_cids_need_no_request() -> None:
    # Nothing listens on these ports: an identity CID carries its bytes.
    async with KuboCAS(
        rpc_base_url="http://127.0.0.1:9", gateway_base_url="http://127.0.0.1:9", max_retries=0
    ) as cas:
        assert await cas.load("bafkqaaa") == b""
        with pytest.raises(KuboError):
            await cas.save(b"x", "raw")
