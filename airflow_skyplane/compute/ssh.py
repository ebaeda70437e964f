"""Bootstrap of relays over SSH with paramiko.

The worker reaches every relay (a cloud VM, or a local relay in an emulated-WAN namespace) the same
way: SSH with a key made for the fleet, then SFTP to hand over the gateway code, the gateway
program, the TLS material and the storage credentials (those of the task's Airflow connections, as
their hooks resolve them: not minted for the transfer), then a detached start of
``python -m airflow_skyplane.gateway``. Secrets travel only inside the SSH channel: never on a
command line (visible in ``ps``), in user-data, tags, or logs; files holding them are created with
mode 0600 before a byte is written, and removed at teardown.

Host keys are pinned, not blindly accepted: a relay's key is given in advance (a local relay's sshd;
a cloud VM's, read from the cloud's console of the VM before the first connection, see
:mod:`.cloud`) and a host that presents another key is refused (:class:`HostKeyMismatchError`).
Pinning at the first connection (trust on first use) happens only when it is asked for
(``pin_on_first_use``; for cloud relays the ``relay_host_keys="first_use"`` setting).

Why paramiko: a pure-Python SSH and SFTP client with no system ``ssh`` binary needed on the worker.
Why tenacity: the bounded wait for a booting VM's SSH port is a retry with backoff, not a loop.
"""

from __future__ import annotations

import contextlib
import io
import logging
import posixpath
import shlex
import socket
import threading
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

import airflow_skyplane
from airflow_skyplane.exceptions import AuthenticationError, SkyplaneError

log = logging.getLogger(__name__)


class RelaySSHError(SkyplaneError):
    """A relay could not be reached or a command on it failed; the message names the relay."""


class HostKeyMismatchError(AuthenticationError):
    """A relay presented a host key other than the one pinned for it."""


@dataclass(frozen=True)
class SSHKeyPair:
    """An ephemeral key pair for one fleet (Ed25519)."""

    private_openssh: str
    public_openssh: str

    @classmethod
    def generate(cls, comment: str = "airflow-skyplane") -> SSHKeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        public = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return cls(private, f"{public} {comment}")

    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))

    def __repr__(self) -> str:  # never show the private key, even in a traceback's locals
        return f"SSHKeyPair(public={self.public_openssh!r})"


class HostKeyPins:
    """Host keys of a fleet's relays: given in advance, or pinned at first contact. Thread-safe.

    Keys are stored as ``"<type> <base64>"`` strings so they fit in a fleet record (JSON).
    """

    def __init__(self, pins: Mapping[str, str] | None = None, *, pin_on_first_use: bool = True) -> None:
        self._pins = dict(pins or {})
        self._lock = threading.Lock()
        self.pin_on_first_use = pin_on_first_use

    def as_dict(self) -> dict[str, str]:
        with self._lock:
            return dict(self._pins)

    def check(self, host_id: str, key: paramiko.PKey) -> None:
        presented = f"{key.get_name()} {key.get_base64()}"
        with self._lock:
            pinned = self._pins.get(host_id)
            if pinned is None:
                if not self.pin_on_first_use:
                    raise HostKeyMismatchError(
                        f"relay {host_id} presented host key {key.get_name()} {key.fingerprint} but no key "
                        "is pinned for it and pinning on first use is off; pin its key from the console "
                        "output first"
                    )
                self._pins[host_id] = presented
                log.info("pinned host key of relay %s: %s", host_id, key.fingerprint)
                return
        if pinned != presented:
            raise HostKeyMismatchError(
                f"relay {host_id} presented host key {key.get_name()} {key.fingerprint}, not the key pinned "
                "for it; refusing to connect (the address may have been reused by another machine: tear "
                "the fleet down and provision again)"
            )


class _PinPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, pins: HostKeyPins, host_id: str) -> None:
        self._pins = pins
        self._host_id = host_id

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self._pins.check(self._host_id, key)


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


def _retryable(exc: BaseException) -> bool:
    """Worth retrying while a relay boots: refused, reset, timed out, SSH banner not ready yet."""
    if isinstance(exc, paramiko.AuthenticationException | AuthenticationError):
        return False
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


class RelaySSH:
    """One SSH session to one relay: connect (with a bounded wait), SFTP, run, start/stop a daemon."""

    def __init__(
        self,
        host: str,
        *,
        username: str,
        key: SSHKeyPair,
        pins: HostKeyPins,
        port: int = 22,
        connect_deadline_s: float = 300.0,
        command_timeout_s: float = 120.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._key = key
        self._pins = pins
        self.connect_deadline_s = connect_deadline_s
        self.command_timeout_s = command_timeout_s
        self._client: paramiko.SSHClient | None = None
        self._forwards: list[_Forward] = []

    @property
    def host_id(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> RelaySSH:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect, retrying transient failures with backoff until ``connect_deadline_s``."""
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_delay(self.connect_deadline_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._connect_once()
        except HostKeyMismatchError:
            raise
        except paramiko.AuthenticationException as exc:
            raise RelaySSHError(
                f"relay {self.host_id} refused the fleet's SSH key for user {self.username!r} ({exc}); "
                "check that the key was installed on the relay (key pair or authorized_keys)"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RelaySSHError(
                f"relay {self.host_id} did not accept SSH within {self.connect_deadline_s:.0f} s "
                f"({type(exc).__name__}: {exc}); check that it is running and that its firewall admits "
                "SSH from this worker"
            ) from None

    def _connect_once(self) -> None:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinPolicy(self._pins, self.host_id))
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.username,
                pkey=self._key.pkey(),
                timeout=10,
                banner_timeout=10,
                auth_timeout=10,
                allow_agent=False,
                look_for_keys=False,
            )
        except BaseException:
            client.close()
            raise
        self._client = client

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise RelaySSHError(f"relay {self.host_id}: not connected; call connect() first")
        return self._client

    def close(self) -> None:
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> int:
        """Forward a port of this worker's loopback to ``remote_host:remote_port`` as seen from the
        relay, through this session (SSH ``direct-tcpip``); return the local port.

        This is how the worker reaches a gateway's control endpoint, which listens on the relay's
        loopback only: nothing but SSH from the worker is admitted to a relay.
        """
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise RelaySSHError(f"relay {self.host_id}: the SSH session is closed; cannot forward a port")
        forward = _Forward(transport, remote_host, remote_port, self.host_id)
        self._forwards.append(forward)
        return forward.port

    # -- commands --------------------------------------------------------------------------------
    def run(self, command: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Run ``command`` through the relay's shell. Never pass secrets on the command line."""
        timeout = self.command_timeout_s if timeout is None else timeout
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except TimeoutError:
            raise RelaySSHError(
                f"relay {self.host_id}: `{command}` did not finish within {timeout:.0f} s"
            ) from None
        result = CommandResult(status, out, err)
        if check and status != 0:
            raise RelaySSHError(
                f"relay {self.host_id}: `{command}` exited with {status}: "
                f"{err.strip()[-2000:] or out[-2000:]}"
            )
        return result

    # -- files -----------------------------------------------------------------------------------
    def put(self, remote_path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``remote_path`` atomically; the file has ``mode`` before any byte lands."""
        directory = posixpath.dirname(remote_path)
        tmp = f"{remote_path}.part"
        with self.client.open_sftp() as sftp:
            if directory:
                self._mkdirs(sftp, directory)
            with sftp.open(tmp, "wb") as handle:
                sftp.chmod(tmp, mode)
                handle.set_pipelined(True)
                handle.write(data)
            sftp.posix_rename(tmp, remote_path)

    def get(self, remote_path: str, *, max_bytes: int = 1 << 20) -> bytes:
        """The last ``max_bytes`` of a remote file (for fetching a daemon's log)."""
        with self.client.open_sftp() as sftp:
            size = sftp.stat(remote_path).st_size or 0
            with sftp.open(remote_path, "rb") as handle:
                handle.seek(max(0, size - max_bytes))
                return handle.read()

    def remove(self, paths: Iterable[str]) -> None:
        """Delete files (keys, credentials, programs) at teardown; missing files are fine."""
        quoted = " ".join(shlex.quote(p) for p in paths)
        if quoted:
            self.run(f"rm -f -- {quoted}")

    @staticmethod
    def _mkdirs(sftp: paramiko.SFTPClient, directory: str) -> None:
        parts: list[str] = []
        path = directory
        while path not in ("", "/"):
            parts.append(path)
            path = posixpath.dirname(path)
        for part in reversed(parts):
            try:
                sftp.stat(part)
            except FileNotFoundError:
                sftp.mkdir(part, mode=0o700)

    # -- the gateway -----------------------------------------------------------------------------
    def ship_package(self, remote_dir: str) -> str:
        """Upload this worker's own ``airflow_skyplane`` code as a zip; return its remote path.

        The relay then runs exactly the worker's version with ``PYTHONPATH=<zip>``; only the
        gateway's light dependencies must be installed there (see the ``gateway`` extra).
        """
        remote = posixpath.join(remote_dir, f"airflow_skyplane-{airflow_skyplane.__version__}.zip")
        self.put(remote, package_zip(), mode=0o644)
        return remote

    def start_daemon(
        self,
        argv: Sequence[str],
        *,
        workdir: str,
        log_path: str,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Start ``argv`` detached from the SSH session (own session, stdin closed); return its pid.

        ``env`` must not hold secrets (hand those over in files with :meth:`put`).
        """
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        # `cd || exit` rather than `cd &&`: a backgrounded `a && b` list would run in a subshell that
        # keeps the SSH channel open and whose pid `$!` would name instead of the daemon's.
        command = (
            f"cd {shlex.quote(workdir)} || exit 1; {assignments} nohup setsid "
            f"{' '.join(shlex.quote(a) for a in argv)} > {shlex.quote(log_path)} 2>&1 < /dev/null & echo $!"
        )
        result = self.run(command)
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RelaySSHError(f"relay {self.host_id}: could not read the pid of {argv[0]!r}") from None

    def is_running(self, pid: int) -> bool:
        return self.run(f"kill -0 {int(pid)}", check=False).exit_status == 0

    def stop(self, pid: int, *, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; a process already gone is fine."""
        steps = max(1, int(grace_s * 10))
        self.run(
            f"kill -TERM {int(pid)} 2>/dev/null || exit 0; "
            f"for i in $(seq {steps}); do kill -0 {int(pid)} 2>/dev/null || exit 0; sleep 0.1; done; "
            f"kill -KILL {int(pid)} 2>/dev/null; exit 0",
            timeout=grace_s + 30,
        )


class _Forward:
    """A loopback listener whose every connection is carried to the relay in its own SSH channel."""

    def __init__(self, transport: paramiko.Transport, host: str, port: int, relay: str) -> None:
        self._transport, self._target, self._relay = transport, (host, port), relay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"ssh-forward-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._server.accept()
            except OSError:
                return  # closed
            try:
                channel = self._transport.open_channel("direct-tcpip", self._target, peer, timeout=10)
            except (paramiko.SSHException, OSError, EOFError) as err:
                log.warning("relay %s: could not forward to %s:%d (%s)", self._relay, *self._target, err)
                conn.close()
                continue
            for a, b in ((conn, channel), (channel, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._server.close()


def _pump(src: Any, dst: Any) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for end in (src, dst):
            with contextlib.suppress(OSError):
                end.close()


def package_zip() -> bytes:
    """The ``airflow_skyplane`` package's Python sources as a zip that Python can import from."""
    root = Path(airflow_skyplane.__file__).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            archive.write(path, Path("airflow_skyplane") / path.relative_to(root))
    return buffer.getvalue()
