from __future__ import annotations

import pytest

# Every async test runs on both backends; a test narrows this only with a stated reason.
BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param
