"""The programs of one transfer's gateways, and starting the gateways in order.

:func:`build_programs` makes a per-transfer CA (mutual TLS between the gateways, nothing else
trusted), one identity per gateway naming the addresses it is dialled at, a per-transfer AES key
(only the reading and writing gateways get its file), and one
:class:`~airflow_skyplane.gateway.program.Program` per gateway from the transfer's
:class:`~airflow_skyplane.transfer.options.TransferOptions` and the settings derived for it
(:class:`~airflow_skyplane.transfer.tuning.Tuning`: each gateway's byte budget and worker processes,
the chunk size, the window, and the connections of each hop, which the overlay given here carries).
Every file is private (0600) in the job's work folder. :func:`start_gateways` starts them downstream
first, so that each sender is given the port its next hop listens on and finds it listening.

Where a gateway listens, its control host, the address a hop dials and its certificate's addresses
come from the :class:`~airflow_skyplane.compute.launcher.GatewayLauncher`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from airflow_skyplane.compute.launcher import GatewayHandle, GatewayLauncher
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway import tls
from airflow_skyplane.gateway.program import Endpoint, NextHop, Program
from airflow_skyplane.storage.base import MultipartUpload
from airflow_skyplane.storage.kinds import StoreSpec
from airflow_skyplane.transfer.manifest import private_write
from airflow_skyplane.transfer.options import TransferOptions
from airflow_skyplane.transfer.overlay import Overlay
from airflow_skyplane.transfer.tuning import Tuning

#: the files of a job's work folder that hold secrets (deleted when the job is closed)
SECRET_FILES = ("transfer.key", "uploads.json")


@dataclass(frozen=True)
class WriterSide:
    """What one writing gateway writes to: its store, prefix and the uploads begun there."""

    spec: StoreSpec
    prefix: str
    uploads: Mapping[str, MultipartUpload]


@dataclass(frozen=True)
class Wiring:
    """What the programs of one transfer are made of."""

    transfer_id: str
    workdir: Path
    #: the hops with the connections the tuning chose
    overlay: Overlay
    options: TransferOptions
    tuning: Tuning
    source_spec: StoreSpec
    source_prefix: str
    manifest: Path
    destination_spec: StoreSpec
    destination_prefix: str
    uploads: Mapping[str, MultipartUpload]
    #: unix time at which every gateway stops itself, whatever happens to the controller
    expires_at: float | None = None
    #: the controller's pid, which gateways on its machine watch (they stop when it dies)
    watch_pid: int | None = None
    #: test-only: faults per gateway id (see the daemon)
    test_faults: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: a multicast tree's writing gateways, each with its own store (empty: the one destination above)
    writers: Mapping[str, WriterSide] = field(default_factory=dict)

    def writer_sides(self) -> dict[str, WriterSide]:
        if self.writers:
            return dict(self.writers)
        return {
            self.overlay.destination: WriterSide(self.destination_spec, self.destination_prefix, self.uploads)
        }


def build_programs(wiring: Wiring, launcher: GatewayLauncher) -> dict[str, Program]:
    """One program per gateway, in the order to start them; next hops come with :func:`start_gateways`."""
    overlay, options, tuning, workdir = wiring.overlay, wiring.options, wiring.tuning, wiring.workdir
    ca = tls.FleetCA.create(f"transfer-{wiring.transfer_id[:12]}")
    ca_file = private_write(workdir / "ca.pem", ca.cert_pem)
    key_file = private_write(workdir / "transfer.key", proto.ChunkCipher.generate().key)
    writers = wiring.writer_sides()
    programs: dict[str, Program] = {}
    for gid in overlay.gateways():
        region = overlay.region(gid)
        folder = workdir / ("gw-" + "".join(c if c.isalnum() else "-" for c in gid))
        folder.mkdir(mode=0o700, exist_ok=True)
        peers = [overlay.region(src) for src in overlay.senders_to(gid)]
        identity = ca.issue(gid, addresses=["127.0.0.1", *launcher.cert_addresses(region, peers)])
        files = identity.write(folder)
        side = writers.get(gid)
        reads, writes = gid == overlay.source, side is not None
        if side is not None:  # the uploads the writer continues (one file per writer of a tree)
            uploads_file = private_write(
                workdir / "uploads.json" if not wiring.writers else folder / "uploads.json",
                json.dumps({k: u.upload_id for k, u in side.uploads.items()}),
            )
        programs[gid] = Program(
            transfer_id=wiring.transfer_id,
            gateway_id=gid,
            tls={"cert": str(files["cert"]), "key": str(files["key"]), "ca": str(ca_file)},
            listen=None if reads else Endpoint(*launcher.listen_endpoint(region)),
            control=Endpoint(launcher.control_host(region), 0),
            cipher_key_file=str(key_file) if (reads or writes) and options.encrypt else None,
            source=(
                {
                    "store": wiring.source_spec,
                    "manifest": str(wiring.manifest),
                    "prefix": wiring.source_prefix,
                }
                if reads
                else None
            ),  # fmt: skip
            destination=(
                {"store": side.spec, "prefix": side.prefix, "uploads_file": str(uploads_file)}
                if side is not None
                else None
            ),  # fmt: skip
            compress=options.compress,
            encrypt=options.encrypt,
            max_inflight_mb=tuning.budget_mb[gid],
            chunk_size_mb=max(1, -(-tuning.chunk_size // (1024 * 1024))),
            workers=tuning.workers.get(gid),
            window=tuning.window,
            expires_at=wiring.expires_at,
            watch_pid=wiring.watch_pid if launcher.same_machine else None,
            test_faults=dict(wiring.test_faults.get(gid, {})),
        )
    return programs


def start_gateways(
    programs: Mapping[str, Program], overlay: Overlay, launcher: GatewayLauncher
) -> dict[str, GatewayHandle]:
    """Start every gateway, downstream first, each told where its next hops listen."""
    started: dict[str, GatewayHandle] = {}
    for gid in overlay.gateways():
        hops = []
        for hop in overlay.hops_from(gid):
            port = started[hop.dst].listen_port
            if port is None:
                raise TransferError(f"gateway {hop.dst} started but reported no listening port")
            host = launcher.hop_address(overlay.region(hop.src), overlay.region(hop.dst))
            hops.append(NextHop(hop.dst, host, port, hop.connections, hop.weight, hop.branch))
        program = replace(programs[gid], next_hops=tuple(hops))
        started[gid] = launcher.start(program, region=overlay.region(gid))
    return started
