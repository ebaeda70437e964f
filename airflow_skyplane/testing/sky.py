"""An emulated sky: real object-store servers on loopback, and Airflow connections pointing at them.

=========================  =================================  ==================================
service                    server                             Airflow connection (default id)
=========================  =================================  ==================================
Amazon S3 and EC2          moto in server mode                ``aws_default`` (endpoint_url)
Google Cloud Storage       gcp-storage-emulator               ``google_cloud_default`` (anonymous)
Azure Blob Storage         Azurite (from npm)                 ``wasb_default`` (connection string)
=========================  =================================  ==================================

Each server runs as a child process in its own session on a free loopback port; :meth:`start`
waits until each answers HTTP, :meth:`stop` kills those processes (and only those). The Airflow hooks
then talk to the servers over HTTP exactly as they would to a cloud: ``S3Hook`` through the
connection's ``endpoint_url``, ``GCSHook`` through ``STORAGE_EMULATOR_HOST`` with an anonymous
connection, ``WasbHook`` through an Azurite connection string.

Azurite is found through ``SKYPLANE_AZURITE_BIN``, then ``.cache/azurite`` (where ``make install``
puts it) in the working directory, the package's source folder or one of their parents, then
``azurite-blob`` on ``PATH``. Without it the sky has no Azure Blob, and :attr:`EmulatedSky.missing`
says why and how to install it; so it does for moto and gcp-storage-emulator (the ``sky`` extra).

This module imports no Airflow; it only writes connection URIs into the environment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.testing._moto_server import CONSOLE_DIR_VARIABLE

#: Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
GCP_PROJECT = "skyplane-emulated"
AWS_REGION = "us-east-1"

SERVICES = ("s3", "gs", "az")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_azurite() -> str | None:
    env = os.environ.get("SKYPLANE_AZURITE_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    starts = (Path.cwd().resolve(), Path(__file__).resolve().parent)
    for folder in [f for start in starts for f in (start, *start.parents)]:
        candidate = folder / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("azurite-blob")


#: the Python modules each Python emulator needs (moto's server runs on Flask)
_EMULATOR_MODULES = {"s3": ("moto", "flask"), "gs": ("gcp_storage_emulator",)}
_EMULATOR_NAMES = {"s3": "moto (the S3 emulator)", "gs": "gcp-storage-emulator (the GCS emulator)"}


def missing_emulator(service: str) -> str | None:
    """Why ``service`` cannot be emulated here and the command that fixes it, or None when it can."""
    if service == "az":
        if find_azurite() and shutil.which("node"):
            return None
        if find_azurite():
            return "Azurite is installed but Node.js, which runs it, is not on PATH: install Debian's nodejs"
        return (
            "Azurite not found (the Azure Blob emulator): run 'make install' in a checkout (it needs npm), "
            "or 'npm install -g azurite', or set SKYPLANE_AZURITE_BIN to an azurite-blob executable"
        )
    for module in _EMULATOR_MODULES.get(service, ()):
        if importlib.util.find_spec(module) is None:
            return (
                f"{_EMULATOR_NAMES[service]} is not installed (no module {module!r}): "
                "pip install 'airflow-skyplane[sky]', or run 'make install' in a checkout"
            )
    return None


def emulator_argv(service: str, host: str, port: int, azurite: str | None = None) -> tuple[list[str], str]:
    """The command line that serves ``service`` (``s3``, ``gs`` or ``az``) on ``host:port``, and the
    path that answers once it is up. ``az`` needs the ``azurite-blob`` executable (:func:`find_azurite`)."""
    if service == "s3":
        argv = [sys.executable, "-m", "airflow_skyplane.testing._moto_server", "-H", host, "-p", str(port)]
        return argv, "/moto-api/"
    if service == "gs":
        argv = [sys.executable, "-m", "airflow_skyplane.testing._gcs_emulator", "start", "--host", host,
                "--port", str(port), "--in-memory", "--quiet"]  # fmt: skip
        return argv, "/storage/v1/b"
    if service == "az" and azurite:
        argv = [azurite, "--blobHost", host, "--blobPort", str(port), "--silent", "--loose",
                "--skipApiVersionCheck", "--disableTelemetry", "--inMemoryPersistence"]  # fmt: skip
        return argv, "/devstoreaccount1?comp=list"
    raise ValueError(f"no emulator for {service!r} (azurite={azurite!r}): choose from {SERVICES}")


def azure_connection_string(blob_url: str) -> str:
    """The connection string of Azurite's well-known development account served at ``blob_url``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_url}/{AZURITE_ACCOUNT};"
    )


@dataclass
class EmulatorServer:
    """One emulator process: started in its own process group, waited for, stopped by its id.

    ``launcher`` starts the command (``subprocess.Popen`` by default; a network namespace's
    ``popen`` to serve inside an emulated region), ``host`` is where it is reached from here.
    """

    name: str
    argv: list[str]
    port: int
    ready_path: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    launcher: Callable[..., subprocess.Popen[bytes]] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def spawn(self) -> None:
        launch = self.launcher or subprocess.Popen
        with self.log.open("ab") as log:
            self.process = launch(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group: stop() kills the group, nothing else
            )

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} while starting; its log "
                    f"({self.log}) ends with:\n{self.tail()}"
                )
            try:
                urllib.request.urlopen(self.url + self.ready_path, timeout=2).close()  # noqa: S310
                return
            except urllib.error.HTTPError:
                return  # the server answered: an HTTP error status still means it is up
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not answer on {self.url} in time; its log ends with:\n{self.tail()}"
        )

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class EmulatedSky:
    """Start the emulators, hand out connections and buckets, stop the emulators.

    Use it as a context manager, or through the ``emulated_sky`` pytest fixture of
    :mod:`airflow_skyplane.testing.plugin`::

        with EmulatedSky(workdir) as sky:
            os.environ.update(sky.env())
            bucket_uri = sky.make_bucket("s3")  # 's3://sky-3f2a...'
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        services: tuple[str, ...] = SERVICES,
        *,
        moto_auth: bool = False,
    ) -> None:
        """``moto_auth`` makes moto check credentials as AWS does (moto's own ``INITIAL_NO_AUTH_ACTION_COUNT``
        setting), to test refused credentials; by default moto accepts any key."""
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown emulated services {sorted(unknown)}: choose from {SERVICES}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: what emulated EC2 instances print to their console, one file per instance id
        self.ec2_console_dir = self.workdir / "ec2-console"
        self.ec2_console_dir.mkdir(exist_ok=True)
        self.missing: dict[str, str] = {}
        self._servers: dict[str, EmulatorServer] = {}
        for service in services:
            why = missing_emulator(service)
            if why:
                self.missing[service] = why
        azurite = find_azurite() if "az" in services else None
        names = {"s3": ("moto", "moto.log"), "gs": ("gcp-storage-emulator", "gcs.log"),
                 "az": ("azurite", "azurite.log")}  # fmt: skip
        for service in (s for s in SERVICES if s in services and s not in self.missing):
            port = free_port()
            argv, ready = emulator_argv(service, "127.0.0.1", port, azurite)
            name, log = names[service]
            env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if service == "s3" and moto_auth else {}
            if service == "s3":  # where emulated EC2 instances print their console (testing/vms.py)
                env[CONSOLE_DIR_VARIABLE] = str(self.ec2_console_dir)
            self._servers[service] = EmulatorServer(name, argv, port, ready, self.workdir / log, env=env)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> EmulatedSky:
        for server in self._servers.values():
            server.spawn()
        deadline = time.monotonic() + timeout
        try:
            for server in self._servers.values():
                server.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()

    def __enter__(self) -> EmulatedSky:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self._servers)

    @property
    def servers(self) -> dict[str, EmulatorServer]:
        """The emulator of each service (its process, address and log)."""
        return dict(self._servers)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._servers.values() if s.process is not None]

    def endpoint(self, service: str) -> str:
        return self._server(service).url

    def _server(self, service: str) -> EmulatorServer:
        if service not in self._servers:
            raise LookupError(self.missing.get(service, f"service {service!r} is not part of this sky"))
        return self._servers[service]

    # -- connections -----------------------------------------------------------------------------
    def azure_connection_string(self) -> str:
        return azure_connection_string(self.endpoint("az"))

    def connections(self) -> dict[str, dict[str, Any]]:
        """Airflow connections (as JSON-able dicts) keyed by their default ids."""
        conns: dict[str, dict[str, Any]] = {}
        if "s3" in self._servers:
            conns["aws_default"] = {
                "conn_type": "aws",
                "login": "emulated-access-key",
                "password": "emulated-secret-key",
                "extra": {"endpoint_url": self.endpoint("s3"), "region_name": AWS_REGION},
            }
        if "gs" in self._servers:
            conns["google_cloud_default"] = {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": GCP_PROJECT},
            }
        if "az" in self._servers:
            conns["wasb_default"] = {
                "conn_type": "wasb",
                "extra": {"connection_string": self.azure_connection_string()},
            }
        return conns

    def env(self, conn_ids: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment variables that make Airflow (and its hooks) use this sky.

        ``conn_ids`` renames connections, e.g. ``{"aws_default": "aws_sky"}``.
        """
        env = {}
        for conn_id, conn in self.connections().items():
            name = (conn_ids or {}).get(conn_id, conn_id)
            env["AIRFLOW_CONN_" + name.upper()] = json.dumps(conn)
        if "gs" in self._servers:
            env["STORAGE_EMULATOR_HOST"] = self.endpoint("gs")
        return env

    # -- SDK clients and buckets (for setting up and checking tests, without Airflow) ------------
    def client(self, service: str) -> Any:
        if service == "s3":
            import boto3

            return boto3.client(
                "s3",
                endpoint_url=self.endpoint("s3"),
                region_name=AWS_REGION,
                aws_access_key_id="emulated-access-key",
                aws_secret_access_key="emulated-secret-key",  # noqa: S106 - moto accepts any key
            )
        if service == "gs":
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            return storage.Client(
                project=GCP_PROJECT,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": self.endpoint("gs")},
            )
        if service == "az":
            from azure.storage.blob import BlobServiceClient

            return BlobServiceClient.from_connection_string(self.azure_connection_string())
        raise LookupError(f"unknown service {service!r}: choose from {SERVICES}")

    def make_bucket(self, service: str, name: str | None = None, *, region: str | None = None) -> str:
        """Create a bucket (or container) and return its URI; ``region`` (``aws:eu-west-1``) places an
        S3 bucket there (its LocationConstraint; the other emulators keep no location)."""
        name = name or f"sky-{uuid.uuid4().hex[:16]}"
        client = self.client(service)
        if service == "s3" and region is not None:
            where = region.removeprefix("aws:")
            client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": where})
        elif service == "s3":
            client.create_bucket(Bucket=name)
        elif service == "gs":
            client.create_bucket(name)
        else:
            client.create_container(name)
        return f"{service}://{name}"

    def wipe_gcs(self) -> None:
        """Delete every GCS object, keeping the buckets (the emulator's own ``/wipe``), between tests."""
        url = self.endpoint("gs") + "/wipe?keep-buckets=true"
        urllib.request.urlopen(url, timeout=30).close()  # noqa: S310 - loopback emulator

    def open(self, uri: str) -> Any:
        """An ObjectStore for a bucket URI of this sky, built on SDK clients (no Airflow)."""
        from airflow_skyplane.storage.uri import parse_uri

        parsed = parse_uri(uri)
        if parsed.scheme == "s3":
            from airflow_skyplane.storage.s3 import S3Store

            return S3Store(self.client("s3"), parsed.bucket)
        if parsed.scheme == "gs":
            from airflow_skyplane.storage.gcs import GCSStore

            return GCSStore(self.client("gs"), parsed.bucket)
        if parsed.scheme == "az":
            from airflow_skyplane.storage.azure_blob import AzureBlobStore

            return AzureBlobStore(self.client("az"), parsed.bucket)
        raise LookupError(f"{uri} is not a bucket of the emulated sky")


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, restoring the previous values."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
