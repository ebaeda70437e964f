"""Provider registration, checked through Airflow's own ProvidersManager in a fresh AIRFLOW_HOME."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_skyplane.get_provider_info import DOCS_URL, SETTINGS_URL, get_provider_info
from airflow_skyplane.hooks.skyplane import SkyplaneSettings

ROOT = Path(__file__).resolve().parents[1]
OPTIONS: dict[str, dict[str, Any]] = get_provider_info()["config"]["skyplane"]["options"]

pytestmark = pytest.mark.airflow

_PROBE = r"""
import json
from airflow.configuration import conf
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
provider = pm.providers.get("airflow-skyplane")
hooks = pm.hooks
hook = hooks.get("skyplane")
print(json.dumps({
    "provider": provider.version if provider else None,
    "documentation_url": provider.data.get("documentation-url") if provider else None,
    "hook_class": hook.hook_class_name if hook else None,
    "conn_id_attr": hook.connection_id_attribute_name if hook else None,
    "field_behaviours": pm.field_behaviours.get("skyplane"),
    "config_defaults": {
        k: conf.get("skyplane", k, fallback=None)
        for k in conf.configuration_description["skyplane"]["options"]
    },
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
    # Airflow takes the documentation URL from the package's metadata, and every [skyplane] default from
    # get_provider_info (it formats them: a brace in a default breaks every Airflow process)
    assert found["documentation_url"] == DOCS_URL
    assert found["config_defaults"] == {name: option["default"] for name, option in OPTIONS.items()}


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


# -- the [skyplane] settings: declared, documented and read in step ---------------------------------


def _config_form(value: Any) -> str | None:
    """A settings default as airflow.cfg would hold it (an empty map: no default)."""
    if value is None or value == {}:
        return None
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def _kind(annotation: str) -> str:
    return {"bool": "boolean", "int": "integer", "int | None": "integer"}.get(annotation, "string")


def test_every_setting_is_declared_with_its_type_default_and_description() -> None:
    fields = {f.name: f for f in dataclasses.fields(SkyplaneSettings) if not f.name.startswith("_")}
    assert sorted(OPTIONS) == sorted(fields)
    for name, field in fields.items():
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        option = OPTIONS[name]
        assert option["type"] == _kind(str(field.type)), name
        assert option["default"] == _config_form(default), name
        assert len(option["description"]) > 20 and option["example"], name
    assert (
        SETTINGS_URL.startswith(DOCS_URL)
        and SETTINGS_URL in get_provider_info()["config"]["skyplane"]["description"]
    )


def test_the_declared_defaults_read_back_as_the_built_in_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every declared default, set in the [skyplane] configuration, gives the settings' own defaults."""
    from airflow_skyplane.hooks.skyplane import SkyplaneHook

    monkeypatch.delenv("AIRFLOW_CONN_SKYPLANE_DEFAULT", raising=False)
    for name, option in OPTIONS.items():
        if option["default"] is not None:
            monkeypatch.setenv(f"AIRFLOW__SKYPLANE__{name.upper()}", option["default"])
    assert SkyplaneHook().get_settings() == SkyplaneSettings()


def test_every_setting_the_code_reads_is_declared() -> None:
    """Settings are read through SkyplaneSettings (the connection extra over [skyplane]), and here and
    there straight from an AIRFLOW__SKYPLANE__* variable or conf.get("skyplane", ...): all declared."""
    read: set[str] = set()
    sources = [*(ROOT / "airflow_skyplane").rglob("*.py"), *(ROOT / "dags_examples").rglob("*.py")]
    for path in sources:
        text = path.read_text()
        read |= {m.lower() for m in re.findall(r"AIRFLOW__SKYPLANE__([A-Z0-9_]+)", text)}
        read |= set(re.findall(r"""conf\.\w+\(\s*["']skyplane["']\s*,\s*["'](\w+)["']""", text))
    assert read, "the scan found no setting read at all: the patterns are stale"
    assert read <= set(OPTIONS), sorted(read - set(OPTIONS))


def test_connections_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "connections.md").read_text()
    assert [name for name in OPTIONS if f"`{name}`" not in doc] == []


def test_the_documentation_url_is_the_package_metadata() -> None:
    urls = re.search(
        r"^\[project\.urls\]\n(?:#.*\n)*Documentation = \"(.+)\"$",
        (ROOT / "pyproject.toml").read_text(),
        re.M,
    )
    assert urls is not None and urls.group(1) == DOCS_URL


_CONNECTION_TEST = ["connections", "test"]


@pytest.mark.parametrize(
    ("extra", "status", "says"),
    [
        ({"max_relays_per_region": 2, "allowed_regions": ["gcp:europe-*"]}, 0, "Connection success!"),
        (
            {"allowed_regions": ["gcp:mars-*"]},
            1,
            "allowed-region pattern 'gcp:mars-*' matches no known region",
        ),
    ],
)
def test_airflow_connections_test_runs_the_hooks_check(
    tmp_path: Path, extra: dict[str, Any], status: int, says: str
) -> None:
    """Through Airflow's own CLI: the connection type leads ProvidersManager to SkyplaneHook."""
    env = _fresh_airflow_env(tmp_path)
    env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    env["AIRFLOW_CONN_SKY_UNDER_TEST"] = json.dumps({"conn_type": "skyplane", "extra": extra})
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *_CONNECTION_TEST, "sky_under_test"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-2000:]
    assert says in done.stdout
