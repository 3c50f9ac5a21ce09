"""Zarr v3 stores on a HAMT and in py-hamt's sharded layout, and the converter between
them (needs the ``zarr`` extra: ``pip install 'anyhamt[zarr]'``)."""

from .._loops import add_blocking_hint
from ._convert import convert_hamt_to_sharded as convert_hamt_to_sharded
from ._convert import sharded_converter_cli as sharded_converter_cli
from ._encrypted import SimpleEncryptedZarrHAMTStore as SimpleEncryptedZarrHAMTStore
from ._hamt_store import ZarrHAMTStore as ZarrHAMTStore
from ._sharded import ShardedZarrStore as ShardedZarrStore

__all__ = [
    "ShardedZarrStore",
    "SimpleEncryptedZarrHAMTStore",
    "ZarrHAMTStore",
    "convert_hamt_to_sharded",
    "sharded_converter_cli",
]

# The usual way a loop thread gets stuck: zarr's sync API (xarray's to_zarr/open_zarr)
# called on the event loop thread waits for zarr's own loop, which waits for this one.
add_blocking_hint(
    "zarr/core/sync.py",
    "it is blocked inside zarr's synchronous API (xarray's to_zarr or open_zarr, or "
    "array[...], called from async code)",
)
