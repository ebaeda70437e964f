"""Shared test set-up.

Airflow reads ``AIRFLOW_HOME`` when it is first imported; every test run gets its own empty one here,
before any test module imports Airflow, so no test touches ``~/airflow``. The emulated-sky fixtures
(``emulated_sky``, ``sky_bucket``) come from the package's pytest plugin,
``airflow_skyplane.testing.plugin``.

Under ``CI=true`` a test skipped for a missing tool or data (the plugin's ``requires`` marker,
``require`` and ``skip_missing``) fails instead; the end of the run counts those skips and the ones
made on purpose for time (the ``full_tier`` marker: long cases that ``make test-full`` and, for the
chaos suites, ``make chaos`` run, each with a shorter case of the same behaviour left in ``make test``).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Generator

import pytest

from airflow_skyplane.testing import requirements
from airflow_skyplane.testing.plugin import MissingRequirement

_home = tempfile.mkdtemp(prefix="skyplane-test-airflow-home-")
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
atexit.register(shutil.rmtree, _home, ignore_errors=True)

# the Azure SDK logs every request and response at INFO; failures show without them
logging.getLogger("azure").setLevel(logging.WARNING)


# -- skips: for a missing tool (failures under CI=true), and on purpose for time -----------------------
CI = requirements.under_ci()
#: the full tier runs (``make test-full``, ``make chaos``): SKYPLANE_FULL_TIER=1 (or the chaos suites'
#: older SKYPLANE_CHAOS_FULL=1)
FULL_TIER = "1" in (os.environ.get("SKYPLANE_FULL_TIER"), os.environ.get("SKYPLANE_CHAOS_FULL"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("full_tier")
    if mark is not None and not FULL_TIER:
        reason = f"full tier only, skipped for time (make test-full runs it): {mark.kwargs['reason']}"
        raise pytest.skip.Exception(reason, _use_item_location=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``CI=true`` a test skipped because the machine lacks something it needs fails: CI runs the
    whole suite or says what is missing. Skips on purpose (the full tier) stay skips."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingRequirement):
        report.user_properties.append(("skip", "missing"))
        if CI:
            report.outcome = "failed"
            report.longrepr = f"CI=true: this test may not skip: {call.excinfo.value}"
    elif report.skipped and item.get_closest_marker("full_tier"):
        report.user_properties.append(("skip", "full tier"))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = [
        r
        for key in ("passed", "skipped", "failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if isinstance(r, pytest.TestReport)
    ]
    if not reports:
        return
    kinds = Counter(dict(r.user_properties).get("skip") for r in reports)
    missing = kinds["missing"]
    line = f"{kinds['full tier']} skipped on purpose for time (the full tier: make test-full); "
    if CI:
        line += f"{missing} failed for a missing tool or data (CI=true)"
    else:
        line += f"{missing} skipped for a missing tool or data (under CI=true they fail)"
    terminalreporter.write_line(line)
