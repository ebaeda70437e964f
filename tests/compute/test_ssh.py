"""Relay bootstrap over SSH (paramiko) against a real sshd on loopback."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_skyplane.compute.ssh import (
    HostKeyMismatchError,
    HostKeyPins,
    RelaySSH,
    RelaySSHError,
    SSHKeyPair,
    package_zip,
)
from airflow_skyplane.testing.sshd import LocalSSHD, free_port

pytestmark = pytest.mark.requires("sshd")


@pytest.fixture(scope="module")
def fleet_key() -> SSHKeyPair:
    return SSHKeyPair.generate("test-fleet")


@pytest.fixture(scope="module")
def sshd(fleet_key: SSHKeyPair) -> Iterator[LocalSSHD]:
    with LocalSSHD(fleet_key.public_openssh) as server:
        yield server


def _session(sshd: LocalSSHD, key: SSHKeyPair, pins: HostKeyPins, **kwargs: float) -> RelaySSH:
    return RelaySSH("127.0.0.1", port=sshd.port, username=sshd.username, key=key, pins=pins, **kwargs)


def test_key_pair_never_shows_its_private_half(fleet_key: SSHKeyPair) -> None:
    assert fleet_key.public_openssh.startswith("ssh-ed25519 ")
    assert "PRIVATE" not in repr(fleet_key)
    assert fleet_key.pkey().get_name() == "ssh-ed25519"


def test_first_connection_pins_the_host_key(sshd: LocalSSHD, fleet_key: SSHKeyPair) -> None:
    pins = HostKeyPins()
    with _session(sshd, fleet_key, pins) as relay:
        assert relay.run("echo ok").stdout.strip() == "ok"
    assert pins.as_dict() == {f"127.0.0.1:{sshd.port}": sshd.host_public_key}
    with _session(sshd, fleet_key, pins) as relay:  # the pinned key is accepted again
        assert relay.run("echo again").stdout.strip() == "again"


def test_wrong_host_key_is_refused_without_retrying(sshd: LocalSSHD, fleet_key: SSHKeyPair) -> None:
    other = SSHKeyPair.generate().public_openssh.rsplit(" ", 1)[0]
    pins = HostKeyPins({f"127.0.0.1:{sshd.port}": other})
    started = time.monotonic()
    with pytest.raises(HostKeyMismatchError, match="not the key pinned for it"):
        _session(sshd, fleet_key, pins, connect_deadline_s=60).connect()
    assert time.monotonic() - started < 30  # refused at once, not retried until the deadline


def test_unpinned_host_is_refused_when_pinning_on_first_use_is_off(
    sshd: LocalSSHD, fleet_key: SSHKeyPair
) -> None:
    with pytest.raises(HostKeyMismatchError, match="pin its key from the console output"):
        _session(sshd, fleet_key, HostKeyPins(pin_on_first_use=False)).connect()


def test_a_key_not_of_the_fleet_is_refused(sshd: LocalSSHD) -> None:
    with pytest.raises(RelaySSHError, match="refused the fleet's SSH key"):
        _session(sshd, SSHKeyPair.generate(), HostKeyPins()).connect()


def test_unreachable_relay_fails_after_a_bounded_wait(fleet_key: SSHKeyPair) -> None:
    port = free_port()
    relay = RelaySSH(
        "127.0.0.1", port=port, username="nobody", key=fleet_key, pins=HostKeyPins(), connect_deadline_s=1.5
    )
    with pytest.raises(RelaySSHError, match=f"relay 127.0.0.1:{port} did not accept SSH within 2 s"):
        relay.connect()


def test_secrets_are_written_private_and_atomically(
    sshd: LocalSSHD, fleet_key: SSHKeyPair, tmp_path: Path
) -> None:
    target = tmp_path / "relay" / "creds" / "storage.json"
    with _session(sshd, fleet_key, HostKeyPins()) as relay:
        relay.put(str(target), b'{"token": "short-lived"}')
        assert target.read_bytes() == b'{"token": "short-lived"}'
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
        assert not list(target.parent.glob("*.part"))
        relay.remove([str(target)])
    assert not target.exists()


def test_ships_its_own_code_and_runs_a_detached_daemon(
    sshd: LocalSSHD, fleet_key: SSHKeyPair, tmp_path: Path
) -> None:
    workdir = tmp_path / "relay"
    program = (
        "import sys, time, airflow_skyplane, airflow_skyplane.exceptions as e; "
        "print('loaded', airflow_skyplane.__version__, 'from', airflow_skyplane.__file__, flush=True); "
        "print('airflow imported:', 'airflow' in sys.modules, flush=True); time.sleep(120)"
    )
    with _session(sshd, fleet_key, HostKeyPins()) as relay:
        archive = relay.ship_package(str(workdir))
        pid = relay.start_daemon(
            [sys.executable, "-S", "-c", program],
            workdir=str(workdir),
            log_path=str(workdir / "gateway.log"),
            env={"PYTHONPATH": archive},
        )
        try:
            deadline = time.monotonic() + 20
            log = b""
            while b"airflow imported" not in log and time.monotonic() < deadline:
                time.sleep(0.1)
                log = relay.get(str(workdir / "gateway.log"))
            text = log.decode()
            assert f"from {archive}/airflow_skyplane/__init__.py" in text  # the shipped zip, not the venv
            assert "airflow imported: False" in text
            assert relay.is_running(pid)
        finally:
            relay.stop(pid, grace_s=2)
        assert not relay.is_running(pid)
    # The daemon outlived nothing it should not: its pid is gone on this machine too.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_package_zip_holds_the_gateway_sources() -> None:
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(package_zip())).namelist()
    assert "airflow_skyplane/__init__.py" in names
    assert "airflow_skyplane/compute/ssh.py" in names
    assert not any("__pycache__" in n for n in names)
