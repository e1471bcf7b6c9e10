"""The Django tests need Redis (and PostgreSQL when they run on it): checked once, up front.

The worker and the helpers are tests/live_worker.py's, loaded for the whole run.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _services(services: None) -> None:
    """Skip (or, services required, fail) every test here when a service is down."""
