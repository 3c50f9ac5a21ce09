"""The `anyhamt` command on the local block store (and on a Kubo URL where nothing listens).

Tests that take `anyio_backend` run the command on that backend (`--backend`), so they follow
the suite's `--backend` option like the async tests do.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import dag_cbor
import pytest
from _helpers import console_script, run_on_a_terminal
from multiformats import CID

from anyhamt import HAMT, LocalCAS, cli
from anyhamt.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def put_map(capsys: pytest.CaptureFixture[str], store: list[str], **items: str) -> str:
    root = ""
    for key, value in items.items():
        status, out, err = run(
            capsys, "put", key, value, *(["--root", root] if root else []), *store
        )
        assert status == 0, err
        root = out.strip()
    return root


def files_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


def test_put_get_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3"), "--backend", anyio_backend]
    status, root, _ = run(capsys, "put", "alpha", "one", *store)
    assert status == 0 and root.startswith("bafyr4i")
    value_file = tmp_path / "value.bin"
    value_file.write_bytes(b"\x00binary\xff")
    status, root2, _ = run(
        capsys, "put", "beta", "--file", str(value_file), "--root", root.strip(), *store
    )
    assert status == 0 and root2 != root
    status, out, _ = run(capsys, "ls", root2.strip(), *store)
    assert status == 0 and sorted(out.split()) == ["alpha", "beta"]
    # Not a terminal: the value's bytes exactly, no newline added.
    status, out, _ = run(capsys, "get", root2.strip(), "alpha", *store)
    assert status == 0 and out == "one"
    target = tmp_path / "out.bin"
    assert run(capsys, "get", root2.strip(), "beta", "-o", str(target), *store)[0] == 0
    assert target.read_bytes() == b"\x00binary\xff"


def test_missing_key_names_the_error_key_and_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3"), "--backend", anyio_backend]
    root = put_map(capsys, store, alpha="one")
    status, out, err = run(capsys, "get", root, "nosuchkey", *store)
    assert (status, out) == (1, "")
    assert err == f"anyhamt: KeyNotFoundError: no key 'nosuchkey' in {root}\n"


def test_other_errors_exit_1_with_one_named_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    put_map(capsys, store, alpha="one")
    status, _, err = run(capsys, "ls", "not-a-cid", *store)
    assert status == 1 and err.startswith("anyhamt: InvalidIdError: ") and err.count("\n") == 1
    status, _, err = run(capsys, "put", "k", "--file", str(tmp_path / "absent"), *store)
    assert status == 1 and err.startswith("anyhamt: FileNotFoundError: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["put", "k", "v", "--file", "x"],  # both
        ["put", "k"],  # neither
        ["ls", "bafkqaaa", "--gateway", "http://127.0.0.1:8080"],  # a gateway without Kubo
    ],
    ids=["value-and-file", "no-value", "gateway-without-kubo"],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--store", str(tmp_path / "s.db")])
    assert exit_info.value.code == 2
    assert "usage: anyhamt" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    "command",
    [["get", "{root}", "alpha"], ["ls", "{root}"], ["car", "export", "{root}", "-o", "{car}"]],
    ids=["get", "ls", "car-export"],
)
def test_read_commands_never_create_a_store(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    root = put_map(capsys, ["--store", str(tmp_path / "real.sqlite3")], alpha="one")
    car = tmp_path / "out.car"
    argv = [part.format(root=root, car=car) for part in command]
    before = files_under(tmp_path)

    typo = tmp_path / "typo" / "blocks.sqlite3"
    status, out, err = run(capsys, *argv, "--store", str(typo))
    assert (status, out) == (1, "")
    assert err.startswith(f"anyhamt: StoreError: no store at {typo}; ") and err.count("\n") == 1

    # The default store, under an ANYHAMT_HOME that holds none yet.
    home = tmp_path / "home"
    monkeypatch.setenv("ANYHAMT_HOME", str(home))
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert err.startswith(f"anyhamt: StoreError: no store at {home / 'blocks.sqlite3'}; ")

    assert files_under(tmp_path) == before  # no directory, database or CAR file appeared


def test_failed_car_export_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    root = put_map(capsys, store, alpha="one")
    absent = "bafyr4iab3rslxymgptusk6c6xhy55d2vw6uuvg2nnjyveuagr5a5xzjhwu"  # not in the store
    car = tmp_path / "map.car"
    status, _, err = run(capsys, "car", "export", absent, "-o", str(car), *store)
    assert status == 1 and err.startswith("anyhamt: BlockNotFoundError: ")
    assert not car.exists()
    # An existing CAR stays as it was until a new export is complete.
    assert run(capsys, "car", "export", root, "-o", str(car), *store)[0] == 0
    good = car.read_bytes()
    assert run(capsys, "car", "export", absent, "-o", str(car), *store)[0] == 1
    assert car.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_car_export_to_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    root = put_map(capsys, store, alpha="one", beta="two")
    car = tmp_path / "map.car"
    assert run(capsys, "car", "export", root, "-o", str(car), *store)[0] == 0
    piped = subprocess.run(
        [console_script(), "car", "export", root, "-o", "/dev/stdout", *store],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == car.read_bytes()


def test_read_commands_open_the_store_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    root = put_map(capsys, store, alpha="one")
    opened: list[tuple[str, bool]] = []

    class Recording(LocalCAS):
        def __init__(self, path: Any, **kwargs: Any) -> None:
            super().__init__(path, **kwargs)
            opened.append((argv[0], self.read_only))

    monkeypatch.setattr(cli, "LocalCAS", Recording)
    car = str(tmp_path / "map.car")
    for argv in (
        ["get", root, "alpha"],
        ["ls", root],
        ["car", "export", root, "-o", car],
        ["put", "beta", "two", "--root", root],
        ["car", "import", car],
    ):
        assert run(capsys, *argv, *store)[0] == 0
    assert opened == [
        ("get", True),
        ("ls", True),
        ("car", True),
        ("put", False),
        ("car", False),
    ]


def test_put_creates_the_default_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYHAMT_HOME", str(tmp_path / "new" / "home"))
    status, root, _ = run(capsys, "put", "alpha", "one")
    assert status == 0
    assert (tmp_path / "new" / "home" / "blocks.sqlite3").is_file()
    assert run(capsys, "get", root.strip(), "alpha") == (0, "one", "")


def test_non_utf8_argv_gives_one_line_and_exit_1(tmp_path: Path) -> None:
    store = str(tmp_path / "blocks.sqlite3")
    script = console_script()

    def anyhamt(*argv: str | bytes) -> subprocess.CompletedProcess[bytes]:
        # bytes argv: what a shell passes for $'k\xff'; Python sees surrogate escapes.
        return subprocess.run(
            [script, *argv, "--store", store], capture_output=True, timeout=120, check=False
        )

    result = anyhamt("put", b"k\xff", "v")
    assert result.returncode == 1
    assert (
        result.stderr
        == b"anyhamt: InvalidKeyError: the KEY b'k\\xff' is not UTF-8 (keys are UTF-8 text)\n"
    )
    assert not Path(store).exists()

    # A value is bytes: the argument's bytes are stored exactly.
    result = anyhamt("put", "k", b"v\xff")
    assert result.returncode == 0, result.stderr
    root = result.stdout.decode().strip()
    assert anyhamt("get", root, "k").stdout == b"v\xff"

    result = anyhamt("ls", b"bafy\xff")
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"anyhamt: InvalidIdError: the ROOT b'bafy\\xff'")
    assert result.stderr.count(b"\n") == 1


def test_get_adds_a_newline_on_a_terminal_only(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    script = console_script()
    root = (
        subprocess.run(
            [script, "put", "k", "one", *store], capture_output=True, check=True, timeout=120
        )
        .stdout.decode()
        .strip()
    )
    root = (
        subprocess.run(
            [script, "put", "nl", "two\n", "--root", root, *store],
            capture_output=True,
            check=True,
            timeout=120,
        )
        .stdout.decode()
        .strip()
    )

    def on_a_terminal(key: str) -> bytes:
        status, out, err = run_on_a_terminal([script, "get", root, key, *store], terminal="stdout")
        assert status == 0, err
        return out

    # The terminal turns "\n" into "\r\n"; a value that ends in a newline gets no second one.
    assert on_a_terminal("k") == b"one\r\n"
    assert on_a_terminal("nl") == b"two\r\n"
    piped = subprocess.run(
        [script, "get", root, "k", *store], capture_output=True, check=True, timeout=120
    )
    assert piped.stdout == b"one"


async def _write_ipld_map(path: Path, value: Any) -> str:
    async with LocalCAS(path) as cas:
        hamt = await HAMT.build(cas=cas)  # values_are_bytes=False: dag-cbor values
        await hamt.set("doc", value)
        await hamt.set("text", "plain")
        await hamt.make_read_only()
        return str(hamt.root_node_id)


async def _read_ipld_value(path: Path, root: str, key: str) -> Any:
    async with LocalCAS(path, read_only=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=root, read_only=True)
        return await hamt.get(key)


LINK = CID.decode("bafyr4if3elrywc4jjnhdlmpinpovxtrxkscs7w6z4ja57tjxx7nf7h6rxa")
IPLD_VALUE: dag_cbor.IPLDKind = {
    "name": "é",
    "n": [1, -2, 2.5, None, True],
    "link": LINK,
    "raw": b"\x00\x01\xff",
    "nested": {"empty": b""},
}
DAG_JSON = {
    "name": "é",
    "n": [1, -2, 2.5, None, True],
    "link": {"/": "bafyr4if3elrywc4jjnhdlmpinpovxtrxkscs7w6z4ja57tjxx7nf7h6rxa"},
    "raw": {"/": {"bytes": "AAH/"}},
    "nested": {"empty": {"/": {"bytes": ""}}},
}


def test_get_json_decodes_an_ipld_value_as_dag_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    path = tmp_path / "blocks.sqlite3"
    root = anyio.run(_write_ipld_map, path, IPLD_VALUE, backend=anyio_backend)
    store = ["--store", str(path), "--backend", anyio_backend]
    status, out, err = run(capsys, "get", root, "doc", "--json", *store)
    assert status == 0, err
    assert out.endswith("}\n") and json.loads(out) == DAG_JSON
    assert run(capsys, "get", root, "text", "--json", *store) == (0, '"plain"\n', "")
    # Without --json: the dag-cbor bytes, as stored.
    status, _, _ = run(capsys, "get", root, "doc", "-o", str(tmp_path / "v"), *store)
    assert status == 0 and (tmp_path / "v").read_bytes() == dag_cbor.encode(IPLD_VALUE)


def test_get_json_of_raw_bytes_is_a_typed_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    root = put_map(capsys, store, greeting="hello")
    status, out, err = run(capsys, "get", root, "greeting", "--json", *store)
    assert (status, out) == (1, "")
    assert err.startswith("anyhamt: CorruptBlockError: the value of 'greeting' is not dag-cbor")
    assert "drop --json" in err and err.count("\n") == 1


def test_put_json_stores_what_hamt_set_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    path = tmp_path / "blocks.sqlite3"
    store = ["--store", str(path), "--backend", anyio_backend]
    status, out, err = run(capsys, "put", "doc", json.dumps(DAG_JSON), "--json", *store)
    assert status == 0, err
    root = out.strip()
    assert anyio.run(_read_ipld_value, path, root, "doc", backend=anyio_backend) == IPLD_VALUE
    status, out, _ = run(capsys, "get", root, "doc", "--json", *store)
    assert status == 0 and json.loads(out) == DAG_JSON


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "the value is not JSON"),
        ("NaN", "NaN is not a number dag-cbor can hold"),
        ('{"/": "nocid"}', "is not a CID"),
        ('{"/": {"bytes": "!!"}}', "is not base64 bytes"),
    ],
)
def test_put_json_rejects_what_is_not_dag_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    store = ["--store", str(tmp_path / "blocks.sqlite3")]
    status, out, err = run(capsys, "put", "k", text, "--json", *store)
    assert (status, out) == (1, "")
    assert err.startswith("anyhamt: InvalidValueError: ") and message in err


def test_help_shows_defaults_and_every_positional(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYHAMT_HOME", str(tmp_path))
    positionals = {
        (): ["COMMAND"],
        ("put",): ["KEY", "VALUE"],
        ("get",): ["ROOT", "KEY"],
        ("ls",): ["ROOT"],
        ("car",): ["COMMAND"],
        ("car", "export"): ["ROOT"],
        ("car", "import"): ["FILE"],
    }
    for command, names in positionals.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        section = text.split("positional arguments:\n", 1)[1].split("\n\n", 1)[0]
        for name in names:
            # The name, then its help on the same line.
            assert re.search(rf"^  {name} +\S", section, re.MULTILINE), (command, name, text)
        if command in {("put",), ("get",), ("ls",), ("car", "export"), ("car", "import")}:
            # argparse wraps long lines, also inside a path (at hyphens): compare unwrapped.
            flat = "".join(text.split())
            assert f"(default:{tmp_path / 'blocks.sqlite3'};" in flat
            assert "(default:http://127.0.0.1:8080)" in flat  # the gateway with --kubo only
            assert "http://127.0.0.1:5001" in flat


def free_loopback_port() -> int:
    # Bound and closed at once: nothing listens there for the test's short life.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "command",
    [["put", "k", "v"], ["get", "bafkqaaa", "k"], ["ls", "bafkqaaa"]],
    ids=["put", "get", "ls"],
)
def test_kubo_url_where_nothing_listens_fails_without_retrying(
    capsys: pytest.CaptureFixture[str], anyio_backend: str, command: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    status, out, err = run(capsys, *command, "--kubo", url, "--backend", anyio_backend)
    assert (status, out) == (1, "")
    # The probe's one-shot message, not the store's "failed after 4 attempts".
    assert err == (
        f"anyhamt: KuboError: no Kubo RPC answering at {url} (connection refused); start one "
        "with `ipfs daemon` (see the README), or pass the right --kubo URL\n"
    )


def test_console_script_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [console_script(), "put", "k", "v", "--store", str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bafyr4i")


def test_module_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anyhamt.cli", "ls", "bafkqaaa", "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("anyhamt: StoreError: no store at ")
