"""Content-addressed stores: the interface and anyhamt's implementations."""

from ._base import ContentAddressedStore as ContentAddressedStore
from ._car import export_car as export_car
from ._car import import_car as import_car
from ._car import read_car as read_car
from ._kubo import KuboCAS as KuboCAS
from ._local import LocalCAS as LocalCAS
from ._memory import InMemoryCAS as InMemoryCAS

__all__ = [
    "ContentAddressedStore",
    "InMemoryCAS",
    "KuboCAS",
    "LocalCAS",
    "export_car",
    "import_car",
    "read_car",
]
