"""KuboCAS passes the ContentAddressedStore conformance suite against a real daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from anyhamt.testing import ContentAddressedStoreTests

from ._helpers import cas_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyhamt import KuboCAS

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


class TestKuboCAS(ContentAddressedStoreTests):
    @pytest.fixture
    async def store(self, kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
        async with cas_for(kubo_daemon) as cas:
            yield cas


class TestKuboCASUnverified(ContentAddressedStoreTests):
    """The same suite with ``verify=False``: byte ranges become HTTP Range requests."""

    @pytest.fixture
    async def store(self, kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
        async with cas_for(
            kubo_daemon,
            verify=False,
        ) as cas:
            yield cas
