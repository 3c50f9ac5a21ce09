"""anyhamt: HAMTs and Zarr v3 stores on content-addressed storage, for asyncio and trio.

A re-design of dClimate's py-hamt with the same public names and wire formats.

The Zarr stores (``ZarrHAMTStore``, ``SimpleEncryptedZarrHAMTStore``) are importable from
here as in py-hamt, but load zarr only when first used: ``import anyhamt`` stays free of
zarr, xarray and pycryptodome (the ``zarr`` extra).
"""

import typing

from ._codec import Link as Link
from ._errors import AnyHamtError as AnyHamtError
from ._errors import BlockNotFoundError as BlockNotFoundError
from ._errors import BlockVerificationError as BlockVerificationError
from ._errors import CarFormatError as CarFormatError
from ._errors import CorruptBlockError as CorruptBlockError
from ._errors import CorruptNodeError as CorruptNodeError
from ._errors import DecryptionError as DecryptionError
from ._errors import DetachedStoreError as DetachedStoreError
from ._errors import HashError as HashError
from ._errors import HashExhaustedError as HashExhaustedError
from ._errors import HashTooShortError as HashTooShortError
from ._errors import InvalidConfigError as InvalidConfigError
from ._errors import InvalidIdError as InvalidIdError
from ._errors import InvalidKeyError as InvalidKeyError
from ._errors import InvalidRangeError as InvalidRangeError
from ._errors import InvalidValueError as InvalidValueError
from ._errors import KeyNotFoundError as KeyNotFoundError
from ._errors import KuboError as KuboError
from ._errors import LoopBlockedError as LoopBlockedError
from ._errors import ReadOnlyError as ReadOnlyError
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreError as StoreError
from ._errors import StoreKeyNotFoundError as StoreKeyNotFoundError
from ._errors import StoreReadOnlyError as StoreReadOnlyError
from ._hamt import HAMT as HAMT
from ._hamt import blake3_hashfn as blake3_hashfn
from .cas import ContentAddressedStore as ContentAddressedStore
from .cas import InMemoryCAS as InMemoryCAS
from .cas import KuboCAS as KuboCAS
from .cas import LocalCAS as LocalCAS
from .cas import export_car as export_car
from .cas import import_car as import_car

if typing.TYPE_CHECKING:
    from .zarr import ShardedZarrStore as ShardedZarrStore
    from .zarr import SimpleEncryptedZarrHAMTStore as SimpleEncryptedZarrHAMTStore
    from .zarr import ZarrHAMTStore as ZarrHAMTStore
    from .zarr import convert_hamt_to_sharded as convert_hamt_to_sharded
    from .zarr import sharded_converter_cli as sharded_converter_cli

__version__ = "0.1.0"

_ZARR_NAMES = frozenset(
    {
        "ShardedZarrStore",
        "SimpleEncryptedZarrHAMTStore",
        "ZarrHAMTStore",
        "convert_hamt_to_sharded",
        "sharded_converter_cli",
    }
)


def __getattr__(name: str) -> object:
    # The Zarr stores import zarr; load them on first use, not with the package.
    if name in _ZARR_NAMES:
        try:
            from . import zarr as zarr_stores
        except ImportError as exc:
            raise ImportError(
                f"anyhamt.{name} needs zarr, xarray and pycryptodome, which are not installed "
                f"({exc}); install the extra: pip install 'anyhamt[zarr]'"
            ) from exc
        value = getattr(zarr_stores, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'anyhamt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ZARR_NAMES)


__all__ = [
    "AnyHamtError",
    "BlockNotFoundError",
    "BlockVerificationError",
    "CarFormatError",
    "ContentAddressedStore",
    "CorruptBlockError",
    "CorruptNodeError",
    "DecryptionError",
    "DetachedStoreError",
    "HAMT",
    "HashError",
    "HashExhaustedError",
    "HashTooShortError",
    "InMemoryCAS",
    "InvalidConfigError",
    "InvalidIdError",
    "InvalidKeyError",
    "InvalidRangeError",
    "InvalidValueError",
    "KeyNotFoundError",
    "KuboCAS",
    "KuboError",
    "Link",
    "LocalCAS",
    "LoopBlockedError",
    "ReadOnlyError",
    "ShardedZarrStore",
    "SimpleEncryptedZarrHAMTStore",
    "StoreClosedError",
    "StoreError",
    "StoreKeyNotFoundError",
    "StoreReadOnlyError",
    "ZarrHAMTStore",
    "blake3_hashfn",
    "convert_hamt_to_sharded",
    "export_car",
    "import_car",
    "sharded_converter_cli",
]
