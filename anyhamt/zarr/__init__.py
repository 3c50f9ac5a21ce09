"""Zarr v3 stores on a HAMT (needs the ``zarr`` extra: ``pip install 'anyhamt[zarr]'``)."""

from ._encrypted import SimpleEncryptedZarrHAMTStore as SimpleEncryptedZarrHAMTStore
from ._hamt_store import ZarrHAMTStore as ZarrHAMTStore

__all__ = ["SimpleEncryptedZarrHAMTStore", "ZarrHAMTStore"]
