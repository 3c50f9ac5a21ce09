"""anyhamt: HAMTs and Zarr v3 stores on content-addressed storage, for asyncio and trio.

A re-design of dClimate's py-hamt with the same public names and wire formats.
"""

from ._codec import Link as Link
from ._errors import AnyHamtError as AnyHamtError
from ._errors import BlockNotFoundError as BlockNotFoundError
from ._errors import BlockVerificationError as BlockVerificationError
from ._errors import CarFormatError as CarFormatError
from ._errors import CorruptBlockError as CorruptBlockError
from ._errors import CorruptNodeError as CorruptNodeError
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
from ._hamt import HAMT as HAMT
from ._hamt import blake3_hashfn as blake3_hashfn
from .cas import ContentAddressedStore as ContentAddressedStore
from .cas import InMemoryCAS as InMemoryCAS
from .cas import KuboCAS as KuboCAS
from .cas import LocalCAS as LocalCAS
from .cas import export_car as export_car
from .cas import import_car as import_car

__version__ = "0.1.0"

__all__ = [
    "AnyHamtError",
    "BlockNotFoundError",
    "BlockVerificationError",
    "CarFormatError",
    "ContentAddressedStore",
    "CorruptBlockError",
    "CorruptNodeError",
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
    "StoreClosedError",
    "StoreError",
    "blake3_hashfn",
    "export_car",
    "import_car",
]
