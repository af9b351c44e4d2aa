"""The sandbox backend as the tests get it: the one `hal9100 sandbox setup` prepared here.

Where no safe sandbox can be made (no bubblewrap, no prepared Python), the tests that need
one skip with the reason; with HAL9100_REQUIRE_SANDBOX=1 (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from hal9100.config import Settings
from hal9100.sandbox.base import SandboxSession
from hal9100.sandbox.bwrap import BwrapBackend, make_backend


def sandbox_backend() -> BwrapBackend:
    backend = make_backend(Settings())
    problems = asyncio.run(backend.problems())
    if problems:
        reason = "no sandbox here: " + "; ".join(problems)
        if os.environ.get("HAL9100_REQUIRE_SANDBOX") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return backend


@pytest.fixture(scope="module")
def backend() -> Iterator[BwrapBackend]:
    yield sandbox_backend()


@pytest.fixture
async def session(backend: BwrapBackend) -> AsyncIterator[SandboxSession]:
    started = await backend.start()
    yield started
    await started.close()
