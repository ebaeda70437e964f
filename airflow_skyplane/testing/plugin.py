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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_skyplane.testing.sky import EmulatedSky, patched_environ


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
            pytest.skip(emulated_sky.missing[service])
        return emulated_sky.make_bucket(service)

    yield make
    if "gs" in used:
        emulated_sky.wipe_gcs()
