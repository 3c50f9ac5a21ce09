"""Content-addressed stores: the interface and anyhamt's implementations."""

from ._base import ContentAddressedStore as ContentAddressedStore
from ._local import LocalCAS as LocalCAS
from ._memory import InMemoryCAS as InMemoryCAS

__all__ = ["ContentAddressedStore", "InMemoryCAS", "LocalCAS"]
