"""`anyhamt info`, `anyhamt zarr info|convert` and `sharded_converter_cli` against a real
Kubo daemon, with py-hamt 3.6.0's converter on the same dataset for comparison."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest
import xarray as xr
from _pyhamt import require_pyhamt, run_pyhamt
from _zarr_datasets import encoding, open_dataset, sample_dataset, write_dataset

from anyhamt import KuboCAS
from anyhamt.cli import main
from anyhamt.zarr._convert import sharded_converter_cli
from anyhamt.zarr._sharded import ShardedZarrStore

if TYPE_CHECKING:
    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo

ABSENT = "bafyr4iab3rslxymgptusk6c6xhy55d2vw6uuvg2nnjyveuagr5a5xzjhwu"


def kubo_args(daemon: KuboDaemon) -> list[str]:
    return ["--kubo", daemon.rpc_url, "--gateway", daemon.gateway_url]


async def write_on_kubo(daemon: KuboDaemon) -> tuple[str, xr.Dataset]:
    async with KuboCAS(rpc_base_url=daemon.rpc_url, gateway_base_url=daemon.gateway_url) as cas:
        ds = sample_dataset()
        root = await write_dataset(
            cas, ds, mode="w", zarr_format=3, consolidated=False, encoding=encoding(ds)
        )
        return str(root), await open_dataset(cas, root, consolidated=False)


async def open_sharded_on_kubo(daemon: KuboDaemon, root: str) -> xr.Dataset:
    # A new client: every shard and chunk comes cold from the gateway, verified.
    async with KuboCAS(rpc_base_url=daemon.rpc_url, gateway_base_url=daemon.gateway_url) as cas:
        store = await ShardedZarrStore.open(cas=cas, read_only=True, root_cid=root)
        return await anyio.to_thread.run_sync(
            lambda: xr.open_zarr(store, consolidated=False).load()
        )


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert (status, err) == (0, ""), err
    return json.loads(out)


def test_info_convert_and_zarr_info_on_kubo(
    kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str], anyio_backend: str
) -> None:
    root, source = anyio.run(write_on_kubo, kubo_daemon, backend=anyio_backend)
    kubo = [*kubo_args(kubo_daemon), "--backend", anyio_backend]

    hamt = cli_json(capsys, "info", root, "--json", *kubo)
    before = cli_json(capsys, "zarr", "info", root, "--json", *kubo)
    assert before["layout"] == "hamt" and hamt["keys"] == before["keys"] == 29
    assert before["stored_bytes"] == hamt["stored_bytes"]

    assert main(["zarr", "convert", root, "--chunks-per-shard", "4", *kubo]) == 0
    new_root = capsys.readouterr().out.strip()
    assert new_root.startswith("bafyr4i")
    xr.testing.assert_identical(
        anyio.run(open_sharded_on_kubo, kubo_daemon, new_root, backend=anyio_backend), source
    )

    after = cli_json(capsys, "zarr", "info", new_root, "--json", *kubo)
    assert after["layout"] == "sharded_zarr_v2" and after["chunks_per_shard"] == 4
    assert all(array["sharded"] for array in after["arrays"])
    assert [(a["path"], a["chunks_present"], a["chunk_bytes"]) for a in after["arrays"]] == [
        (a["path"], a["chunks_present"], a["chunk_bytes"]) for a in before["arrays"]
    ]
    assert (after["metadata_bytes"], after["chunk_bytes"]) == (
        before["metadata_bytes"],
        before["chunk_bytes"],
    )


def test_failures_on_kubo_are_one_line(
    kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["info"], ["zarr", "info"], ["zarr", "convert"]):
        assert main([*command, ABSENT, *kubo_args(kubo_daemon)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("anyhamt: BlockNotFoundError: no block ") and err.count("\n") == 1


PYHAMT_CONVERT = """
import asyncio, json, sys
from py_hamt import KuboCAS, convert_hamt_to_sharded

async def main(rpc, gateway, root):
    async with KuboCAS(rpc_base_url=rpc, gateway_base_url=gateway) as cas:
        new_root = await convert_hamt_to_sharded(cas, root, 4)
    print(json.dumps({"root": str(new_root)}))

asyncio.run(main(*sys.argv[1:4]))
"""


def test_pyhamt_converter_on_the_same_dataset(
    kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    require_pyhamt()
    root, source = anyio.run(write_on_kubo, kubo_daemon)
    printed = run_pyhamt(PYHAMT_CONVERT, kubo_daemon.rpc_url, kubo_daemon.gateway_url, root)
    theirs = json.loads(printed.strip().splitlines()[-1])["root"]

    # py-hamt's sharded root reads here as the dataset it came from, and `zarr info` finds
    # every chunk in its shards.
    xr.testing.assert_identical(anyio.run(open_sharded_on_kubo, kubo_daemon, theirs), source)
    described = cli_json(capsys, "zarr", "info", theirs, "--json", *kubo_args(kubo_daemon))
    before = cli_json(capsys, "zarr", "info", root, "--json", *kubo_args(kubo_daemon))
    assert described["layout"] == "sharded_zarr_v2"
    assert [(a["path"], a["chunks_present"], a["sharded"]) for a in described["arrays"]] == [
        (a["path"], a["chunks_present"], True) for a in before["arrays"]
    ]
    assert described["chunk_bytes"] == before["chunk_bytes"]
    # And ours converts to the very same root: the same v2 manifest and shards, byte for byte.
    assert main(["zarr", "convert", root, "--chunks-per-shard", "4", *kubo_args(kubo_daemon)]) == 0
    assert capsys.readouterr().out.strip() == theirs


async def _converter_cli(argv: list[str]) -> None:
    await sharded_converter_cli(argv)


def test_sharded_converter_cli(kubo_daemon: KuboDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    root, source = anyio.run(write_on_kubo, kubo_daemon)
    urls = ["--rpc-url", kubo_daemon.rpc_url, "--gateway-url", kubo_daemon.gateway_url]
    anyio.run(_converter_cli, [root, "--chunks-per-shard", "4", *urls])
    new_root = capsys.readouterr().out.strip()
    xr.testing.assert_identical(anyio.run(open_sharded_on_kubo, kubo_daemon, new_root), source)
    # The same conversion as the `anyhamt` command's.
    assert main(["zarr", "convert", root, "--chunks-per-shard", "4", *kubo_args(kubo_daemon)]) == 0
    assert capsys.readouterr().out.strip() == new_root

    # A failure is one line and a non-zero exit (py-hamt's prints and returns normally).
    with pytest.raises(SystemExit) as exit_info:
        anyio.run(_converter_cli, [ABSENT, *urls])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("sharded_converter_cli: BlockNotFoundError: ") and err.count("\n") == 1
