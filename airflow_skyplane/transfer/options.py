"""Every knob of one transfer, in one frozen value that travels whole from the operator to the programs.

The operator (or any caller) makes a :class:`TransferOptions` once - :meth:`TransferOptions.from_settings`
from the resolved ``skyplane`` settings, which already hold the operator's own arguments - and hands
it down unchanged: :class:`~airflow_skyplane.transfer.fleet.FleetTransfer` gives it to each
:class:`~airflow_skyplane.transfer.job.TransferJob`, whose program builder
(:mod:`airflow_skyplane.transfer.wiring`) writes it into every gateway's program. Compression has one
form from here down: ``"auto"`` (lz4 where a sample shows it pays), ``"always"`` or ``"never"``.

Pure: no Airflow, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.storage.grants import GCP_STS_ENDPOINT, RELAY_CREDENTIAL_MODES

if TYPE_CHECKING:
    from airflow_skyplane.hooks.skyplane import SkyplaneSettings

MiB = 1024 * 1024
Compression = Literal["auto", "always", "never"]
COMPRESSION_MODES: tuple[Compression, ...] = ("auto", "always", "never")
RelayCredentialMode = Literal["scoped", "connection"]


def compression_mode(value: bool | str, *, origin: str = "compression") -> Compression:
    """The compression mode a setting or an argument names: ``True`` is ``"auto"`` (compress where it
    pays), ``False`` is ``"never"``; a string must be one of the modes."""
    if isinstance(value, bool):
        return "auto" if value else "never"
    if value in COMPRESSION_MODES:
        return value
    raise InvalidInputError(
        f"{origin}={value!r} is unknown: use True or 'auto' (lz4 where it pays), 'always', or False or "
        "'never'"
    )


@dataclass(frozen=True)
class TransferOptions:
    """How one transfer moves its bytes. Field names are the keywords
    :class:`~airflow_skyplane.transfer.job.TransferJob` also takes one by one."""

    #: bytes per chunk on the wire and per multipart part (raised where a store needs larger parts);
    #: None: derived from the work and the plan (:mod:`airflow_skyplane.transfer.tuning`)
    chunk_size: int | None = None
    compress: Compression = "auto"
    #: AES-GCM end to end under a per-transfer key only the reading and writing gateways get
    encrypt: bool = True
    #: an upper bound (MiB) of the bytes of chunks a gateway holds at once; each gateway's budget is
    #: derived from the plan (:mod:`airflow_skyplane.transfer.tuning`), None: no bound but its machine's
    max_inflight_mb: int | None = None
    #: TCP connections on each overlay edge (the cap of a planned edge's connections; a direct
    #: transfer opens this many)
    connections_per_hop: int = 8
    #: seconds after which a transfer still running is failed
    timeout: float = 3600.0
    #: a resumable transfer checkpoints at least this often (seconds) ...
    state_every_s: float = 10.0
    #: ... and after this many new chunks written (None: max(4, a sixteenth of those recorded))
    state_every_chunks: int | None = None
    #: a failed resumable transfer keeps its uploads and state for a retry of the task
    keep_on_failure: bool = True
    #: the gateways' store credentials: minted for the transfer (``scoped``) or the connection's own
    relay_credentials: RelayCredentialMode = "scoped"
    #: the token exchange endpoint that downscopes the relays' GCS tokens
    gcp_sts_endpoint: str = GCP_STS_ENDPOINT

    def __post_init__(self) -> None:
        if self.chunk_size is not None and (not _whole(self.chunk_size) or self.chunk_size < 1):
            raise InvalidInputError(
                f"chunk_size={self.chunk_size!r} must be a positive number of bytes, or None (derived)"
            )
        compression_mode(self.compress, origin="compress")
        if not isinstance(self.encrypt, bool):
            raise InvalidInputError(f"encrypt={self.encrypt!r} must be True or False")
        inflight = self.max_inflight_mb
        if inflight is not None and (not _whole(inflight) or not 8 <= inflight <= 4096):
            raise InvalidInputError(
                f"max_inflight_mb={inflight!r} is out of range: use 8 to 4096, or None (derived)"
            )
        if not _whole(self.connections_per_hop) or not 1 <= self.connections_per_hop <= 256:
            raise InvalidInputError(
                f"connections_per_hop={self.connections_per_hop!r} is out of range: use 1 to 256"
            )
        for name, seconds in (("timeout", self.timeout), ("state_every_s", self.state_every_s)):
            number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
            if not number or not math.isfinite(seconds) or seconds <= 0:
                raise InvalidInputError(f"{name}={seconds!r} must be a positive number of seconds")
        every = self.state_every_chunks
        if every is not None and (not _whole(every) or every < 1):
            raise InvalidInputError(f"state_every_chunks={every!r} must be a whole number >= 1, or None")
        if self.relay_credentials not in RELAY_CREDENTIAL_MODES:
            raise InvalidInputError(
                f"relay_credentials={self.relay_credentials!r} is unknown: use 'scoped' (minted for the "
                "transfer) or 'connection' (the connection's own)"
            )

    @classmethod
    def from_settings(
        cls, settings: SkyplaneSettings, *, timeout: float, keep_on_failure: bool
    ) -> TransferOptions:
        """The options of a task's transfers: the resolved ``skyplane`` settings (the operator's own
        arguments already applied over the connection and the config), the task's timeout, and
        whether a failure of this try will be retried."""
        return cls(
            chunk_size=settings.chunk_size_mb * MiB,
            compress=compression_mode(settings.compression),
            encrypt=settings.encryption,
            connections_per_hop=settings.connections_per_relay,
            timeout=timeout,
            state_every_s=float(settings.state_checkpoint_s),
            keep_on_failure=keep_on_failure,
            relay_credentials="connection" if settings.relay_credentials == "connection" else "scoped",
            gcp_sts_endpoint=settings.gcp_sts_endpoint,
        )


class TransferKnobs(TypedDict, total=False):
    """The fields of :class:`TransferOptions`, as keywords that override some of them."""

    chunk_size: int | None
    compress: Compression
    encrypt: bool
    max_inflight_mb: int | None
    connections_per_hop: int
    timeout: float
    state_every_s: float
    state_every_chunks: int | None
    keep_on_failure: bool
    relay_credentials: RelayCredentialMode
    gcp_sts_endpoint: str


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
