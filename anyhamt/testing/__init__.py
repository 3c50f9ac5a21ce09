"""Tools for testing code built on anyhamt: a store wrapper for watching or perturbing I/O,
and a store conformance suite (that one needs pytest and anyio's plugin)."""

from ._wrapper import WrapperCAS as WrapperCAS

try:
    from ._cas import ContentAddressedStoreTests as ContentAddressedStoreTests
except ModuleNotFoundError as exc:  # WrapperCAS alone works without pytest
    if exc.name != "pytest":
        raise

__all__ = ["ContentAddressedStoreTests", "WrapperCAS"]
