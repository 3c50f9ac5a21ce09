"""The `anyhamt` command against a real Kubo daemon."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from anyhamt.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


def test_offline_map_published_through_a_car(
    kubo_daemon: KuboDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ["--store", str(tmp_path / "offline.sqlite3")]
    kubo = ["--kubo", kubo_daemon.rpc_url, "--gateway", kubo_daemon.gateway_url]
    root = ""
    for i in range(10):
        assert main(["put", f"k{i}", f"v{i}", *(["--root", root] if root else []), *local]) == 0
        root = capsys.readouterr().out.strip()
    car = tmp_path / "map.car"
    assert main(["car", "export", root, "-o", str(car), *local]) == 0
    assert main(["car", "import", str(car), *kubo]) == 0
    assert capsys.readouterr().out.strip() == root
    assert main(["get", root, "k4", *kubo]) == 0
    assert capsys.readouterr().out == "v4"
    # And back: a map extended on IPFS, exported from Kubo, read locally.
    assert main(["put", "k10", "v10", "--root", root, *kubo, "--backend", "trio"]) == 0
    root2 = capsys.readouterr().out.strip()
    car2 = tmp_path / "map2.car"
    assert main(["car", "export", root2, "-o", str(car2), *kubo]) == 0
    copy = ["--store", str(tmp_path / "copy.sqlite3")]
    assert main(["car", "import", str(car2), *copy]) == 0
    capsys.readouterr()
    assert main(["ls", root2, *copy]) == 0
    assert len(capsys.readouterr().out.split()) == 11


def _free_loopback_port() -> int:
    # Bound and closed at once: nothing listens there for the test's short life.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_gateway_where_nothing_listens_fails_reads_at_once(
    kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    gateway = f"http://127.0.0.1:{_free_loopback_port()}"
    kubo = ["--kubo", kubo_daemon.rpc_url, "--gateway", gateway, "--backend", anyio_backend]
    # A write without --root reads nothing, so it needs only the RPC.
    assert main(["put", "k", "v", *kubo]) == 0
    root = capsys.readouterr().out.strip()
    for argv in (["get", root, "k"], ["ls", root], ["put", "k2", "v", "--root", root]):
        assert main([*argv, *kubo]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"anyhamt: KuboError: no IPFS gateway answering at {gateway} (connection refused);"
            " start Kubo with its gateway (`ipfs daemon`), or pass the right --gateway URL\n"
        )


def test_missing_key_and_json_through_kubo(
    kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    kubo = ["--kubo", kubo_daemon.rpc_url, "--gateway", kubo_daemon.gateway_url]
    assert main(["put", "doc", '{"a": [1, {"/": {"bytes": "AQI"}}]}', "--json", *kubo]) == 0
    root = capsys.readouterr().out.strip()
    assert main(["get", root, "doc", "--json", *kubo]) == 0
    assert capsys.readouterr().out == '{"a": [1, {"/": {"bytes": "AQI"}}]}\n'
    assert main(["get", root, "nosuchkey", *kubo]) == 1
    assert capsys.readouterr().err == f"anyhamt: KeyNotFoundError: no key 'nosuchkey' in {root}\n"
