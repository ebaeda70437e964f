"""pytest plugin (entry point ``pytest11``): the emulated sky as fixtures, for this project and for
users testing their own DAGs.

Fixtures:

``emulated_sky`` (session)
    An :class:`~airflow_skyplane.testing.sky.EmulatedSky` with S3/EC2 (moto), GCS and Azure Blob
    running on loopback, and ``AIRFLOW_CONN_AWS_DEFAULT``, ``AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT``,
    ``AIRFLOW_CONN_WASB_DEFAULT`` and ``STORAGE_EMULATOR_HOST`` set for the whole session.
``sky_bucket`` (function)
    A factory: ``sky_bucket("s3" | "gs" | "az" | "file")`` makes a fresh, empty bucket (container,
    directory) and returns its URI; a test asking for Azure Blob is skipped with the reason when
    Azurite is not installed.

The servers start only when a test asks for a fixture, and stop at the end of the session. Importing
this plugin imports neither Airflow nor the cloud SDKs.

Tests that need something of the machine (root, a Debian package, Azurite; see
:mod:`airflow_skyplane.testing.requirements`) say so with the ``requires`` marker,
``@pytest.mark.requires("netns", "sshd")``, or call :func:`require` (or :func:`skip_missing` with
their own reason, for data of their own). Without it they are skipped with the reason, always through
:class:`MissingRequirement`, so that a ``conftest.py`` can tell these skips from the others (this
project's fails them under ``CI=true``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from _pytest.outcomes import Skipped

from airflow_skyplane.testing import requirements
from airflow_skyplane.testing.sky import EmulatedSky, patched_environ


class MissingRequirement(Skipped):
    """A skip because the machine lacks a tool, a package or data the test needs."""


def skip_missing(reason: str) -> NoReturn:
    """Skip the running test because something it needs is missing here (``reason`` says what)."""
    raise MissingRequirement(reason)


def require(*names: str) -> None:
    """Skip the running test unless the machine has every requirement ``names`` names."""
    why = requirements.missing(*names)
    if why:
        skip_missing(why)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*names): skip unless the machine has these (airflow_skyplane.testing.requirements)",
    )


@pytest.hookimpl(tryfirst=True)  # before fixtures: an emulated WAN is not built for a test that skips
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        why = requirements.missing(*mark.args)
        if why:
            raise MissingRequirement(why, _use_item_location=True)


@pytest.fixture(scope="session")
def emulated_sky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedSky]:
    sky = EmulatedSky(tmp_path_factory.mktemp("emulated-sky"))
    with sky, patched_environ(sky.env()):
        yield sky


@pytest.fixture
def sky_bucket(emulated_sky: EmulatedSky, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    counter = iter(range(1_000_000))
    used: set[str] = set()

    def make(service: str) -> str:
        used.add(service)
        if service == "file":
            root = tmp_path / f"bucket-{next(counter)}"
            root.mkdir()
            return f"file://{root}"
        if service in emulated_sky.missing:
            skip_missing(emulated_sky.missing[service])
        return emulated_sky.make_bucket(service)

    yield make
    if "gs" in used:
        emulated_sky.wipe_gcs()
