"""The ``anyhamt`` command: a HAMT's keys and values, and CAR files, from the shell.

Every command works on the local block store (``--store PATH``, default
``$ANYHAMT_HOME/blocks.sqlite3`` or ``~/.local/share/anyhamt/blocks.sqlite3``) or on IPFS
through a Kubo daemon (``--kubo RPC_URL [--gateway URL]``). Values are bytes; ``--json``
reads and writes dag-cbor values as DAG-JSON.

    anyhamt put KEY VALUE [--root ROOT]     prints the new root
    anyhamt put KEY --file PATH [--root ROOT]
    anyhamt get ROOT KEY [-o FILE] [--json] the value to stdout (or FILE)
    anyhamt ls ROOT                         the keys, one per line
    anyhamt car export ROOT -o FILE         the DAG under ROOT as a CARv1
    anyhamt car import FILE                 prints the CAR's roots
    anyhamt info ROOT [--json]              keys, depth, nodes and bytes of a map
    anyhamt zarr info ROOT [--json]         a Zarr dataset's layout, arrays and chunks
    anyhamt zarr convert ROOT [--chunks-per-shard N]   prints the sharded copy's root

Read commands (``get``, ``ls``, ``car export``, ``info``, ``zarr info``) never create a
store: a local store that does not exist is an error, and the file is opened read-only.
``zarr convert`` needs an existing store too (its source is there) and writes to it.
Long work shows a progress bar on stderr when stderr is a terminal (``--quiet``: none).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import anyio
import dag_cbor
import httpx
from multiformats import CID

from ._errors import (
    AnyHamtError,
    CorruptBlockError,
    InvalidConfigError,
    InvalidIdError,
    InvalidKeyError,
    InvalidValueError,
    KeyNotFoundError,
    KuboError,
    StoreError,
)
from ._hamt import HAMT
from ._info import HamtInfo, ZarrInfo, hamt_info, zarr_info
from .cas._car import export_car, import_car
from .cas._kubo import KuboCAS
from .cas._local import LocalCAS, default_store_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .cas._base import ContentAddressedStore

__all__ = ["main"]

# A CID whose bytes are inlined in it (identity hash of b""): any gateway can answer it
# without a block store, so asking for it shows only whether one is listening.
_EMPTY_IDENTITY_CID: Final = "bafkqaaa"
# The probe only has to tell "nothing answers" from "something does"; a slow answer, once
# connected, is left to the store's own retries and timeouts.
_PROBE_TIMEOUT: Final = 10.0


# -- stores -------------------------------------------------------------------------------


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store) if args.store else default_store_path()


async def _open_store(
    args: argparse.Namespace, *, reads: bool, writes: bool, create: bool = True
) -> ContentAddressedStore:
    """The store the command names. ``reads``/``writes``: what the command will do with it;
    ``create``: whether a writing command may create a local store that is not there."""
    if args.kubo:
        cas = KuboCAS(rpc_base_url=args.kubo, gateway_base_url=args.gateway or None)
        # KuboCAS retries refused connections for several seconds, which is right for a
        # flaky server and wrong for a mistyped URL: ask each endpoint once first.
        await _probe_rpc(cas.rpc_base_url)
        if reads:
            await _probe_gateway(cas.gateway_base_url)
        return cas
    path = _store_path(args)
    if writes and create:
        return LocalCAS(path)
    # A mistyped --store must not leave an empty database (and its directories) behind.
    if not await anyio.Path(path).is_file():
        where = "ANYHAMT_HOME or --store" if args.store is None else "--store"
        raise StoreError(
            f"no store at {path}; check {where}, or create one with `anyhamt put KEY VALUE`"
        )
    return LocalCAS(path, read_only=not writes)


def _refused(exc: BaseException) -> bool:
    """Whether a connection failure was a refusal (nothing listening), not DNS or routing."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return True
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return "refused" in str(exc).lower()


async def _ask_once(method: str, url: str) -> httpx.ConnectError | httpx.ConnectTimeout | None:
    """Send one request, no retries; the error if no connection could be made."""
    try:
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT) as client:
            await client.request(method, url)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        return exc
    except httpx.HTTPError:
        pass  # something is there; the command's own requests report what is wrong
    return None


def _reason(exc: httpx.ConnectError | httpx.ConnectTimeout) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {_PROBE_TIMEOUT:g} s"
    return "connection refused" if _refused(exc) else (str(exc) or type(exc).__name__)


async def _probe_rpc(rpc_base_url: str) -> None:
    exc = await _ask_once("POST", f"{rpc_base_url}/api/v0/version")
    if exc is not None:
        raise KuboError(
            f"no Kubo RPC answering at {rpc_base_url} ({_reason(exc)}); start one with "
            "`ipfs daemon` (see the README), or pass the right --kubo URL",
            url=rpc_base_url,
        ) from exc


async def _probe_gateway(gateway_url: str) -> None:
    exc = await _ask_once("GET", f"{gateway_url}{_EMPTY_IDENTITY_CID}?format=raw")
    if exc is not None:
        base = gateway_url.removesuffix("/ipfs/")
        raise KuboError(
            f"no IPFS gateway answering at {base} ({_reason(exc)}); start Kubo with its "
            "gateway (`ipfs daemon`), or pass the right --gateway URL",
            url=base,
        ) from exc


# -- DAG-JSON -----------------------------------------------------------------------------


def _to_dag_json(value: Any) -> Any:
    """A decoded dag-cbor value as JSON data, in DAG-JSON's form for links and bytes."""
    if isinstance(value, CID):
        # DAG-JSON writes CIDv1 in base32 (CIDv0 has only its base58 form).
        return {"/": value.encode("base32") if value.version == 1 else str(value)}
    if isinstance(value, bytes):
        return {"/": {"bytes": base64.b64encode(value).decode("ascii").rstrip("=")}}
    if isinstance(value, dict):
        return {key: _to_dag_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_dag_json(item) for item in value]
    return value


def _from_dag_json(value: Any) -> Any:
    """JSON data back into the IPLD value DAG-JSON describes (links and bytes restored)."""
    if isinstance(value, dict):
        if len(value) == 1 and "/" in value:
            inner = value["/"]
            if isinstance(inner, str):
                try:
                    return CID.decode(inner)
                except (ValueError, KeyError) as exc:
                    raise InvalidValueError(f'{{"/": {inner!r}}} is not a CID: {exc}') from exc
            if isinstance(inner, dict) and list(inner) == ["bytes"]:
                text = inner["bytes"]
                try:
                    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
                except (TypeError, binascii.Error) as exc:
                    raise InvalidValueError(f"{text!r} is not base64 bytes: {exc}") from exc
        return {key: _from_dag_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_dag_json(item) for item in value]
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidValueError(f"{name} is not a number dag-cbor can hold")


def _encode_json_value(text: bytes) -> bytes:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidValueError(f"the value is not JSON: {exc}") from exc
    try:
        return bytes(dag_cbor.encode(_from_dag_json(data)))
    except AnyHamtError:
        raise
    except Exception as exc:
        raise InvalidValueError(f"cannot encode the value as dag-cbor: {exc}") from exc


def _decode_json_value(key: str, data: bytes) -> str:
    try:
        value = dag_cbor.decode(data)
    except Exception as exc:
        raise CorruptBlockError(
            f"the value of {key!r} is not dag-cbor, so it has no JSON form (it is probably raw "
            "bytes, as `anyhamt put` stores without --json); drop --json to get the bytes"
        ) from exc
    return json.dumps(_to_dag_json(value), ensure_ascii=False)


# -- commands -----------------------------------------------------------------------------


def _terminal_newline(value: bytes, stream: IO[Any]) -> bytes:
    """What to write after ``value`` on ``stream``: a newline if it is a terminal (so the
    prompt starts on its own line) and the value does not end in one; nothing for pipes
    and files, which get the value's bytes exactly."""
    return b"\n" if stream.isatty() and not value.endswith(b"\n") else b""


async def _put(args: argparse.Namespace) -> None:
    if args.value is not None:
        # argv bytes that are not UTF-8 arrive as surrogate escapes: store the bytes given.
        value = os.fsencode(args.value)
    else:
        value = await anyio.Path(args.file).read_bytes()
    if args.json:
        value = _encode_json_value(value)
    async with await _open_store(args, reads=args.root is not None, writes=True) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=args.root, values_are_bytes=True)
        await hamt.set(args.key, value)
        await hamt.make_read_only()
        print(hamt.root_node_id)


async def _get(args: argparse.Namespace) -> None:
    async with await _open_store(args, reads=True, writes=False) as cas:
        hamt = await HAMT.build(
            cas=cas, root_node_id=args.root, values_are_bytes=True, read_only=True
        )
        try:
            value: bytes = await hamt.get(args.key)
        except KeyNotFoundError as exc:
            raise KeyNotFoundError(f"no key {args.key!r} in {args.root}") from exc
    if args.json:
        value = (_decode_json_value(args.key, value) + "\n").encode()
    if args.output:
        await anyio.Path(args.output).write_bytes(value)
    else:
        sys.stdout.buffer.write(value + _terminal_newline(value, sys.stdout))
        sys.stdout.buffer.flush()


async def _ls(args: argparse.Namespace) -> None:
    async with await _open_store(args, reads=True, writes=False) as cas:
        hamt = await HAMT.build(
            cas=cas, root_node_id=args.root, values_are_bytes=True, read_only=True
        )
        async for key in hamt.keys():
            print(key)


async def _car_export(args: argparse.Namespace) -> None:
    target = anyio.Path(args.output)
    # A failed export (a wrong ROOT, a missing block) must not leave a truncated CAR that
    # looks like a good one: write beside the target and rename once complete. Devices and
    # pipes (-o /dev/stdout) cannot be renamed over, so they are written directly.
    atomic = not await target.exists() or await target.is_file()
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}") if atomic else target
    async with await _open_store(args, reads=True, writes=False) as cas:
        try:
            with open(partial, "wb") as out:  # noqa: ASYNC230 - buffered local writes
                count = await export_car(cas, args.root, out)
            if atomic:
                await partial.replace(target)
        except BaseException:
            if atomic:
                with anyio.CancelScope(shield=True):
                    await partial.unlink(missing_ok=True)
            raise
    print(f"{count} blocks written to {args.output}", file=sys.stderr)


async def _car_import(args: argparse.Namespace) -> None:
    async with await _open_store(args, reads=False, writes=True) as cas:
        with open(args.file, "rb") as source:  # noqa: ASYNC230 - buffered local reads
            roots = await import_car(cas, source)
    for root in roots:
        print(root)


# -- info and zarr -------------------------------------------------------------------------


class _ProgressBars:
    """One tqdm bar per stage of long work, on stderr, only when stderr is a terminal (a
    bar in a log file or a pipe is noise) and not ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        self._enabled = not quiet and sys.stderr.isatty()
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self._enabled:
            return
        if stage != self._stage:
            self.close()
            from tqdm import tqdm  # type: ignore[import-untyped]  # no type information

            self._stage = stage
            # A terminal that reports no size (some pseudo-terminals) would get an empty bar.
            sized = min(_stderr_size()) > 0
            # leave=False: the bars go when the work is done; the result is on stdout.
            self._bar = tqdm(
                desc=stage,
                total=total,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
            )
        bar = self._bar
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None


def _stderr_size() -> tuple[int, int]:
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 0, 0
    return columns, lines


def _hamt_info_json(info: HamtInfo) -> dict[str, Any]:
    return {
        "root": _to_dag_json(info.root),
        "keys": info.keys,
        "depth": info.depth,
        "nodes": info.nodes,
        "node_bytes": info.node_bytes,
        "values": info.values,
        "value_bytes": info.value_bytes,
        "stored_bytes": info.stored_bytes,
    }


def _zarr_info_json(info: ZarrInfo) -> dict[str, Any]:
    layout: dict[str, Any]
    if info.layout == "hamt":
        layout = {"keys": info.keys, "depth": info.depth, "nodes": info.nodes}
    else:
        layout = {
            "chunks_per_shard": info.chunks_per_shard,
            "shards": info.shards,
            "shards_present": info.shards_present,
        }
    return {
        "root": _to_dag_json(info.root),
        "layout": info.layout,
        **layout,
        "groups": info.groups,
        "arrays": [
            {
                "path": array.path,
                "zarr_format": array.zarr_format,
                "shape": array.shape,
                "chunks": array.chunks,
                "dtype": array.dtype,
                "codecs": array.codecs,
                "sharded": array.sharded,
                "chunks_total": array.chunks_total,
                "chunks_present": array.chunks_present,
                "chunks_missing": array.chunks_missing,
                "chunk_bytes": array.chunk_bytes,
            }
            for array in info.arrays
        ],
        "other_keys": info.other_keys,
        "other_bytes": info.other_bytes,
        "metadata_bytes": info.metadata_bytes,
        "chunk_bytes": info.chunk_bytes,
        "index_bytes": info.index_bytes,
        "stored_bytes": info.stored_bytes,
    }


def _dims(values: list[int] | None) -> str:
    if values is None:
        return "?"
    return "x".join(map(str, values)) if values else "()"


def _print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}".rstrip())


async def _info(args: argparse.Namespace) -> None:
    bars = _ProgressBars(args.quiet)
    async with await _open_store(args, reads=True, writes=False) as cas:
        try:
            info = await hamt_info(cas, _root_id(args.root), progress=bars)
        finally:
            bars.close()
    if args.json:
        print(json.dumps(_hamt_info_json(info)))
        return
    _print_table(
        [
            ("root", str(info.root)),
            ("keys", f"{info.keys:,}"),
            ("depth", f"{info.depth} (levels of nodes)"),
            ("nodes", f"{info.nodes:,} ({info.node_bytes:,} bytes)"),
            ("values", f"{info.values:,} distinct blocks ({info.value_bytes:,} bytes)"),
            ("stored", f"{info.stored_bytes:,} bytes"),
        ]
    )


async def _zarr_info(args: argparse.Namespace) -> None:
    bars = _ProgressBars(args.quiet)
    async with await _open_store(args, reads=True, writes=False) as cas:
        try:
            info = await zarr_info(cas, _root_id(args.root), progress=bars)
        finally:
            bars.close()
    if args.json:
        print(json.dumps(_zarr_info_json(info)))
        return
    if info.layout == "hamt":
        layout = f"HAMT ({info.keys:,} keys, depth {info.depth}, {info.nodes:,} nodes)"
        index = "HAMT nodes"
    else:
        layout = (
            f"{info.layout} ({info.chunks_per_shard} chunks per shard, "
            f"{info.shards_present:,} of {info.shards:,} shards stored)"
        )
        index = "root and shards"
    rows = [
        ("root", str(info.root)),
        ("layout", layout),
        (
            "stored",
            f"{info.stored_bytes:,} bytes (metadata {info.metadata_bytes:,}, chunks "
            f"{info.chunk_bytes:,}, {index} {info.index_bytes:,}"
            + (f", other keys {info.other_bytes:,})" if info.other_keys else ")"),
        ),
        ("groups", ", ".join(path or "/" for path in info.groups) or "none"),
        ("arrays", str(len(info.arrays))),
    ]
    for array in info.arrays:
        missing = "?" if array.chunks_missing is None else f"{array.chunks_missing:,}"
        total = "?" if array.chunks_total is None else f"{array.chunks_total:,}"
        rows.append(
            (
                f"  {array.path or '/'}",
                f"{array.dtype or '?'}, shape {_dims(array.shape)}, chunks "
                f"{_dims(array.chunks)}, codecs {', '.join(array.codecs) or 'none'}",
            )
        )
        rows.append(
            (
                "",
                f"chunks {array.chunks_present:,} of {total} stored, {missing} missing, "
                f"{array.chunk_bytes:,} bytes" + (" (sharded)" if array.sharded else ""),
            )
        )
    if info.other_keys:
        rows.append(("other keys", f"{', '.join(info.other_keys)} ({info.other_bytes:,} bytes)"))
    _print_table(rows)


async def _zarr_convert(args: argparse.Namespace) -> None:
    from .zarr._convert import convert_hamt_to_sharded

    chunks_per_shard = _chunks_per_shard(args.chunks_per_shard)
    bars = _ProgressBars(args.quiet)
    # The source must be in the store: a missing local store is an error, not a new one.
    async with await _open_store(args, reads=True, writes=True, create=False) as cas:
        try:
            root = await convert_hamt_to_sharded(
                cas,
                _root_id(args.root),
                chunks_per_shard,
                manifest_version=args.manifest_version,
                progress=bars,
            )
        finally:
            bars.close()
    print(root)


def _root_id(text: str) -> Any:
    """ROOT as typed: CID text, parsed here so a typo is an error naming ROOT."""
    from ._codec import as_link

    try:
        return as_link(text)
    except InvalidIdError as exc:
        raise InvalidIdError(f"ROOT {text!r} is not a CID ({exc})") from None


def _chunks_per_shard(text: str) -> int:
    """--chunks-per-shard as given: checked here, so a bad N is a one-line error like every
    other failure of the command."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidConfigError(
            f"--chunks-per-shard must be a positive integer, got {text!r} (py-hamt's "
            "default is 6250; a shard holds N chunk ids)"
        )
    return value


# -- command line -------------------------------------------------------------------------

_EXAMPLES: Final = """\
examples:
  ROOT=$(anyhamt put greeting hello)        a new map on the local store
  ROOT=$(anyhamt put other world --root "$ROOT")
  anyhamt get "$ROOT" greeting              hello
  anyhamt put greeting hello --kubo http://127.0.0.1:5001   the same map on IPFS
  anyhamt info "$ROOT"                      keys, depth, nodes, bytes
  anyhamt zarr convert "$DATASET" --chunks-per-shard 1024   prints the sharded root
"""


def _parser() -> argparse.ArgumentParser:
    stores = argparse.ArgumentParser(add_help=False)
    where = stores.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        metavar="PATH",
        help=f"the local block store file (default: {default_store_path()}; with "
        "ANYHAMT_HOME=DIR set, DIR/blocks.sqlite3)",
    )
    where.add_argument(
        "--kubo",
        metavar="RPC_URL",
        help="use IPFS through the Kubo daemon whose RPC API is at RPC_URL "
        f"(Kubo's default: {KuboCAS.KUBO_DEFAULT_LOCAL_RPC_BASE_URL})",
    )
    stores.add_argument(
        "--gateway",
        metavar="URL",
        help="with --kubo: the IPFS gateway blocks are read from "
        f"(default: {KuboCAS.KUBO_DEFAULT_LOCAL_GATEWAY_BASE_URL})",
    )
    stores.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )

    parser = argparse.ArgumentParser(
        prog="anyhamt",
        description="HAMTs on content-addressed storage. Store options go after the command.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these; `anyhamt COMMAND --help` shows its arguments and store options",
    )

    put = commands.add_parser(
        "put",
        parents=[stores],
        help="set KEY; prints the new root",
        description="Set KEY in the map ROOT (or a new map) and print the new map's root CID.",
    )
    put.add_argument("key", metavar="KEY", help="the key (UTF-8 text)")
    put.add_argument(
        "value",
        metavar="VALUE",
        nargs="?",
        help="the value, stored as these bytes (or give --file)",
    )
    put.add_argument("--file", metavar="PATH", help="read the value from this file instead")
    put.add_argument(
        "--json",
        action="store_true",
        help="the value is DAG-JSON: store it as dag-cbor, as HAMT.set does for Python values",
    )
    put.add_argument("--root", metavar="ROOT", help="the map to add to (default: a new map)")
    put.set_defaults(run=_put)

    get = commands.add_parser(
        "get",
        parents=[stores],
        help="print the value of KEY",
        description="Print the value "
        "of KEY in the map ROOT: its bytes as stored (a newline is added on a terminal).",
    )
    get.add_argument("root", metavar="ROOT", help="the map's root CID")
    get.add_argument("key", metavar="KEY", help="the key to look up")
    get.add_argument("-o", "--output", metavar="FILE", help="write the value to FILE")
    get.add_argument(
        "--json",
        action="store_true",
        help="decode a dag-cbor value (written by HAMT.set or `put --json`) and print it "
        'as DAG-JSON: links as {"/": CID}, bytes as {"/": {"bytes": BASE64}}',
    )
    get.set_defaults(run=_get)

    ls = commands.add_parser("ls", parents=[stores], help="list the keys under ROOT")
    ls.add_argument("root", metavar="ROOT", help="the map's root CID")
    ls.set_defaults(run=_ls)

    car = commands.add_parser("car", help="CAR files (ipfs dag export/import format)")
    car_commands = car.add_subparsers(
        dest="car_command", required=True, metavar="COMMAND", help="export or import"
    )
    export = car_commands.add_parser("export", parents=[stores], help="write ROOT's DAG")
    export.add_argument("root", metavar="ROOT", help="the root CID of the DAG to export")
    export.add_argument(
        "-o", "--output", metavar="FILE", required=True, help="the CAR file to write"
    )
    export.set_defaults(run=_car_export)
    imp = car_commands.add_parser("import", parents=[stores], help="store a CAR's blocks")
    imp.add_argument("file", metavar="FILE", help="the CAR file (v1 or v2) to read")
    imp.set_defaults(run=_car_import)

    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar (default: a bar on stderr while it is a terminal)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object instead of a table (CIDs as DAG-JSON links {"/": CID})',
    )

    info = commands.add_parser(
        "info",
        parents=[stores, quiet, as_json],
        help="keys, depth, nodes and stored bytes of the map ROOT",
        description="Describe the HAMT map ROOT: its keys, depth (levels of nodes), nodes, "
        "and stored bytes (nodes plus each distinct value block once). Reads every node "
        "and asks the store for the size of every value.",
    )
    info.add_argument("root", metavar="ROOT", help="the map's root CID")
    info.set_defaults(run=_info)

    zarr = commands.add_parser(
        "zarr", help="Zarr datasets: describe one, or convert a HAMT one to the sharded layout"
    )
    zarr_commands = zarr.add_subparsers(
        dest="zarr_command", required=True, metavar="COMMAND", help="info or convert"
    )
    zinfo = zarr_commands.add_parser(
        "info",
        parents=[stores, quiet, as_json],
        help="layout, arrays, chunks and stored bytes of a Zarr dataset",
        description="Describe the Zarr dataset ROOT (written through ZarrHAMTStore or "
        "ShardedZarrStore, by anyhamt or py-hamt): its layout (HAMT, sharded_zarr_v1 or "
        "sharded_zarr_v2), each array's shape, chunk shape, data type and codecs, its chunks "
        "stored and missing (zarr does not store chunks that hold only the fill value), and "
        "stored bytes (metadata, chunks, and the HAMT nodes or shard index).",
    )
    zinfo.add_argument("root", metavar="ROOT", help="the dataset's root CID")
    zinfo.set_defaults(run=_zarr_info)
    convert = zarr_commands.add_parser(
        "convert",
        parents=[stores, quiet],
        help="copy a HAMT dataset into the sharded layout; prints the new root",
        description="Copy the Zarr dataset ROOT, stored through ZarrHAMTStore, into a "
        "ShardedZarrStore in the same store and print the new root CID. Only the index is "
        "written: chunks are referenced by the CIDs they already have, not read or "
        "uploaded again. The source is left as it was.",
    )
    convert.add_argument("root", metavar="ROOT", help="the HAMT dataset's root CID")
    convert.add_argument(
        "--chunks-per-shard",
        metavar="N",
        default="6250",
        help="chunk CIDs per shard block (default: 6250, as py-hamt's converter)",
    )
    convert.add_argument(
        "--manifest-version",
        choices=("sharded_zarr_v2", "sharded_zarr_v1"),
        default="sharded_zarr_v2",
        help="the root layout to write (default: sharded_zarr_v2, one shard index per "
        "array; sharded_zarr_v1 indexes only the array with the most chunks)",
    )
    convert.set_defaults(run=_zarr_convert)
    return parser


def _check_text(args: argparse.Namespace) -> None:
    """Arguments that are text must be UTF-8; argv bytes that are not arrive as surrogate
    escapes, which would fail deep inside with an unhelpful message."""
    checks = (
        ("key", InvalidKeyError, "keys are UTF-8 text"),
        ("root", InvalidIdError, "a root is a CID"),
        ("kubo", InvalidConfigError, "a URL is text"),
        ("gateway", InvalidConfigError, "a URL is text"),
    )
    for name, error, why in checks:
        text = getattr(args, name, None)
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(text)
            raise error(f"the {name.upper()} {raw!r} is not UTF-8 ({why})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0 ok, 1 an anyhamt error, 2 bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "put" and (args.value is None) == (args.file is None):
        parser.error("put: give VALUE or --file, not both and not neither")
    if args.gateway is not None and args.kubo is None:
        parser.error("--gateway is for reading through Kubo: give --kubo RPC_URL as well")
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        parser.error("--backend trio needs trio: pip install 'anyhamt[trio]'")
    if args.run is _zarr_convert and importlib.util.find_spec("zarr") is None:
        parser.error("zarr convert needs zarr: pip install 'anyhamt[zarr]'")
    try:
        _check_text(args)
        anyio.run(args.run, args, backend=args.backend)
    except (AnyHamtError, OSError) as exc:
        print(f"anyhamt: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
