"""The seam between a transfer's controller and whatever runs its gateways.

A :class:`GatewayLauncher` starts the gateways of one transfer from their programs and stops them; it
also says where each gateway listens, how the controller reaches its control endpoint, which address
a gateway dials to reach the next one, and which addresses go into a gateway's certificate. The
controller (:mod:`airflow_skyplane.transfer`) asks these questions and never looks at what kind of
launcher it holds. Implementations:

* :class:`~airflow_skyplane.compute.local.LocalRelayBackend`: gateway processes on this machine, on
  loopback;
* :class:`~airflow_skyplane.compute.remote.SSHRelayBackend`: gateways on relay VMs, over SSH;
* the emulated WAN's launchers of the tests (:mod:`airflow_skyplane.testing.wan_relays`): processes
  inside network namespaces, directly or over an sshd in each.

A started gateway is a :class:`GatewayHandle`. Region names are the planner's (``aws:us-east-1``), or
``None`` for a gateway on plain loopback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from airflow_skyplane.gateway.program import Program


class GatewayHandle(Protocol):
    """A gateway that was started: how to reach its control endpoint, and whether it still runs."""

    @property
    def gateway_id(self) -> str: ...

    @property
    def region(self) -> str | None: ...

    @property
    def listen_port(self) -> int | None:
        """The data port it listens on (None for a reading gateway, which only dials)."""

    @property
    def control_host(self) -> str: ...

    @property
    def control_port(self) -> int | None: ...

    @property
    def exit_code(self) -> int | None:
        """None while it runs; its exit code (or -1 when unknown) once it has exited."""

    def alive(self) -> bool: ...

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log, for error messages."""

    def resend(self, path: str) -> None:
        """Hand the gateway again a file its program named, which the controller has replaced (its
        renewed store credentials); a gateway that reads the controller's own file needs nothing."""


@dataclass
class StartedGateway:
    """What every launcher records of a gateway it started (its handles add how it runs)."""

    gateway_id: str
    region: str | None
    listen_port: int | None = None
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    #: the gateway's ready file: its bound ports
    info: dict[str, object] = field(default_factory=dict)

    def resend(self, path: str) -> None:
        """Nothing to do: a gateway on this machine reads the controller's file itself."""


class GatewayLauncher(Protocol):
    """Starts, watches and stops the gateways of one transfer."""

    @property
    def gateways(self) -> Mapping[str, GatewayHandle]:
        """Every gateway started (or attached to), by gateway id."""

    @property
    def same_machine(self) -> bool:
        """True when the gateways run on the controller's machine, so they can watch its process id
        and stop when it dies without tearing them down."""

    @property
    def shared_cpus(self) -> int | None:
        """The CPUs every gateway of this launcher shares when they all run on one machine (each then
        gets a fair share of worker processes, see :mod:`airflow_skyplane.transfer.tuning`); None when
        each gateway has a machine of its own."""

    @property
    def gateway_workers(self) -> int | None:
        """Worker processes per gateway when the launcher fixes them; None: derived for the transfer."""

    def listen_endpoint(self, region: str | None) -> tuple[str, int]:
        """The address and port a receiving gateway in ``region`` binds (port 0: any free one)."""

    def control_host(self, region: str | None) -> str:
        """The address a gateway in ``region`` serves its control endpoint on."""

    def hop_address(self, src_region: str | None, dst_region: str | None) -> str:
        """The address a gateway in ``src_region`` dials to reach the one in ``dst_region``."""

    def cert_addresses(self, region: str | None, peers: Sequence[str | None]) -> list[str]:
        """The addresses a gateway in ``region`` is dialled at (its certificate names them besides
        loopback); ``peers`` are the regions of the gateways that dial it."""

    def start(self, program: Program, region: str | None = None) -> GatewayHandle:
        """Start the gateway ``program`` describes and return once it listens (raise when it exits
        or is not ready in time, naming it and quoting its log)."""

    def stop(self, gateway_id: str) -> None:
        """Stop one gateway (idempotent)."""

    def teardown(self) -> None:
        """Stop every gateway and delete what holds secrets (idempotent)."""

    def detach(self) -> None:
        """Leave the gateways running when this process exits (raise when this launcher cannot)."""
