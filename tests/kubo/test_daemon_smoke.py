"""The daemon the Kubo tests run against is a real, persistent IPFS node."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

import blake3
import httpx
import pytest

if TYPE_CHECKING:
    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo

ADD_PARAMS = {
    "hash": "blake3",
    "cid-version": "1",
    "pin": "false",
    "chunker": "size-1048576",
    "raw-leaves": "true",
}


def raw_blake3_cid(data: bytes) -> str:
    """CIDv1, codec raw (0x55), multihash blake3 (0x1e) of 32 bytes, base32 multibase."""
    binary = bytes([0x01, 0x55, 0x1E, 0x20]) + blake3.blake3(data).digest()
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=")


def add(daemon: KuboDaemon, data: bytes) -> str:
    response = httpx.post(
        f"{daemon.rpc_url}/api/v0/add", params=ADD_PARAMS, files={"file": data}, timeout=30
    )
    response.raise_for_status()
    cid: str = response.json()["Hash"]
    return cid


def block_get(daemon: KuboDaemon, cid: str) -> httpx.Response:
    return httpx.post(f"{daemon.rpc_url}/api/v0/block/get", params={"arg": cid}, timeout=30)


def test_add_returns_the_blake3_raw_cid_of_the_bytes(kubo_daemon: KuboDaemon) -> None:
    data = os.urandom(1000)
    cid = add(kubo_daemon, data)
    assert cid.startswith("bafkr4i")
    assert cid == raw_blake3_cid(data)


@pytest.mark.parametrize("how", ["query", "accept"])
def test_gateway_serves_the_exact_bytes(kubo_daemon: KuboDaemon, how: str) -> None:
    data = os.urandom(5000)
    cid = add(kubo_daemon, data)
    url = f"{kubo_daemon.gateway_url}/ipfs/{cid}"
    if how == "query":
        response = httpx.get(url, params={"format": "raw"})
    else:
        response = httpx.get(url, headers={"Accept": "application/vnd.ipld.raw"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.ipld.raw"
    assert response.content == data


def test_blocks_survive_a_restart_on_the_same_repo_and_ports(
    fresh_kubo_daemon: KuboDaemon,
) -> None:
    daemon = fresh_kubo_daemon
    rpc_url, gateway_url = daemon.rpc_url, daemon.gateway_url
    data = os.urandom(2000)
    cid = add(daemon, data)

    daemon.stop()
    assert not daemon.running
    with pytest.raises(httpx.ConnectError):
        block_get(daemon, cid)

    daemon.start()
    assert (daemon.rpc_url, daemon.gateway_url) == (rpc_url, gateway_url)
    response = block_get(daemon, cid)
    assert response.status_code == 200
    assert response.content == data


def test_unknown_block_fails_fast_instead_of_searching_the_network(
    kubo_daemon: KuboDaemon,
) -> None:
    # Offline, Kubo must answer from the local repo only; a hang here would mean it is
    # trying to reach peers. The short timeout turns a hang into a failure.
    cid = raw_blake3_cid(os.urandom(32))
    response = httpx.post(f"{kubo_daemon.rpc_url}/api/v0/block/get", params={"arg": cid}, timeout=5)
    assert response.status_code == 500
    assert "not found" in response.json()["Message"]
    gateway = httpx.get(f"{kubo_daemon.gateway_url}/ipfs/{cid}?format=raw", timeout=5)
    assert gateway.status_code == 404
