"""KuboCAS passes the ContentAddressedStore conformance suite against a real daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from anyhamt import KuboCAS
from anyhamt.testing import ContentAddressedStoreTests

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ._daemon import KuboDaemon

pytestmark = pytest.mark.kubo


class TestKuboCAS(ContentAddressedStoreTests):
    @pytest.fixture
    async def store(self, kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
        async with KuboCAS(
            rpc_base_url=kubo_daemon.rpc_url, gateway_base_url=kubo_daemon.gateway_url
        ) as cas:
            yield cas


class TestKuboCASUnverified(ContentAddressedStoreTests):
    """The same suite with ``verify=False``: byte ranges become HTTP Range requests."""

    @pytest.fixture
    async def store(self, kubo_daemon: KuboDaemon) -> AsyncIterator[KuboCAS]:
        async with KuboCAS(
            rpc_base_url=kubo_daemon.rpc_url,
            gateway_base_url=kubo_daemon.gateway_url,
            verify=False,
        ) as cas:
            yield cas
