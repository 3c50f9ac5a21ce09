"""The `anyhamt` command against a real Kubo daemon."""

from __future__ import annotations

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
