"""The `anyhamt` command on the local block store."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from anyhamt.cli import main

if TYPE_CHECKING:
    from pathlib import Path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_put_get_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3"), "--backend", backend]
    status, root, _ = run(capsys, "put", "alpha", "one", *store)
    assert status == 0 and root.startswith("bafyr4i")
    value_file = tmp_path / "value.bin"
    value_file.write_bytes(b"\x00binary\xff")
    status, root2, _ = run(
        capsys, "put", "beta", "--file", str(value_file), "--root", root.strip(), *store
    )
    assert status == 0 and root2 != root
    status, out, _ = run(capsys, "ls", root2.strip(), *store)
    assert sorted(out.split()) == ["alpha", "beta"]
    status, out, _ = run(capsys, "get", root2.strip(), "alpha", *store)
    assert out == "one"
    target = tmp_path / "out.bin"
    assert run(capsys, "get", root2.strip(), "beta", "-o", str(target), *store)[0] == 0
    assert target.read_bytes() == b"\x00binary\xff"


def test_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    _, root, _ = run(capsys, "put", "alpha", "one", *store)
    status, _, err = run(capsys, "get", root.strip(), "missing", *store)
    assert status == 1 and "missing" in err
    status, _, err = run(capsys, "ls", "not-a-cid", *store)
    assert status == 1 and "InvalidIdError" in err
    with pytest.raises(SystemExit):
        main(["put", "k", "v", "--file", "x", *store])


def test_car_export_import_between_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ["--store", str(tmp_path / "a.sqlite3")]
    second = ["--store", str(tmp_path / "b.sqlite3")]
    root = ""
    for i in range(20):
        extra = ["--root", root] if root else []
        _, out, _ = run(capsys, "put", f"k{i}", f"v{i}", *extra, *first)
        root = out.strip()
    car = tmp_path / "map.car"
    status, _, err = run(capsys, "car", "export", root, "-o", str(car), *first)
    assert status == 0 and "blocks written" in err
    status, out, _ = run(capsys, "car", "import", str(car), *second)
    assert status == 0 and out.strip() == root
    _, out, _ = run(capsys, "get", root, "k13", *second)
    assert out == "v13"


def test_console_script_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anyhamt.cli", "put", "k", "v", "--store", str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bafyr4i")
