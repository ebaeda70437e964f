"""The multicast job: one read of the source, written to several destinations through a tree.

:class:`MulticastJob` conducts one transfer over a :class:`~.tree.MulticastOverlay`: the source's
objects are listed once and cut into one manifest of chunks, the same for every destination (cut with
the largest of their minimum part sizes); each destination gets its own *leg*, a
:class:`~.job.TransferJob` that owns its objects, its multipart uploads, the receipts of its writing
gateway and its verification (:mod:`.completion`). The gateways are shared: one reading gateway, the
relays of the tree, one writing gateway per destination, started downstream first (:mod:`.wiring`).

**Per-destination truth.** Each destination is done when its own writer has written every chunk;
its objects are completed and verified from its own receipts. A failure fails only the destinations
behind it: a gateway's errors or death fail those it serves (:meth:`~.tree.MulticastOverlay.downstream`),
a branch a fork gave up (``failed_branches`` on its status) fails that branch's destinations. The
others go on; at the end the failed destinations' uploads are aborted (nothing partial is left
there) and :class:`MulticastResult` names each failure. The job raises only when every destination
failed.

Not yet for a multicast: resumable state (a retry sends everything again), renewing short-lived
relay credentials mid-transfer, and a detached or deferred run (``attach``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_skyplane.compute.launcher import GatewayHandle, GatewayLauncher
from airflow_skyplane.exceptions import SkyplaneError, TransferError
from airflow_skyplane.storage.base import ObjectInfo, ObjectStore
from airflow_skyplane.storage.kinds import StoreSpec
from airflow_skyplane.transfer import control, manifest, tuning, wiring
from airflow_skyplane.transfer.credentials import RelayCredentials
from airflow_skyplane.transfer.job import TransferJob, conduct
from airflow_skyplane.transfer.options import TransferKnobs, TransferOptions
from airflow_skyplane.transfer.overlay import Overlay
from airflow_skyplane.transfer.summary import TransferResult
from airflow_skyplane.transfer.tracker import Progress, combine, complete
from airflow_skyplane.transfer.tree import MulticastOverlay

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)
POLL_S = 0.2


@dataclass
class MulticastResult:
    """What a multicast delivered: per destination gateway, its result or why it failed."""

    transfer_id: str
    results: dict[str, TransferResult]
    failed: dict[str, str]
    #: destination gateway -> the URI it wrote to
    uris: dict[str, str]
    #: (from, to) -> bytes the hop carried (what each next hop acknowledged)
    edge_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: bytes the source read from its store (once per chunk, whatever the number of destinations)
    source_read_bytes: int = 0
    seconds: float = 0.0
    #: the reading gateway
    source: str = ""
    #: every gateway's last status
    gateways: dict[str, control.GatewayStatus] = field(default_factory=dict)

    @property
    def source_egress_bytes(self) -> int:
        """Bytes that left the source's gateway, over every hop out of it."""
        return sum(n for (src, _), n in self.edge_bytes.items() if src == self.source)

    def summary(self) -> dict[str, object]:
        return {
            "destinations": {
                self.uris[gid]: (self.results[gid].summary() if gid in self.results else {"failed": why})
                for gid, why in {**dict.fromkeys(self.results, ""), **self.failed}.items()
            },
            "failed": {self.uris[gid]: why for gid, why in self.failed.items()},
            "source_read_bytes": self.source_read_bytes,
            "source_egress_bytes": self.source_egress_bytes,
            "edge_bytes": {f"{a} -> {b}": n for (a, b), n in sorted(self.edge_bytes.items())},
            "seconds": round(self.seconds, 3),
        }


class MulticastJob:
    """One source prefix to several destinations (gateway id -> (store, prefix)) over a tree."""

    def __init__(
        self,
        source: ObjectStore,
        source_prefix: str,
        destinations: Mapping[str, tuple[ObjectStore, str]],
        *,
        backend: GatewayLauncher,
        workdir: str | os.PathLike[str],
        overlay: MulticastOverlay,
        objects: Iterable[ObjectInfo] | None = None,
        options: TransferOptions | None = None,
        source_spec: StoreSpec | None = None,
        destination_specs: Mapping[str, StoreSpec] | None = None,
        test_faults: Mapping[str, Mapping[str, object]] | None = None,
        expires_at: float | None = None,
        watch_pid: int | None = None,
        **knobs: Unpack[TransferKnobs],
    ) -> None:
        missing = sorted(set(overlay.destinations) ^ set(destinations))
        if missing:
            raise TransferError(
                f"the tree's destinations {overlay.destinations} and the stores given "
                f"{sorted(destinations)} differ ({missing}): give one store per destination gateway"
            )
        self.source, self.source_prefix = source, source_prefix
        self.backend, self.workdir, self.overlay = backend, Path(workdir), overlay
        self.selection = objects
        # no resumable state for a multicast yet: a failed destination's uploads are always aborted
        self.options = replace(replace(options or TransferOptions(), **knobs), keep_on_failure=False)
        self._source_spec = source_spec
        self._destination_specs = dict(destination_specs or {})
        self.test_faults = test_faults or {}
        self.expires_at, self.watch_pid = expires_at, watch_pid
        self.transfer_id = uuid.uuid4().hex
        self.legs: dict[str, TransferJob] = {
            gid: TransferJob(
                source,
                source_prefix,
                store,
                prefix,
                backend=backend,
                workdir=self.workdir / ("dest-" + "".join(c if c.isalnum() else "-" for c in gid)),
                overlay=Overlay(overlay.source, gid, []),
                options=self.options,
            )  # fmt: skip
            for gid, (store, prefix) in destinations.items()
        }
        self.failed: dict[str, str] = {}
        self._lost: dict[str, control.GatewayStatus] = {}
        self.started: dict[str, GatewayHandle] = {}
        self.started_at = 0.0
        self.tuning: tuning.Tuning | None = None
        self.credentials: RelayCredentials | None = None

    # -- conducting ------------------------------------------------------------------------------
    def start(self) -> None:
        """List once, cut one manifest, begin every destination's uploads, start the gateways."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.started_at = time.time()
        listed = list(self.source.list(self.source_prefix) if self.selection is None else self.selection)
        least = max(leg.destination.min_part_size for leg in self.legs.values())
        work = tuning.Work(sum(o.size for o in listed), len(listed), max((o.size for o in listed), default=0))
        self.tuning = tuning.tune_overlay(
            self.overlay, work, chunk_size=self.options.chunk_size, min_part_size=least,
            max_inflight_mb=self.options.max_inflight_mb, shared_cpus=self.backend.shared_cpus,
            workers=self.backend.gateway_workers,
        )  # fmt: skip
        manifests = {}
        for gid, leg in self.legs.items():
            leg.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            leg.started_at = self.started_at
            leg.transfer_id = self.transfer_id
            completion = leg.landing.begin()
            manifests[gid] = written = manifest.write_manifest(
                leg.workdir, listed, source_prefix=self.source_prefix, destination=leg.destination,
                destination_prefix=leg.destination_prefix, chunk_size=self.tuning.chunk_size,
                objects=leg.objects, uploads=leg.uploads, min_part_size=least,
                on_chunk=lambda c, done=completion: done.expect(c.key, c.parts),  # type: ignore[misc]
            )  # fmt: skip
            leg.chunks_to_send = written.chunks
            leg.bytes_total = sum(o.size for o in leg.objects.values())
        first = next(iter(manifests.values()))
        if any(m.path.read_bytes() != first.path.read_bytes() for m in manifests.values()):
            raise TransferError(
                "the destinations' manifests differ: a multicast needs the same chunks everywhere"
            )
        if not first.chunks:
            return
        programs = wiring.build_programs(self._wiring(first.path), self.backend)
        self.started = wiring.start_gateways(programs, self._tuned(), self.backend)
        for gid, leg in self.legs.items():
            leg.started = {self.overlay.source: self.started[self.overlay.source], gid: self.started[gid]}

    def _tuned(self) -> Overlay:
        assert self.tuning is not None
        return tuning.tuned_overlay(self.overlay, self.tuning)

    def _wiring(self, manifest_path: Path) -> wiring.Wiring:
        assert self.tuning is not None
        expires_at = self.expires_at or time.time() + self.options.timeout
        minted = self.credentials = RelayCredentials.for_transfer(
            self.workdir, self.transfer_id, expires_at, self.options
        )
        writers = {}
        for gid, leg in self.legs.items():
            spec = self._destination_specs.get(gid)
            if spec is None:  # each destination's credentials minted in its own folder
                leg.credentials = RelayCredentials.for_transfer(
                    leg.workdir, self.transfer_id, expires_at, self.options
                )
                spec = leg.credentials.spec("destination", leg.destination, leg.destination_prefix)
            writers[gid] = wiring.WriterSide(spec, leg.destination_prefix, leg.uploads)
        first = next(iter(self.legs.values()))
        return wiring.Wiring(
            transfer_id=self.transfer_id, workdir=self.workdir, overlay=self._tuned(), options=self.options,
            tuning=self.tuning,
            source_spec=self._source_spec or minted.spec("source", self.source, self.source_prefix),
            source_prefix=self.source_prefix, manifest=manifest_path,
            destination_spec=writers[first.overlay.destination].spec,
            destination_prefix=first.destination_prefix,
            uploads=first.uploads, expires_at=self.expires_at, watch_pid=self.watch_pid,
            test_faults=self.test_faults, writers=writers,
        )  # fmt: skip

    def live(self) -> list[str]:
        return [gid for gid in self.legs if gid not in self.failed]

    def poll(self) -> bool:
        """True once every destination still going has all its chunks written; a failure fails the
        destinations behind it; raise TransferError when none is left."""
        if not self.started:
            return True
        statuses = self._statuses()
        self._attribute(statuses)
        for gid in self.live():
            try:
                self.legs[gid].landing.fetch(self.started.get(gid))
            except (TransferError, SkyplaneError) as err:
                self._fail([gid], f"completing its objects: {err}")
        if not self.live():
            raise TransferError(f"every destination failed: {self.failed}")
        reader = statuses[self.overlay.source]
        if all(complete(reader, statuses[gid], self.legs[gid].chunks_to_send) for gid in self.live()):
            return True
        if time.time() - self.started_at > self.options.timeout:
            raise TransferError(f"multicast did not finish in {self.options.timeout:.0f} s")
        return False

    def progress(self) -> Progress:
        """The progress of the destinations still going (what each writer wrote)."""
        parts = []
        for gid in self.live():
            try:
                parts.append(self.legs[gid].progress())
            except TransferError:
                continue  # its gateway just went: the next poll fails the destination
        return combine(parts)

    def _statuses(self) -> dict[str, control.GatewayStatus]:
        """Every gateway's status; a gateway that died fails the destinations it serves (and shows
        the error that named its death from then on)."""
        out: dict[str, control.GatewayStatus] = {}
        for gid, gw in self.started.items():
            if gid not in self._lost:
                try:
                    out[gid] = control.status(gw)
                    continue
                except TransferError as err:
                    self._lost[gid] = {"errors": [str(err)[:500]]}
                    self._fail(self.overlay.downstream(gid), str(err)[:500])
            out[gid] = self._lost[gid]
        return out

    def _attribute(self, statuses: Mapping[str, control.GatewayStatus]) -> None:
        """Fail the destinations behind each gateway that died or failed, and behind each branch a
        fork gave up."""
        for gid, gw in self.started.items():
            if not gw.alive() and not statuses.get(gid, {}).get("done"):
                self._fail(self.overlay.downstream(gid), str(control.exit_error(gw))[:500])
        for gid, status in statuses.items():
            if status.get("errors"):
                errors = list(dict.fromkeys(status["errors"]))[:3]
                self._fail(self.overlay.downstream(gid), f"gateway {gid} failed: {errors}")
            branches = status.get("failed_branches")
            for branch, why in branches.items() if isinstance(branches, dict) else ():
                self._fail(self.overlay.branch_destinations(branch), f"{gid} gave up the branch: {why}")

    def _fail(self, destinations: Iterable[str], why: str) -> None:
        for gid in destinations:
            if gid in self.legs and gid not in self.failed:
                log.warning("multicast destination %s failed: %s", gid, why[:300])
                self.failed[gid] = why
                self.legs[gid].landing.close()  # nothing more completes there

    def finish(self) -> MulticastResult:
        """Complete and verify every destination still going; call once :meth:`poll` says done."""
        statuses = self._statuses()
        results: dict[str, TransferResult] = {}
        for gid in self.live():
            try:
                results[gid] = self.legs[gid].finish()
            except (TransferError, SkyplaneError) as err:
                self._fail([gid], f"verification: {err}")
        edges: dict[tuple[str, str], int] = {}
        for gid, status in statuses.items():
            for name, value in status.items():
                if name.startswith("bytes_to:") and isinstance(value, int):
                    edges[(gid, name[len("bytes_to:") :])] = value
        read = statuses.get(self.overlay.source, {}).get("read_bytes", 0)
        return MulticastResult(
            transfer_id=self.transfer_id, results=results, failed=dict(self.failed),
            uris={gid: leg.destination.uri + leg.destination_prefix for gid, leg in self.legs.items()},
            edge_bytes=edges, source_read_bytes=read if isinstance(read, int) else 0,
            seconds=time.time() - self.started_at, source=self.overlay.source, gateways=statuses,
        )  # fmt: skip

    def close(self) -> None:
        """Stop the gateways; abort the uploads of every destination not finished (nothing partial)."""
        refused: list[Exception] = []
        for leg in self.legs.values():
            try:
                leg.close()  # the first one stops every gateway (the backend is shared)
            except (TransferError, SkyplaneError, OSError) as err:
                refused.append(err)
        if self.credentials is not None:
            self.credentials.close()
        for name in wiring.SECRET_FILES:
            (self.workdir / name).unlink(missing_ok=True)
        for gid in self.overlay.destinations:
            folder = self.workdir / ("gw-" + "".join(c if c.isalnum() else "-" for c in gid))
            (folder / "uploads.json").unlink(missing_ok=True)
        if refused:
            raise TransferError(f"closing the multicast: {refused}")

    def run(self) -> MulticastResult:
        return conduct(self, POLL_S)
