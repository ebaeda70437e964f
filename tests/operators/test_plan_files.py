"""The plans whole in a plan file beside the task's logs, and drawn there when asked (a warning
naming the extra without it, and the transfer goes on)."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_skyplane.hooks.storage import open_store
from airflow_skyplane.operators.plan_files import read_plans
from airflow_skyplane.operators.transfer import SkyplaneTransferOperator


def test_plan_pictures_are_drawn_beside_the_plan_file(
    sky_bucket: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("cartopy", reason="the plot extra draws the pictures")
    src, dst = sky_bucket("file"), sky_bucket("file")
    open_store(src).store.put("d/x.bin", random.Random(0).randbytes(1024))
    summary = SkyplaneTransferOperator(
        task_id="drawn", source=f"{src}/d/", destination=dst, source_region="aws:us-east-1",
        destination_region="azure:westeurope", plan_picture=True, dry_run=True,
    ).execute(context={})  # fmt: skip
    plan_file = Path(summary["plan_file"])
    png = plan_file.parent / f"{plan_file.stem}-0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Plan pictures: {png}" in "".join(capfd.readouterr())
    assert read_plans(summary)["destinations"][dst]["plan"]["destinations"] == ["azure:westeurope"]


def test_without_the_plot_extra_a_plan_picture_is_a_warning_and_the_transfer_goes_on(
    sky_bucket: Callable[..., str], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cartopy", None)  # as if the plot extra were not installed
    monkeypatch.setitem(sys.modules, "cartopy.crs", None)
    src, dst = sky_bucket("file"), sky_bucket("file")
    body = random.Random(1).randbytes(2048)
    open_store(src).store.put("d/x.bin", body)
    summary = SkyplaneTransferOperator(
        task_id="undrawn", source=f"{src}/d/", destination=dst, source_region="aws:us-east-1",
        destination_region="azure:westeurope", plan_picture=True,
    ).execute(context={})  # fmt: skip
    logged = "".join(capfd.readouterr())
    assert "plan_picture=True, but no picture was drawn: drawing a plan needs matplotlib" in logged
    assert "pip install 'airflow-skyplane[plot]'" in logged and "the transfer goes on" in logged
    assert summary["objects"] == 1 and open_store(dst).store.read("x.bin") == body
