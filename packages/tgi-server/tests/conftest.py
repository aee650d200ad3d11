"""Shared fixtures of the app tests: one ``Harness`` per module and a test client over it.

A module that needs another harness (fewer admitted requests, say) overrides ``harness``;
``client`` then runs over that one.
"""

from __future__ import annotations

from collections.abc import Iterator

import falcon.testing
import pytest

from tgi_server.testing import Harness


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.stop()


@pytest.fixture
def client(harness: Harness) -> falcon.testing.TestClient:
    """A client of a fresh app (its own engine client), the runner at full speed again."""
    harness.runner.reset()
    return falcon.testing.TestClient(harness.app())
