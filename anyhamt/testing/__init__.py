"""Tools for testing code built on anyhamt: a store conformance suite (needs pytest and
anyio's plugin) and a store wrapper for watching or perturbing I/O."""

from ._cas import ContentAddressedStoreTests as ContentAddressedStoreTests
from ._wrapper import WrapperCAS as WrapperCAS

__all__ = ["ContentAddressedStoreTests", "WrapperCAS"]
