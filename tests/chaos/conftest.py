"""The ``full_tier`` marker: a chaos test that only ``make chaos`` runs, skipped on purpose for time in
``make test`` (the root ``conftest.py`` counts these skips apart from those for a missing tool)."""

from __future__ import annotations

import pytest
from chaoslib import FULL_TIER


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("full_tier")
    if mark is not None and not FULL_TIER:
        reason = f"full tier only, skipped for time (make chaos runs it): {mark.kwargs['reason']}"
        raise pytest.skip.Exception(reason, _use_item_location=True)
