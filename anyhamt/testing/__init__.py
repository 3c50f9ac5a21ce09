"""Reusable test suites for code built on anyhamt (they need pytest and anyio's plugin)."""

from ._cas import ContentAddressedStoreTests as ContentAddressedStoreTests

__all__ = ["ContentAddressedStoreTests"]
