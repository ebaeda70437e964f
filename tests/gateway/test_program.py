"""Gateway programs: validation messages, secrets never shown, and the daemon free of Airflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_skyplane.exceptions import ProtocolError
from airflow_skyplane.gateway.program import Program
from airflow_skyplane.gateway.stores import redact

BASE = {
    "version": 1,
    "transfer_id": "ab" * 16,
    "gateway_id": "relay",
    "tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"},
    "listen": {"host": "127.0.0.1", "port": 0},
    "next_hops": [{"gateway_id": "dst", "host": "127.0.0.1", "port": 7000, "connections": 4, "weight": 1}],
}


def test_a_valid_relay_program_round_trips() -> None:
    program = Program.parse(BASE)
    assert program.forwards and not program.reads and not program.writes
    assert Program.loads(program.dumps()) == program


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "run the same airflow-skyplane version"),
        ({"transfer_id": "xyz"}, "32 lowercase hex digits"),
        ({"tls": {"cert": "c"}}, "tls needs cert, key and ca"),
        ({"next_hops": [{"host": "h", "port": 70000}]}, "use 0 (any free port) to 65535"),
        ({"next_hops": [{"host": "h", "port": 1, "connections": 0}]}, "use 1 to 256"),
        ({"next_hops": [], "listen": None}, "no source, destination or next_hops"),
        ({"compress": "zstd"}, "use auto, always or never"),
        ({"expires_at": "tomorrow"}, "give a unix time in seconds"),
        (
            {"source": {"store": {"scheme": "file", "root": "/x"}, "manifest": "m"}},
            "cipher_key_file is missing",
        ),
    ],
)
def test_bad_programs_name_the_field_and_the_fix(change: dict, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        Program.parse({**BASE, **change})
    assert message in str(err.value) and "gateway program" in str(err.value)


def test_secrets_are_redacted() -> None:
    spec = {"scheme": "s3", "bucket": "b", "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t"}
    raw = {**BASE, "destination": {"store": spec}, "encrypt": False}
    shown = json.dumps(Program.parse(raw).redacted())
    assert "s3cr3t" not in shown and "AKIAEXAMPLE" not in shown and '"bucket": "b"' in shown
    assert redact({"connection_string": "AccountKey=xyz"}) == {"connection_string": "***"}


def test_gateway_modules_import_no_airflow() -> None:
    """Every module of the gateway, and what it reaches, loads without Airflow (a relay has none)."""
    code = (
        "import importlib, pkgutil, sys, airflow_skyplane.gateway as g\n"
        "for m in pkgutil.iter_modules(g.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('airflow_skyplane.gateway.' + m.name)\n"
        "import airflow_skyplane.storage.placement, airflow_skyplane.storage.relay_credentials\n"
        "bad = [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_program_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{not json")
    out = subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.gateway", "--program", str(tmp_path / "p.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "gateway program: not JSON" in out.stderr and "Traceback" not in out.stderr


def test_a_gateway_stops_itself_at_the_fleets_expiry(tmp_path: Path) -> None:
    """The local relay's self-destruct: no controller needed to end it."""
    import time

    from airflow_skyplane.gateway import tls

    ca = tls.FleetCA.create("expiry")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    files = ca.issue("relay", addresses=["127.0.0.1"]).write(tmp_path)
    program = dict(
        BASE, tls={"cert": str(files["cert"]), "key": str(files["key"]), "ca": str(tmp_path / "ca.pem")}
    )
    program["expires_at"] = time.time() + 1.5
    (tmp_path / "p.json").write_text(json.dumps(program))
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "airflow_skyplane.gateway", "--program", str(tmp_path / "p.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert time.monotonic() - t0 < 30
    assert "the fleet expired" in out.stderr
