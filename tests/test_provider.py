"""Provider registration, checked through Airflow's own ProvidersManager in a fresh AIRFLOW_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_skyplane.get_provider_info import get_provider_info

pytestmark = pytest.mark.airflow

_PROBE = r"""
import json
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
provider = pm.providers.get("airflow-skyplane")
hooks = pm.hooks
hook = hooks.get("skyplane")
print(json.dumps({
    "provider": provider.version if provider else None,
    "hook_class": hook.hook_class_name if hook else None,
    "conn_id_attr": hook.connection_id_attribute_name if hook else None,
    "field_behaviours": pm.field_behaviours.get("skyplane"),
}))
"""


def _fresh_airflow_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return env


def test_provider_info_matches_schema() -> None:
    import jsonschema
    from airflow import __file__ as airflow_init

    schema = json.loads((Path(airflow_init).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_providers_manager_registers_provider_and_connection_type(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=_fresh_airflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["provider"] == get_provider_info()["versions"][0]
    assert found["hook_class"] == "airflow_skyplane.hooks.skyplane.SkyplaneHook"
    assert found["conn_id_attr"] == "skyplane_conn_id"
    assert "password" in found["field_behaviours"]["hidden_fields"]


def test_airflow_cli_lists_the_provider(tmp_path: Path) -> None:
    airflow = Path(sys.executable).parent / "airflow"
    env = _fresh_airflow_env(tmp_path)
    providers = subprocess.run(
        [str(airflow), "providers", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    names = [p["package_name"] for p in json.loads(providers.stdout)]
    assert "airflow-skyplane" in names
    # the hook and its connection type are checked through ProvidersManager above: `airflow providers
    # hooks` reads the same registry but imports every installed provider's hooks (about 50 s here)
