"""The ``anyhamt`` command: a HAMT's keys and values, and CAR files, from the shell.

Every command works on the local block store (``--store PATH``, default
``$ANYHAMT_HOME/blocks.sqlite3`` or ``~/.local/share/anyhamt/blocks.sqlite3``) or on IPFS
through a Kubo daemon (``--kubo RPC_URL [--gateway URL]``). Values are bytes.

    anyhamt put KEY VALUE [--root ROOT]     prints the new root
    anyhamt put KEY --file PATH [--root ROOT]
    anyhamt get ROOT KEY [-o FILE]          the value to stdout (or FILE)
    anyhamt ls ROOT                         the keys, one per line
    anyhamt car export ROOT -o FILE         the DAG under ROOT as a CARv1
    anyhamt car import FILE                 prints the CAR's roots
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import anyio

from ._errors import AnyHamtError
from ._hamt import HAMT
from .cas._car import export_car, import_car
from .cas._kubo import KuboCAS
from .cas._local import LocalCAS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .cas._base import ContentAddressedStore

__all__ = ["main"]


def _store(args: argparse.Namespace) -> ContentAddressedStore:
    if args.kubo:
        return KuboCAS(rpc_base_url=args.kubo, gateway_base_url=args.gateway or None)
    return LocalCAS(args.store)


async def _put(args: argparse.Namespace) -> None:
    if (args.value is None) == (args.file is None):
        raise SystemExit("anyhamt put: give VALUE or --file, not both and not neither")
    if args.value is not None:
        value = args.value.encode()
    else:
        value = await anyio.Path(args.file).read_bytes()
    async with _store(args) as cas:
        hamt = await HAMT.build(cas=cas, root_node_id=args.root, values_are_bytes=True)
        await hamt.set(args.key, value)
        await hamt.make_read_only()
        print(hamt.root_node_id)


async def _get(args: argparse.Namespace) -> None:
    async with _store(args) as cas:
        hamt = await HAMT.build(
            cas=cas, root_node_id=args.root, values_are_bytes=True, read_only=True
        )
        value = await hamt.get(args.key)
    if args.output:
        await anyio.Path(args.output).write_bytes(value)
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()


async def _ls(args: argparse.Namespace) -> None:
    async with _store(args) as cas:
        hamt = await HAMT.build(
            cas=cas, root_node_id=args.root, values_are_bytes=True, read_only=True
        )
        async for key in hamt.keys():
            print(key)


async def _car_export(args: argparse.Namespace) -> None:
    async with _store(args) as cas:
        with open(args.output, "wb") as out:  # noqa: ASYNC230 - buffered local writes
            count = await export_car(cas, args.root, out)
    print(f"{count} blocks written to {args.output}", file=sys.stderr)


async def _car_import(args: argparse.Namespace) -> None:
    async with _store(args) as cas:
        with open(args.file, "rb") as source:  # noqa: ASYNC230 - buffered local reads
            roots = await import_car(cas, source)
    for root in roots:
        print(root)


def _parser() -> argparse.ArgumentParser:
    stores = argparse.ArgumentParser(add_help=False)
    where = stores.add_mutually_exclusive_group()
    where.add_argument(
        "--store", metavar="PATH", help="local block store file (default: the user's store)"
    )
    where.add_argument("--kubo", metavar="RPC_URL", help="use IPFS through this Kubo RPC URL")
    stores.add_argument("--gateway", metavar="URL", help="gateway to read from (with --kubo)")
    stores.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop to run on"
    )

    parser = argparse.ArgumentParser(
        prog="anyhamt",
        description="HAMTs on content-addressed storage. Store options go after the command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    put = commands.add_parser("put", parents=[stores], help="set KEY; prints the new root")
    put.add_argument("key")
    put.add_argument("value", nargs="?")
    put.add_argument("--file", help="read the value from this file")
    put.add_argument("--root", help="the HAMT to add to (default: a new one)")
    put.set_defaults(run=_put)

    get = commands.add_parser("get", parents=[stores], help="print the value of KEY")
    get.add_argument("root")
    get.add_argument("key")
    get.add_argument("-o", "--output", help="write the value to this file")
    get.set_defaults(run=_get)

    ls = commands.add_parser("ls", parents=[stores], help="list the keys under ROOT")
    ls.add_argument("root")
    ls.set_defaults(run=_ls)

    car = commands.add_parser("car", help="CAR files (ipfs dag export/import format)")
    car_commands = car.add_subparsers(dest="car_command", required=True)
    export = car_commands.add_parser("export", parents=[stores], help="write ROOT's DAG")
    export.add_argument("root")
    export.add_argument("-o", "--output", required=True, help="the CAR file to write")
    export.set_defaults(run=_car_export)
    imp = car_commands.add_parser("import", parents=[stores], help="store a CAR's blocks")
    imp.add_argument("file")
    imp.set_defaults(run=_car_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status (0 ok, 1 an anyhamt error, 2 bad usage)."""
    args = _parser().parse_args(argv)
    try:
        anyio.run(args.run, args, backend=args.backend)
    except KeyError as exc:
        # KeyNotFoundError is a KeyError: say which key, without a traceback.
        print(f"anyhamt: {exc}", file=sys.stderr)
        return 1
    except (AnyHamtError, OSError) as exc:
        print(f"anyhamt: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
