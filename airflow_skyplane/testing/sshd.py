"""A throwaway OpenSSH server for emulated relay machines.

On the emulated WAN every region namespace can run one of these (:mod:`.wan_relays`), and every
emulated relay VM is one (:mod:`.vms`), so relays are bootstrapped with
paramiko exactly as cloud VMs are (:mod:`airflow_skyplane.compute.ssh`). It listens on the address
it is given (loopback, or a namespace's own address), accepts only the fleet's public key, uses a
host key generated for it (so tests can pin it), and is stopped by pid.

Needs OpenSSH's ``sshd`` (Debian package openssh-server). Imports no Airflow.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airflow_skyplane.exceptions import SkyplaneError

_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


class SSHDError(SkyplaneError):
    """The local sshd could not be started."""


def find_sshd() -> str | None:
    for candidate in _SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalSSHD:
    """``sshd -D`` on ``address:port`` with its own host key, admitting ``authorized_key`` only.

    ``wrap`` prefixes the command line, e.g. ``["ip", "netns", "exec", NS]`` to run it inside a
    namespace; ``extra_config`` adds ``sshd_config`` lines (``SetEnv ...`` marks every process started
    through this sshd, as the emulated relay VMs of :mod:`airflow_skyplane.testing.vms` do).
    """

    def __init__(
        self,
        authorized_key: str,
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
        wrap: Sequence[str] = (),
        extra_config: Sequence[str] = (),
    ) -> None:
        self.address = address
        self._extra = list(extra_config)
        self.port = port or free_port(address if address != "0.0.0.0" else "127.0.0.1")
        self._authorized_key = authorized_key
        self._wrap = list(wrap)
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.host_public_key: str = ""  # "<type> <base64>", for pinning

    @property
    def username(self) -> str:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name

    def __enter__(self) -> LocalSSHD:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 15.0) -> LocalSSHD:
        sshd = find_sshd()
        if sshd is None:
            raise SSHDError("sshd not found: install OpenSSH's server (Debian package openssh-server)")
        self._dir = Path(tempfile.mkdtemp(prefix="skyplane-sshd-"))
        os.chmod(self._dir, 0o700)
        host_key = Ed25519PrivateKey.generate()
        host_key_path = self._dir / "host_ed25519"
        host_key_path.write_bytes(
            host_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        os.chmod(host_key_path, 0o600)
        self.host_public_key = (
            host_key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        authorized = self._dir / "authorized_keys"
        authorized.write_text(self._authorized_key.strip() + "\n")
        os.chmod(authorized, 0o600)
        config = self._dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {host_key_path}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self._dir / 'sshd.pid'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding local",
                    "X11Forwarding no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    *self._extra,
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        log_path = self._dir / "sshd.log"
        self._proc = subprocess.Popen(
            [*self._wrap, sshd, "-D", "-f", str(config), "-E", str(log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                detail = log_path.read_text(errors="replace")[-1000:] if log_path.exists() else ""
                self.stop()
                raise SSHDError(f"sshd exited with {self._proc.returncode}: {detail}")
            if self._banner_ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise SSHDError(f"sshd did not listen on {self.address}:{self.port} within {timeout_s:.0f} s")

    def _banner_ready(self) -> bool:
        if self._wrap:  # inside a namespace: ask sshd's own process whether it listens
            out = subprocess.run([*self._wrap, "ss", "-ltnH"], capture_output=True, text=True)
            return f":{self.port} " in out.stdout
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the sshd this object started (by its pid) and remove its files. Idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
