"""Each operator test keeps its fleet records in its own folder, and checks nothing is left running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_skyplane.compute.fleets import gateways_under, stop_process_group


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "fleets"
    monkeypatch.setenv("AIRFLOW__SKYPLANE__STATE_DIR", str(folder))
    yield folder
    left = gateways_under(folder)
    for pid in left:  # stop them before failing: a failed test must not leak processes either
        stop_process_group(pid, grace_s=5)
    assert left == [], "a test left gateways running"
