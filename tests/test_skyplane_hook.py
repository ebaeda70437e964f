"""The `skyplane` connection: settings resolve from connection extra > [skyplane] config > defaults."""

from __future__ import annotations

import json

import pytest

from airflow_skyplane.exceptions import ConnectionNotFoundError, InvalidInputError
from airflow_skyplane.hooks.skyplane import SkyplaneHook, SkyplaneSettings


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, extra: object) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "skyplane", "extra": extra}),
    )


def test_defaults_without_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SKYPLANE_DEFAULT", raising=False)
    settings = SkyplaneHook().get_settings()
    assert settings.relay_backend == "local"
    assert settings.encryption is True and settings.compression is True
    assert settings.chunk_size_mb == 32


def test_connection_extra_overrides_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__SKYPLANE__CHUNK_SIZE_MB", "16")
    monkeypatch.setenv("AIRFLOW__SKYPLANE__MAX_RELAYS_PER_REGION", "3")
    _set_conn(monkeypatch, "sky_eu", {"chunk_size_mb": 64, "allowed_regions": ["aws:eu-*", "gcp:europe-*"]})
    settings = SkyplaneHook("sky_eu").get_settings()
    assert settings.chunk_size_mb == 64  # the connection wins over the config
    assert settings.max_relays_per_region == 3  # the config wins over the default
    assert settings.allowed_regions == ("aws:eu-*", "gcp:europe-*")


def test_missing_named_connection_names_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_SKY", raising=False)
    with pytest.raises(ConnectionNotFoundError) as err:
        SkyplaneHook("no_such_sky").get_settings()
    assert "'no_such_sky'" in str(err.value)
    assert "airflow connections add no_such_sky" in str(err.value)
    assert "AIRFLOW_CONN_NO_SUCH_SKY" in str(err.value)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"chunk_size": 32}, "unknown setting(s) chunk_size"),
        ({"chunk_size_mb": 0}, "chunk_size_mb=0 is out of range; give 1 to 256"),
        ({"chunk_size_mb": "big"}, "chunk_size_mb='big' is not a whole number"),
        ({"relay_backend": "ibm"}, "relay_backend='ibm' is unknown; use one of local, aws, gcp, azure, auto"),
        ({"objective": "fast"}, "objective='fast' is unknown"),
        ({"encryption": "maybe"}, "encryption='maybe' is not a boolean"),
        ({"allowed_regions": [1]}, "allowed_regions=[1] must be a list of region patterns"),
        ({"azure_management_endpoint": "management.azure.com"}, "is not an https URL"),
        ({"azure_authority_host": "http://login.example"}, "azure_authority_host='http://login.example'"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], fragment: str
) -> None:
    _set_conn(monkeypatch, "sky_bad", extra)
    with pytest.raises(InvalidInputError) as err:
        SkyplaneHook("sky_bad").get_settings()
    assert "connection 'sky_bad' extra" in str(err.value)
    assert fragment in str(err.value)


def test_settings_round_trip_as_dict() -> None:
    settings = SkyplaneSettings(allowed_regions=("aws:eu-*",), relay_image={"aws": "ami-123"})
    assert SkyplaneSettings.from_mapping(settings.as_dict(), origin="test") == settings


# -- test_connection: what Airflow's Test button and `airflow connections test` call -----------------


def test_connection_test_accepts_good_settings_and_says_where_they_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__SKYPLANE__CHUNK_SIZE_MB", "16")
    _set_conn(monkeypatch, "sky_ok", {"max_relays_per_region": 2, "allowed_regions": ["aws:eu-*"]})
    ok, message = SkyplaneHook("sky_ok").test_connection()
    assert ok is True
    assert message.startswith("skyplane settings are valid: relay_backend=local, objective=throughput, ")
    assert "chunk_size_mb=16" in message
    assert "2 from connection 'sky_ok', 1 from [skyplane] config, the rest defaults" in message


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"chunk_size_mb": 999}, "chunk_size_mb=999 is out of range; give 1 to 256"),
        ({"allowed_regions": ["aws:mars-*"]}, "allowed-region pattern 'aws:mars-*' matches no known region"),
        ({"grid_path": "/nonexistent/grid.csv"}, "/nonexistent/grid.csv"),
        ({"relay_backend": "aws"}, "relay_backend='aws' rents relay VMs"),
        (
            {"relay_backend": "aws", "worker_cidr": "my laptop"},
            "worker_cidr='my laptop' is not an address range",
        ),
        ({"relay_backend": "azure", "worker_cidr": "203.0.113.7/32"}, "set azure_resource_group"),
    ],
)
def test_connection_test_names_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], fragment: str
) -> None:
    _set_conn(monkeypatch, "sky_bad", extra)
    ok, message = SkyplaneHook("sky_bad").test_connection()
    assert ok is False
    assert fragment in message


def test_connection_test_of_a_missing_connection_says_how_to_create_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_SKY", raising=False)
    ok, message = SkyplaneHook("no_such_sky").test_connection()
    assert ok is False and "airflow connections add no_such_sky" in message


def test_a_cloud_connection_with_what_it_needs_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(
        monkeypatch,
        "sky_azure",
        {"relay_backend": "azure", "worker_cidr": "203.0.113.7/32", "azure_resource_group": "relays"},
    )
    assert SkyplaneHook("sky_azure").test_connection()[0] is True
